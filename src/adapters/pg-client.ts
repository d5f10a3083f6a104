/**
 * The `pg` clients the adapter creates: connecting and closing them bounded, tracking whether
 * they are gone and whether a query is in flight, and {@link pgQuery}.
 */
import pg from 'pg';
import { noop, raceSignal } from './pg-signal.js';
import { takeTurn, watchTurns } from './pg-turns.js';
import type { PgClient, PgClientConfig, PgHandle, PgQueryResult, PgRow } from './pg-types.js';

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
interface ClientState {
  /** Set once the connection failed or ended: the handle is dead. */
  gone: Error | undefined;
  /** Queries the adapter's helpers sent on it that have not settled yet. */
  inFlight: number;
  /** `performance.now()` when the adapter last sent a query on it (-Infinity before any). */
  sentAt: number;
  /** Heartbeats of the queries in flight on it, called when bytes arrive. */
  readonly beats: Set<() => void>;
  readonly onData: () => void;
}

export const clients = new WeakMap<PgClient, ClientState>();

function track(client: RawClient): ClientState {
  const beats = new Set<() => void>();
  const state: ClientState = {
    gone: undefined,
    inFlight: 0,
    sentAt: Number.NEGATIVE_INFINITY,
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
export function queryInFlight(client: PgClient): boolean {
  const state = clients.get(client);
  if (state !== undefined && state.inFlight > 0) return true;
  return (client as RawClient).readyForQuery === false;
}

/** Cuts the client's socket at once. Never throws. */
export function destroySocket(client: PgClient): void {
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
 * Runs one query on a guarded handle, honouring `ctx`:
 *
 * - The queries of concurrent calls on one handle are sent one at a time, in call order (as
 *   `pg` would), but each is handed to `pg` only once the one before it settled.
 * - When `ctx.signal` aborts, it rejects at once with `signal.reason`. A query not sent yet is
 *   never sent. The one running is left to the server-side cancel (the guard's `cancel` hook,
 *   which also waits until nothing of the op runs on the handle any more); whatever it ends with
 *   later is swallowed.
 * - When its query fails, it rejects once the calls queued behind it on the handle are done:
 *   `Promise.all` of several calls then settles only after all of their statements ended, so the
 *   op never ends (and gives up its lease) while some still run. Calls settle in call order, so
 *   `Promise.all` still reports the first statement that failed (in a transaction, those after
 *   it fail too: "current transaction is aborted").
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
  refuseNul(typeof text === 'string' ? text : text.text);
  const client = handle.client as RawClient;
  const beat = (): void => ctx.heartbeat();
  const state = clients.get(client);
  const stream = client.connection?.stream;
  // One 'data' listener per client, shared by the queries in flight on it.
  if (state !== undefined && stream !== undefined) {
    if (state.beats.size === 0) stream.on('data', state.onData);
    state.beats.add(beat);
  }
  const turn = takeTurn(client);
  try {
    if (turn !== undefined && !turn.now) {
      await raceSignal(turn.ready, signal);
      // Aborted in the turn the one before settled: never sent.
      signal.throwIfAborted();
    }
    const query = client.query(text, values);
    turn?.sent(query);
    try {
      const result = await raceSignal(inFlight(client, query), signal);
      beat();
      if (turn !== undefined && !turn.now) await raceSignal(turn.previous, signal);
      return result as PgQueryResult<R>;
    } catch (error) {
      if (turn !== undefined && !signal.aborted) {
        const behind = turn.behind();
        if (behind !== undefined) await raceSignal(behind, signal);
        if (!turn.now) await raceSignal(turn.previous, signal);
      }
      throw error;
    }
  } finally {
    turn?.leave();
    turn?.settled();
    if (state !== undefined && stream !== undefined) {
      state.beats.delete(beat);
      if (state.beats.size === 0) stream.removeListener('data', state.onData);
    }
  }
}
