/**
 * `engine-guard/duckdb`: an embedded DuckDB (`@duckdb/node-api`) behind an {@link EngineGuard}.
 *
 * ```ts
 * import { DuckDBInstance } from '@duckdb/node-api';
 * import { EngineGuard } from 'engine-guard';
 * import { duckdbGuardOptions, duckdbQuery } from 'engine-guard/duckdb';
 *
 * const instance = await DuckDBInstance.create(':memory:');
 * const guard = new EngineGuard(duckdbGuardOptions(instance, { pool: 3 }));
 * const rows = await guard.read((conn, ctx) => duckdbQuery(conn, ctx, 'select 42 as answer'));
 * ```
 *
 * Only this module loads `@duckdb/node-api`; `engine-guard` and `engine-guard/pg` never do.
 *
 * One guard handle is one `DuckDBConnection` of a shared `DuckDBInstance`; reads run concurrently
 * on up to `pool` connections, writes run alone.
 *
 * What DuckDB gives us, and how it maps onto the guard:
 *
 * - `create`: `instance.connect()`.
 * - `cancel`: `connection.interrupt()`. DuckDB answers an interrupt by failing the running call
 *   with `INTERRUPT Error: Interrupted!`, and the connection stays usable. An interrupt that lands
 *   before the native call has really started is lost (DuckDB clears the flag when a query
 *   begins), so the adapter keeps interrupting every {@link INTERRUPT_EVERY_MS} ms until the calls
 *   it tracks on that connection have settled; `cancel` resolves then, which is the guard's
 *   "the engine acknowledged the cancel" and lets it keep the handle.
 * - `destroy`: `connection.closeSync()`, but only once no call is in flight on the connection:
 *   disconnecting under a running query leaves that query's promise pending for ever and keeps
 *   the process alive (seen with `@duckdb/node-api` 1.5). So `destroy` interrupts, waits for the
 *   tracked calls to settle (the guard bounds the wait with `destroyTimeout`) and closes after.
 * - `probe` with no op (an idle handle about to be reused): `select 1` on the handle itself.
 *   With an op (the handle is busy): `select 1` on a short-lived side connection of the same
 *   instance, opened and closed per probe (about 0.2 ms). It shows the database still schedules
 *   and answers queries. DuckDB runs every call on the libuv thread pool (`UV_THREADPOOL_SIZE`,
 *   default 4): with `pool` long queries occupying every thread, a probe waits for a thread and
 *   times out. Keep `pool` below `UV_THREADPOOL_SIZE` (the adapter warns otherwise).
 * - `isFatal`: see {@link isFatalDuckDBError}.
 * - `reset`: see {@link duckdbReset}. After each handle's `setup`, its state is recorded as the
 *   baseline the reset returns it to.
 * - `state`: see {@link duckdbState}, what a session op left, against the same baseline.
 *
 * Heartbeats: {@link duckdbQuery} streams the result (`connection.stream` + `fetchChunk`) and
 * heartbeats before the call, when the stream opens and after every chunk (2,048 rows). DuckDB
 * computes a pipeline breaker (an aggregate, a sort) entirely inside `stream()`, so a long
 * aggregate is silent until it is done: for those, liveness comes from the side probes.
 *
 * Only calls made through {@link duckdbQuery} (and the adapter's own probes) are tracked. An op
 * that calls `conn.run()` itself is still interrupted by `cancel`, once.
 */
import type { DuckDBConnection, DuckDBInstance } from '@duckdb/node-api';
import { JSDuckDBValueConverter } from '@duckdb/node-api';
import type { EngineGuardOptions, HeldState, ResetContext, StateContext } from '../index.js';
import { captureBaseline, heldState, type ResetRunner, resetConnection } from './duckdb-reset.js';

export { LockedSettingsError } from './duckdb-reset.js';

/** How often an aborted call's connection is interrupted again until the call settles, ms. */
export const INTERRUPT_EVERY_MS = 25;

/** Calls in flight per connection, so `cancel` and `destroy` know when the connection is quiet. */
const inflight = new WeakMap<DuckDBConnection, Set<Promise<unknown>>>();

/** `conn.interrupt()` that never throws. */
export function interruptQuietly(conn: DuckDBConnection): void {
  try {
    conn.interrupt();
  } catch {
    // Interrupting a closed connection is a no-op in current releases; never let it throw here.
  }
}

/**
 * Interrupts `conn` now and every {@link INTERRUPT_EVERY_MS} until `calls` is empty (an interrupt
 * that lands between two native calls is lost, so once is not enough). Never rejects.
 */
export async function interruptUntilDrained(
  conn: DuckDBConnection,
  calls: Set<Promise<unknown>> | undefined,
): Promise<void> {
  if (calls === undefined || calls.size === 0) return;
  interruptQuietly(conn);
  const timer = setInterval(() => interruptQuietly(conn), INTERRUPT_EVERY_MS);
  timer.unref();
  try {
    while (calls.size > 0) await Promise.allSettled([...calls]);
  } finally {
    clearInterval(timer);
  }
}

/**
 * From the moment `signal` aborts, interrupts `conn` now and every {@link INTERRUPT_EVERY_MS}.
 * Returns the clean-up to call once the guarded call settled.
 */
export function interruptOnAbort(conn: DuckDBConnection, signal: AbortSignal): () => void {
  let timer: NodeJS.Timeout | undefined;
  const onAbort = (): void => {
    interruptQuietly(conn);
    timer = setInterval(() => interruptQuietly(conn), INTERRUPT_EVERY_MS);
    timer.unref();
  };
  signal.addEventListener('abort', onAbort, { once: true });
  return () => {
    signal.removeEventListener('abort', onAbort);
    if (timer !== undefined) clearInterval(timer);
  };
}

/** Waits (without interrupting) until no tracked call is in flight on `conn`. */
async function settled(conn: DuckDBConnection): Promise<void> {
  const calls = inflight.get(conn);
  while (calls !== undefined && calls.size > 0) await Promise.allSettled([...calls]);
}

/**
 * Runs `work` on `conn` as a tracked call: while it is in flight, `cancel`/`destroy` know about
 * it; when `signal` aborts, the connection is interrupted until the call settles, and the call
 * rejects with `signal.reason` (after DuckDB let go of the connection, so the handle is reusable).
 */
async function tracked<T>(
  conn: DuckDBConnection,
  signal: AbortSignal,
  work: () => Promise<T>,
): Promise<T> {
  signal.throwIfAborted();
  let calls = inflight.get(conn);
  if (calls === undefined) {
    calls = new Set();
    inflight.set(conn, calls);
  }
  const running = work();
  calls.add(running);
  const stopInterrupting = interruptOnAbort(conn, signal);
  try {
    const value = await running;
    // An interrupt lost in a race may let the call finish: it still counts as aborted.
    signal.throwIfAborted();
    return value;
  } catch (error) {
    if (signal.aborted) throw signal.reason;
    throw error;
  } finally {
    stopInterrupting();
    calls.delete(running);
  }
}

async function selectOne(conn: DuckDBConnection, signal: AbortSignal): Promise<void> {
  await tracked(conn, signal, () => conn.run('select 1'));
}

/** Probe of a busy handle: `select 1` on a fresh side connection, closed once it is quiet. */
async function sideProbe(instance: DuckDBInstance, signal: AbortSignal): Promise<void> {
  signal.throwIfAborted();
  const side = await instance.connect();
  try {
    await selectOne(side, signal);
  } finally {
    // `selectOne` settled, so nothing runs on `side` any more: closing it cannot hang a query.
    await settled(side);
    side.closeSync();
  }
}

/** The reset's statements, tracked like the op's (interrupted when `signal` aborts). */
function resetRunner(conn: DuckDBConnection, signal: AbortSignal): ResetRunner {
  return (sql) => tracked(conn, signal, () => conn.runAndReadAll(sql));
}

/**
 * The `reset` hook of {@link duckdbGuardOptions} (its default): returns a shared connection to
 * its state right after `setup`, before it serves another caller.
 *
 * - A transaction the op left open is rolled back.
 * - Temporary tables, views, macros, sequences and types are dropped (DuckDB keeps them per
 *   connection). Temporary objects `setup` made are dropped too: keep those in a session.
 * - Prepared statements (`PREPARE`, per connection) made by the op are deallocated; the ones
 *   `setup` made are prepared again if the op dropped or replaced them. The same for variables
 *   (`SET VARIABLE`).
 * - Settings (`SET`, `RESET`, `USE`) go back to their values after `setup`: each changed one is
 *   `RESET`, and set to the baseline's value if that differs from its default. A setting that
 *   only has an instance-wide value (`threads`, `memory_limit`...) is the instance's: an op
 *   that changed it changed it for every connection until this reset puts it back. One changed
 *   with `SET GLOBAL` where the connection may have its own value (`TimeZone`) gets its own
 *   value back on this connection; the instance-wide one stays as the op left it.
 *
 * With `lock_configuration` on, SET and RESET are refused (to the op as to the reset): a
 * setting that differs from the baseline then cannot be put back, and the reset fails with
 * {@link LockedSettingsError} (the guard retires the connection, and its own settings go with
 * it) rather than call the connection clean. An op that turns `lock_configuration` on freezes the
 * instance's settings for every connection, for as long as the instance runs: keep it out of
 * untrusted SQL, or set it when the instance is created (then make the settings each connection
 * needs in `setup`, whose state is the baseline).
 *
 * A connection with no baseline (made by other options than `duckdbGuardOptions`') has its
 * temporary objects, prepared statements and variables dropped and its settings left alone.
 *
 * Costs two calls when the op left nothing (a ROLLBACK attempt and one catalog query), plus one
 * per object or setting to restore (and two more catalog reads when settings changed). Not undone: `ATTACH`/`DETACH`, extensions loaded and
 * secrets created (DuckDB keeps those per instance, not per connection), and anything written
 * to non-temporary tables.
 */
export function duckdbReset(conn: DuckDBConnection, ctx: ResetContext): Promise<void> {
  return resetConnection(conn, ctx.signal, resetRunner(conn, ctx.signal));
}

/**
 * The `state` hook of {@link duckdbGuardOptions} (its default): reports the connection state a
 * session op left on its connection, so that a `pin: 'on-state'` session keeps the connection
 * only while it holds some (SPEC 8.1). It mirrors {@link duckdbReset}: "none" means exactly the
 * state the reset would leave, and the connection then goes back to the pool without a reset.
 *
 * - An open explicit transaction (`BEGIN` in one call, `COMMIT` in a later one):
 *   `{ kind: 'transaction', name: 'open' }` (`'failed'` once a statement in it failed).
 * - Temporary objects: `{ kind: 'temp table', name: 'scratch' }`, `'temp view'`,
 *   `'temp macro'`, `'temp sequence'`, `'temp type'`.
 * - Prepared statements (`PREPARE`) and variables (`SET VARIABLE`) that differ from the
 *   baseline (made by the op, or the baseline's, dropped or changed): `'prepared statement'`,
 *   `'variable'`.
 * - Settings that differ from the baseline (`SET`, and `RESET` of one `setup` made):
 *   `{ kind: 'setting', name: 'TimeZone' }`; a `USE` elsewhere: `{ kind: 'use', name:
 *   'memory.app' }`.
 *
 * Two calls on the connection, each a catalog read (`txid_current()`, then the query the reset
 * reads; the same transaction id in both means a transaction is open), so no round trip is
 * saved by skipping it: it never answers synchronously. A connection with no baseline (made by
 * other options than `duckdbGuardOptions`') reports its temporary objects, prepared statements
 * and variables, not its settings (which its reset leaves alone too). Not seen, as the reset does
 * not undo them: `ATTACH`/`DETACH`, extensions, secrets (the instance's), writes to tables.
 */
export function duckdbState(
  conn: DuckDBConnection,
  ctx: StateContext,
): Promise<readonly HeldState[]> {
  return heldState(conn, resetRunner(conn, ctx.signal));
}

const FATAL_PATTERNS: readonly RegExp[] = [
  // The Node binding, for a call on a connection closed with closeSync()/disconnectSync().
  /connection disconnected/i,
  // The Node binding, for connect() on an instance closed with instance.closeSync().
  /instance closed/i,
  // DuckDB's ConnectionException ("Connection Error: Connection has already been closed").
  /\bConnection Error\b/,
  // A FATAL (or INTERNAL) error invalidates the whole database: "FATAL Error: Failed: database
  // has been invalidated because of a previous fatal error. The database must be restarted...".
  /\bFATAL Error\b/,
  /\bINTERNAL Error\b/,
  /has been invalidated/i,
];

/**
 * True for DuckDB errors meaning "this connection (or the database behind it) is gone":
 *
 * - `Failed to query: connection disconnected` (and `Failed to prepare: ...`, `Failed to extract
 *   statements: ...`): the connection was closed;
 * - `Failed to connect: instance closed`: the instance was closed;
 * - `Connection Error: ...`: DuckDB's own connection errors;
 * - `FATAL Error: ...`, `INTERNAL Error: ...`, `... has been invalidated ...`: the database
 *   instance is invalidated. Replacing the connection does not cure that one (every new
 *   connection of the instance fails the same way), so the guard ends up reporting the engine
 *   down; reopen the instance to recover.
 *
 * Not fatal: ordinary SQL errors (`Parser Error`, `Catalog Error`, `Binder Error`, `Constraint
 * Error`, `Conversion Error`, ...) and `INTERRUPT Error: Interrupted!`, the answer to a cancel.
 * DuckDB errors carry no `code`, so this matches on the message.
 */
export function isFatalDuckDBError(error: unknown): boolean {
  try {
    if (!(error instanceof Error)) return false;
    const message = error.message;
    if (typeof message !== 'string' || /\bINTERRUPT Error\b/.test(message)) return false;
    return FATAL_PATTERNS.some((pattern) => pattern.test(message));
  } catch {
    // A revoked Proxy, a throwing getter: nothing that says "connection gone".
    return false;
  }
}

function threadPoolSize(): number {
  const size = Number.parseInt(process.env.UV_THREADPOOL_SIZE ?? '', 10);
  return Number.isInteger(size) && size > 0 ? size : 4;
}

let warnedPool = false;

/**
 * Guard options for connections of one DuckDB instance. `overrides` go on top, so any hook or
 * setting can be replaced (keep `destroy` waiting for in-flight calls if you do); an override
 * that is `undefined` leaves the default in place.
 *
 * Defaults: `pool` 2, `name` `'duckdb'`, library liveness defaults, `reset`
 * {@link duckdbReset} and `state` {@link duckdbState} (`reset: undefined`, `state: undefined` turn
 * them off). With either, `setup` (yours, or none) is followed by one catalog query that records
 * the connection's baseline for them.
 *
 * @example
 * ```ts
 * const instance = await DuckDBInstance.create(':memory:');
 * const guard = new EngineGuard(duckdbGuardOptions(instance, { pool: 3 }));
 * const rows = await guard.read((conn, ctx) => duckdbQuery(conn, ctx, 'select 42 as answer'));
 * ```
 */
export function duckdbGuardOptions(
  instance: DuckDBInstance,
  overrides: Partial<EngineGuardOptions<DuckDBConnection>> = {},
): EngineGuardOptions<DuckDBConnection> {
  if (instance === null || typeof instance !== 'object' || typeof instance.connect !== 'function') {
    throw new TypeError('The "instance" argument must be a DuckDBInstance');
  }
  if (overrides === null || typeof overrides !== 'object') {
    throw new TypeError('The "overrides" argument must be an object');
  }
  const options: EngineGuardOptions<DuckDBConnection> = {
    name: 'duckdb',
    pool: 2,
    create: async ({ signal }) => {
      const conn = await instance.connect();
      if (signal.aborted) {
        conn.closeSync();
        throw signal.reason;
      }
      return conn;
    },
    destroy: async (conn) => {
      await interruptUntilDrained(conn, inflight.get(conn));
      conn.closeSync();
    },
    cancel: (conn) => interruptUntilDrained(conn, inflight.get(conn)),
    probe: async (conn, { signal, op }) => {
      if (op === undefined) await selectOne(conn, signal);
      else await sideProbe(instance, signal);
    },
    isFatal: isFatalDuckDBError,
    reset: duckdbReset,
    state: duckdbState,
  };
  // An override that is `undefined` leaves the default in place (as in engine-guard/pg), except
  // `reset: undefined` and `state: undefined`, which turn the reset and the state check off.
  for (const [key, value] of Object.entries(overrides)) {
    if (value !== undefined) (options as unknown as Record<string, unknown>)[key] = value;
  }
  if (Object.hasOwn(overrides, 'reset') && overrides.reset === undefined) delete options.reset;
  if (Object.hasOwn(overrides, 'state') && overrides.state === undefined) delete options.state;
  const setup = options.setup;
  // After bootstrap and setup: what they set (a GLOBAL setting too) is the baseline, not a leak.
  if (options.reset !== undefined || options.state !== undefined) {
    options.setup = async (conn, ctx) => {
      await setup?.(conn, ctx);
      await captureBaseline(conn, resetRunner(conn, ctx.signal));
    };
  }
  const pool = options.pool ?? 1;
  if (!warnedPool && options.liveness !== false && pool >= threadPoolSize()) {
    warnedPool = true;
    process.emitWarning(
      `engine-guard/duckdb: pool ${pool} >= UV_THREADPOOL_SIZE ${threadPoolSize()}: with every libuv thread ` +
        'running a long query, liveness probes cannot run and healthy queries may be convicted. ' +
        'Use a smaller pool or raise UV_THREADPOOL_SIZE.',
      { code: 'ENGINE_GUARD_DUCKDB_POOL' },
    );
  }
  return options;
}

/**
 * True when `sql` holds no statement at all (whitespace, comments, semicolons), decided by
 * DuckDB's own parser, not by reading the text: `sql` followed by one known statement must parse
 * as exactly one statement. DuckDB fails such SQL with the binding's generic "Error in native
 * callback" (from `run`, `stream` and `extractStatements` alike); call this to tell that case
 * apart.
 */
export async function duckdbHoldsNoStatement(
  conn: Pick<DuckDBConnection, 'extractStatements'>,
  sql: string,
): Promise<boolean> {
  if (typeof sql !== 'string') throw new TypeError('The "sql" argument must be a string');
  try {
    const extracted = await conn.extractStatements(`${sql}\n;select 1`);
    return extracted.count === 1;
  } catch {
    return false;
  }
}

/** True when `error` is DuckDB's answer to SQL that holds no statement. */
async function failedForNoStatement(
  conn: DuckDBConnection,
  sql: string,
  error: unknown,
): Promise<boolean> {
  if (!(error instanceof Error) || error.message !== 'Error in native callback') return false;
  return duckdbHoldsNoStatement(conn, sql);
}

/**
 * Runs `sql` on `conn` and returns its rows as plain objects (DuckDB values converted to JS:
 * BIGINT as `bigint`, DATE as `Date`, ...). Multi-statement SQL returns the last statement's rows.
 * SQL that holds no statement at all (`''`, `'  '`, `'-- c'`, `';'`) returns no rows, as
 * PostgreSQL does (DuckDB itself fails it with "Error in native callback").
 *
 * - Honours `ctx.signal`: when it aborts, the connection is interrupted (again and again, see
 *   {@link INTERRUPT_EVERY_MS}) and the promise rejects with `signal.reason` once DuckDB has let
 *   go of the connection.
 * - Streams the result and calls `ctx.heartbeat()` before the call, when the stream opens and
 *   after each chunk, so a large result that keeps flowing is never probed.
 */
export async function duckdbQuery(
  conn: DuckDBConnection,
  ctx: { signal: AbortSignal; heartbeat(): void },
  sql: string,
): Promise<Record<string, unknown>[]> {
  const { signal } = ctx;
  if (typeof sql === 'string' && sql.includes('\u0000')) {
    // DuckDB answers it with its bare "Error in native callback": say what is wrong instead.
    throw new RangeError('The SQL text holds a NUL character (U+0000); nothing was run');
  }
  return tracked(conn, signal, async () => {
    ctx.heartbeat();
    let result: Awaited<ReturnType<DuckDBConnection['stream']>>;
    try {
      result = await conn.stream(sql);
    } catch (error) {
      if (await failedForNoStatement(conn, sql, error)) return [];
      throw error;
    }
    ctx.heartbeat();
    const columns = result.deduplicatedColumnNames();
    const rows: Record<string, unknown>[] = [];
    for (;;) {
      // Aborted between chunks: stop reading; the abort listener interrupts the stream.
      signal.throwIfAborted();
      const chunk = await result.fetchChunk();
      if (chunk === null || chunk.rowCount === 0) break;
      ctx.heartbeat();
      for (const values of chunk.convertRows(JSDuckDBValueConverter)) {
        const row: Record<string, unknown> = {};
        for (let i = 0; i < columns.length; i++) row[columns[i] as string] = values[i];
        rows.push(row);
      }
    }
    return rows;
  });
}
