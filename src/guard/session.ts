/**
 * Sessions: one caller's ops, and the engine handle that keeps its connection state (see
 * `Session` in types.ts for the invariants users rely on).
 *
 * A session runs each call in one of two ways:
 * - **floating**: the call starts at once as an op of its own on a shared handle, beside the
 *   session's other calls and everyone's, under the session's fair-share key. This is how an
 *   unpinned `pin: 'on-state'` session runs: it holds no handle and no slot between ops.
 * - **serial**: calls queue here in call order and start one at a time, on the session's own
 *   handle. This is how a `pin: 'always'` session runs, and a `pin: 'on-state'` one while it is
 *   pinned, lost, or restoring its state.
 *
 * Pinning (`pin: 'on-state'`): after each op the guard's `state` check tells what the op left
 * on its handle, and {@link GuardSession.afterCheck} decides where the handle goes:
 * - a floating op left nothing: the handle goes back to the pool as it is;
 * - it left state: the session keeps that handle (a `maxSessions` slot) and is pinned. Its calls
 *   that have not started yet are taken back from the guard's queue, and so is one whose op had
 *   started but whose fn comes due only now (it waited for a cluster lease); they run serially
 *   on the pinned handle, so every op that starts after one that left state ended runs where the
 *   state is;
 * - it left state the session cannot keep (no free slot; or the session is pinned to, or lost,
 *   another handle): the guard resets the handle and that call rejects with
 *   `SessionStateDiscardedError`, naming what was discarded;
 * - an op on the pinned handle left it clean: the session unpins, the handle goes back to the
 *   pool, and the session's queued calls float again.
 *
 * This module owns the session's queue and state; the guard owns the lock, the pools, the check
 * and the op (through {@link SessionHost}).
 */
import { AsyncResource } from 'node:async_hooks';
import { opTracing } from '../diagnostics.js';
import {
  type BlockingOp,
  LockTimeoutError,
  SessionClosedError,
  SessionLostError,
  SessionStateDiscardedError,
  type StateDiscardReason,
} from '../errors.js';
import { attempt, noop, type Timer } from '../internal/promises.js';
import { validateFunction } from '../internal/validate.js';
import { type QueueNode, WaiterQueue } from '../internal/waiter-queue.js';
import type { Handle } from '../pool/handle-pool.js';
import type { Op } from './op.js';
import { refuse, traceCall } from './op-trace.js';
import { type OpSettings, parseOpOptions, withTrace } from './options.js';
import type {
  GuardEvents,
  HeldState,
  OpContext,
  OpKind,
  OpOptions,
  Session,
  SessionOptions,
  SessionPin,
  SessionState,
  SessionStatus,
  StateAnswer,
} from './types.js';

type SessionFn<E> = (engine: E, ctx: OpContext) => unknown;

const NO_STATE: readonly HeldState[] = Object.freeze([]);
const NO_BLOCKERS: readonly BlockingOp[] = Object.freeze([]);

/**
 * What a floating op's caller gets when the op is taken back because its session pinned
 * meanwhile (from the guard's queue, or when its fn comes due): never seen by users (the call
 * runs again, serially). The guard releases the handle of an op that ends with it as it is.
 */
export const REQUEUED = Symbol('requeued');

/**
 * Decides, after the `state` check of one of the session's ops, where the handle goes; returns
 * the error its caller gets instead of its result, or `undefined`. `opError` is what the op's fn
 * threw (`undefined` when it succeeded), kept in the error that replaces it.
 */
export type AfterCheck<E> = (
  op: Op<E>,
  handle: Handle<E>,
  answer: StateAnswer,
  ok: boolean,
  opError: unknown,
) => unknown;

/** One op the guard runs for the session. */
export interface SessionRun<E> {
  /** The op's outcome, for its caller (after its state check, when it has one). */
  result: Promise<unknown>;
  /** The op (undefined when none was made: the guard is closed). */
  op: Op<E> | undefined;
  /** Takes it out of the lock's queue if it has not started yet; its `result` rejects with `reason`. */
  leave(reason: unknown): void;
}

/** What a session needs from its guard. */
export interface SessionHost<E> {
  /** The guard (what traces name as the op's `source`). */
  readonly owner: object;
  readonly name: string | undefined;
  readonly opDefaults: OpSettings;
  /** The guard's `maxSessions` (for messages). */
  readonly maxSessions: number;
  /** A fresh op id (a call gets its id when it is made, and its op keeps it). */
  nextOpId(): number;
  /**
   * A call made inside a running op of this guard: joined when that op is one of `session`'s,
   * refused otherwise. `undefined` when the call is not nested.
   */
  nested(
    session: GuardSession<E>,
    kind: OpKind,
    fn: SessionFn<E>,
    signal: AbortSignal | undefined,
  ): Promise<unknown> | undefined;
  /** A session slot: a handle of the session's own (rejects with `SessionLimitError`). */
  acquire(
    signal: AbortSignal | undefined,
    timeout: number | undefined,
    reportedTimeout: number | undefined,
  ): Promise<Handle<E>>;
  /** False when the handle is known dead (the guard's `isAlive` hook). */
  isAlive(handle: Handle<E>): boolean;
  /**
   * Runs one op of the session through the guard's lock: on `handle` (the session's own), or on
   * a shared handle when `handle` is undefined (floating). `afterCheck`, when given, is called
   * with the `state` check's answer once the op let go of its handle.
   */
  run(
    session: GuardSession<E>,
    call: {
      readonly id: number;
      readonly kind: OpKind;
      readonly label: string | undefined;
      /** An earlier op of the call started (was counted in `counters.ops`), then was taken back. */
      readonly counted: boolean;
    },
    fn: SessionFn<E>,
    settings: OpSettings,
    handle: Handle<E> | undefined,
    restored: boolean,
    afterCheck: AfterCheck<E> | undefined,
  ): SessionRun<E>;
  /** Moves a busy shared handle into a session slot; false when every slot is taken. */
  pin(handle: Handle<E>): boolean;
  /** Moves a session slot's handle, clean, back to the shared pool (or destroys it). */
  unpin(handle: Handle<E>): void;
  /**
   * A shared handle holding state nobody may keep: reset it (or retire it) after `op`. Retired
   * when the check's hook may still run on it (`answer.running`).
   */
  discard(handle: Handle<E>, op: Op<E>, ok: boolean, answer: StateAnswer): void;
  /** Gives a clean shared handle back to the pool. */
  release(handle: Handle<E>, aliveAt: number): void;
  /** Takes a session's handle out of service for good. */
  retire(handle: Handle<E>, reason: 'session-end' | 'idle-check' | 'reset', cause: unknown): void;
  emit<K extends 'sessionOpen' | 'sessionLost' | 'sessionClose' | 'sessionPin' | 'sessionUnpin'>(
    type: K,
    event: GuardEvents[K],
  ): void;
  /** The session closed: it leaves the guard's list. */
  forget(session: GuardSession<E>): void;
}

/**
 * A lock wait that ran out names the caller's `timeout`, not what was left of it when the call
 * left the session's queue (a fraction of a millisecond less, even for a call that never queued).
 */
function callerTimeout(error: unknown, timeout: number | undefined): unknown {
  if (!(error instanceof LockTimeoutError) || timeout === undefined || error.timeout === timeout) {
    return error;
  }
  return new LockTimeoutError(timeout, error.lockName, { waitingFor: error.waitingFor });
}

/** One call of a session, from the caller's call to its answer. */
class SessionCall<E> implements QueueNode<SessionCall<E>> {
  prev: SessionCall<E> | null = null;
  next: SessionCall<E> | null = null;
  /** In the session's serial queue. */
  queued = false;
  timer: Timer | undefined = undefined;
  /** Its op, once it has one. */
  op: Op<E> | undefined = undefined;
  /** Takes its floating op out of the guard's queue. */
  leave: ((reason: unknown) => void) | undefined = undefined;
  /**
   * A floating op of it started (and was counted in the guard's `counters.ops`), then was taken
   * back when its fn came due: the op that runs it again is not counted again.
   */
  counted = false;
  /**
   * Its caller's async context, taken at the call: its turn may come in whichever context the
   * session's previous call ended in, and its op must run in its caller's (AsyncLocalStorage
   * stores, OpenTelemetry spans, re-entrancy).
   */
  readonly scope = new AsyncResource('engine-guard:session-call');
  readonly enqueuedAt = performance.now();
  constructor(
    readonly id: number,
    readonly session: GuardSession<E>,
    readonly kind: OpKind,
    readonly fn: SessionFn<E>,
    readonly settings: OpSettings,
    readonly resolve: (value: unknown) => void,
    readonly reject: (reason: unknown) => void,
  ) {}
  get label(): string | undefined {
    return this.settings.label;
  }
  /** Its caller's signal aborted while it waited in the session's queue. */
  handleEvent(): void {
    this.session.giveUp(this, this.settings.signal?.reason);
  }
  /** What is left of its `timeout` once it starts. */
  remaining(now: number): number | undefined {
    const timeout = this.settings.timeout;
    return timeout === undefined ? undefined : Math.max(0, timeout - (now - this.enqueuedAt));
  }
}

/** See the module documentation; the public face is the `Session` interface. */
export class GuardSession<E> implements Session<E> {
  readonly id: number;
  readonly label: string | undefined;
  readonly pin: SessionPin;
  readonly #host: SessionHost<E>;
  readonly #idleTimeout: number | undefined;
  readonly #restore: SessionOptions<E>['restore'];
  /** Calls waiting to run serially, in call order. */
  readonly #queue = new WaiterQueue<SessionCall<E>>();
  /** Floating calls not answered yet, in call order. */
  readonly #floating = new Set<SessionCall<E>>();
  readonly #createdAt = performance.now();
  #state: SessionState;
  /** The session's own handle: always's from its first op, on-state's while pinned. */
  #handle: Handle<E> | undefined = undefined;
  /** What holds the pin, as last reported (on-state only). */
  #held: readonly HeldState[] = NO_STATE;
  #generation = 0;
  #ops = 0;
  #losses = 0;
  #lastActive = this.#createdAt;
  /** The serial call running now (slot, lock wait or op), settled when it ends. */
  #current: Promise<void> | undefined = undefined;
  /**
   * The serial call runs on a shared handle (a lost session's restore): once `reopen()` has
   * accepted the loss, calls float beside it.
   */
  #currentShared = false;
  /** State was lost and `restore` has not rebuilt it yet on the new handle. */
  #needsRestore = false;
  /** The running serial call's op, once it has one: its caller may hear back before it let go of the handle. */
  #op: Op<E> | undefined = undefined;
  /** The running serial call's wait for a slot: `close()` ends it. */
  #slotWait: AbortController | undefined = undefined;
  /** The serial call waiting for a slot, while it does. */
  #slotCall: SessionCall<E> | undefined = undefined;
  /** `reopen()` while an op ran: drop the handle once it ends. */
  #dropAfterCurrent = false;
  #idleTimer: Timer | undefined = undefined;
  /** Takes the current serial call's op out of the lock queue (close() before it started). */
  #leaveQueue: ((reason: unknown) => void) | undefined = undefined;
  #closing: Promise<void> | undefined = undefined;
  #closedReason: 'closed' | 'idle' | 'guard-closed' = 'closed';

  constructor(id: number, host: SessionHost<E>, options: SessionOptions<E>, pin: SessionPin) {
    this.id = id;
    this.#host = host;
    this.label = options.label;
    this.pin = pin;
    this.#idleTimeout = options.idleTimeout;
    this.#restore = options.restore;
    this.#state = this.#fresh();
    this.#armIdle();
  }

  get state(): SessionState {
    return this.#state;
  }

  read<T>(
    fn: (engine: E, ctx: OpContext) => T | PromiseLike<T>,
    options?: OpOptions,
  ): Promise<Awaited<T>> {
    return this.#call('read', fn, options) as Promise<Awaited<T>>;
  }

  write<T>(
    fn: (engine: E, ctx: OpContext) => T | PromiseLike<T>,
    options?: OpOptions,
  ): Promise<Awaited<T>> {
    return this.#call('write', fn, options) as Promise<Awaited<T>>;
  }

  status(): SessionStatus {
    const now = performance.now();
    let running = this.#current !== undefined;
    let queued = this.#queue.size;
    for (const call of this.#floating) {
      if (call.op !== undefined && isStarted(call.op)) running = true;
      else queued++;
    }
    const busy = running || this.#floating.size > 0;
    return {
      id: this.id,
      label: this.label,
      state: this.#state,
      generation: this.#generation,
      ops: this.#ops,
      queued,
      running,
      ageMs: now - this.#createdAt,
      idleMs: busy ? 0 : now - this.#lastActive,
      losses: this.#losses,
      pin: this.pin,
      pinned: this.#handle !== undefined,
      heldState: this.#held,
    };
  }

  /**
   * The session's calls that wait in the session itself, for the guard's `status().queued`: the
   * one waiting for a slot (a `pin: 'always'` session's first op: it waits for no op), then
   * those in its serial queue, each waiting for the session's running op.
   */
  queuedCalls(now: number): {
    id: number;
    kind: OpKind;
    label: string | undefined;
    waitingMs: number;
    waitingFor: readonly BlockingOp[];
  }[] {
    const calls = [];
    const slotCall = this.#slotCall;
    if (slotCall !== undefined) calls.push(waitingCall(slotCall, now, NO_BLOCKERS));
    if (this.#queue.size === 0) return calls;
    const waitingFor = this.#blockers(now);
    for (let call = this.#queue.head; call !== null; call = call.next) {
      calls.push(waitingCall(call, now, waitingFor));
    }
    return calls;
  }

  reopen(): void {
    if (this.#state === 'closed') throw this.#closedError(this.#closedReason);
    if (this.#state === 'lost') {
      this.#state = this.#fresh();
      this.#needsRestore = false;
      // Calls queued behind the loss may float now (beside a restore still running).
      this.#next();
      return;
    }
    if (this.#handle === undefined) return;
    if (this.#current !== undefined) {
      this.#dropAfterCurrent = true;
      return;
    }
    this.#dropHandle();
    this.#next();
  }

  close(): Promise<void> {
    return this.#close('closed');
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /** Closed by the guard (idle timeout, or the guard closing). */
  closeFor(reason: 'idle' | 'guard-closed'): Promise<void> {
    return this.#close(reason);
  }

  /**
   * The session's handle died (stall, fatal error, abandoned cancel, failed check): its state is
   * gone. The guard has retired the handle already.
   */
  lose(handle: Handle<E>, cause: unknown): void {
    if (this.#handle !== handle) return;
    this.#handle = undefined;
    this.#held = NO_STATE;
    if (this.#state !== 'open') return;
    if (this.#dropAfterCurrent) {
      // reopen() gave this state up already: the next op starts fresh, as asked.
      this.#dropAfterCurrent = false;
      this.#state = this.#fresh();
      this.#needsRestore = false;
      return;
    }
    this.#state = 'lost';
    this.#losses++;
    this.#host.emit('sessionLost', { session: this.status(), cause });
  }

  /** A queued call's caller gave up (abort or timeout) before it started. */
  giveUp(call: SessionCall<E>, reason: unknown): void {
    if (!call.queued) return;
    this.#unqueue(call);
    call.reject(reason);
    this.#armIdle();
  }

  #call(kind: OpKind, fn: SessionFn<E>, options: OpOptions | undefined): Promise<unknown> {
    validateFunction(fn, 'fn');
    const settings = parseOpOptions(options, this.#host.opDefaults);
    const nested = this.#host.nested(this, kind, fn, settings.signal);
    if (nested !== undefined) return nested;
    // Traced from here, in the caller's context, whenever its turn comes.
    if (opTracing.hasSubscribers) {
      const host = this.#host;
      return traceCall(host.owner, host.name, kind, settings, this.id, (trace) =>
        this.#accept(kind, fn, withTrace(settings, trace)),
      );
    }
    return this.#accept(kind, fn, settings);
  }

  /** A call that joins no op: refused at once, or queued in the session. */
  #accept(kind: OpKind, fn: SessionFn<E>, settings: OpSettings): Promise<unknown> {
    if (this.#state === 'closed') return refuse(settings, this.#closedError(this.#closedReason));
    const signal = settings.signal;
    if (signal?.aborted) return refuse(settings, signal.reason);
    return new Promise<unknown>((resolve, reject) => {
      const id = this.#host.nextOpId();
      const call = new SessionCall(id, this, kind, fn, settings, resolve, reject);
      this.#stopIdle();
      if (this.#floats() && this.#queue.size === 0) {
        this.#float(call);
        return;
      }
      this.#enqueue(call);
      this.#next();
    });
  }

  /**
   * True when calls may float now: on-state, not pinned, not lost, and no serial call running
   * but one on a shared handle.
   */
  #floats(): boolean {
    return (
      this.pin === 'on-state' &&
      this.#handle === undefined &&
      this.#state === 'open' &&
      (this.#current === undefined || this.#currentShared)
    );
  }

  /**
   * Queues `call` to run serially (at the head when it was called before everything queued);
   * its own signal and timeout bound its wait. A caller that gave up already (a floating call
   * taken back in the turn its caller aborted) gets its answer now: an abort listener added to
   * an aborted signal never fires, and it would wait behind the session's running op.
   */
  #enqueue(call: SessionCall<E>, first = false): void {
    if (first) this.#queue.unshift(call);
    else this.#queue.push(call);
    const signal = call.settings.signal;
    if (signal?.aborted) {
      this.giveUp(call, signal.reason);
      return;
    }
    signal?.addEventListener('abort', call, { once: true });
    const left = call.remaining(performance.now());
    if (left !== undefined) {
      call.timer = setTimeout(() => {
        call.timer = undefined;
        this.giveUp(
          call,
          new LockTimeoutError(call.settings.timeout ?? 0, this.#host.name, {
            waitingFor: this.#blockers(performance.now()),
          }),
        );
      }, left);
    }
  }

  /** What a call in the serial queue waits for: the session's running op, once it runs. */
  #blockers(now: number): readonly BlockingOp[] {
    const op = this.#op;
    if (op === undefined || !isStarted(op)) return NO_BLOCKERS;
    return Object.freeze([
      Object.freeze({
        id: op.id,
        kind: op.kind,
        label: op.label,
        ageMs: now - op.startedAt,
        sessionId: this.id,
      }),
    ]);
  }

  #unqueue(call: SessionCall<E>): void {
    this.#queue.remove(call);
    call.settings.signal?.removeEventListener('abort', call);
    if (call.timer !== undefined) clearTimeout(call.timer);
    call.timer = undefined;
  }

  /** Starts what may start now: every queued call when they may float, else the next one. */
  #next(): void {
    if (this.#state === 'closed') return;
    if (this.#floats()) {
      // Each in turn: one that runs and is checked in this very turn (a sync fn on an idle
      // handle, a sync check) may pin the session, and the calls after it then run serially.
      for (let call = this.#queue.head; call !== null && this.#floats(); call = this.#queue.head) {
        this.#unqueue(call);
        // In its caller's context, not in the one the session's previous call ended in.
        const floating = call;
        floating.scope.runInAsyncScope(() => this.#float(floating));
      }
      this.#armIdle();
      return;
    }
    if (this.#current !== undefined) return;
    const call = this.#queue.head;
    if (call === null) {
      this.#armIdle();
      return;
    }
    this.#unqueue(call);
    this.#stopIdle();
    // Running from before #start: with the handle held, fn starts in this very turn, and a
    // reopen(), close() or status() it calls must find its op running.
    let ended!: () => void;
    this.#current = new Promise<void>((resolve) => {
      ended = resolve;
    });
    // The session's bookkeeping is done before its caller hears back: a caller that awaits the
    // op and then reads status() sees it ended.
    call.scope
      .runInAsyncScope(() => this.#start(call))
      .then(
        (value) => {
          this.#ended();
          call.resolve(value);
          ended();
        },
        (error: unknown) => {
          const finish = (): void => {
            this.#ended();
            ended();
          };
          // Aborted: its caller hears back at once, but the engine still winds the op down on the
          // session's handle, and the session's next op must not start there before it let go.
          // Deferred to a later turn: the guard finishes its own bookkeeping of the op first.
          const waiting = this.#op?.onEnd(() => queueMicrotask(finish)) === true;
          call.reject(callerTimeout(error, call.settings.timeout));
          if (!waiting) finish();
        },
      );
  }

  #ended(): void {
    this.#current = undefined;
    this.#currentShared = false;
    this.#op = undefined;
    this.#leaveQueue = undefined;
    this.#lastActive = performance.now();
    if (this.#dropAfterCurrent) {
      this.#dropAfterCurrent = false;
      if (this.#state === 'open') this.#dropHandle();
    }
    this.#next();
  }

  /** Runs `call` at once as an op of its own on a shared handle (see the module documentation). */
  #float(call: SessionCall<E>): void {
    this.#floating.add(call);
    this.#ops++;
    const settings: OpSettings = { ...call.settings, timeout: call.remaining(performance.now()) };
    // Its op may start well before fn does (a cluster lease wait): a session that pinned (or lost
    // its state) meanwhile takes it back then, to run where the state is; a closed one answers it
    // as it answers the calls it had queued (fn never starts).
    const fn: SessionFn<E> = (engine, ctx) => {
      if (this.#state !== 'open' || this.#handle !== undefined) throw REQUEUED;
      return call.fn(engine, ctx);
    };
    const run = this.#host.run(this, call, fn, settings, undefined, false, this.#checkOf(false));
    call.op = run.op;
    call.leave = run.leave;
    run.result.then(
      (value) => {
        this.#floatEnded(call);
        call.resolve(value);
      },
      (error: unknown) => {
        // Taken back to run serially on the pinned handle: it is not over.
        if (error === REQUEUED) {
          if (!this.#floating.has(call)) return;
          // Its op started before its fn came due: counted already.
          call.counted = true;
          if (this.#state !== 'closed') {
            this.#takeBack(call);
            this.#next();
            return;
          }
          // Closed before its fn started: answered as the calls it had queued were.
          this.#floatEnded(call);
          call.reject(this.#closedError(this.#closedReason));
          return;
        }
        this.#floatEnded(call);
        call.reject(callerTimeout(error, call.settings.timeout));
      },
    );
  }

  #floatEnded(call: SessionCall<E>): void {
    this.#floating.delete(call);
    this.#lastActive = performance.now();
    this.#armIdle();
  }

  /**
   * Pinned now: the floating calls that have not started yet run serially on the pinned handle,
   * in call order, ahead of anything queued since.
   */
  #requeueFloating(): void {
    // A call with no op yet is being started in this very turn, and its own check pinned the
    // session (a sync fn on an idle handle, a sync check): it ran, it is not taken back. Nor is
    // one whose op left already (its caller gave up, or a `sessionPin` listener closed the
    // session): its caller has its answer, and it must not run again.
    const waiting = [...this.#floating].filter(
      (call) => call.op !== undefined && isQueued(call.op),
    );
    for (const call of waiting.reverse()) {
      call.leave?.(REQUEUED);
      this.#takeBack(call);
    }
    this.#next();
  }

  /** A floating call that did not run goes to the head of the serial queue. */
  #takeBack(call: SessionCall<E>): void {
    this.#floating.delete(call);
    call.op = undefined;
    call.leave = undefined;
    this.#ops--;
    this.#enqueue(call, true);
  }

  /**
   * After the `state` check of one of the session's ops: where its handle goes (see the module
   * documentation). Returns the error its caller gets instead of its result, or `undefined`.
   */
  afterCheck(
    op: Op<E>,
    handle: Handle<E>,
    answer: StateAnswer,
    ok: boolean,
    opError: unknown,
    restoring: boolean,
  ): unknown {
    const held = answer.held;
    if (handle === this.#handle) {
      if (held === undefined) {
        // On the pinned handle. Unknown: the state may still be there, so the pin stays; unless
        // the hook still runs there (it overran): then the handle can serve no other op, and
        // the session's state is lost with it.
        if (answer.running === true) {
          // (A closing session's handle goes anyway: that is no replacement to report.)
          const reason = this.#state === 'closed' ? 'session-end' : 'reset';
          this.#host.retire(handle, reason, answer.error);
          this.lose(handle, answer.error);
        }
        return undefined;
      }
      if (held.length > 0) {
        this.#held = held;
        return undefined;
      }
      this.#handle = undefined;
      this.#held = NO_STATE;
      this.#host.unpin(handle);
      this.#host.emit('sessionUnpin', { session: this.status() });
      return undefined;
    }
    // On a shared handle: a floating op, or a restore.
    if (held !== undefined && held.length === 0) {
      this.#host.release(handle, performance.now());
      if (restoring) this.#restored();
      return undefined;
    }
    let reason: StateDiscardReason | 'closed' | undefined;
    if (this.#state === 'closed') reason = 'closed';
    else if (held === undefined) reason = 'unknown';
    else if (this.#handle !== undefined || (this.#state === 'lost' && !restoring)) reason = 'split';
    if (held !== undefined && reason === undefined && this.#host.pin(handle)) {
      this.#handle = handle;
      this.#held = held;
      this.#generation = handle.generation;
      if (restoring) this.#restored();
      this.#host.emit('sessionPin', { session: this.status(), state: held });
      this.#requeueFloating();
      return undefined;
    }
    this.#host.discard(handle, op, ok, answer);
    if (reason === 'closed') return undefined;
    return new SessionStateDiscardedError({
      sessionId: this.id,
      label: this.label,
      discarded: held,
      reason: reason ?? 'no-slot',
      maxSessions: this.#host.maxSessions,
      guardName: this.#host.name,
      cause: answer.error,
      // What the call itself threw (a unique violation after it made a temp table) stays
      // reachable: the caller must not lose it to the discard.
      opError,
    });
  }

  async #start(call: SessionCall<E>): Promise<unknown> {
    const signal = call.settings.signal;
    if (signal?.aborted) throw signal.reason;
    if (this.#state === 'closed') throw this.#closedError(this.#closedReason);
    if (this.#state === 'lost') {
      if (this.#restore === undefined) {
        throw new SessionLostError({
          sessionId: this.id,
          label: this.label,
          generation: this.#generation,
          guardName: this.#host.name,
        });
      }
      this.#needsRestore = true;
    }
    let handle = this.#handle;
    if (handle !== undefined && !this.#host.isAlive(handle)) {
      // Died while the session sat idle (server restart): its state is gone with it.
      const cause = new Error('The session handle was found dead before its next op');
      this.#host.retire(handle, 'idle-check', cause);
      this.lose(handle, cause);
      return this.#start(call);
    }
    if (handle === undefined && this.pin === 'on-state' && this.#restore !== undefined) {
      // Lost, with its state to rebuild: restore and the call run on a shared handle, and the
      // check pins the session to it (or says why it cannot).
      return this.#restoreFloating(call, this.#restore);
    }
    if (handle === undefined) {
      // The caller's signal, or close(): either ends the wait for a slot.
      const slotWait = new AbortController();
      const follow = (): void => slotWait.abort(signal?.reason);
      signal?.addEventListener('abort', follow, { once: true });
      this.#slotWait = slotWait;
      this.#slotCall = call;
      try {
        handle = await this.#host.acquire(
          slotWait.signal,
          call.remaining(performance.now()),
          call.settings.timeout,
        );
      } finally {
        signal?.removeEventListener('abort', follow);
        this.#slotWait = undefined;
        this.#slotCall = undefined;
      }
      // Closed while it waited for a slot.
      if (this.state === 'closed') {
        this.#host.retire(handle, 'session-end', undefined);
        throw this.#closedError(this.#closedReason);
      }
      // Read after the wait: a reopen() made meanwhile accepted the loss, so nothing to restore.
      const wasLost = this.#state === 'lost';
      this.#handle = handle;
      this.#generation = handle.generation;
      this.#state = 'open';
      this.#needsRestore = wasLost && this.#restore !== undefined;
      this.#host.emit('sessionOpen', { session: this.status() });
      // Its caller gave up in the turns between the grant and now: the slot stays the session's,
      // but fn never starts for a caller that left.
      if (signal?.aborted) throw signal.reason;
    }
    this.#ops++;
    const settings = this.#settingsNow(call);
    const check = this.pin === 'on-state' ? this.#checkOf(false) : undefined;
    const restore = this.#needsRestore ? this.#restore : undefined;
    if (restore === undefined) {
      return this.#run(call, call.fn, settings, handle, false, check);
    }
    const ownHandle = handle;
    const restoring = this.#restoring(call, restore, () => {
      if (this.#handle === ownHandle) this.#needsRestore = false;
    });
    return this.#run(call, restoring, settings, handle, true, check);
  }

  /** A lost on-state session's call: restore, then the call, on a shared handle. */
  #restoreFloating(
    call: SessionCall<E>,
    restore: NonNullable<SessionOptions<E>['restore']>,
  ): Promise<unknown> {
    this.#ops++;
    this.#currentShared = true;
    let rebuilt = false;
    const restoring = this.#restoring(call, restore, () => {
      rebuilt = true;
    });
    const check: AfterCheck<E> = (op, handle, answer, ok, opError) => {
      if (rebuilt) return this.afterCheck(op, handle, answer, ok, opError, true);
      // restore failed: what it made is not the session's state. Its caller gets restore's
      // error, and the session stays lost.
      this.#host.discard(handle, op, ok, answer);
      return undefined;
    };
    return this.#run(call, restoring, this.#settingsNow(call), undefined, true, check);
  }

  /** The state was rebuilt: the session is whole again. */
  #restored(): void {
    if (this.#state !== 'lost') return;
    this.#state = 'open';
    this.#needsRestore = false;
  }

  #checkOf(restoring: boolean): AfterCheck<E> {
    return (op, handle, answer, ok, opError) =>
      this.afterCheck(op, handle, answer, ok, opError, restoring);
  }

  #settingsNow(call: SessionCall<E>): OpSettings {
    return { ...call.settings, timeout: call.remaining(performance.now()) };
  }

  /** `restore`, then the call's fn, as one op's fn; `rebuilt` runs once restore succeeded. */
  #restoring(
    call: SessionCall<E>,
    restore: NonNullable<SessionOptions<E>['restore']>,
    rebuilt: () => void,
  ): SessionFn<E> {
    const fn = call.fn;
    return (engine, ctx) =>
      attempt(() => restore(engine, ctx)).then(() => {
        // Rebuilt: later ops need no restore, even if this one's fn fails.
        rebuilt();
        // Aborted, convicted or closed while restore ran: its caller has left, and the handle
        // may be on its way to destroy.
        if (ctx.signal.aborted) throw ctx.signal.reason;
        return fn(engine, ctx);
      });
  }

  #run(
    call: SessionCall<E>,
    fn: SessionFn<E>,
    settings: OpSettings,
    handle: Handle<E> | undefined,
    restored: boolean,
    check: AfterCheck<E> | undefined,
  ): Promise<unknown> {
    const run = this.#host.run(this, call, fn, settings, handle, restored, check);
    call.op = run.op;
    this.#op = run.op;
    this.#leaveQueue = run.leave;
    return run.result;
  }

  #dropHandle(): void {
    const handle = this.#handle;
    const pinned = this.pin === 'on-state' && handle !== undefined;
    this.#handle = undefined;
    this.#held = NO_STATE;
    this.#state = this.#fresh();
    this.#needsRestore = false;
    if (handle !== undefined) this.#host.retire(handle, 'session-end', undefined);
    if (pinned) this.#host.emit('sessionUnpin', { session: this.status() });
  }

  /** The state of a session with no handle yet: `always` takes one with its first op. */
  #fresh(): SessionState {
    return this.pin === 'always' ? 'new' : 'open';
  }

  #stopIdle(): void {
    if (this.#idleTimer !== undefined) clearTimeout(this.#idleTimer);
    this.#idleTimer = undefined;
  }

  /** Arms the idle timeout when nothing runs or waits. */
  #armIdle(): void {
    const idleTimeout = this.#idleTimeout;
    if (idleTimeout === undefined || this.#state === 'closed') return;
    if (this.#current !== undefined || this.#queue.size > 0 || this.#floating.size > 0) return;
    this.#stopIdle();
    this.#idleTimer = setTimeout(() => {
      this.#idleTimer = undefined;
      if (this.#current === undefined && this.#queue.size === 0 && this.#floating.size === 0) {
        this.#close('idle').catch(noop);
      }
    }, idleTimeout);
    // An idle session must not keep the process alive.
    (this.#idleTimer as { unref?: () => void }).unref?.();
  }

  #close(reason: 'closed' | 'idle' | 'guard-closed'): Promise<void> {
    if (this.#closing !== undefined) return this.#closing;
    this.#state = 'closed';
    this.#closedReason = reason;
    this.#stopIdle();
    const error = this.#closedError(reason);
    for (let call = this.#queue.head; call !== null; call = this.#queue.head) {
      this.giveUp(call, error);
    }
    // Floating calls that have not started are not started at all; running ones finish.
    for (const call of [...this.#floating]) {
      if (call.op === undefined || !isStarted(call.op)) call.leave?.(error);
    }
    // The current call, if it has not started its op yet, is not started at all.
    this.#slotWait?.abort(error);
    this.#leaveQueue?.(error);
    const current = this.#current ?? Promise.resolve();
    this.#closing = current.then(() => {
      const handle = this.#handle;
      this.#handle = undefined;
      this.#held = NO_STATE;
      if (handle !== undefined) this.#host.retire(handle, 'session-end', undefined);
      this.#host.forget(this);
      this.#host.emit('sessionClose', { session: this.status(), reason });
    });
    return this.#closing;
  }

  #closedError(reason: 'closed' | 'idle' | 'guard-closed'): SessionClosedError {
    return new SessionClosedError(this.id, this.label, reason);
  }
}

function waitingCall<E>(call: SessionCall<E>, now: number, waitingFor: readonly BlockingOp[]) {
  return {
    id: call.id,
    kind: call.kind,
    label: call.label,
    waitingMs: now - call.enqueuedAt,
    waitingFor,
  };
}

/** The op still waits in the guard's queue: for the lock (`waiting`) or a handle (`leased`). */
function isQueued<E>(op: Op<E>): boolean {
  const tag = op.state.tag;
  return tag === 'waiting' || tag === 'leased';
}

/** The op holds its lease and handle (or held them): it is past waiting. */
function isStarted<E>(op: Op<E>): boolean {
  const tag = op.state.tag;
  return tag !== 'waiting' && tag !== 'leased' && tag !== 'left';
}
