/**
 * The `pg` clients the adapter creates: connecting and closing them bounded, tracking whether
 * they are gone and whether a query is in flight (what `pgQuery`, in pg-query.ts, and the
 * busy-handle probe read).
 */
import pg from 'pg';
import { noop, raceSignal } from './pg-signal.js';
import { watchTurns } from './pg-turns.js';
import type { PgClient, PgClientConfig } from './pg-types.js';

export { noop, onAbort, raceSignal } from './pg-signal.js';

/** How long `destroy` (and a side connection's close) lets `end()` try before cutting the socket. */
export const END_GRACE_MS = 500;

/** The `pg` client as the adapter drives it (its internals are reached only through this). */
export interface RawClient extends PgClient {
  connect(): Promise<void>;
  on(event: 'error', listener: (error: Error) => void): unknown;
  on(event: 'end', listener: () => void): unknown;
  /** `pg`'s own flag: false from the moment a query is sent until the server is ready again. */
  readyForQuery?: boolean;
  /** Where it connects (resolved by `pg` from the config or connection string). */
  host?: string;
  port?: number;
  unref?(): void;
  connection?: {
    stream?: NodeJS.ReadableStream & { destroy(): void };
    on?(event: 'copyInResponse' | 'readyForQuery', listener: () => void): unknown;
    /** `pg`'s cache of the named statements it parsed (or sent for parsing) on this connection. */
    parsedStatements?: Record<string, string>;
    submittedNamedStatements?: Record<string, string>;
    sync?(): void;
  };
  /**
   * `pg`'s query in progress; `requiresPreparation()` is true for the extended protocol. The
   * internal accessor, not the `activeQuery` getter: that one is deprecated (a
   * DeprecationWarning in users' logs) and goes away in pg 9.
   */
  _getActiveQuery?(): { requiresPreparation?(): boolean } | null | undefined;
}

/** What the adapter remembers about a client it created. */
export interface ClientState {
  /** Set once the connection failed or ended: the handle is dead. */
  gone: Error | undefined;
  /** Queries the adapter's helpers sent on it that have not settled yet. */
  inFlight: number;
  /** `performance.now()` when the adapter last sent a query on it (-Infinity before any). */
  sentAt: number;
  /**
   * Heartbeats of the queries in flight on it (how many of its queries use each), called when
   * bytes arrive: one `data` listener for the client's life, not one added and removed per query.
   */
  readonly beats: Map<{ heartbeat(): void }, number>;
}

export const clients = new WeakMap<PgClient, ClientState>();

function track(client: RawClient): ClientState {
  const state: ClientState = {
    gone: undefined,
    inFlight: 0,
    sentAt: Number.NEGATIVE_INFINITY,
    beats: new Map(),
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
export function queryInFlight(client: PgClient): boolean {
  const state = clients.get(client);
  if (state !== undefined && state.inFlight > 0) return true;
  return (client as RawClient).readyForQuery === false;
}

/**
 * Cuts the client's socket at once, and marks the client gone at once: `pg` reports the end a
 * tick or more later, and until then a handle whose socket was cut (a reset sent alone that
 * failed, say) must not be called clean and handed to the next caller. Never throws.
 */
export function destroySocket(client: PgClient): void {
  const state = clients.get(client);
  if (state !== undefined)
    state.gone ??= new Error('Connection terminated by engine-guard/pg: its socket was cut');
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
export async function closeClient(client: PgClient, graceMs: number): Promise<void> {
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

/** Connects a new client, bounded by `signal`; on failure or abort, its socket is destroyed. */
export async function connect(
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
    syncAfterCopyIn(client);
    // After pg's own listeners: a query end seen there finds pg's next query sent already.
    watchTurns(client);
    const { beats } = clients.get(client)!;
    client.connection?.stream?.on('data', () => {
      if (beats.size > 0) for (const beating of beats.keys()) beating.heartbeat();
    });
    return client;
  } catch (error) {
    destroySocket(client);
    throw error;
  }
}

/**
 * `COPY ... FROM STDIN` sent with the extended protocol would wedge the connection for ever:
 * `pg` answers the server's CopyInResponse with a CopyFail (it has no data to send), and the
 * server then skips every message until a Sync, while the Sync `pg` sent with the query was
 * ignored during the copy. Sending that Sync (after `pg`'s own listener sent the CopyFail) lets
 * the query fail with the server's error and the connection serve the next one.
 */
function syncAfterCopyIn(client: RawClient): void {
  const connection = client.connection;
  connection?.on?.('copyInResponse', () => {
    if (client._getActiveQuery?.()?.requiresPreparation?.() === true) connection.sync?.();
  });
}

/**
 * SQL text travels as a C string in the protocol: a NUL in it makes the server report a protocol
 * violation and hang up, costing the connection. Refused before anything is sent.
 * @throws RangeError when `sql` holds a NUL character.
 */
export function refuseNul(sql: string): void {
  if (typeof sql === 'string' && sql.includes('\u0000')) {
    throw new RangeError(
      'The SQL text holds a NUL character (U+0000), which PostgreSQL cannot receive; nothing was sent',
    );
  }
}

/** Counts an adapter query in flight on `client` while `promise` is pending. */
export function inFlight<T>(client: PgClient, promise: Promise<T>): Promise<T> {
  const state = clients.get(client);
  if (state === undefined) return promise;
  state.inFlight++;
  state.sentAt = performance.now();
  const done = (): void => {
    state.inFlight--;
  };
  promise.then(done, done);
  return promise;
}

/**
 * Makes `ctx.heartbeat()` be called whenever bytes arrive on `client` (a large result streaming
 * in) until the returned function is called: one map entry, on the client's one data listener.
 */
export function beatWhileRunning(client: PgClient, ctx: { heartbeat(): void }): () => void {
  const beats = clients.get(client)?.beats;
  if (beats === undefined) return noop;
  beats.set(ctx, (beats.get(ctx) ?? 0) + 1);
  return () => {
    const uses = beats.get(ctx) ?? 1;
    if (uses > 1) beats.set(ctx, uses - 1);
    else beats.delete(ctx);
  };
}
