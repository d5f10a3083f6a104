/**
 * `engine-guard/pg`: the hooks an {@link EngineGuard} needs to guard `pg` clients talking to
 * PostgreSQL, or to any server that speaks its wire protocol (HyperDB's `hyperd`, for example).
 *
 * ```ts
 * import { EngineGuard } from 'engine-guard';
 * import { pgGuardOptions, pgQuery } from 'engine-guard/pg';
 *
 * const guard = new EngineGuard(pgGuardOptions({ config: { host, port, user, database } }, { pool: 4 }));
 * const { rows } = await guard.read((pg, ctx) => pgQuery(pg, ctx, 'select * from t where id = $1', [id]));
 * ```
 *
 * - `create` opens one `pg.Client` (TCP keepalive on), bounded by the attempt's signal, and
 *   reads its backend pid.
 * - `destroy` is forceful: a polite `end()` gets a short grace, then the socket is destroyed
 *   (a half-open peer never answers `end()`). It never throws.
 * - `probe` on an idle handle runs `SELECT 1` on it. On a busy handle it must not queue behind
 *   the running query, so it asks from the side, over one side connection kept per guard
 *   options (see {@link pgGuardOptions}): is the op's backend still `active` in
 *   `pg_stat_activity`? At the same time it checks, without logging in, that the server still
 *   accepts connections on the side connection's route (a frozen server whose side backend
 *   still answers). When no query is in flight on the handle, the op is in the application's hands
 *   (between two queries of a transaction, say) and the probe passes.
 * - `cancel` runs `pg_cancel_backend(pid)` over the same side connection.
 * - `isFatal` is {@link isFatalPgError}: connection-level errors retire the handle.
 *
 * Only this module loads `pg`; `engine-guard` and `engine-guard/duckdb` never do.
 *
 * @module
 */
import { connect as netConnect } from 'node:net';
import pg from 'pg';
import type { EngineGuardOptions, LivenessOptions } from '../index.js';
import { splitStatements } from './pg-split.js';

/** One row of a result, as `pg` returns it by default (column name to parsed value). */
export type PgRow = Record<string, unknown>;

/** What {@link pgQuery} resolves to: the part of `pg`'s `QueryResult` this adapter relies on. */
export interface PgQueryResult<R extends object = PgRow> {
  /** The statement's command tag (`SELECT`, `INSERT`...); `null` for an empty query. */
  command: string | null;
  /** Rows affected or returned, as the server reported them. */
  rowCount: number | null;
  rows: R[];
  /** Result columns, with their type OIDs. */
  fields: { name: string; dataTypeID: number }[];
}

/**
 * The part of a `pg.Client` that the adapter and its callers use. A structural type, so that
 * your `pg` version does not have to match the one this package was built with; a `pg.Client`
 * fits it.
 */
export interface PgClient {
  query(
    textOrConfig: string | { text: string; values?: unknown[]; queryMode?: 'extended' },
    values?: unknown[],
  ): Promise<PgQueryResult>;
  /** A submittable (`pg.Query`, `pg-cursor`, `pg-query-stream`): returned as given. */
  query<S extends { submit(connection: unknown): void }>(submittable: S): S;
  end(): Promise<void>;
  /** `'I'` idle, `'T'` in a transaction, `'E'` in a failed transaction (pg >= 8.13). */
  getTransactionStatus?(): string | null;
}

/** One guarded engine handle: a connected client and the server process serving it. */
export interface PgHandle {
  /** The connected `pg.Client`. Use it only inside a guarded op (through {@link pgQuery}). */
  client: PgClient;
  /** `pg_backend_pid()` of this connection: the backend that runs its queries. */
  pid: number;
}

/**
 * Connection settings, passed to `new pg.Client(config)` as given (the fields listed are the
 * ones the adapter reads or that are most used; any other `pg.ClientConfig` field is accepted
 * from a `pg.ClientConfig`-typed value and passed through).
 */
export interface PgClientConfig {
  host?: string | undefined;
  port?: number | undefined;
  user?: string | undefined;
  database?: string | undefined;
  password?: unknown;
  connectionString?: string | undefined;
  ssl?: unknown;
  application_name?: string | undefined;
  keepAlive?: boolean | undefined;
  keepAliveInitialDelayMillis?: number | undefined;
  connectionTimeoutMillis?: number | undefined;
  statement_timeout?: unknown;
  lock_timeout?: unknown;
  idle_in_transaction_session_timeout?: unknown;
  query_timeout?: unknown;
  options?: string | undefined;
  types?: unknown;
}

/** Options of {@link pgGuardOptions}. */
export interface PgAdapterOptions {
  /** Connection settings, used for the handles and for the side connection of probes and cancels. */
  config: PgClientConfig;
  /**
   * TCP keepalive on the handles' sockets. Default true (with a first keepalive probe after
   * 10 s of silence unless `config.keepAliveInitialDelayMillis` says otherwise).
   */
  keepAlive?: boolean | undefined;
  /**
   * Settings of the side connection (busy-handle probes and cancels). Default: `config`, so the
   * probe takes the handles' route and a dead route fails it. Give another role (one with
   * `pg_read_all_stats` and `pg_signal_backend`) when the handles' role may not see or cancel its
   * own other sessions, as on some managed servers.
   */
  sideConfig?: PgClientConfig | undefined;
}

/** @deprecated Use {@link PgAdapterOptions}; kept for code written against the recipe. */
export type PgRecipeOptions = PgAdapterOptions;

/**
 * Liveness defaults of the pg adapter, tighter than the library's (5 s × 3 + 3 s): a busy-handle
 * probe is one round trip on a kept side connection, so probing every second is cheap, and a
 * silent dead op is convicted at most `interval × failures + timeout` = 3.5 s after its last sign
 * of life. A `liveness` override is merged over these field by field.
 */
export const PG_LIVENESS = { interval: 1_000, timeout: 1_500, failures: 2 } as const;

/**
 * Thrown by {@link pgTransaction} when a statement ended or escaped the transaction (`COMMIT`,
 * `ROLLBACK`, `END`, `ABORT`, `PREPARE TRANSACTION`...). Nothing of the transaction was applied.
 */
export class PgTransactionEndedError extends Error {
  override readonly name = 'PgTransactionEndedError';
  /** Stable code: `ERR_PG_TRANSACTION_ENDED`. */
  readonly code = 'ERR_PG_TRANSACTION_ENDED';
  /** Index (0-based) of the statement that ended the transaction. */
  readonly statement: number;
  constructor(statement: number, options?: ErrorOptions) {
    super(
      `Statement ${statement + 1} ended the transaction; pgTransaction runs statements inside ` +
        'its own transaction, so transaction control is refused and nothing was applied',
      options,
    );
    this.statement = statement;
  }
}

/** How long `destroy` (and a side connection's close) lets `end()` try before cutting the socket. */
const END_GRACE_MS = 500;
/** First TCP keepalive probe after this much silence, unless the config sets its own. */
const KEEPALIVE_INITIAL_DELAY_MS = 10_000;
/** Bound of one `cancel` when the guard's `cancelTimeout` is not given in the overrides. */
const DEFAULT_CANCEL_TIMEOUT_MS = 5_000;
/** Bound of connecting the side connection when the probe's own signal does not bound it sooner. */
const SIDE_CONNECT_TIMEOUT_MS = 10_000;

/**
 * What a busy-handle probe asks: the backend's state and how long it has been in it, by the
 * server's clock.
 */
const BACKEND_STATE_SQL =
  'SELECT state, extract(epoch FROM clock_timestamp() - state_change)::float8 * 1000 AS idle_ms' +
  ' FROM pg_stat_activity WHERE pid = $1';

/** Node.js socket error codes meaning the connection is gone. */
const FATAL_ERRNO: ReadonlySet<string> = new Set([
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'ECONNREFUSED',
  'ECONNABORTED',
  'ENOTCONN',
  'EHOSTUNREACH',
  'EHOSTDOWN',
  'ENETUNREACH',
  'ENETDOWN',
]);

/**
 * SQLSTATEs (outside class 08) after which the server closes the session: admin_shutdown,
 * crash_shutdown, cannot_connect_now, database_dropped, idle_session_timeout.
 */
const FATAL_SQLSTATE: ReadonlySet<string> = new Set(['57P01', '57P02', '57P03', '57P04', '57P05']);

/** Messages of `pg` errors that mean the client's connection is gone. */
const FATAL_MESSAGES: readonly string[] = [
  'Client has encountered a connection error and is not queryable',
  'Client was closed and is not queryable',
];

/**
 * True for errors meaning "this connection is gone": socket errors (`ECONNRESET`, `EPIPE`,
 * `ETIMEDOUT`, `ECONNREFUSED`, ...), `pg`'s "Connection terminated..." and "... not queryable"
 * errors, SQLSTATE class 08 (connection exception) and the 57P0x codes after which the server
 * ends the session (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now, ...).
 *
 * False for everything else, including 57014 (query_canceled): a cancelled query leaves a
 * healthy connection. The `cause` chain (and an `AggregateError`'s errors) are looked at too.
 */
export function isFatalPgError(error: unknown): boolean {
  return isFatalAt(error, 0);
}

function isFatalAt(error: unknown, depth: number): boolean {
  if (depth > 8 || error === null || typeof error !== 'object') return false;
  const { code, message, cause } = error as { code?: unknown; message?: unknown; cause?: unknown };
  if (typeof code === 'string') {
    if (FATAL_ERRNO.has(code) || FATAL_SQLSTATE.has(code)) return true;
    if (code.length === 5 && code.startsWith('08')) return true;
  }
  if (typeof message === 'string') {
    if (message.startsWith('Connection terminated')) return true;
    if (FATAL_MESSAGES.includes(message)) return true;
  }
  if (error instanceof AggregateError && error.errors.some((e) => isFatalAt(e, depth + 1))) {
    return true;
  }
  return cause !== undefined && cause !== error && isFatalAt(cause, depth + 1);
}

/** The `pg` client as the adapter drives it (its internals are reached only through this). */
interface RawClient extends PgClient {
  connect(): Promise<void>;
  on(event: 'error', listener: (error: Error) => void): unknown;
  on(event: 'end', listener: () => void): unknown;
  /** `pg`'s own flag: false from the moment a query is sent until the server is ready again. */
  readyForQuery?: boolean;
  /** Where it connects (resolved by `pg` from the config or connection string). */
  host?: string;
  port?: number;
  unref?(): void;
  connection?: { stream?: NodeJS.ReadableStream & { destroy(): void } };
}

/** What the adapter remembers about a client it created. */
interface ClientState {
  /** Set once the connection failed or ended: the handle is dead. */
  gone: Error | undefined;
  /** Queries the adapter's helpers sent on it that have not settled yet. */
  inFlight: number;
  /** Heartbeats of the queries in flight on it, called when bytes arrive. */
  readonly beats: Set<() => void>;
  readonly onData: () => void;
}

const clients = new WeakMap<PgClient, ClientState>();

function track(client: RawClient): ClientState {
  const beats = new Set<() => void>();
  const state: ClientState = {
    gone: undefined,
    inFlight: 0,
    beats,
    onData: () => {
      for (const beat of beats) beat();
    },
  };
  clients.set(client, state);
  // Without an 'error' listener, a socket error on an idle client would crash the process.
  client.on('error', (error: Error) => {
    state.gone ??= error;
  });
  client.on('end', () => {
    state.gone ??= new Error('Connection terminated');
  });
  return state;
}

/**
 * True while a query is on its way to or from the server on `client`: one sent by the adapter's
 * helpers, or (read from `pg`'s own `readyForQuery` flag) one the op sent on the client itself.
 */
function queryInFlight(client: PgClient): boolean {
  const state = clients.get(client);
  if (state !== undefined && state.inFlight > 0) return true;
  return (client as RawClient).readyForQuery === false;
}

function noop(): void {}

/** Cuts the client's socket at once. Never throws. */
function destroySocket(client: PgClient): void {
  try {
    (client as RawClient).connection?.stream?.destroy();
  } catch {
    // already gone
  }
}

/**
 * Ends a client: a polite `end()` (Terminate message, FIN) for at most `graceMs`, then the
 * socket is destroyed, since a half-open or frozen peer never completes the close. Never throws.
 */
async function closeClient(client: PgClient, graceMs: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    const grace = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, graceMs);
      timer.unref();
    });
    await Promise.race([
      Promise.resolve()
        .then(() => client.end())
        .catch(noop),
      grace,
    ]);
  } catch {
    // never throw from a close
  } finally {
    clearTimeout(timer);
    destroySocket(client);
  }
}

/** Callbacks waiting on one signal, behind a single 'abort' listener. */
interface AbortWaiters {
  readonly callbacks: Set<() => void>;
  readonly listener: () => void;
}

const abortWaiters = new WeakMap<AbortSignal, AbortWaiters>();

/**
 * Calls `callback` once `signal` aborts; returns the unsubscribe function. All callbacks on one
 * signal share one listener, so many concurrent queries of one op add no listener each (which
 * would trip Node's MaxListenersExceededWarning on the op's signal).
 */
function onAbort(signal: AbortSignal, callback: () => void): () => void {
  let waiters = abortWaiters.get(signal);
  if (waiters === undefined) {
    const callbacks = new Set<() => void>();
    const listener = (): void => {
      abortWaiters.delete(signal);
      for (const waiting of callbacks) waiting();
    };
    waiters = { callbacks, listener };
    abortWaiters.set(signal, waiters);
    signal.addEventListener('abort', listener, { once: true });
  }
  const { callbacks, listener } = waiters;
  callbacks.add(callback);
  return () => {
    if (!callbacks.delete(callback) || callbacks.size > 0) return;
    if (abortWaiters.get(signal)?.callbacks === callbacks) abortWaiters.delete(signal);
    signal.removeEventListener('abort', listener);
  };
}

/**
 * Settles like `promise`, or rejects with `signal.reason` as soon as the signal aborts (after
 * calling `abort`). The promise's own outcome is always handled, never left unhandled.
 */
function raceSignal<T>(
  promise: Promise<T>,
  signal: AbortSignal,
  abort: () => void = noop,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    if (signal.aborted) {
      promise.catch(noop);
      abort();
      reject(signal.reason);
      return;
    }
    const unsubscribe = onAbort(signal, () => {
      abort();
      reject(signal.reason);
    });
    promise.then(
      (value) => {
        unsubscribe();
        resolve(value);
      },
      (error: unknown) => {
        unsubscribe();
        reject(error);
      },
    );
  });
}

/** Connects a new client, bounded by `signal`; on failure or abort, its socket is destroyed. */
async function connect(
  config: PgClientConfig,
  signal: AbortSignal,
  unref = false,
): Promise<RawClient> {
  signal.throwIfAborted();
  const client = new pg.Client(config as pg.ClientConfig) as unknown as RawClient;
  track(client);
  // The side connection must never keep the process alive, not even while it connects.
  if (unref) client.unref?.();
  try {
    await raceSignal(client.connect(), signal, () => destroySocket(client));
    return client;
  } catch (error) {
    destroySocket(client);
    throw error;
  }
}

/**
 * The side connection of one {@link pgGuardOptions} result, for busy-handle probes and cancels:
 * kept open between them (a probe is then one round trip, not a TCP connect plus authentication
 * plus a backend start), opened on first use, never trusted: a query on it that fails or outlives
 * its caller's signal discards it (the caller's probe fails), and the next use opens a new one.
 * Its socket is unref'd (it never keeps the process alive) and it is closed when the last handle
 * of the guard is destroyed.
 */
class SideConnection {
  readonly #config: PgClientConfig;
  #client: Promise<RawClient> | undefined;

  constructor(config: PgClientConfig) {
    this.#config = config;
  }

  async query<R extends object>(
    signal: AbortSignal,
    text: string,
    values: unknown[],
  ): Promise<R[]> {
    const client = await raceSignal(this.#connected(), signal);
    const state = clients.get(client);
    if (state?.gone !== undefined) {
      this.#discard(client);
      throw new Error(`The probe side connection is gone: ${state.gone.message}`, {
        cause: state.gone,
      });
    }
    try {
      const result = await raceSignal(client.query(text, values), signal);
      return result.rows as R[];
    } catch (error) {
      // A slow or failed answer leaves the side connection in doubt: never reuse it.
      this.#discard(client);
      throw error;
    }
  }

  /** Opens the side connection ahead of its first use (a failure is left to that use). */
  warm(): void {
    this.#connected().catch(noop);
  }

  /** Closes the side connection (the next use opens a new one). */
  close(): void {
    const pending = this.#client;
    this.#client = undefined;
    pending?.then((client) => closeClient(client, END_GRACE_MS), noop);
  }

  #connected(): Promise<RawClient> {
    if (this.#client !== undefined) return this.#client;
    // Its own bound, not the first caller's signal: a short probe must not doom the connect
    // that later probes share.
    const attempt = connect(this.#config, AbortSignal.timeout(SIDE_CONNECT_TIMEOUT_MS), true);
    this.#client = attempt;
    attempt.catch(() => {
      if (this.#client === attempt) this.#client = undefined;
    });
    return attempt;
  }

  #discard(client: RawClient): void {
    this.#client?.then((current) => {
      if (current === client) this.#client = undefined;
    }, noop);
    destroySocket(client);
  }
}

/** How long a passed accept check is reused by the other busy-handle probes of a guard, ms. */
const ACCEPT_CHECK_REUSE_MS = 500;

/** GSSENCRequest: the smallest message a PostgreSQL server answers before any authentication. */
const GSSENC_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]);

/**
 * Checks that the server at `route` still accepts connections, without logging in:
 * a TCP connect and a GSSENCRequest, to which the server answers one byte (or closes), then the
 * socket is closed. No authentication, no catalog access, nothing logged by the server. This
 * catches a server whose postmaster is frozen while the side connection's backend still answers.
 * Rejects when `signal` aborts first or the connect fails.
 */
function acceptsConnections(
  route: { host?: string | undefined; port?: number | undefined },
  signal: AbortSignal,
): Promise<void> {
  const { host, port } = route;
  if (host === undefined || port === undefined) return Promise.resolve();
  signal.throwIfAborted();
  return new Promise<void>((resolve, reject) => {
    const socket = host.startsWith('/')
      ? netConnect({ path: `${host}/.s.PGSQL.${port}` })
      : netConnect({ host, port });
    const done = (error?: Error): void => {
      unsubscribe();
      socket.destroy();
      if (error === undefined) resolve();
      else reject(error);
    };
    const unsubscribe = onAbort(signal, () => done(signal.reason as Error));
    // A check left pending on a dead route must not keep the process alive.
    socket.unref();
    socket.once('connect', () => socket.write(GSSENC_REQUEST));
    socket.once('data', () => done());
    socket.once('end', () => done());
    socket.once('error', (error) => done(error));
  });
}

/** Counts an adapter query in flight on `client` while `promise` is pending. */
function inFlight<T>(client: PgClient, promise: Promise<T>): Promise<T> {
  const state = clients.get(client);
  if (state === undefined) return promise;
  state.inFlight++;
  const done = (): void => {
    state.inFlight--;
  };
  promise.then(done, done);
  return promise;
}

/**
 * Runs one query on a guarded handle, honouring `ctx`:
 *
 * - When `ctx.signal` aborts, it rejects at once with `signal.reason`. The query itself is left
 *   to the server-side cancel (the guard's `cancel` hook); whatever it ends with later is
 *   swallowed, and the client stays usable (`pg` queues the next query behind it).
 * - It reports progress with `ctx.heartbeat()` whenever bytes arrive from the server (a large
 *   result streaming in) and when the query completes.
 * - While it runs, the busy-handle probe knows a query is in flight on the handle.
 *
 * `text` is sent with the simple protocol when there are no `values` (several statements may
 * then run in one call, and `pg` resolves to the last one's result... typed here as one result;
 * use {@link pgTransaction} for several statements), with the extended protocol otherwise. An
 * empty query (`''`, `'  '`, `'-- c'`, `';'`) resolves to an empty result (`command` null, no rows).
 */
export async function pgQuery<R extends object = PgRow>(
  handle: PgHandle,
  ctx: { signal: AbortSignal; heartbeat(): void },
  text: string | { text: string; values?: unknown[]; queryMode?: 'extended' },
  values?: unknown[],
): Promise<PgQueryResult<R>> {
  const { signal } = ctx;
  signal.throwIfAborted();
  const client = handle.client as RawClient;
  const beat = (): void => ctx.heartbeat();
  const state = clients.get(client);
  const stream = client.connection?.stream;
  // One 'data' listener per client, shared by the queries in flight on it.
  if (state !== undefined && stream !== undefined) {
    if (state.beats.size === 0) stream.on('data', state.onData);
    state.beats.add(beat);
  }
  try {
    const result = await raceSignal(inFlight(client, client.query(text, values)), signal);
    beat();
    return result as PgQueryResult<R>;
  } finally {
    if (state !== undefined && stream !== undefined) {
      state.beats.delete(beat);
      if (state.beats.size === 0) stream.removeListener('data', state.onData);
    }
  }
}

/** Ends the transaction whatever happened; a dead connection is the guard's business. */
async function rollback(handle: PgHandle): Promise<void> {
  try {
    await inFlight(handle.client, handle.client.query('ROLLBACK'));
  } catch {
    // The connection failed: the op's own error says so and `isFatal` retires the handle.
  }
}

/**
 * Runs ONE statement inside `BEGIN READ ONLY ... ROLLBACK`, so the server itself refuses writes
 * (SQLSTATE 25006). It is sent with the extended protocol, which takes exactly one statement: the
 * server rejects `COMMIT; DELETE ...` ("cannot insert multiple commands into a prepared
 * statement"), so the statement cannot leave the read-only transaction either.
 *
 * What it does not undo: session state that outlives a transaction. `SELECT
 * pg_advisory_lock(1)` keeps the lock held, and so on. Give the guard a `reset` hook (sessions)
 * when untrusted SQL runs through it.
 */
export async function pgReadOnly<R extends object = PgRow>(
  handle: PgHandle,
  ctx: { signal: AbortSignal; heartbeat(): void },
  text: string,
  values?: unknown[],
): Promise<PgQueryResult<R>> {
  ctx.signal.throwIfAborted();
  // BEGIN inside the try: whatever happens next, the ROLLBACK is queued behind it, so the
  // handle never goes back to the pool inside a transaction.
  try {
    await pgQuery(handle, ctx, 'BEGIN READ ONLY');
    return await pgQuery<R>(handle, ctx, { text, values: values ?? [], queryMode: 'extended' });
  } finally {
    await rollback(handle);
  }
}

/** One statement of {@link pgTransaction}: SQL text, or text with its parameters. */
export type PgStatement = string | { text: string; values?: unknown[] };

/**
 * Fence of {@link pgTransaction}: a temporary table whose deferred unique constraint is violated
 * by the two rows the helper inserts at `BEGIN` and deletes just before its own `COMMIT`. A
 * statement that commits (`COMMIT`, `END`, `PREPARE TRANSACTION`, `COMMIT AND CHAIN`) makes the
 * server check the constraint, fail the commit and roll everything back.
 */
const FENCE_CONSTRAINT = 'engine_guard_tx_fence_k';
const FENCE_SETUP_SQL =
  'CREATE TEMPORARY TABLE IF NOT EXISTS engine_guard_tx_fence' +
  ` (k int CONSTRAINT ${FENCE_CONSTRAINT} UNIQUE DEFERRABLE INITIALLY DEFERRED)`;
/** The current transaction's id (the fence's insert assigned one). */
const XID_SQL = 'SELECT txid_current_if_assigned()::text AS xid';
const FENCE_ARM_SQL = 'INSERT INTO pg_temp.engine_guard_tx_fence VALUES (1), (1)';
const FENCE_DISARM_SQL = 'DELETE FROM pg_temp.engine_guard_tx_fence';

/**
 * Runs `statements` all-or-nothing in one transaction, one statement per call with the extended
 * protocol (the server refuses a call holding several statements), and returns their results.
 * A script (one string) is first cut at its top-level semicolons by a small lexer (quotes,
 * dollar quotes and comments skipped); a piece it cuts wrongly is refused by the server, never
 * run, since each piece goes alone through the extended protocol.
 *
 * A statement that ends or escapes the transaction is refused, decided by what the server
 * reports, never by reading the SQL: after each statement the client's transaction status
 * (from the server's ReadyForQuery message) must still be "in a transaction"; if it is not
 * (`ROLLBACK`, `ABORT`), nothing after it runs and {@link PgTransactionEndedError} is thrown. A
 * statement that commits (`COMMIT`, `END`, `PREPARE TRANSACTION`) hits the helper's fence, a
 * deferred constraint that the server checks on any commit but the helper's own, so that
 * commit fails and rolls everything back (same error). A statement that ends the transaction
 * and opens another (`ROLLBACK AND CHAIN`) is seen by the transaction id changing. Any other
 * error rolls back and is rethrown as is. Each statement costs one extra round trip (the id
 * check).
 *
 * Not caught: a statement that removes the fence itself (`DISCARD TEMP`, dropping or emptying
 * `pg_temp.engine_guard_tx_fence`) followed by a `COMMIT`; the helper still reports the
 * {@link PgTransactionEndedError}, but what came before that commit stays committed.
 *
 * Needs PostgreSQL (temporary tables with deferrable constraints) and `pg` >= 8.13 (transaction
 * status). Session state (advisory locks, `SET` without `LOCAL`, prepared statements) is not
 * transactional and is not undone: that is the guard's `reset` (sessions).
 */
export async function pgTransaction(
  handle: PgHandle,
  ctx: { signal: AbortSignal; heartbeat(): void },
  statements: string | readonly PgStatement[],
): Promise<PgQueryResult[]> {
  if (typeof statements === 'string') statements = splitStatements(statements);
  if (!Array.isArray(statements)) {
    throw new TypeError(
      'The "statements" argument must be a SQL script or an array of SQL strings or { text, values }',
    );
  }
  const client = handle.client;
  if (typeof client.getTransactionStatus !== 'function') {
    throw new TypeError('pgTransaction needs a pg client with getTransactionStatus() (pg >= 8.13)');
  }
  const status = (): string | null | undefined => client.getTransactionStatus?.();
  /** The transaction's id: a statement that ends it and starts another (`AND CHAIN`) changes it. */
  const xid = async (): Promise<string | null> =>
    ((await pgQuery(handle, ctx, XID_SQL)).rows[0]?.xid as string | null | undefined) ?? null;
  const results: PgQueryResult[] = [];
  ctx.signal.throwIfAborted();
  let committed = false;
  try {
    await pgQuery(handle, ctx, 'BEGIN');
    await pgQuery(handle, ctx, FENCE_SETUP_SQL);
    await pgQuery(handle, ctx, FENCE_ARM_SQL);
    const ours = await xid();
    for (const [index, statement] of statements.entries()) {
      const config =
        typeof statement === 'string'
          ? { text: statement, values: [], queryMode: 'extended' as const }
          : {
              text: statement.text,
              values: statement.values ?? [],
              queryMode: 'extended' as const,
            };
      try {
        results.push(await pgQuery(handle, ctx, config));
      } catch (error) {
        if (await endedBy(handle, ctx, error)) {
          throw new PgTransactionEndedError(index, { cause: error });
        }
        throw error;
      }
      if (status() !== 'T' || (await xid()) !== ours) throw new PgTransactionEndedError(index);
    }
    await pgQuery(handle, ctx, FENCE_DISARM_SQL);
    await pgQuery(handle, ctx, 'COMMIT');
    committed = true;
    return results;
  } finally {
    // Queued behind the statement: after a cancel it runs once the server gave up on it.
    if (!committed) await rollback(handle);
  }
}

/**
 * After a statement of {@link pgTransaction} failed: did it end the transaction? Either its
 * commit hit the fence (the server names the constraint), or the server is now outside any
 * transaction (asked with a round trip: `pg` rejects a failed query before the server's
 * ReadyForQuery, so the status it holds at that moment is stale).
 */
async function endedBy(
  handle: PgHandle,
  ctx: { signal: AbortSignal; heartbeat(): void },
  error: unknown,
): Promise<boolean> {
  if ((error as { constraint?: unknown } | null)?.constraint === FENCE_CONSTRAINT) return true;
  if (ctx.signal.aborted || isFatalPgError(error)) return false;
  try {
    // Fails (25P02) inside an aborted transaction: that is the "still inside" answer.
    await pgQuery(handle, ctx, 'SELECT 1');
  } catch {
    return false;
  }
  return handle.client.getTransactionStatus?.() === 'I';
}

/**
 * Builds the {@link EngineGuardOptions} for PostgreSQL (and any PostgreSQL-wire engine):
 * `create`, `destroy`, `isAlive`, `probe`, `cancel`, `isFatal`, and the adapter's liveness
 * defaults ({@link PG_LIVENESS}). `overrides` go on top (pool, liveness, timeouts, or your own
 * hooks); an override that is `undefined` leaves the default in place, and a `liveness` object
 * is merged over the defaults.
 *
 * Each call keeps one side connection for the busy-handle probes and cancels of the handles it
 * creates (so give each guard its own call).
 */
export function pgGuardOptions(
  adapter: PgAdapterOptions,
  overrides: Partial<EngineGuardOptions<PgHandle>> = {},
): EngineGuardOptions<PgHandle> {
  if (adapter === null || typeof adapter !== 'object') {
    throw new TypeError('The "adapter" argument must be an object with a "config"');
  }
  if (adapter.config === null || typeof adapter.config !== 'object') {
    throw new TypeError('The "config" option must be a pg client config object');
  }
  if (overrides === null || typeof overrides !== 'object') {
    throw new TypeError('The "overrides" argument must be an object');
  }
  const base = adapter.config;
  const keepAlive = adapter.keepAlive ?? base.keepAlive ?? true;
  const config: PgClientConfig = {
    ...base,
    keepAlive,
    keepAliveInitialDelayMillis: base.keepAliveInitialDelayMillis ?? KEEPALIVE_INITIAL_DELAY_MS,
  };
  const cancelTimeout = overrides.cancelTimeout ?? DEFAULT_CANCEL_TIMEOUT_MS;
  if (
    adapter.sideConfig !== undefined &&
    (adapter.sideConfig === null || typeof adapter.sideConfig !== 'object')
  ) {
    throw new TypeError('The "sideConfig" option must be a pg client config object');
  }
  const sideConfig = adapter.sideConfig ?? config;
  const side = new SideConnection(sideConfig);
  // Where the side connection goes, as `pg` resolves it (constructing a client does not connect).
  const sideRoute = new pg.Client(sideConfig as pg.ClientConfig) as unknown as RawClient;
  // One accept check at a time for all the busy handles of this guard, and a success reused for
  // ACCEPT_CHECK_REUSE_MS: each check forks a server process, each state query does not.
  let accept: { promise: Promise<void>; settledAt: number | undefined } | undefined;
  const acceptCheck = (): Promise<void> => {
    const now = performance.now();
    if (accept !== undefined && (accept.settledAt ?? now) > now - ACCEPT_CHECK_REUSE_MS) {
      return accept.promise;
    }
    const current = {
      promise: acceptsConnections(sideRoute, AbortSignal.timeout(SIDE_CONNECT_TIMEOUT_MS)),
      settledAt: undefined as number | undefined,
    };
    accept = current;
    current.promise.then(
      () => {
        current.settledAt = performance.now();
      },
      () => {
        if (accept === current) accept = undefined;
      },
    );
    return current.promise;
  };
  let handles = 0;

  const options: EngineGuardOptions<PgHandle> = {
    liveness: { ...PG_LIVENESS },

    async create({ signal }) {
      const client = await connect(config, signal);
      try {
        const { rows } = await raceSignal(
          client.query('SELECT pg_backend_pid() AS pid'),
          signal,
          () => destroySocket(client),
        );
        const pid = rows[0]?.pid;
        if (typeof pid !== 'number') throw new Error('pg_backend_pid() returned no pid');
        handles++;
        // Busy-handle probes need the side connection: open it now, not on a slow link's
        // first probe (where connecting could take most of the probe's timeout).
        if (options.probe === ownProbe) side.warm();
        return { client, pid };
      } catch (error) {
        destroySocket(client);
        throw error;
      }
    },

    async destroy(handle) {
      if (handles > 0) handles--;
      if (handles === 0) side.close();
      await closeClient(handle.client, END_GRACE_MS);
    },

    // A client whose socket already failed or ended (server restart) is dead: skip it.
    isAlive(handle) {
      return clients.get(handle.client)?.gone === undefined;
    },

    async probe(handle, { signal, op }) {
      const gone = clients.get(handle.client)?.gone;
      if (gone !== undefined) {
        throw new Error(`Connection of backend ${handle.pid} is gone: ${gone.message}`, {
          cause: gone,
        });
      }
      if (op === undefined) {
        // Idle: nothing else runs on the handle, ask it directly.
        await raceSignal(inFlight(handle.client, handle.client.query('SELECT 1')), signal);
        return;
      }
      // No query in flight: the op is working in the application (between two statements of a
      // transaction, say), and the server is waiting for it. That is no stall.
      if (!queryInFlight(handle.client)) return;
      // A query is in flight: ask from the side whether the server is still working on it.
      const started = performance.now();
      const [rows] = await Promise.all([
        side.query<{ state: string | null; idle_ms: number | null }>(signal, BACKEND_STATE_SQL, [
          handle.pid,
        ]),
        raceSignal(acceptCheck(), signal),
      ]);
      const row = rows[0];
      if (row === undefined) throw new Error(`Backend ${handle.pid} is gone`);
      const { state, idle_ms: idleMs } = row;
      if (state === 'active' || state === 'fastpath function call') return;
      // The query finished while this probe was under way (its answer may still be on its way
      // over a slow link), or it is no longer in flight: not a failure. If the answer is lost,
      // the next probe sees it.
      if (!queryInFlight(handle.client)) return;
      if (idleMs !== null && idleMs <= performance.now() - started) return;
      throw new Error(
        `Backend ${handle.pid} is ${state ?? 'in an unknown state'}${
          idleMs === null ? '' : ` for ${Math.round(idleMs)} ms`
        } while a query of op ${op.id} is in flight: its answer was lost`,
      );
    },

    async cancel(handle) {
      const controller = new AbortController();
      const timer = setTimeout(
        () => controller.abort(new Error(`cancel timed out after ${cancelTimeout} ms`)),
        cancelTimeout,
      );
      timer.unref();
      try {
        const rows = await side.query<{ cancelled: boolean }>(
          controller.signal,
          'SELECT pg_cancel_backend($1) AS cancelled',
          [handle.pid],
        );
        return rows[0]?.cancelled === true;
      } finally {
        clearTimeout(timer);
      }
    },

    isFatal: isFatalPgError,
  };

  const ownProbe = options.probe;
  for (const [key, value] of Object.entries(overrides)) {
    if (value === undefined) continue;
    if (key === 'liveness' && value !== false && typeof value === 'object' && value !== null) {
      options.liveness = { ...PG_LIVENESS, ...definedFields(value as LivenessOptions) };
      continue;
    }
    (options as unknown as Record<string, unknown>)[key] = value;
  }
  return options;
}

/** `value` without its `undefined` fields. */
function definedFields<T extends object>(value: T): Partial<T> {
  const out: Partial<T> = {};
  for (const [key, field] of Object.entries(value)) {
    if (field !== undefined) (out as Record<string, unknown>)[key] = field;
  }
  return out;
}
