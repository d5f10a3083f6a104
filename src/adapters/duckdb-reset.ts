/**
 * engine-guard/duckdb's `reset`: a connection back to the state it had right after its `setup`
 * (its baseline), between two callers of the shared handles.
 */
import type { DuckDBConnection, DuckDBResultReader } from '@duckdb/node-api';

/** One row of {@link STATE_SQL}. */
interface StateRow {
  kind: string;
  /** Schema (objects), scope (settings), database (`use`). */
  s: string | null;
  n: string;
  /** Function type (macros), statement (prepared), value (settings, variables). */
  v: string | null;
  /** Type of a variable. */
  t: string | null;
}

/** What a connection holds that outlives a statement: the state a caller can leave behind. */
const STATE_SQL = `
SELECT 'table' AS kind, schema_name AS s, table_name AS n, NULL AS v, NULL AS t FROM duckdb_tables() WHERE temporary
UNION ALL SELECT 'view', schema_name, view_name, NULL, NULL FROM duckdb_views() WHERE temporary AND NOT internal
UNION ALL SELECT 'macro', schema_name, function_name, function_type, NULL FROM duckdb_functions()
  WHERE database_name = 'temp' AND NOT internal AND function_type IN ('macro', 'table_macro')
UNION ALL SELECT 'sequence', schema_name, sequence_name, NULL, NULL FROM duckdb_sequences() WHERE temporary
UNION ALL SELECT 'type', schema_name, type_name, NULL, NULL FROM duckdb_types() WHERE database_name = 'temp' AND NOT internal
UNION ALL SELECT 'prepared', NULL, name, statement, NULL FROM duckdb_prepared_statements()
UNION ALL SELECT 'variable', NULL, name, value, type FROM duckdb_variables()
UNION ALL SELECT 'setting', scope, name, value, NULL FROM duckdb_settings()
UNION ALL SELECT 'use', current_database(), current_schema(), NULL, NULL`;

/** The temporary objects, in an order that drops dependents (views, macros) before what they use. */
const DROP_ORDER = ['view', 'macro', 'table', 'sequence', 'type'] as const;

/** A connection's state right after its setup. */
interface Baseline {
  /** Settings by name: their value. */
  readonly settings: Map<string, { value: string | null }>;
  /** Prepared statements by name: their text. */
  readonly prepared: Map<string, string>;
  /** Variables by name: value and type. */
  readonly variables: Map<string, { value: string; type: string }>;
  readonly use: string;
}

const baselines = new WeakMap<DuckDBConnection, Baseline>();

const ident = (name: string): string => `"${name.replace(/"/g, '""')}"`;
const literal = (value: string): string => `'${value.replace(/'/g, "''")}'`;

function useOf(row: StateRow): string {
  return `USE ${ident(row.s ?? '')}.${ident(row.n)}`;
}

/**
 * Records `conn`'s state as its baseline: what `duckdbReset` returns it to. The guard options
 * of `duckdbGuardOptions` call it after each handle's `setup` (and `bootstrap`).
 */
export async function captureBaseline(conn: DuckDBConnection, run: ResetRunner): Promise<void> {
  const baseline: Baseline = {
    settings: new Map(),
    prepared: new Map(),
    variables: new Map(),
    use: '',
  };
  let use = '';
  for (const row of (await run(STATE_SQL)).getRowObjectsJS() as unknown as StateRow[]) {
    if (row.kind === 'setting') {
      baseline.settings.set(row.n, { value: row.v });
    } else if (row.kind === 'prepared') {
      baseline.prepared.set(row.n, row.v ?? '');
    } else if (row.kind === 'variable') {
      baseline.variables.set(row.n, { value: row.v ?? '', type: row.t ?? 'VARCHAR' });
    } else if (row.kind === 'use') {
      use = useOf(row);
    }
  }
  baselines.set(conn, { ...baseline, use });
}

/** Rolls back a transaction the op left open; DuckDB says so when there is none. */
async function rollback(run: ResetRunner): Promise<void> {
  try {
    await run('ROLLBACK');
  } catch (error) {
    if (!/no transaction is active/i.test((error as Error)?.message ?? '')) throw error;
  }
}

/**
 * The statements that bring a connection in `state` back to `baseline`, settings apart (see
 * {@link restoreSettings}).
 */
function restoreStatements(state: StateRow[], baseline: Baseline | undefined): string[] {
  const out: string[] = [];
  for (const kind of DROP_ORDER) {
    for (const row of state) {
      if (row.kind !== kind) continue;
      const name = `temp.${ident(row.s ?? 'main')}.${ident(row.n)}`;
      const what =
        kind === 'macro' ? (row.v === 'table_macro' ? 'MACRO TABLE' : 'MACRO') : kind.toUpperCase();
      out.push(`DROP ${what} IF EXISTS ${name}`);
    }
  }
  const prepared = new Map(baseline?.prepared);
  const variables = new Map(baseline?.variables);
  for (const row of state) {
    if (row.kind === 'prepared') {
      if (prepared.get(row.n) === row.v) prepared.delete(row.n);
      else out.push(`DEALLOCATE ${ident(row.n)}`);
    } else if (row.kind === 'variable') {
      const before = variables.get(row.n);
      if (before?.value === row.v && before?.type === row.t) variables.delete(row.n);
      else if (before === undefined) out.push(`RESET VARIABLE ${ident(row.n)}`);
    } else if (row.kind === 'use' && baseline !== undefined && useOf(row) !== baseline.use) {
      out.push(baseline.use);
    }
  }
  // Dropped or changed since the baseline: made again as they were.
  for (const [name, text] of prepared) out.push(`PREPARE ${ident(name)} AS ${text}`);
  for (const [name, { value, type }] of variables) {
    out.push(`SET VARIABLE ${ident(name)} = CAST(${literal(value)} AS ${type})`);
  }
  return out;
}

const SETTINGS_SQL =
  "SELECT 'setting' AS kind, scope AS s, name AS n, value AS v FROM duckdb_settings()";

/** Settings whose value differs from the baseline's. */
function changedSettings(state: StateRow[], baseline: Baseline | undefined): StateRow[] {
  return state.filter((row) => {
    if (row.kind !== 'setting') return false;
    const before = baseline?.settings.get(row.n);
    return before !== undefined && before.value !== row.v;
  });
}

/**
 * Settings back to the baseline. First each changed one is RESET (to its default, which is
 * what the baseline holds unless setup changed it, and which also brings back the settings
 * derived from it, such as `worker_threads` from `threads`); then the ones still different
 * are SET to the baseline's value. Without a scope, DuckDB picks the connection's own value for
 * a setting that has one, and the instance's otherwise.
 */
async function restoreSettings(
  changed: StateRow[],
  baseline: Baseline | undefined,
  signal: AbortSignal,
  run: ResetRunner,
): Promise<void> {
  for (const row of changed) {
    signal.throwIfAborted();
    await run(`RESET ${ident(row.n)}`);
  }
  const after = (await run(SETTINGS_SQL)).getRowObjectsJS() as unknown as StateRow[];
  for (const row of changedSettings(after, baseline)) {
    const value = baseline?.settings.get(row.n)?.value;
    if (value === null || value === undefined) continue;
    signal.throwIfAborted();
    await run(`SET ${ident(row.n)} = ${literal(value)}`);
  }
}

/**
 * The reset of a connection whose settings differ from its baseline while `lock_configuration`
 * is on (an op turned it on, or a pragma changed a setting under it): no SET or RESET can put them
 * back, so the connection cannot be called clean, and the guard retires it. Settings of the
 * instance (`GLOBAL` scope, such as `threads`) stay as the op left them for every connection:
 * `lock_configuration` cannot be turned off while the instance runs.
 */
export class LockedSettingsError extends Error {
  override readonly name = 'LockedSettingsError';
  /** Stable code: `ERR_DUCKDB_LOCKED_SETTINGS`. */
  readonly code = 'ERR_DUCKDB_LOCKED_SETTINGS';
  /** The settings that differ from the baseline, with the value the op left. */
  readonly settings: readonly { name: string; value: string | null; scope: string | null }[];

  constructor(rows: readonly StateRow[]) {
    const settings = rows.map((row) => ({ name: row.n, value: row.v, scope: row.s }));
    const global = settings.filter((setting) => setting.scope === 'GLOBAL');
    super(
      `lock_configuration is on, so the settings ${settings.map((setting) => setting.name).join(', ')} ` +
        "cannot be put back to this connection's baseline: the connection is retired" +
        (global.length > 0
          ? `; ${global.map((setting) => setting.name).join(', ')} ${global.length === 1 ? 'is' : 'are'} the instance's and stay${global.length === 1 ? 's' : ''} as the op left ${global.length === 1 ? 'it' : 'them'} for every connection`
          : ''),
    );
    this.settings = settings;
  }
}

/** Runs one statement on the connection being reset (bounded and interruptible by its caller). */
export type ResetRunner = (sql: string) => Promise<DuckDBResultReader>;

/**
 * Returns `conn` to its baseline (see `duckdbReset`): rolls back a transaction left open, reads
 * what the connection holds in one catalog query, then runs one statement per thing to undo.
 */
export async function resetConnection(
  conn: DuckDBConnection,
  signal: AbortSignal,
  run: ResetRunner,
): Promise<void> {
  await rollback(run);
  const state = (await run(STATE_SQL)).getRowObjectsJS() as unknown as StateRow[];
  const baseline = baselines.get(conn);
  const statements = restoreStatements(state, baseline);
  for (const sql of statements) {
    signal.throwIfAborted();
    await run(sql);
  }
  // Under `lock_configuration` no SET or RESET runs: what differs from the baseline stays, so the
  // connection is not clean. Failing retires it (its own settings go with it).
  if (
    state.some(
      (row) => row.kind === 'setting' && row.n === 'lock_configuration' && row.v === 'true',
    )
  ) {
    const stuck = changedSettings(state, baseline);
    if (stuck.length > 0) throw new LockedSettingsError(stuck);
    return;
  }
  // A USE among them changed `schema` and `search_path`: read the settings again.
  const changed = changedSettings(
    statements.some((sql) => sql.startsWith('USE '))
      ? ((await run(SETTINGS_SQL)).getRowObjectsJS() as unknown as StateRow[])
      : state,
    baseline,
  );
  if (changed.length > 0) await restoreSettings(changed, baseline, signal, run);
}
