/**
 * Sessions: a caller's own engine handle, kept across its ops (see `Session` in types.ts for the
 * invariants users rely on).
 *
 * Order of service: a session's calls queue here in call order and start one at a time; each
 * then waits for its lease on the guard's lock like any op (its key is the session, so sessions
 * are served round-robin with other callers' reads). Its handle is taken from the guard's session
 * slots by the first op and kept until the session closes, its idle timeout passes, the handle
 * dies, or `reopen()` drops it.
 *
 * This module owns the session's queue and state; the guard owns the lock, the slots and the op
 * (through {@link SessionHost}).
 */
import { AsyncResource } from 'node:async_hooks';
import { opTracing } from '../diagnostics.js';
import { LockTimeoutError, SessionClosedError, SessionLostError } from '../errors.js';
import { attempt, noop, type Timer } from '../internal/promises.js';
import { validateFunction } from '../internal/validate.js';
import { type QueueNode, WaiterQueue } from '../internal/waiter-queue.js';
import type { Handle } from '../pool/handle-pool.js';
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
  SessionState,
  SessionStatus,
} from './types.js';

type SessionFn<E> = (engine: E, ctx: OpContext) => unknown;

const NO_STATE: readonly HeldState[] = Object.freeze([]);

/** What a session needs from its guard. */
export interface SessionHost<E> {
  /** The guard (what traces name as the op's `source`). */
  readonly owner: object;
  readonly name: string | undefined;
  readonly opDefaults: OpSettings;
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
   * Runs one op of the session on its handle, through the guard's lock: its outcome; the op
   * (undefined when none was made), whose `onEnd()` tells when it let go of the handle;
   * and `leave`, which takes it out of the lock's queue if it has not started yet.
   */
  run(
    session: GuardSession<E>,
    kind: OpKind,
    fn: SessionFn<E>,
    settings: OpSettings,
    handle: Handle<E>,
    restored: boolean,
  ): {
    result: Promise<unknown>;
    op: { onEnd(listener: () => void): boolean } | undefined;
    leave(reason: unknown): void;
  };
  /** Takes a session's handle out of service for good. */
  retire(handle: Handle<E>, reason: 'session-end' | 'idle-check', cause: unknown): void;
  emit<K extends 'sessionOpen' | 'sessionLost' | 'sessionClose'>(
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

/** One call waiting in a session's queue. */
class SessionCall<E> implements QueueNode<SessionCall<E>> {
  prev: SessionCall<E> | null = null;
  next: SessionCall<E> | null = null;
  queued = false;
  timer: Timer | undefined = undefined;
  /**
   * Its caller's async context, taken at the call: its turn may come in whichever context the
   * session's previous call ended in, and its op must run in its caller's (AsyncLocalStorage
   * stores, OpenTelemetry spans, re-entrancy).
   */
  readonly scope = new AsyncResource('engine-guard:session-call');
  readonly enqueuedAt = performance.now();
  constructor(
    readonly session: GuardSession<E>,
    readonly kind: OpKind,
    readonly fn: SessionFn<E>,
    readonly settings: OpSettings,
    readonly resolve: (value: unknown) => void,
    readonly reject: (reason: unknown) => void,
  ) {}
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
  readonly #host: SessionHost<E>;
  readonly #idleTimeout: number | undefined;
  readonly #restore: SessionOptions<E>['restore'];
  readonly #queue = new WaiterQueue<SessionCall<E>>();
  readonly #createdAt = performance.now();
  #state: SessionState = 'new';
  #handle: Handle<E> | undefined = undefined;
  #generation = 0;
  #ops = 0;
  #losses = 0;
  #lastActive = this.#createdAt;
  /** The call running now (slot, lock wait or op), settled when it ends. */
  #current: Promise<void> | undefined = undefined;
  /** State was lost and `restore` has not rebuilt it yet on the new handle. */
  #needsRestore = false;
  /** The running call's op, once it has one: its caller may hear back before it let go of the handle. */
  #op: { onEnd(listener: () => void): boolean } | undefined = undefined;
  /** The running call's wait for a slot: `close()` ends it. */
  #slotWait: AbortController | undefined = undefined;
  /** `reopen()` while an op ran: drop the handle once it ends. */
  #dropAfterCurrent = false;
  #idleTimer: Timer | undefined = undefined;
  /** Takes the current call's op out of the lock queue (close() before it started). */
  #leaveQueue: ((reason: unknown) => void) | undefined = undefined;
  #closing: Promise<void> | undefined = undefined;
  #closedReason: 'closed' | 'idle' | 'guard-closed' = 'closed';

  constructor(id: number, host: SessionHost<E>, options: SessionOptions<E>) {
    this.id = id;
    this.#host = host;
    this.label = options.label;
    this.#idleTimeout = options.idleTimeout;
    this.#restore = options.restore;
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
    return {
      id: this.id,
      label: this.label,
      state: this.#state,
      generation: this.#generation,
      ops: this.#ops,
      queued: this.#queue.size,
      running: this.#current !== undefined,
      ageMs: now - this.#createdAt,
      idleMs: this.#current === undefined ? now - this.#lastActive : 0,
      losses: this.#losses,
      pin: 'always',
      pinned: this.#handle !== undefined,
      heldState: NO_STATE,
    };
  }

  reopen(): void {
    if (this.#state === 'closed') throw this.#closedError(this.#closedReason);
    if (this.#state === 'lost') {
      this.#state = 'new';
      this.#needsRestore = false;
      return;
    }
    if (this.#handle === undefined) return;
    if (this.#current !== undefined) {
      this.#dropAfterCurrent = true;
      return;
    }
    this.#dropHandle();
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
    if (this.#state !== 'open') return;
    if (this.#dropAfterCurrent) {
      // reopen() gave this state up already: the next op starts fresh, as asked.
      this.#dropAfterCurrent = false;
      this.#state = 'new';
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
      const call = new SessionCall(this, kind, fn, settings, resolve, reject);
      this.#queue.push(call);
      if (this.#current !== undefined) {
        // Waits for the session's earlier calls; its own signal and timeout bound that too.
        signal?.addEventListener('abort', call, { once: true });
        if (settings.timeout !== undefined) {
          call.timer = setTimeout(
            () => this.giveUp(call, new LockTimeoutError(settings.timeout ?? 0, this.#host.name)),
            settings.timeout,
          );
        }
      }
      this.#next();
    });
  }

  #unqueue(call: SessionCall<E>): void {
    this.#queue.remove(call);
    call.settings.signal?.removeEventListener('abort', call);
    if (call.timer !== undefined) clearTimeout(call.timer);
    call.timer = undefined;
  }

  /** Starts the next queued call, if none runs. */
  #next(): void {
    if (this.#current !== undefined) return;
    const call = this.#queue.head;
    if (call === null) {
      this.#armIdle();
      return;
    }
    this.#unqueue(call);
    if (this.#idleTimer !== undefined) clearTimeout(this.#idleTimer);
    this.#idleTimer = undefined;
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
    this.#op = undefined;
    this.#leaveQueue = undefined;
    this.#lastActive = performance.now();
    if (this.#dropAfterCurrent) {
      this.#dropAfterCurrent = false;
      if (this.#state === 'open') this.#dropHandle();
    }
    if (this.#state === 'closed') return;
    this.#next();
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
    if (handle === undefined) {
      // The caller's signal, or close(): either ends the wait for a slot.
      const slotWait = new AbortController();
      const follow = (): void => slotWait.abort(signal?.reason);
      signal?.addEventListener('abort', follow, { once: true });
      this.#slotWait = slotWait;
      try {
        handle = await this.#host.acquire(
          slotWait.signal,
          call.remaining(performance.now()),
          call.settings.timeout,
        );
      } finally {
        signal?.removeEventListener('abort', follow);
        this.#slotWait = undefined;
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
    const settings: OpSettings = {
      ...call.settings,
      timeout: call.remaining(performance.now()),
    };
    const restore = this.#needsRestore ? this.#restore : undefined;
    if (restore === undefined) {
      return this.#run(call.kind, call.fn, settings, handle, false);
    }
    const fn = call.fn;
    const restoring: SessionFn<E> = (engine, ctx) =>
      attempt(() => restore(engine, ctx)).then(() => {
        // Rebuilt: later ops need no restore, even if this one's fn fails.
        if (this.#handle === handle) this.#needsRestore = false;
        // Aborted, convicted or closed while restore ran: its caller has left, and the handle
        // may be on its way to destroy.
        if (ctx.signal.aborted) throw ctx.signal.reason;
        return fn(engine, ctx);
      });
    return this.#run(call.kind, restoring, settings, handle, true);
  }

  #run(
    kind: OpKind,
    fn: SessionFn<E>,
    settings: OpSettings,
    handle: Handle<E>,
    restored: boolean,
  ): Promise<unknown> {
    const run = this.#host.run(this, kind, fn, settings, handle, restored);
    this.#op = run.op;
    this.#leaveQueue = run.leave;
    return run.result;
  }

  #dropHandle(): void {
    const handle = this.#handle;
    this.#handle = undefined;
    this.#state = 'new';
    this.#needsRestore = false;
    if (handle !== undefined) this.#host.retire(handle, 'session-end', undefined);
  }

  #armIdle(): void {
    const idleTimeout = this.#idleTimeout;
    if (idleTimeout === undefined || this.#state === 'closed') return;
    if (this.#idleTimer !== undefined) clearTimeout(this.#idleTimer);
    this.#idleTimer = setTimeout(() => {
      this.#idleTimer = undefined;
      if (this.#current === undefined && this.#queue.size === 0) this.#close('idle').catch(noop);
    }, idleTimeout);
    // An idle session must not keep the process alive.
    (this.#idleTimer as { unref?: () => void }).unref?.();
  }

  #close(reason: 'closed' | 'idle' | 'guard-closed'): Promise<void> {
    if (this.#closing !== undefined) return this.#closing;
    this.#state = 'closed';
    this.#closedReason = reason;
    if (this.#idleTimer !== undefined) clearTimeout(this.#idleTimer);
    this.#idleTimer = undefined;
    const error = this.#closedError(reason);
    for (let call = this.#queue.head; call !== null; call = this.#queue.head) {
      this.giveUp(call, error);
    }
    // The current call, if it has not started its op yet, is not started at all.
    this.#slotWait?.abort(error);
    this.#leaveQueue?.(error);
    const current = this.#current ?? Promise.resolve();
    this.#closing = current.then(() => {
      const handle = this.#handle;
      this.#handle = undefined;
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
