/**
 * Embedded DuckDB behind the MCP server, built on `engine-guard/duckdb`: one in-memory
 * database, loaded with the generated sample data set, one DuckDB connection per guard handle.
 *
 * Read-only `query`, enforced by DuckDB itself:
 * - DuckDB's own parser splits the SQL; `query` accepts exactly one statement, so nothing can
 *   run before or after the read-only transaction.
 * - That statement runs inside `BEGIN TRANSACTION READ ONLY ... ROLLBACK`: DuckDB refuses any
 *   write to the database ("Cannot write to database ... transaction is launched in read-only
 *   mode"); even a temporary object is rolled back.
 * - The instance is opened with `enable_external_access = false`, which cannot be turned back on
 *   while it runs: no file reads or writes (`COPY ... TO`, `ATTACH 'file'`, `read_csv`),
 *   no extension installs, through either tool; and with `lock_configuration`: no `SET`.
 * - Statements that change the session or the engine's setup outside any transaction (SET,
 *   settings PRAGMAs, LOAD, ATTACH, transaction control...) are refused by statement type, as
 *   DuckDB's parser classifies them: see SESSION_STATEMENTS.
 * - A pragma reached another way (its table function: `SELECT * FROM enable_profiling()`, which
 *   DuckDB runs even under `lock_configuration`) is caught by its effect, as DuckDB reports it:
 *   after the statement, the connection's settings must still be those its setup left, or the
 *   call fails and the connection is retired (see {@link SettingsChangedError}).
 * Rows are streamed chunk by chunk and the stream is dropped once `maxRows + 1` rows are in, so
 * an oversized result is never materialized.
 */
import {
  type DuckDBConnection,
  DuckDBInstance,
  type DuckDBPreparedStatement,
  JSDuckDBValueConverter,
  ResultReturnType,
  StatementType,
} from '@duckdb/node-api';
import type { EngineGuardOptions, OpContext } from 'engine-guard';
import {
  duckdbGuardOptions,
  duckdbHoldsNoStatement,
  duckdbQuery,
  interruptOnAbort,
  interruptUntilDrained,
  isFatalDuckDBError,
} from 'engine-guard/duckdb';
import {
  DESCRIBE_TABLE_SQL,
  type Engine,
  type EngineFacts,
  type ExecuteOutput,
  groupColumns,
  InputError,
  LIST_TABLES_SQL,
  type QueryOptions,
  type QueryOutput,
  type QueryProgress,
  type TableColumns,
  type TableInfo,
  toJsonValue,
  uniqueNames,
} from '../engine.js';
import { SAMPLE_DATA_SQL } from '../sample-data.js';

/**
 * Statements that change the connection's session or the engine itself rather than the data,
 * outside any transaction's reach: neither tool runs them. Beyond keeping the server's setup
 * fixed (extensions, attached databases, settings), this keeps stdout clean: DuckDB writes its
 * progress bar and query profiles straight to file descriptor 1, which over stdio carries the
 * MCP protocol, and `PRAGMA enable_print_progress_bar` / `PRAGMA enable_profiling` switch them on
 * even under `lock_configuration`. Classified by DuckDB's own parser, not by the SQL text.
 */
const SESSION_STATEMENTS: ReadonlyMap<StatementType, string> = new Map([
  [StatementType.SET, 'SET/RESET/USE'],
  [StatementType.VARIABLE_SET, 'SET VARIABLE'],
  [StatementType.PRAGMA, 'PRAGMA (settings)'],
  [StatementType.LOAD, 'LOAD/INSTALL'],
  [StatementType.EXTENSION, 'extension'],
  [StatementType.UPDATE_EXTENSIONS, 'UPDATE EXTENSIONS'],
  [StatementType.ATTACH, 'ATTACH'],
  [StatementType.DETACH, 'DETACH'],
  [StatementType.TRANSACTION, 'transaction control (BEGIN/COMMIT/ROLLBACK)'],
  [StatementType.PREPARE, 'PREPARE'],
  [StatementType.EXPORT, 'EXPORT DATABASE'],
  [StatementType.COPY_DATABASE, 'COPY FROM DATABASE'],
]);

/**
 * The statements of `sql` as DuckDB's parser splits them; `undefined` when it holds none
 * (DuckDB itself then fails with a bare "Error in native callback").
 */
async function extractStatements(
  conn: DuckDBConnection,
  sql: string,
): Promise<Awaited<ReturnType<DuckDBConnection['extractStatements']>> | undefined> {
  try {
    return await conn.extractStatements(sql);
  } catch (error) {
    if (await duckdbHoldsNoStatement(conn, sql)) return undefined;
    throw error;
  }
}

function refuseSessionStatement(tool: string, prepared: DuckDBPreparedStatement): void {
  const kind = SESSION_STATEMENTS.get(prepared.statementType);
  if (kind === undefined) return;
  throw new InputError(
    prepared.statementType === StatementType.TRANSACTION
      ? `The ${tool} tool manages the transaction itself; leave out ${kind}.`
      : `The ${tool} tool does not run ${kind} statements: they change the connection's session ` +
          "or the engine's setup, which this server keeps fixed. (Informational PRAGMAs such as " +
          "PRAGMA table_info('t') are fine in query.)",
  );
}

/** The connection's settings as DuckDB reports them, one `name=value` line each. */
const SETTINGS_SQL =
  "SELECT string_agg(name || '=' || coalesce(value, ''), chr(10) ORDER BY name) AS settings FROM duckdb_settings()";

/** Each connection's settings right after its setup: what every call must leave them as. */
const setupSettings = new WeakMap<DuckDBConnection, string>();

async function readSettings(conn: DuckDBConnection): Promise<string> {
  const rows = (await conn.runAndReadAll(SETTINGS_SQL)).getRowObjectsJS();
  return String(rows[0]?.settings ?? '');
}

/**
 * A statement changed the connection's settings although neither tool runs SET or settings
 * PRAGMAs: a pragma reached through its table function (`SELECT * FROM enable_profiling()`),
 * which DuckDB runs even under `lock_configuration`. The call fails (nothing it wrote is
 * committed) and the connection is retired (the engine's `isFatal` says so), so the change
 * reaches no later call; a client session on it is lost, and told so.
 */
export class SettingsChangedError extends InputError {
  /** The settings the statement changed. */
  readonly settings: readonly string[];
  constructor(tool: string, settings: readonly string[]) {
    super(
      `The ${tool} tool does not run statements that change the connection's settings; this one ` +
        `changed ${settings.join(', ')} (through a function of a PRAGMA). Nothing was kept, and ` +
        'the connection it ran on is being replaced.',
    );
    this.settings = settings;
  }
}

/** Names of the lines that differ between two results of {@link SETTINGS_SQL}. */
function changedNames(before: string, after: string): string[] {
  const was = new Set(before.split('\n'));
  const names = after
    .split('\n')
    .filter((line) => !was.has(line))
    .map((line) => line.slice(0, line.indexOf('=')));
  return names.length > 0 ? names : ['(a setting that went away)'];
}

/**
 * Fails the call when its statement changed the connection's settings (see
 * {@link SettingsChangedError}). One catalog query, inside the call's transaction.
 */
async function refuseSettingsChange(conn: DuckDBConnection, tool: string): Promise<void> {
  const before = setupSettings.get(conn);
  if (before === undefined) return;
  const after = await readSettings(conn);
  if (after !== before) throw new SettingsChangedError(tool, changedNames(before, after));
}

/** How often a running query's engine progress is read (and turned into heartbeats), ms. */
const PROGRESS_POLL_MS = 200;

/**
 * This adapter's own calls in flight per connection (the recipe tracks only `duckdbQuery`), so
 * the wrapped `cancel` and `destroy` can wait until DuckDB let go of the connection: closing a
 * connection under a running call leaves that call pending for ever. `interruptibles` are the
 * statements a cancel may interrupt; the clean-up (ROLLBACK) is waited for but never interrupted,
 * or the connection would go back to the pool inside a dead transaction.
 */
const inflight = new WeakMap<DuckDBConnection, Set<Promise<unknown>>>();
const interruptibles = new WeakMap<DuckDBConnection, Set<Promise<unknown>>>();
/** Connections whose ROLLBACK failed: the next op on them rolls back first. */
const dirty = new WeakSet<DuckDBConnection>();

function track<T>(
  registry: WeakMap<DuckDBConnection, Set<Promise<unknown>>>,
  conn: DuckDBConnection,
  work: Promise<T>,
): Promise<T> {
  let calls = registry.get(conn);
  if (calls === undefined) {
    calls = new Set();
    registry.set(conn, calls);
  }
  const set = calls;
  set.add(work);
  const forget = (): void => {
    set.delete(work);
  };
  work.then(forget, forget);
  return work;
}

async function drain(calls: Set<Promise<unknown>> | undefined): Promise<void> {
  while (calls !== undefined && calls.size > 0) await Promise.allSettled([...calls]);
}

/**
 * Interrupts `conn` until none of this adapter's interruptible statements is in flight on it,
 * then waits for the rest (the clean-up) to finish. Never rejects.
 */
async function interruptUntilQuiet(conn: DuckDBConnection): Promise<void> {
  await interruptUntilDrained(conn, interruptibles.get(conn));
  await drain(inflight.get(conn));
}

/**
 * Runs `body` (a series of DuckDB calls on `conn`) as one tracked unit. Once `signal` aborts, the
 * connection is interrupted every few ms until `body` settles (an interrupt that lands between
 * two native calls is lost, so once is not enough), and the result is `signal.reason`.
 */
async function interruptible<T>(
  conn: DuckDBConnection,
  signal: AbortSignal,
  body: () => Promise<T>,
): Promise<T> {
  signal.throwIfAborted();
  if (dirty.has(conn)) {
    dirty.delete(conn);
    await rollback(conn);
  }
  const stopInterrupting = interruptOnAbort(conn, signal);
  try {
    const value = await track(interruptibles, conn, track(inflight, conn, body()));
    signal.throwIfAborted();
    return value;
  } catch (error) {
    if (signal.aborted) throw signal.reason;
    throw error;
  } finally {
    stopInterrupting();
  }
}

/**
 * Polls DuckDB's query progress while a statement runs: updates `progress` and heartbeats the
 * guard whenever the engine reports that it moved on. (DuckDB computes joins and aggregates
 * before it reports much; such a query stays silent and the watchdog's side probes vouch for it.)
 */
function watchProgress(
  conn: DuckDBConnection,
  ctx: OpContext,
  progress: QueryProgress,
): () => void {
  let lastPercentage = 0;
  let lastRows = 0n;
  const timer = setInterval(() => {
    let current: { percentage: number; rows_processed: bigint };
    try {
      current = conn.progress;
    } catch {
      return;
    }
    if (current.percentage > 0) progress.percentage = current.percentage;
    if (current.rows_processed > 0n) progress.rowsProcessed = Number(current.rows_processed);
    if (current.percentage > lastPercentage || current.rows_processed > lastRows) {
      ctx.heartbeat();
      if (current.percentage > lastPercentage) lastPercentage = current.percentage;
      if (current.rows_processed > lastRows) lastRows = current.rows_processed;
    }
  }, PROGRESS_POLL_MS);
  timer.unref();
  return () => clearInterval(timer);
}

/**
 * Ends the transaction, whatever happened. Tracked (so `destroy` waits for it) but never
 * interrupted. If it fails for another reason than "no transaction", the connection is marked
 * so that its next op rolls back first.
 */
async function rollback(conn: DuckDBConnection): Promise<void> {
  try {
    await track(inflight, conn, conn.run('ROLLBACK'));
  } catch (error) {
    // "no transaction is active": the statement was COMMIT, or nothing began. Anything else
    // (the connection was interrupted or closed meanwhile): try again before the next op.
    if (!/no transaction is active/i.test((error as Error).message)) dirty.add(conn);
  }
}

export interface DuckDbEngineOptions {
  /** Load the sample data set. Default true. */
  sampleData?: boolean;
}

export async function createDuckDbEngine(
  options: DuckDbEngineOptions = {},
): Promise<Engine<DuckDBConnection>> {
  const instance = await DuckDBInstance.create(':memory:', {
    // No file access (COPY TO, ATTACH of files, read_csv, extension installs); it cannot be
    // turned back on while the instance runs.
    enable_external_access: 'false',
    // No SET of settings, through either tool.
    lock_configuration: 'true',
  });
  if (options.sampleData ?? true) {
    const loader = await instance.connect();
    try {
      for (const sql of SAMPLE_DATA_SQL) await loader.run(sql);
    } finally {
      loader.closeSync();
    }
  }
  let closed = false;

  return {
    kind: 'duckdb',
    description: `DuckDB (embedded, in-memory${(options.sampleData ?? true) ? ', sample data' : ''})`,
    readOnlyMode:
      'one statement (DuckDB parser) inside BEGIN TRANSACTION READ ONLY ... ROLLBACK; ' +
      'no session or setup statements; external access disabled, configuration locked',

    guardOptions(overrides: Partial<EngineGuardOptions<DuckDBConnection>>) {
      const { setup } = overrides;
      // Given to the adapter, so that its reset's baseline is the state after these PRAGMAs
      // (under lock_configuration a setting that differs from the baseline retires the handle).
      const base = duckdbGuardOptions(instance, {
        ...overrides,
        async setup(conn, ctx) {
          await setup?.(conn, ctx);
          // Per connection: let `conn.progress` report, and never print a progress bar (DuckDB
          // would print it on stdout). PRAGMA, because the configuration is locked to SET.
          await conn.run('PRAGMA enable_progress_bar');
          await conn.run('PRAGMA disable_print_progress_bar');
          setupSettings.set(conn, await readSettings(conn));
        },
      });
      const { cancel, destroy } = base;
      return {
        ...base,
        // A connection whose settings a statement changed goes: see SettingsChangedError.
        isFatal: (error: unknown) =>
          error instanceof SettingsChangedError || isFatalDuckDBError(error),
        // The recipe's hooks know the calls made through `duckdbQuery`; these also wait for
        // this adapter's own calls.
        async cancel(conn, ctx) {
          await Promise.all([cancel?.(conn, ctx), interruptUntilQuiet(conn)]);
        },
        async destroy(conn, ctx) {
          await interruptUntilQuiet(conn);
          await destroy?.(conn, ctx);
        },
      };
    },

    isFatal: (error: unknown) => error instanceof SettingsChangedError || isFatalDuckDBError(error),

    async query(conn, ctx, sql, { maxRows, progress }: QueryOptions): Promise<QueryOutput> {
      const stopWatching = watchProgress(conn, ctx, progress);
      let began = false;
      try {
        return await interruptible(conn, ctx.signal, async () => {
          // DuckDB's own parser splits the text: exactly one statement, or nothing runs.
          const statements = await extractStatements(conn, sql);
          // No statement at all: an empty result, as PostgreSQL gives.
          if (statements === undefined || statements.count === 0) {
            return { columns: [], rows: [], truncated: false };
          }
          if (statements.count !== 1) {
            throw new InputError(
              `The query tool runs exactly one statement per call; got ${statements.count}. ` +
                'Send them one by one (use execute for DDL/DML).',
            );
          }
          await conn.run('BEGIN TRANSACTION READ ONLY');
          began = true;
          const prepared = await statements.prepare(0);
          refuseSessionStatement('query', prepared);
          const result = await prepared.stream();
          ctx.heartbeat();
          const names = uniqueNames(result.columnNames());
          const types = result.columnTypes().map((type) => type.toString());
          const rows: Record<string, unknown>[] = [];
          let truncated = false;
          while (!truncated) {
            ctx.signal.throwIfAborted();
            const chunk = await result.fetchChunk();
            if (chunk === null || chunk.rowCount === 0) break;
            ctx.heartbeat();
            progress.rowsReceived += chunk.rowCount;
            for (const values of chunk.convertRows(JSDuckDBValueConverter)) {
              if (rows.length === maxRows) {
                // One row more than asked for: say so, and drop the rest of the stream.
                truncated = true;
                break;
              }
              const row: Record<string, unknown> = {};
              names.forEach((name, i) => {
                row[name] = toJsonValue(values[i]);
              });
              rows.push(row);
            }
          }
          await refuseSettingsChange(conn, 'query');
          return {
            columns: names.map((name, i) => ({ name, type: types[i] ?? 'UNKNOWN' })),
            rows,
            truncated,
          };
        });
      } finally {
        stopWatching();
        if (began) await rollback(conn);
      }
    },

    async execute(conn, ctx, sql): Promise<ExecuteOutput> {
      let began = false;
      try {
        return await interruptible(conn, ctx.signal, async () => {
          const statements = await extractStatements(conn, sql);
          if (statements === undefined || statements.count === 0) {
            throw new InputError('No SQL statement given.');
          }
          let affected: number | null = null;
          await conn.run('BEGIN TRANSACTION');
          began = true;
          for (let i = 0; i < statements.count; i++) {
            // Prepared one at a time, after the previous one ran: statement 2 may use a table
            // that statement 1 created.
            const prepared = await statements.prepare(i);
            refuseSessionStatement('execute', prepared);
            const result = await prepared.run();
            ctx.heartbeat();
            if (result.returnType === ResultReturnType.CHANGED_ROWS) {
              affected = (affected ?? 0) + Number(result.rowsChanged);
            }
          }
          await refuseSettingsChange(conn, 'execute');
          await conn.run('COMMIT');
          began = false;
          return { statements: statements.count, rowsAffected: affected };
        });
      } finally {
        if (began) await rollback(conn);
      }
    },

    async listTables(conn, ctx): Promise<TableInfo[]> {
      const rows = await duckdbQuery(conn, ctx, LIST_TABLES_SQL);
      return rows.map((row) => ({
        schema: String(row.schema),
        name: String(row.name),
        type: String(row.type),
      }));
    },

    async describeTable(conn, ctx, table, schema): Promise<Map<string, TableColumns>> {
      const rows = await interruptible(conn, ctx.signal, async () => {
        const reader = await conn.runAndReadAll(DESCRIBE_TABLE_SQL, [table, schema ?? '']);
        return reader.getRowObjectsJS() as Record<string, unknown>[];
      });
      return groupColumns(rows, table);
    },

    async facts(conn, ctx): Promise<EngineFacts> {
      const rows = await duckdbQuery(
        conn,
        ctx,
        `SELECT version() AS version, current_database() AS database,
          (SELECT count(*) FROM duckdb_tables() WHERE NOT internal AND NOT temporary) AS tables,
          (SELECT count(*) FROM duckdb_views() WHERE NOT internal AND NOT temporary) AS views`,
      );
      const row = rows[0];
      if (row === undefined) throw new Error('DuckDB returned no facts');
      return {
        version: String(row.version),
        database: String(row.database),
        tables: Number(row.tables),
        views: Number(row.views),
      };
    },

    async close() {
      if (closed) return;
      closed = true;
      instance.closeSync();
    },
  };
}
