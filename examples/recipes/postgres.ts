/**
 * PostgreSQL recipe for engine-guard: the hooks an {@link EngineGuard} needs to guard `pg`
 * clients talking to PostgreSQL, or to any server that speaks its wire protocol (HyperDB's
 * `hyperd`, for example).
 *
 * ```ts
 * const guard = new EngineGuard(pgGuardOptions({ config: { host, port, user, database } }, { pool: 4 }));
 * const { rows } = await guard.read((pg, ctx) => pgQuery(pg, ctx, 'select * from t where id = $1', [id]));
 * ```
 *
 * - `create` opens one `pg.Client` (TCP keepalive on), bounded by the attempt's signal, and
 *   reads its backend pid.
 * - `destroy` is forceful: a polite `end()` gets a short grace, then the socket is destroyed
 *   (a half-open peer never answers `end()`). It never throws.
 * - `probe` on an idle handle runs `SELECT 1` on it. On a busy handle it must not queue behind
 *   the running query, so it asks from the side: a short-lived side connection checks that the
 *   op's backend is still `active` in `pg_stat_activity`. The side connection uses the settings
 *   the handle was created with, so it takes the same route (a dead route fails the probe).
 * - `cancel` runs `pg_cancel_backend(pid)` over a short-lived side connection.
 * - `isFatal` is {@link isFatalPgError}: connection-level errors retire the handle.
 *
 * Run queries inside guarded ops with {@link pgQuery}: it honours `ctx.signal` and reports
 * progress (`ctx.heartbeat()`) whenever bytes arrive from the server and when a query completes.
 *
 * @module
 */
import pg from 'pg';
import type { EngineGuardOptions } from '../../src/index.js';

/** One guarded engine handle: a connected client and the server process serving it. */
export interface PgHandle {
  /** The connected client. Use it only inside a guarded op (through {@link pgQuery}). */
  client: pg.Client;
  /** `pg_backend_pid()` of this connection: the backend that runs its queries. */
  pid: number;
}

/** Options of {@link pgGuardOptions}. */
export interface PgRecipeOptions {
  /**
   * Connection settings, used for the handles and for the short-lived side connections of
   * `probe` and `cancel`.
   */
  config: pg.ClientConfig;
  /**
   * TCP keepalive on the handles' sockets. Default true (with a first keepalive probe after
   * 10 s of silence unless `config.keepAliveInitialDelayMillis` says otherwise).
   */
  keepAlive?: boolean;
}

/** How long `destroy` (and a side connection's close) lets `end()` try before cutting the socket. */
const END_GRACE_MS = 500;
/** First TCP keepalive probe after this much silence, unless the config sets its own. */
const KEEPALIVE_INITIAL_DELAY_MS = 10_000;
/** Bound of one `cancel` when the guard's `cancelTimeout` is not given in the overrides. */
const DEFAULT_CANCEL_TIMEOUT_MS = 5_000;

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

/** What the recipe remembers about a client it created. */
interface ClientState {
  /** Settings it was created with: side connections for its probes and cancels use them too. */
  readonly config: pg.ClientConfig;
  /** Set once the connection failed or ended: the handle is dead. */
  gone: Error | undefined;
  /** Heartbeats of the queries in flight on it, called when bytes arrive. */
  readonly beats: Set<() => void>;
  readonly onData: () => void;
}

const clients = new WeakMap<pg.Client, ClientState>();

function track(client: pg.Client, config: pg.ClientConfig): ClientState {
  const beats = new Set<() => void>();
  const state: ClientState = {
    config,
    gone: undefined,
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

function noop(): void {}

/** Cuts the client's socket at once. Never throws. */
function destroySocket(client: pg.Client): void {
  try {
    client.connection?.stream?.destroy();
  } catch {
    // already gone
  }
}

/**
 * Ends a client: a polite `end()` (Terminate message, FIN) for at most `graceMs`, then the
 * socket is destroyed, since a half-open or frozen peer never completes the close. Never throws.
 */
async function closeClient(client: pg.Client, graceMs: number): Promise<void> {
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
async function connect(config: pg.ClientConfig, signal: AbortSignal): Promise<pg.Client> {
  signal.throwIfAborted();
  const client = new pg.Client(config);
  track(client, config);
  try {
    await raceSignal(client.connect(), signal, () => destroySocket(client));
    return client;
  } catch (error) {
    destroySocket(client);
    throw error;
  }
}

/**
 * One query on a short-lived side connection, all of it bounded by `signal`. The connection is
 * closed in the background afterwards (bounded too).
 */
async function sideQuery<R extends pg.QueryResultRow>(
  config: pg.ClientConfig,
  signal: AbortSignal,
  text: string,
  values: unknown[],
): Promise<R[]> {
  const client = await connect(config, signal);
  try {
    const result = await raceSignal(client.query<R>(text, values), signal, () =>
      destroySocket(client),
    );
    return result.rows;
  } finally {
    void closeClient(client, END_GRACE_MS);
  }
}

/** Settings of the side connections for `handle`: those it was created with. */
function routeOf(handle: PgHandle, fallback: pg.ClientConfig): pg.ClientConfig {
  return clients.get(handle.client)?.config ?? fallback;
}

/**
 * Runs one query on a guarded handle, honouring `ctx`:
 *
 * - When `ctx.signal` aborts, it rejects at once with `signal.reason`. The query itself is left
 *   to the server-side cancel (the guard's `cancel` hook); whatever it ends with later is
 *   swallowed, and the client stays usable (`pg` queues the next query behind it).
 * - It reports progress with `ctx.heartbeat()` whenever bytes arrive from the server (a large
 *   result streaming in) and when the query completes.
 */
export async function pgQuery<R extends pg.QueryResultRow = pg.QueryResultRow>(
  handle: PgHandle,
  ctx: { signal: AbortSignal; heartbeat(): void },
  text: string,
  values?: unknown[],
): Promise<pg.QueryResult<R>> {
  const { signal } = ctx;
  signal.throwIfAborted();
  const { client } = handle;
  const beat = (): void => ctx.heartbeat();
  const state = clients.get(client);
  const stream = client.connection?.stream;
  // One 'data' listener per client, shared by the queries in flight on it.
  if (state !== undefined && stream !== undefined) {
    if (state.beats.size === 0) stream.on('data', state.onData);
    state.beats.add(beat);
  }
  try {
    const result = await raceSignal(client.query<R>(text, values), signal);
    beat();
    return result;
  } finally {
    if (state !== undefined && stream !== undefined) {
      state.beats.delete(beat);
      if (state.beats.size === 0) stream.off('data', state.onData);
    }
  }
}

/**
 * Builds the {@link EngineGuardOptions} for PostgreSQL (and any PostgreSQL-wire engine):
 * `create`, `destroy`, `probe`, `cancel` and `isFatal`. `overrides` go on top (pool, liveness,
 * timeouts, or your own hooks); its `undefined` values are ignored.
 */
export function pgGuardOptions(
  recipe: PgRecipeOptions,
  overrides: Partial<EngineGuardOptions<PgHandle>> = {},
): EngineGuardOptions<PgHandle> {
  if (recipe === null || typeof recipe !== 'object') {
    throw new TypeError('The "recipe" argument must be an object with a "config"');
  }
  if (recipe.config === null || typeof recipe.config !== 'object') {
    throw new TypeError('The "recipe.config" option must be a pg.ClientConfig object');
  }
  const base = recipe.config;
  const keepAlive = recipe.keepAlive ?? base.keepAlive ?? true;
  const config: pg.ClientConfig = {
    ...base,
    keepAlive,
    keepAliveInitialDelayMillis: base.keepAliveInitialDelayMillis ?? KEEPALIVE_INITIAL_DELAY_MS,
  };
  const cancelTimeout = overrides.cancelTimeout ?? DEFAULT_CANCEL_TIMEOUT_MS;

  const options: EngineGuardOptions<PgHandle> = {
    async create({ signal }) {
      const client = await connect(config, signal);
      try {
        const { rows } = await raceSignal(
          client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid'),
          signal,
          () => destroySocket(client),
        );
        const pid = rows[0]?.pid;
        if (typeof pid !== 'number') throw new Error('pg_backend_pid() returned no pid');
        return { client, pid };
      } catch (error) {
        destroySocket(client);
        throw error;
      }
    },

    async destroy(handle) {
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
        await raceSignal(handle.client.query('SELECT 1'), signal);
        return;
      }
      // Busy: the handle is running the op's query; ask from the side whether the server is
      // still working on it.
      const started = performance.now();
      const rows = await sideQuery<{ state: string | null; idle_ms: number | null }>(
        routeOf(handle, config),
        signal,
        BACKEND_STATE_SQL,
        [handle.pid],
      );
      if (rows.length === 0) throw new Error(`Backend ${handle.pid} is gone`);
      const { state, idle_ms: idleMs } = rows[0] as {
        state: string | null;
        idle_ms: number | null;
      };
      if (state === 'active' || state === 'fastpath function call') return;
      // It went idle while this probe was under way: the op's answer may still be on its way
      // over a slow link. Not a failure; if the answer is lost, the next probe sees it.
      if (idleMs !== null && idleMs <= performance.now() - started) return;
      throw new Error(
        `Backend ${handle.pid} is ${state ?? 'in an unknown state'}${
          idleMs === null ? '' : ` for ${Math.round(idleMs)} ms`
        }, not working on op ${op.id}`,
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
        const rows = await sideQuery<{ cancelled: boolean }>(
          routeOf(handle, config),
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

  for (const [key, value] of Object.entries(overrides)) {
    if (value !== undefined) (options as unknown as Record<string, unknown>)[key] = value;
  }
  return options;
}
