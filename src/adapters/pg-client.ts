/**
 * The `pg` clients the adapter creates: connecting and closing them bounded, tracking whether
 * they are gone and whether a query is in flight, and {@link pgQuery}.
 */
import pg from 'pg';
import type { PgClient, PgClientConfig, PgHandle, PgQueryResult, PgRow } from './pg-types.js';

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
  /** {@link pgQuery} calls on it that are not done with it: waiting for their turn, or sent. */
  queued: number;
  /** Settles once the last {@link pgQuery} call queued on it is done with it. */
  tail: Promise<void>;
  /** Settles once the last {@link pgQuery} call queued on it has settled (for its caller). */
  settledTail: Promise<void>;
  /** Told when a query ends, a {@link pgQuery} call is done, or the connection goes. */
  readonly changes: Set<() => void>;
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
    queued: 0,
    tail: Promise.resolve(),
    settledTail: Promise.resolve(),
    changes: new Set(),
  };
  clients.set(client, state);
  // Without an 'error' listener, a socket error on an idle client would crash the process.
  client.on('error', (error: Error) => {
    state.gone ??= error;
    changed(state);
  });
  client.on('end', () => {
    state.gone ??= new Error('Connection terminated');
    changed(state);
  });
  return state;
}

function changed(state: ClientState): void {
  for (const listener of state.changes) listener();
}

/**
 * Tells `state`'s listeners when a query ends on `client`. Registered once connected, after
 * `pg`'s own listener: by then `pg` has sent the next query it had queued, if any.
 */
function watchEnds(client: RawClient, state: ClientState): void {
  client.connection?.on?.('readyForQuery', () => changed(state));
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

export function noop(): void {}

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
export function onAbort(signal: AbortSignal, callback: () => void): () => void {
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
export function raceSignal<T>(
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
export async function connect(
  config: PgClientConfig,
  signal: AbortSignal,
  unref = false,
): Promise<RawClient> {
  signal.throwIfAborted();
  const client = new pg.Client(config as pg.ClientConfig) as unknown as RawClient;
  const state = track(client);
  // The side connection must never keep the process alive, not even while it connects.
  if (unref) client.unref?.();
  try {
    await raceSignal(client.connect(), signal, () => destroySocket(client));
    syncAfterCopyIn(client);
    watchEnds(client, state);
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

/** One {@link pgQuery} call's place in its client's queue (see {@link takeTurn}). */
interface Turn {
  /** True when nothing was queued before it: it may send at once. */
  readonly now: boolean;
  /** Settles once every call queued before it is done with the client. */
  readonly ready: Promise<void>;
  /** Settles once the call queued just before it has settled for its caller. */
  readonly previous: Promise<void>;
  /** It settled for its caller: the next call may settle now. */
  settled(): void;
  /** It sent `query`: its turn ends when the query settles. */
  sent(query: Promise<unknown>): void;
  /** It is done: when it sent nothing, its turn ends once the calls before it are done. */
  leave(): void;
  /** What settles once every call queued behind it by now is done, or undefined when none is. */
  behind(): Promise<void> | undefined;
}

/**
 * Queues one {@link pgQuery} call on `state`'s client. The calls of a client send their queries
 * one at a time, in call order, each once the one before it settled: until then a query stays
 * with the adapter, not in `pg`'s own queue, so an abort withdraws it for sure. They also settle
 * in call order (a failed call waits for those behind it, see {@link pgQuery}; the first error
 * of a batch must still reach `Promise.all` first).
 */
function takeTurn(state: ClientState): Turn {
  const ready = state.tail;
  const previous = state.settledTail;
  let settled!: () => void;
  state.settledTail = new Promise<void>((resolve) => {
    settled = resolve;
  });
  const now = state.queued === 0;
  state.queued++;
  let sent = false;
  let finished = false;
  let settle!: () => void;
  const mine = new Promise<void>((resolve) => {
    settle = resolve;
  });
  state.tail = mine;
  const finish = (): void => {
    if (finished) return;
    finished = true;
    state.queued--;
    settle();
    changed(state);
  };
  return {
    now,
    ready,
    previous,
    settled,
    sent(query) {
      sent = true;
      query.then(finish, finish);
    },
    leave() {
      if (!sent) ready.then(finish, finish);
    },
    behind: () => (state.tail === mine ? undefined : state.tail),
  };
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
  const turn = state === undefined ? undefined : takeTurn(state);
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

/**
 * Cancels the query running on `handle`'s connection (with `cancel(pid)`), if any, and resolves
 * once nothing is queued or running there any more: the op's {@link pgQuery} calls withdraw the
 * queries they had not sent when its signal aborts, and what the op queued in `pg` itself (a
 * `ROLLBACK` in a `finally`, say) runs to its end. Resolves whether a cancel was sent and took.
 *
 * When `signal` aborts first, the socket is cut (so nothing still queued in `pg` can be sent
 * later: the handle is dead) and it rejects with the signal's reason.
 */
export async function cancelUntilDrained(
  handle: PgHandle,
  signal: AbortSignal,
  cancel: (pid: number) => Promise<boolean>,
): Promise<boolean> {
  const client = handle.client as RawClient;
  const state = clients.get(client);
  if (state === undefined) return cancel(handle.pid);
  const drained = (): boolean =>
    state.gone !== undefined || (state.queued === 0 && client.readyForQuery !== false);
  try {
    // Nothing runs: nothing to cancel, and a cancel sent anyway could hit the next op's query.
    const cancelled = drained() ? false : await raceSignal(cancel(handle.pid), signal);
    while (!drained()) await nextChange(state, signal);
    return cancelled;
  } catch (error) {
    destroySocket(client);
    throw error;
  }
}

/**
 * Settles at the next query end, {@link pgQuery} call done, or loss of the connection; rejects
 * with the signal's reason when `signal` aborts first.
 */
function nextChange(state: ClientState, signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const done = (): void => {
      state.changes.delete(done);
      unsubscribe();
      resolve();
    };
    const unsubscribe = onAbort(signal, () => {
      state.changes.delete(done);
      reject(signal.reason);
    });
    state.changes.add(done);
  });
}
