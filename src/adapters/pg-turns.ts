/**
 * The order of {@link pgQuery}'s queries on one `pg` client, and waiting until a client has
 * nothing queued or running (what the `cancel` hook of engine-guard/pg needs before the guard
 * gives an aborted op's leases and handle back).
 *
 * `pgQuery` hands a query to `pg` only once the one before it on the client settled: until then
 * it waits here, not in `pg`'s own queue (which pg 8 deprecates and pg 9 removes), so that an
 * abort withdraws it for sure.
 */
import { type AbortSource, onAbort, raceSignal, throwIfAborted } from './pg-signal.js';
import type { PgClient } from './pg-types.js';

/** What this module needs of a `pg.Client`. */
interface TurnClient {
  on(event: 'error', listener: (error: Error) => void): unknown;
  on(event: 'end', listener: () => void): unknown;
  /** `pg`'s own flag: false from the moment a query is sent until the server is ready again. */
  readyForQuery?: boolean;
  connection?: { on?(event: 'readyForQuery', listener: () => void): unknown };
}

/** The {@link pgQuery} calls of one client. */
interface Queue {
  /** Calls that are not done with the client: waiting for their turn, or sent. */
  queued: number;
  /** The last call queued (undefined before the first). */
  last: Turn | undefined;
  /** True once the connection failed or ended. */
  gone: boolean;
  /** Told when a query ends, a call is done, or the connection goes. */
  readonly changes: Set<() => void>;
}

const queues = new WeakMap<object, Queue>();

/**
 * Starts keeping the order of `client`'s {@link pgQuery} calls. Called once it is connected,
 * after `pg`'s own listeners: a query end seen here finds `pg`'s next query sent already.
 */
export function watchTurns(client: TurnClient): void {
  const queue: Queue = { queued: 0, last: undefined, gone: false, changes: new Set() };
  queues.set(client, queue);
  const gone = (): void => {
    queue.gone = true;
    changed(queue);
  };
  client.on('error', gone);
  client.on('end', gone);
  client.connection?.on?.('readyForQuery', () => changed(queue));
}

function changed(queue: Queue): void {
  for (const listener of queue.changes) listener();
}

/** A promise made only when someone waits for it (most calls have nobody behind them). */
class Moment {
  #done = false;
  #promise: Promise<void> | undefined = undefined;
  #resolve: (() => void) | undefined = undefined;

  get done(): boolean {
    return this.#done;
  }

  /** Settles once {@link Moment.reach} was called (at once if it was). */
  get promise(): Promise<void> {
    if (this.#promise === undefined) {
      this.#promise = this.#done
        ? Promise.resolve()
        : new Promise<void>((resolve) => {
            this.#resolve = resolve;
          });
    }
    return this.#promise;
  }

  reach(): void {
    if (this.#done) return;
    this.#done = true;
    this.#resolve?.();
  }
}

/**
 * One {@link pgQuery} call's place in its client's queue (see {@link takeTurn}). Its promises are
 * made only for a call that has to wait: a call with nothing queued before it (the usual case)
 * sends at once and makes none.
 */
export class Turn {
  readonly #queue: Queue;
  readonly #before: Turn | undefined;
  /** It is done with the client (its query settled, or it sent none and those before it are done). */
  readonly #finished = new Moment();
  /** It settled for its caller. */
  readonly #settled = new Moment();
  #sent = false;

  constructor(queue: Queue, before: Turn | undefined) {
    this.#queue = queue;
    this.#before = before;
  }

  /** True when nothing was queued before it: it may send at once. */
  get now(): boolean {
    return this.#before === undefined;
  }

  /** Settles once every call queued before it is done with the client. */
  get ready(): Promise<void> {
    const before = this.#before;
    return before === undefined ? Promise.resolve() : before.#finished.promise;
  }

  /** Settles once the call queued just before it has settled for its caller. */
  get previous(): Promise<void> {
    const before = this.#before;
    return before === undefined ? Promise.resolve() : before.#settled.promise;
  }

  /** It settled for its caller: the next call may settle now. */
  settled(): void {
    this.#settled.reach();
  }

  /** It sent its query: its turn ends when {@link Turn.finish} is called, once the query settled. */
  sent(): void {
    this.#sent = true;
  }

  /** Its query settled: its turn ends. */
  finish(): void {
    if (this.#finished.done) return;
    this.#finished.reach();
    const queue = this.#queue;
    queue.queued--;
    if (queue.last === this) queue.last = undefined;
    changed(queue);
  }

  /** It is done: when it sent nothing, its turn ends once the calls before it are done. */
  leave(): void {
    if (this.#sent) return;
    const before = this.#before;
    if (before === undefined || before.#finished.done) this.finish();
    else before.#finished.promise.then(() => this.finish());
  }

  /** What settles once every call queued behind it by now is done, or undefined when none is. */
  behind(): Promise<void> | undefined {
    const last = this.#queue.last;
    return last === undefined || last === this ? undefined : last.#finished.promise;
  }
}

/**
 * Queues one {@link pgQuery} call on `client` (undefined for a client this adapter did not
 * connect). The calls of a client send their queries
 * one at a time, in call order, each once the one before it settled: until then a query stays
 * with the adapter, not in `pg`'s own queue, so an abort withdraws it for sure. They also settle
 * in call order (a failed call waits for those behind it, see {@link pgQuery}; the first error
 * of a batch must still reach `Promise.all` first).
 */
export function takeTurn(client: PgClient): Turn | undefined {
  const queue = queues.get(client);
  if (queue === undefined) return undefined;
  // `last` is undefined once every call before it is done with the client.
  const turn = new Turn(queue, queue.last);
  queue.queued++;
  queue.last = turn;
  return turn;
}

/**
 * Cancels the query running on `client` (with `cancel()`), if any, and resolves once nothing is
 * queued or running there any more: the op's {@link pgQuery} calls withdraw the queries they had
 * not sent when its signal aborts, and what the op queued in `pg` itself (a `ROLLBACK` in a
 * `finally`, say) runs to its end. Resolves whether a cancel was sent and took; rejects with the
 * signal's reason when `signal` aborts first.
 */
export async function cancelUntilDrained(
  pgClient: PgClient,
  signal: AbortSignal,
  cancel: () => Promise<boolean>,
): Promise<boolean> {
  const client = pgClient as PgClient & TurnClient;
  const state = queues.get(client);
  if (state === undefined) return raceSignal(cancel(), signal);
  const drained = (): boolean =>
    state.gone || (state.queued === 0 && client.readyForQuery !== false);
  // A cancel is sent only while a query is on the wire. A call still waiting for its turn is
  // withdrawn by the abort; a cancel sent for it would find the backend idle, or running what
  // goes next on this client (the reset the previous op owed, sent alone while this op waited),
  // and fail that instead.
  const onWire = client.readyForQuery !== true;
  const cancelled = drained() || !onWire ? false : await raceSignal(cancel(), signal);
  while (!drained()) await nextChange(state, signal);
  return cancelled;
}

/**
 * Settles at the next query end, {@link pgQuery} call done, or loss of the connection; rejects
 * with the signal's reason when `signal` aborts first.
 */
function nextChange(state: Queue, signal: AbortSignal): Promise<void> {
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

/**
 * Waits until every call queued before `turn` is done with the client; rejects with the abort's
 * reason when `signal` aborts first, or aborted in the turn the one before settled (its query is
 * then never sent).
 */
export async function waitForTurn(turn: Turn | undefined, signal: AbortSource): Promise<void> {
  if (turn === undefined || turn.now) return;
  await raceSignal(turn.ready, signal);
  throwIfAborted(signal);
}
