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

/** How a connection in some state differs from its baseline, settings apart. */
interface Drift {
  /** Temporary objects, in {@link DROP_ORDER}. */
  readonly temporary: StateRow[];
  /** Prepared statements the baseline lacks or has with another text: deallocated. */
  readonly extraPrepared: string[];
  /** The baseline's prepared statements that are missing or changed: made again. */
  readonly missingPrepared: Map<string, string>;
  /** Variables the baseline lacks: reset. */
  readonly extraVariables: string[];
  /** The baseline's variables that are missing or changed: set again. */
  readonly missingVariables: Map<string, { value: string; type: string }>;
  /** The `USE` row when it differs from the baseline's. */
  readonly use: StateRow | undefined;
}

function driftOf(state: StateRow[], baseline: Baseline | undefined): Drift {
  const temporary = DROP_ORDER.flatMap((kind) => state.filter((row) => row.kind === kind));
  const extraPrepared: string[] = [];
  const extraVariables: string[] = [];
  const missingPrepared = new Map(baseline?.prepared);
  const missingVariables = new Map(baseline?.variables);
  let use: StateRow | undefined;
  for (const row of state) {
    if (row.kind === 'prepared') {
      if (missingPrepared.get(row.n) === row.v) missingPrepared.delete(row.n);
      else extraPrepared.push(row.n);
    } else if (row.kind === 'variable') {
      const before = missingVariables.get(row.n);
      if (before?.value === row.v && before?.type === row.t) missingVariables.delete(row.n);
      else if (before === undefined) extraVariables.push(row.n);
    } else if (row.kind === 'use' && baseline !== undefined && useOf(row) !== baseline.use) {
      use = row;
    }
  }
  return { temporary, extraPrepared, missingPrepared, extraVariables, missingVariables, use };
}

/**
 * The statements that bring a connection in `state` back to `baseline`, settings apart (see
 * {@link restoreSettings}).
 */
function restoreStatements(state: StateRow[], baseline: Baseline | undefined): string[] {
  const drift = driftOf(state, baseline);
  const out: string[] = [];
  for (const row of drift.temporary) {
    const name = `temp.${ident(row.s ?? 'main')}.${ident(row.n)}`;
    const what =
      row.kind === 'macro'
        ? row.v === 'table_macro'
          ? 'MACRO TABLE'
          : 'MACRO'
        : row.kind.toUpperCase();
    out.push(`DROP ${what} IF EXISTS ${name}`);
  }
  for (const name of drift.extraPrepared) out.push(`DEALLOCATE ${ident(name)}`);
  for (const name of drift.extraVariables) out.push(`RESET VARIABLE ${ident(name)}`);
  if (drift.use !== undefined && baseline !== undefined) out.push(baseline.use);
  // Dropped or changed since the baseline: made again as they were.
  for (const [name, text] of drift.missingPrepared) out.push(`PREPARE ${ident(name)} AS ${text}`);
  for (const [name, { value, type }] of drift.missingVariables) {
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

/** `txid_current()` as text: the same in two calls only inside one explicit transaction. */
const TXID_SQL = 'SELECT CAST(txid_current() AS VARCHAR) AS id';

/**
 * What `conn` holds that its reset would undo (see `duckdbState`): an open transaction, then
 * temporary objects, prepared statements, variables, settings and `USE` that differ from the
 * baseline. Two calls: `txid_current()`, then the state query with `txid_current()` again (the
 * same id means an explicit transaction is open; autocommit gives each statement its own).
 */
export async function heldState(
  conn: DuckDBConnection,
  run: ResetRunner,
): Promise<{ kind: string; name: string }[]> {
  let first: string;
  try {
    first = String((await run(TXID_SQL)).getRowObjectsJS()[0]?.id);
  } catch (error) {
    // A failed explicit transaction refuses every statement until its ROLLBACK.
    if (/transaction is aborted/i.test((error as Error)?.message ?? '')) {
      return [{ kind: 'transaction', name: 'failed' }];
    }
    throw error;
  }
  const rows = (
    await run(
      `${STATE_SQL}\nUNION ALL SELECT 'txid', NULL, CAST(txid_current() AS VARCHAR), NULL, NULL`,
    )
  ).getRowObjectsJS() as unknown as StateRow[];
  const baseline = baselines.get(conn);
  const held: { kind: string; name: string }[] = [];
  if (rows.some((row) => row.kind === 'txid' && row.n === first)) {
    held.push({ kind: 'transaction', name: 'open' });
  }
  const drift = driftOf(rows, baseline);
  for (const row of drift.temporary) {
    held.push({ kind: `temp ${row.kind}`, name: row.s === 'main' ? row.n : `${row.s}.${row.n}` });
  }
  const prepared = new Set([...drift.extraPrepared, ...drift.missingPrepared.keys()]);
  for (const name of prepared) held.push({ kind: 'prepared statement', name });
  const variables = new Set([...drift.extraVariables, ...drift.missingVariables.keys()]);
  for (const name of variables) held.push({ kind: 'variable', name });
  for (const row of changedSettings(rows, baseline)) held.push({ kind: 'setting', name: row.n });
  if (drift.use !== undefined) {
    held.push({ kind: 'use', name: `${drift.use.s ?? ''}.${drift.use.n}` });
  }
  return held;
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
