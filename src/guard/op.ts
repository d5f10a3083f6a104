/**
 * The life of one guarded operation, as a state machine. Each state carries only its own data,
 * and {@link Op.to} is the one place the state changes: it refuses any move not drawn here.
 *
 * ```
 *            lease             handle            fn settles
 *  waiting ───────▶ leased ───────────▶ running ───────────────────────────────▶ done
 *     │ └──── lease and handle at once ───▲ │ │                                  ▲
 *     │                  │                  │ │ caller aborts                    │ fn settled and
 *     │ abort, timeout,  │                  │ └────────────▶ cancelling ─────────┘ cancel returned
 *     │ refused, close   │                  │                   │  │
 *     ▼                  ▼                  │ convicted         │  │ grace (cancelTimeout) ran out
 *   left ◀───────────────┘                  ▼                   │  ▼
 *                                        stalled                │ abandoned
 *                          running/cancelling ── close() ──▶ closed
 * ```
 *
 * - `waiting`: queued for the lock. `leased`: holds its lease, queued for a handle.
 * - `running`: holds lease and handle; `fn` runs; the watchdog watches it.
 * - `cancelling`: the caller aborted and was answered; the engine winds `fn` down. Lease and
 *   handle are kept until both `fn` settled and the `cancel` call returned (a cancel still in
 *   flight could hit the next op on the handle), or the grace timer retires the handle.
 * - Terminal: `left` (never ran), `done` (lease released, handle returned), `stalled`,
 *   `abandoned` and `closed` (lease revoked, handle retired; `fn` may still be running).
 */

import type { Fence } from '../coordination/coordinator.js';
import { ABORT_WATCH, type AbortWatch } from '../internal/abort-watch.js';
import type { Timer } from '../internal/promises.js';
import type { QueueNode, Withdrawable } from '../internal/waiter-queue.js';
import type { WatchedSubject } from '../liveness/watchdog.js';
import type { Lease } from '../lock/lease.js';
import type { Handle } from '../pool/handle-pool.js';
import type { OpContext, OpInfo, OpKind, StateAnswer } from './types.js';

interface Waiting {
  readonly tag: 'waiting';
}
interface Leased {
  readonly tag: 'leased';
  readonly lease: Lease;
}
interface Running<E> {
  readonly tag: 'running';
  readonly lease: Lease;
  readonly handle: Handle<E>;
}
interface Cancelling<E> {
  readonly tag: 'cancelling';
  readonly lease: Lease;
  readonly handle: Handle<E>;
  /** The `cancel` call (bounded by `cancelTimeout`), when one was sent (set once, just after the move). */
  cancel: Promise<unknown> | undefined;
  /** True while the `cancel` call has not returned. */
  cancelInFlight: boolean;
  /** How `fn` ended, once it did. */
  outcome: { ok: boolean; value: unknown } | undefined;
  /** Retires the handle when the engine does not wind the op down in time. */
  readonly grace: Timer;
}
interface Ended {
  readonly tag: 'left' | 'done' | 'stalled' | 'abandoned' | 'closed';
}

/** What an op runs: the caller's `fn`, or a wrapper of it (a cluster lease, a restore). */
export type OpFn<E> = (engine: E, ctx: OpContext) => unknown;

/** Where an op is in its life; see the module documentation. */
export type OpState<E> = Waiting | Leased | Running<E> | Cancelling<E> | Ended;
type Tag = OpState<unknown>['tag'];

const NEXT: { readonly [T in Tag]: readonly Tag[] } = {
  waiting: ['leased', 'running', 'left'],
  leased: ['running', 'left'],
  running: ['done', 'cancelling', 'stalled', 'closed'],
  cancelling: ['done', 'abandoned', 'closed'],
  left: [],
  done: [],
  stalled: [],
  abandoned: [],
  closed: [],
};

function noop(): void {}

export const WAITING: Waiting = { tag: 'waiting' };
export const LEFT: Ended = { tag: 'left' };
export const DONE: Ended = { tag: 'done' };
export const STALLED: Ended = { tag: 'stalled' };
export const ABANDONED: Ended = { tag: 'abandoned' };
export const CLOSED: Ended = { tag: 'closed' };

/** A bug in the guard: an op was asked to make a move its state machine does not allow. */
export class IllegalTransitionError extends Error {
  override readonly name = 'IllegalTransitionError';
  constructor(from: Tag, to: Tag, id: number) {
    super(`engine-guard internal error: op ${id} cannot go from "${from}" to "${to}"`);
  }
}

/**
 * What `fn` receives as `ctx`: the op's public face. The live op stays behind a private field,
 * so plain JavaScript cannot reach its lease, handle or promise callbacks.
 */
class RunContext<E> implements OpContext {
  readonly #op: Op<E>;
  readonly id: number;
  readonly kind: OpKind;
  readonly label: string | undefined;
  readonly generation: number;
  #heartbeat: (() => void) | undefined = undefined;

  constructor(op: Op<E>, generation: number) {
    this.#op = op;
    this.id = op.id;
    this.kind = op.kind;
    this.label = op.label;
    this.generation = generation;
  }

  // A getter returning a cached arrow, so `const { heartbeat } = ctx` works and ops that never
  // heartbeat allocate nothing for it.
  get heartbeat(): () => void {
    const op = this.#op;
    this.#heartbeat ??= () => {
      op.lastBeat = performance.now();
    };
    return this.#heartbeat;
  }

  get signal(): AbortSignal {
    return this.#op.signal;
  }

  /** The op's abort without its `AbortSignal` (see internal/abort-watch.ts). @internal */
  get [ABORT_WATCH](): AbortWatch {
    return this.#op;
  }

  get restored(): boolean {
    return this.#op.restored;
  }

  get fence(): Fence | undefined {
    return this.#op.fence;
  }

  get sessionId(): number | undefined {
    return this.#op.sessionId;
  }
}

/** One guarded operation: its state, its caller's promise, and the watchdog's bookkeeping. */
export class Op<E> implements WatchedSubject, QueueNode<Op<E>>, AbortWatch, Withdrawable {
  prev: Op<E> | null = null;
  next: Op<E> | null = null;
  queued = false;
  lastBeat = 0;
  probeFailures = 0;
  probing = false;
  nextProbeAt = 0;
  watched = false;
  /** Set once, when it starts running. */
  generation = 0;
  startedAt = 0;
  /** `performance.now()` when it was queued (0 when it never was). */
  enqueuedAt = 0;
  /** True once `fn` returned or its promise settled, whatever the op's state. */
  fnSettled = false;
  /** Fair-share group: the op's `key`, or its session. */
  key: unknown = undefined;
  /**
   * Its call was counted in `counters.ops` already: an earlier op of it started, and its session
   * took it back before its fn ran (the session pinned meanwhile).
   */
  counted = false;
  /** The session it runs in, if any. */
  sessionId: number | undefined = undefined;
  /** Its session's handle: the op runs on it instead of a shared one. */
  ownHandle: Handle<E> | undefined = undefined;
  /**
   * Set for the ops of a session that pins on state: told, after the `state` check that follows
   * the op, what the op left on its handle; returns the error its caller gets instead of its
   * result, or `undefined`. The guard answers the caller only then.
   */
  afterCheck:
    | ((
        op: Op<E>,
        handle: Handle<E>,
        answer: StateAnswer,
        ok: boolean,
        opError: unknown,
      ) => unknown)
    | undefined = undefined;
  /** Told when the op's handle dies (its session loses its state). */
  onHandleLost: ((handle: Handle<E>, cause: unknown) => void) | undefined = undefined;
  /** True when `restore` rebuilt its session's state just before it (see `ctx.restored`). */
  restored = false;
  /** ms it waited for its cluster lease, once it asked for one (for its trace). */
  clusterWaitMs: number | undefined = undefined;
  /** Fencing token of its cluster lease, while it holds one. */
  fence: Fence | undefined = undefined;
  /**
   * While it waits in the lock's queue (`waiting`) or the pool's (`leased`): takes its waiter out
   * of that queue (see `Admission.leave`).
   */
  withdraw: ((reason: unknown) => void) | undefined = undefined;
  /** Called once when `fn` settles (close() waits for it before destroying the handle). */
  onFnSettled: (() => void) | undefined = undefined;
  /**
   * The settlers of the caller's promise, until the caller is answered. Dropped then: they hold
   * the promise, and on Node 20/22 a promise holds the async context it was made in, which is
   * the op that launched this one when a job reschedules itself from inside `fn`. Kept, they
   * would link every op of such a job to the one before it, for as long as the job runs.
   */
  #resolve: ((value: unknown) => void) | undefined = undefined;
  #reject: ((reason: unknown) => void) | undefined = undefined;
  #state: OpState<E> = WAITING;
  #context: RunContext<E> | undefined = undefined;
  #controller: AbortController | undefined = undefined;
  #aborted = false;
  #reason: unknown = undefined;
  /** Told once the op aborts (see {@link Op.onAbort}). */
  #abortListeners: Set<() => void> | undefined = undefined;
  /** Told once the op has ended (see {@link Op.onEnd}). */
  #endListeners: (() => void)[] | undefined = undefined;

  constructor(
    readonly id: number,
    readonly kind: OpKind,
    readonly label: string | undefined,
    readonly callerSignal: AbortSignal | undefined,
    readonly waitForReady: boolean,
  ) {}

  /** Makes the caller's promise. Called once, when the op is launched. */
  answer(): Promise<unknown> {
    return new Promise<unknown>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
  }

  /** Answers the caller with `value`; a no-op once the caller was answered. */
  resolve(value: unknown): void {
    const resolve = this.#resolve;
    this.#resolve = this.#reject = undefined;
    resolve?.(value);
  }

  /** Answers the caller with `reason`; a no-op once the caller was answered. */
  reject(reason: unknown): void {
    const reject = this.#reject;
    this.#resolve = this.#reject = undefined;
    reject?.(reason);
  }

  get state(): OpState<E> {
    return this.#state;
  }

  /**
   * True once the op has ended, whichever way. Its async-context frame is then dead (see
   * internal/context.ts): a job that reschedules itself from inside `fn` does not keep every
   * earlier op reachable.
   */
  get released(): boolean {
    const tag = this.#state.tag;
    return tag !== 'waiting' && tag !== 'leased' && tag !== 'running' && tag !== 'cancelling';
  }

  /**
   * Moves to `next`.
   * @throws IllegalTransitionError when the state machine does not allow the move.
   */
  to(next: OpState<E>): void {
    const from = this.#state.tag;
    if (!NEXT[from].includes(next.tag)) throw new IllegalTransitionError(from, next.tag, this.id);
    this.#state = next;
    const listeners = this.#endListeners;
    if (listeners !== undefined && NEXT[next.tag].length === 0) {
      this.#endListeners = undefined;
      for (const listener of listeners) listener();
    }
  }

  /**
   * Calls `listener` once, in the move to a terminal state: the op no longer uses its handle (its
   * caller may have been answered earlier: a cancelled op winds down on its handle after that).
   * Returns false, without keeping it, when the op has ended already.
   */
  onEnd(listener: () => void): boolean {
    if (this.released) return false;
    if (this.#endListeners === undefined) this.#endListeners = [listener];
    else this.#endListeners.push(listener);
    return true;
  }

  /** The `ctx` handed to `fn` (and to nested calls that join this op). */
  get context(): OpContext {
    this.#context ??= new RunContext(this, this.generation);
    return this.#context;
  }

  /** Aborted on caller abort, stall or close. Made on first use: most ops never read it. */
  get signal(): AbortSignal {
    if (this.#controller === undefined) {
      this.#controller = new AbortController();
      if (this.#aborted) this.#controller.abort(this.#reason);
    }
    return this.#controller.signal;
  }

  get aborted(): boolean {
    return this.#aborted;
  }

  get abortReason(): unknown {
    return this.#reason;
  }

  abort(reason: unknown): void {
    if (this.#aborted) return;
    this.#aborted = true;
    this.#reason = reason;
    this.#controller?.abort(reason);
    const listeners = this.#abortListeners;
    this.#abortListeners = undefined;
    if (listeners !== undefined) for (const listener of listeners) listener();
  }

  /**
   * Calls `listener` once, when the op aborts, as `ctx.signal`'s listeners would be, without
   * making the signal (see internal/abort-watch.ts). Never called when the op aborted already.
   */
  onAbort(listener: () => void): () => void {
    if (this.#aborted) return noop;
    this.#abortListeners ??= new Set();
    const listeners = this.#abortListeners;
    // A function may be added twice: each add gets its own entry, as with separate listeners.
    const entry = listeners.has(listener) ? () => listener() : listener;
    listeners.add(entry);
    return () => {
      this.#abortListeners?.delete(entry);
    };
  }

  /** A plain snapshot, so hooks and events never hold the live op. */
  info(): OpInfo {
    return {
      id: this.id,
      kind: this.kind,
      label: this.label,
      generation: this.generation,
      startedAt: this.startedAt,
    };
  }
}
