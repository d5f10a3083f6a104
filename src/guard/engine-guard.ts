import { type OpTraceContext, opTracing } from '../diagnostics.js';
import {
  DeadlockError,
  EngineStalledError,
  GuardClosedError,
  LockTimeoutError,
} from '../errors.js';
import { heldBy, runHolding } from '../internal/context.js';
import { bounded, isThenable, noop, type Timer } from '../internal/promises.js';
import { SignalFanout } from '../internal/signal-fanout.js';
import {
  validateDuration,
  validateFunction,
  validateInteger,
  validateNumberInRange,
  validateOptionalFunction,
  validateOptionalString,
  validateOptionsObject,
  validatePositiveDuration,
  validateSignal,
} from '../internal/validate.js';
import { type QueueNode, WaiterQueue } from '../internal/waiter-queue.js';
import { Watchdog, type WatchdogSettings, type WatchedSubject } from '../liveness/watchdog.js';
import type { Lease } from '../lock/lease.js';
import { RWLock } from '../lock/rwlock.js';
import { resolveBackoff } from '../pool/backoff.js';
import { type Handle, HandlePool } from '../pool/handle-pool.js';
import { CachedValue, type CachedValueOptions } from './cached-value.js';
import { TypedEvents } from './events.js';
import type {
  EngineGuardOptions,
  GuardCounters,
  GuardEvents,
  GuardState,
  GuardStatus,
  OpContext,
  OpInfo,
  OpKind,
  OpOptions,
  RunningOpStatus,
  Subscription,
} from './types.js';

/** Liveness defaults: a silent op is convicted within 3 × 5 s + 3 s = 18 s. */
export const DEFAULT_LIVENESS = {
  interval: 5_000,
  timeout: 3_000,
  failures: 3,
  pauseThreshold: 1_000,
} as const;

type OpPhase = 'waiting' | 'running' | 'cancelling' | 'stalled' | 'abandoned' | 'closed' | 'done';

/** A guarded operation. It is also the `ctx` its function receives and its watchdog subject. */
class Op<E> implements OpContext, OpInfo, WatchedSubject, QueueNode<Op<E>> {
  prev: Op<E> | null = null;
  next: Op<E> | null = null;
  queued = false;
  lastBeat = 0;
  probeFailures = 0;
  probing = false;
  nextProbeAt = 0;
  watched = false;
  generation = 0;
  startedAt = 0;
  phase: OpPhase = 'waiting';
  handle: Handle<E> | null = null;
  lease: Lease | null = null;
  fnSettled = false;
  resolve: (value: unknown) => void = noop;
  reject: (reason: unknown) => void = noop;
  cancelDone: Promise<unknown> | undefined = undefined;
  graceTimer: Timer | undefined = undefined;
  onFnSettled: (() => void) | undefined = undefined;
  #controller: AbortController | undefined = undefined;
  #aborted = false;
  #reason: unknown = undefined;
  #heartbeat: (() => void) | undefined = undefined;

  constructor(
    readonly id: number,
    readonly kind: OpKind,
    readonly label: string | undefined,
    readonly callerSignal: AbortSignal | undefined,
  ) {}

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

  // A getter returning a cached arrow, so `const { heartbeat } = ctx` works and ops that never
  // heartbeat allocate nothing.
  get heartbeat(): () => void {
    this.#heartbeat ??= () => {
      this.lastBeat = performance.now();
    };
    return this.#heartbeat;
  }

  abort(reason: unknown): void {
    if (this.#aborted) return;
    this.#aborted = true;
    this.#reason = reason;
    this.#controller?.abort(reason);
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

function errorSummary(error: unknown): { message: string; code: string | undefined } {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return { message: error.message, code: typeof code === 'string' ? code : undefined };
  }
  return { message: String(error), code: undefined };
}

/** Races a promise against a timer; never rejects. */
function settleWithin(promise: Promise<unknown>, ms: number): Promise<void> {
  return bounded(promise, ms, noop).then(noop);
}

/** Settles like `promise`, or rejects with `signal.reason` as soon as `signal` aborts. */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) {
    // Nobody will read it any more, but a rejection must not go unhandled.
    promise.catch(noop);
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}

/**
 * Concurrency-safe access to one shared engine (a database connection, an analytics daemon, a
 * browser, a REPL) from many concurrent callers.
 *
 * Invariants:
 * - Reads share the engine, each on its own handle (up to `pool` at once); a write is exclusive
 *   across the guard and runs alone. Waiters are served in arrival order with the fairness of
 *   {@link RWLock}: a queued write blocks later reads, reads queued before it enter together.
 * - A running op is never cut off for taking long. It is convicted of a stall only when its
 *   engine stops answering: no heartbeat for `liveness.interval` and then `liveness.failures`
 *   consecutive failed probes. A convicted op's caller is answered at once with
 *   {@link EngineStalledError}; its lease is revoked so others proceed; its handle is cancelled,
 *   destroyed in the background and replaced on demand.
 * - `timeout` and `acquireTimeout` bound waiting only.
 * - `status()` is synchronous and never touches an engine or a lock.
 * - Every promise it returns settles: on success, failure, abort, stall, or `close()`.
 *
 * @example
 * ```ts
 * const guard = new EngineGuard({
 *   create: async () => connect(),
 *   destroy: (conn) => conn.close(),
 *   probe: (conn, { op }) => checkAlive(conn, op),
 *   pool: 4,
 * });
 * const rows = await guard.read((conn, ctx) => conn.query(sql, { signal: ctx.signal }));
 * guard.status(); // never waits
 * await guard.close();
 * ```
 */
export class EngineGuard<E> implements AsyncDisposable {
  /** Name given at construction. */
  readonly name: string | undefined;
  readonly #options: EngineGuardOptions<E>;
  readonly #lock: RWLock;
  readonly #pool: HandlePool<E>;
  readonly #watchdog: Watchdog<Op<E>> | undefined;
  readonly #events: TypedEvents<GuardEvents>;
  /** One listener per caller signal, however many ops share it (see SignalFanout). */
  readonly #callerSignals = new SignalFanout<Op<E>>((ops) => {
    for (const op of ops) this.#onCallerAbort(op);
  });
  /** Ops waiting or running, in arrival order (an intrusive list: O(1) in and out, no hashing). */
  readonly #ops = new WaiterQueue<Op<E>>();
  readonly #acquireTimeout: number | undefined;
  readonly #cancelTimeout: number;
  readonly #closeTimeout: number;
  readonly #counters: GuardCounters = {
    ops: 0,
    succeeded: 0,
    failed: 0,
    stalls: 0,
    replacements: 0,
    cancels: 0,
    lockTimeouts: 0,
    aborts: 0,
    probeFailures: 0,
    connectFailures: 0,
  };
  #nextId = 0;
  #closed = false;
  #closing: Promise<void> | undefined = undefined;
  #state: GuardState = 'idle';
  #lastProbe: GuardStatus['lastProbe'] = null;
  #lastError: GuardStatus['lastError'] = null;

  /**
   * @throws TypeError | RangeError when an option is invalid, naming it.
   */
  constructor(options: EngineGuardOptions<E>) {
    if (options === null || typeof options !== 'object') {
      throw new TypeError(
        'The "options" argument must be an object with at least a "create" function',
      );
    }
    validateFunction(options.create, 'create');
    validateOptionalFunction(options.destroy, 'destroy');
    validateOptionalFunction(options.setup, 'setup');
    validateOptionalFunction(options.probe, 'probe');
    validateOptionalFunction(options.cancel, 'cancel');
    validateOptionalFunction(options.isFatal, 'isFatal');
    validateOptionalFunction(options.isAlive, 'isAlive');
    this.name = validateOptionalString(options.name, 'name');
    const pool = validateInteger(options.pool, 'pool', 1) ?? 1;
    const maxQueue = validateInteger(options.maxQueue, 'maxQueue', 0, true);
    this.#acquireTimeout = validateDuration(options.acquireTimeout, 'acquireTimeout');
    this.#cancelTimeout = validatePositiveDuration(options.cancelTimeout, 'cancelTimeout') ?? 5_000;
    this.#closeTimeout = validatePositiveDuration(options.closeTimeout, 'closeTimeout') ?? 10_000;
    const connectTimeout =
      validatePositiveDuration(options.connectTimeout, 'connectTimeout') ?? 30_000;
    const destroyTimeout =
      validatePositiveDuration(options.destroyTimeout, 'destroyTimeout') ?? 5_000;
    const liveness = this.#parseLiveness(options);
    const reconnect = options.reconnect;
    validateOptionsObject(reconnect, 'reconnect');
    validateDuration(reconnect?.initialDelay, 'reconnect.initialDelay');
    validateDuration(reconnect?.maxDelay, 'reconnect.maxDelay');
    validateNumberInRange(reconnect?.factor, 'reconnect.factor', 1, 1_000);
    validateNumberInRange(reconnect?.jitter, 'reconnect.jitter', 0, 1);
    validateInteger(reconnect?.failFastAfter, 'reconnect.failFastAfter', 1);

    this.#options = options;
    this.#events = new TypedEvents<GuardEvents>(this.name);
    this.#lock = new RWLock({
      ...(this.name === undefined ? {} : { name: this.name }),
      ...(maxQueue === undefined ? {} : { maxQueue }),
      // One shared lease per handle: a granted reader always has a handle to run on.
      maxReaders: pool,
    });
    const idleCheckOption = options.liveness === false ? false : options.liveness?.idleCheckAfter;
    const idleCheckAfterMs =
      idleCheckOption === false
        ? undefined
        : validateDuration(idleCheckOption, 'liveness.idleCheckAfter');
    const idleCheckAfter =
      liveness === undefined || idleCheckOption === false
        ? undefined
        : (idleCheckAfterMs ?? liveness.interval);
    this.#pool = new HandlePool<E>(
      {
        size: pool,
        backoff: resolveBackoff(reconnect),
        connectTimeout,
        destroyTimeout,
        idleCheckAfter,
        probeTimeout: liveness?.timeout ?? DEFAULT_LIVENESS.timeout,
        name: this.name,
      },
      this.#poolHooks(),
    );
    this.#watchdog =
      liveness === undefined
        ? undefined
        : new Watchdog<Op<E>>(liveness, {
            subjects: () => this.#liveOps(),
            probe: (op, signal) => this.#runProbe(op, signal),
            onProbeResult: (op, ok, error, durationMs) =>
              this.#recordProbe(op, op.generation, ok, error, durationMs, op.probeFailures),
            onConvict: (op, lastError) => this.#convict(op, lastError),
          });
  }

  #parseLiveness(options: EngineGuardOptions<E>): WatchdogSettings | undefined {
    const liveness = options.liveness;
    if (liveness === false) return undefined;
    validateOptionsObject(liveness, 'liveness');
    const settings: WatchdogSettings = {
      interval:
        validatePositiveDuration(liveness?.interval, 'liveness.interval') ??
        DEFAULT_LIVENESS.interval,
      timeout:
        validatePositiveDuration(liveness?.timeout, 'liveness.timeout') ?? DEFAULT_LIVENESS.timeout,
      failures:
        validateInteger(liveness?.failures, 'liveness.failures', 1) ?? DEFAULT_LIVENESS.failures,
      pauseThreshold:
        validatePositiveDuration(liveness?.pauseThreshold, 'liveness.pauseThreshold') ??
        DEFAULT_LIVENESS.pauseThreshold,
    };
    // Liveness needs a way to ask the engine; without a probe there is nothing to check.
    if (options.probe === undefined) {
      if (liveness !== undefined) {
        process.emitWarning(
          'engine-guard: "liveness" is set but there is no "probe": the watchdog is off and a stalled op is never detected',
          { code: 'ENGINE_GUARD_NO_PROBE' },
        );
      }
      return undefined;
    }
    return settings;
  }

  #poolHooks(): ConstructorParameters<typeof HandlePool<E>>[1] {
    const options = this.#options;
    return {
      open: async (signal, generation) => {
        const engine = await options.create({ signal, generation });
        if (options.setup !== undefined) {
          const setup = options.setup;
          try {
            // A setup that ignores its signal must not keep the attempt (and the engine) forever.
            await untilAborted(
              Promise.resolve().then(() => setup(engine, { signal, generation })),
              signal,
            );
          } catch (error) {
            // The half-made handle still holds resources.
            void settleWithin(
              Promise.resolve().then(() => options.destroy?.(engine, { reason: error })),
              this.#pool.settings.destroyTimeout,
            );
            throw error;
          }
        }
        return engine;
      },
      destroy: (engine, reason) => options.destroy?.(engine, { reason }),
      isAlive: options.isAlive,
      probeIdle:
        options.probe === undefined
          ? undefined
          : (engine, signal) => Promise.resolve(options.probe?.(engine, { signal, op: undefined })),
      onConnect: (generation) => {
        this.#events.emit('connect', { generation });
        this.#updateState();
      },
      onConnectError: (error, attempts, retryInMs) => {
        this.#counters.connectFailures++;
        this.#recordError(error);
        this.#events.emit('connectError', { error, attempts, retryInMs });
        this.#updateState();
      },
      onRetire: (handle, reason, cause) => {
        this.#counters.replacements++;
        this.#events.emit('replace', { generation: handle.generation, reason, cause });
        this.#updateState();
      },
      onDestroyError: (generation, error) => {
        this.#events.emit('destroyError', { generation, error });
      },
      onChange: () => this.#updateState(),
      onIdleProbe: (generation, ok, error, durationMs) =>
        this.#recordProbe(undefined, generation, ok, error, durationMs, ok ? 0 : 1),
    };
  }

  /**
   * Runs `fn` as a shared read on its own engine handle. Reads run concurrently, up to `pool`.
   * A nested `read`/`write` in `fn`'s async context joins this op: it runs at once on the same
   * handle with the outer op's `ctx` (its own `signal`, `timeout` and `label` are not used), and
   * a nested write inside a read rejects with {@link DeadlockError}.
   *
   * Rejects with: whatever `fn` throws; `signal.reason` when the caller aborts;
   * {@link LockTimeoutError} when `timeout` passes while queued; {@link EngineStalledError} when
   * the engine stops answering; {@link EngineUnavailableError} while the engine is down;
   * {@link QueueFullError}; {@link GuardClosedError}.
   * @throws TypeError | RangeError at the call, on invalid arguments.
   */
  read<T>(
    fn: (engine: E, ctx: OpContext) => T | PromiseLike<T>,
    options?: OpOptions,
  ): Promise<Awaited<T>> {
    return this.#op('read', fn, options);
  }

  /**
   * Runs `fn` exclusively: it waits for running reads to finish and runs alone. For
   * engine-wide state (attach/detach, schema, catalog, search path) and for writes. A stalled
   * write rejects with an {@link EngineStalledError} whose `indeterminate` is true.
   * @throws TypeError | RangeError at the call, on invalid arguments.
   */
  write<T>(
    fn: (engine: E, ctx: OpContext) => T | PromiseLike<T>,
    options?: OpOptions,
  ): Promise<Awaited<T>> {
    return this.#op('write', fn, options);
  }

  /**
   * A value loaded from the engine under a read and served from memory: `get()` never waits,
   * and refreshes in the background once the value is older than `maxAge`
   * (stale-while-revalidate). For status-style calls (table count, engine version).
   */
  cache<T>(
    loader: (engine: E, ctx: OpContext) => T | PromiseLike<T>,
    options?: CachedValueOptions,
  ): CachedValue<T> {
    validateFunction(loader, 'loader');
    return new CachedValue<T>((opOptions) => this.read(loader, opOptions), options);
  }

  /** Subscribes to a typed event; dispose the result to unsubscribe. */
  on<K extends keyof GuardEvents>(
    type: K,
    listener: (event: GuardEvents[K]) => void,
  ): Subscription {
    return this.#events.on(type, listener);
  }

  /**
   * A synchronous snapshot. Never waits, never touches an engine or a lock; safe to call from a
   * `status` endpoint while every handle is wedged.
   */
  status(): GuardStatus {
    const now = performance.now();
    const running: RunningOpStatus[] = [];
    for (let op = this.#ops.head; op !== null; op = op.next) {
      if (op.phase !== 'running' && op.phase !== 'cancelling') continue;
      running.push({
        id: op.id,
        kind: op.kind,
        label: op.label,
        generation: op.generation,
        ageMs: now - op.startedAt,
        sinceHeartbeatMs: now - (op.lastBeat || op.startedAt),
        probeFailures: op.probeFailures,
        phase: op.phase === 'cancelling' ? 'cancelling' : 'running',
      });
    }
    const lock = this.#lock.state;
    const pool = this.#pool;
    return {
      name: this.name,
      state: this.#computeState(),
      generation: pool.generation,
      handles: {
        total: pool.idleCount + pool.busyCount,
        busy: pool.busyCount,
        idle: pool.idleCount,
        connecting: pool.connecting,
        retiring: pool.retiring,
      },
      running,
      queue: { readers: lock.queuedReaders, writers: lock.queuedWriters, forHandle: pool.waiting },
      lastProbe: this.#lastProbe === null ? null : { ...this.#lastProbe },
      lastError: this.#lastError === null ? null : { ...this.#lastError },
      reconnect: { failures: pool.failures, nextAttemptAt: pool.nextAttemptAt },
      counters: { ...this.#counters },
    };
  }

  /** True once `close()` was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Closes the guard: queued ops reject with {@link GuardClosedError}, running ops have
   * `ctx.signal` aborted and their callers rejected, handles are destroyed. Bounded by
   * `closeTimeout`; idempotent (every call returns the same promise).
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  /** Same as `close()`, for `await using guard = new EngineGuard(...)`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  // ---------------------------------------------------------------------------------------------

  #op<T>(
    kind: OpKind,
    fn: (engine: E, ctx: OpContext) => T | PromiseLike<T>,
    options: OpOptions | undefined,
  ): Promise<Awaited<T>> {
    validateFunction(fn, 'fn');
    validateOptionsObject(options);
    const signal = validateSignal(options?.signal);
    const timeout = validateDuration(options?.timeout, 'timeout') ?? this.#acquireTimeout;
    const label = validateOptionalString(options?.label, 'label');

    const outer = heldBy<Op<E>>(this);
    if (outer !== undefined && outer.phase === 'running') return this.#joinOp(outer, kind, fn);
    if (this.#closed) return Promise.reject(new GuardClosedError(this.name));
    if (signal?.aborted) {
      this.#counters.aborts++;
      return Promise.reject(signal.reason);
    }
    if (this.#pool.isDown) return Promise.reject(this.#pool.unavailableError());

    const op = new Op<E>(++this.#nextId, kind, label, signal);
    if (opTracing.hasSubscribers) {
      const trace: OpTraceContext = { guard: this.name, id: op.id, kind, label };
      return opTracing.tracePromise(() => this.#start(op, fn, timeout), trace) as Promise<
        Awaited<T>
      >;
    }
    return this.#start(op, fn, timeout) as Promise<Awaited<T>>;
  }

  #joinOp<T>(
    outer: Op<E>,
    kind: OpKind,
    fn: (engine: E, ctx: OpContext) => T | PromiseLike<T>,
  ): Promise<Awaited<T>> {
    if (kind === 'write' && outer.kind === 'read') {
      return Promise.reject(
        new DeadlockError(
          `Cannot run a write on ${this.#describe()} inside one of its reads (op ${outer.id}): it would wait for itself`,
          this.name,
        ),
      );
    }
    try {
      return Promise.resolve(fn((outer.handle as Handle<E>).engine, outer)) as Promise<Awaited<T>>;
    } catch (error) {
      return Promise.reject(error);
    }
  }

  #start(
    op: Op<E>,
    fn: (engine: E, ctx: OpContext) => unknown,
    timeout: number | undefined,
  ): Promise<unknown> {
    this.#ops.push(op);
    if (op.callerSignal !== undefined) this.#callerSignals.add(op.callerSignal, op);
    // Fast path: lock free and a handle idle: no promise to wait on, no AbortController.
    const lease = op.kind === 'read' ? this.#lock.tryAcquireRead() : this.#lock.tryAcquireWrite();
    if (lease !== null) {
      op.lease = lease;
      const now = performance.now();
      const handle = this.#pool.tryAcquire(now);
      if (handle !== null) {
        op.handle = handle;
        return this.#run(op, fn, now);
      }
    }
    return this.#waitThenRun(op, fn, timeout);
  }

  async #waitThenRun(
    op: Op<E>,
    fn: (engine: E, ctx: OpContext) => unknown,
    timeout: number | undefined,
  ): Promise<unknown> {
    const startedWaiting = performance.now();
    try {
      if (op.lease === null) {
        op.lease =
          op.kind === 'read'
            ? await this.#lock.acquireRead({ signal: op.signal, timeout })
            : await this.#lock.acquireWrite({ signal: op.signal, timeout });
      }
      const remaining =
        timeout === undefined
          ? undefined
          : Math.max(0, timeout - (performance.now() - startedWaiting));
      const handle = this.#pool.acquire(op.signal, remaining, timeout);
      op.handle = handle instanceof Promise ? await handle : handle;
    } catch (error) {
      this.#ops.remove(op);
      if (op.callerSignal !== undefined) this.#callerSignals.remove(op.callerSignal, op);
      op.lease?.release();
      op.phase = 'done';
      if (error instanceof LockTimeoutError) this.#counters.lockTimeouts++;
      throw error;
    }
    if (op.aborted) {
      // Aborted (caller or close) in the turn between grant and start.
      this.#ops.remove(op);
      if (op.callerSignal !== undefined) this.#callerSignals.remove(op.callerSignal, op);
      this.#pool.release(op.handle);
      op.lease.release();
      op.phase = 'done';
      throw op.abortReason;
    }
    return this.#run(op, fn);
  }

  #run(
    op: Op<E>,
    fn: (engine: E, ctx: OpContext) => unknown,
    now: number = performance.now(),
  ): Promise<unknown> {
    const handle = op.handle as Handle<E>;
    op.phase = 'running';
    op.generation = handle.generation;
    op.startedAt = now;
    op.lastBeat = now;
    this.#counters.ops++;
    this.#watchdog?.watch(op, now);
    return new Promise<unknown>((resolve, reject) => {
      op.resolve = resolve;
      op.reject = reject;
      let result: unknown;
      try {
        result = runHolding(this, op, fn, handle.engine, op);
      } catch (error) {
        this.#fnSettled(op, false, error);
        return;
      }
      if (isThenable(result)) {
        result.then(
          (value) => this.#fnSettled(op, true, value),
          (error: unknown) => this.#fnSettled(op, false, error),
        );
      } else {
        this.#fnSettled(op, true, result);
      }
    });
  }

  /** The op no longer counts as running. Its lease and handle are dealt with by the caller. */
  #endRun(op: Op<E>): void {
    this.#ops.remove(op);
    this.#watchdog?.unwatch(op);
    if (op.callerSignal !== undefined) this.#callerSignals.remove(op.callerSignal, op);
    if (op.graceTimer !== undefined) {
      clearTimeout(op.graceTimer);
      op.graceTimer = undefined;
    }
  }

  #fnSettled(op: Op<E>, ok: boolean, value: unknown): void {
    op.fnSettled = true;
    op.onFnSettled?.();
    if (op.phase === 'running') {
      this.#endRun(op);
      op.phase = 'done';
      this.#returnHandle(op, ok, value);
      (op.lease as Lease).release();
      if (ok) {
        this.#counters.succeeded++;
        op.resolve(value);
      } else {
        this.#counters.failed++;
        this.#recordError(value);
        op.reject(value);
      }
      return;
    }
    if (op.phase === 'cancelling') {
      // The engine wound the op down after the cancel: keep the handle, but only once the
      // cancel call itself is done, so it can never hit the next op on this handle.
      const finish = (): void => {
        if (op.phase !== 'cancelling') return;
        this.#endRun(op);
        op.phase = 'done';
        this.#returnHandle(op, ok, value);
        (op.lease as Lease).release();
      };
      if (op.cancelDone === undefined) finish();
      else op.cancelDone.then(finish);
    }
    // stalled / abandoned / closed: the caller was answered and the handle retired already.
  }

  #returnHandle(op: Op<E>, ok: boolean, value: unknown): void {
    const handle = op.handle as Handle<E>;
    if (!ok && this.#isFatal(op, value)) {
      this.#pool.retire(handle, 'fatal', value);
    } else {
      // Its last sign of life: saves a clock read per op, and errs toward checking early.
      this.#pool.release(handle, op.lastBeat);
    }
  }

  #isFatal(op: Op<E>, error: unknown): boolean {
    const isFatal = this.#options.isFatal;
    if (isFatal === undefined) return false;
    // Cancellation is not a fatal error: the handle survived it.
    if (
      op.aborted &&
      (error === op.abortReason || (error as Error | null)?.name === 'AbortError')
    ) {
      return false;
    }
    try {
      return isFatal(error) === true;
    } catch {
      return false;
    }
  }

  /** The caller's signal aborted. */
  #onCallerAbort(op: Op<E>): void {
    const reason = op.callerSignal?.reason;
    if (op.phase === 'waiting') {
      this.#counters.aborts++;
      op.abort(reason);
      return;
    }
    if (op.phase !== 'running') return;
    this.#counters.aborts++;
    op.phase = 'cancelling';
    this.#watchdog?.unwatch(op);
    op.abort(reason);
    op.reject(reason);
    const cancel = this.#options.cancel;
    if (cancel !== undefined && !op.fnSettled) {
      this.#counters.cancels++;
      const handle = op.handle as Handle<E>;
      op.cancelDone = settleWithin(
        Promise.resolve().then(() => cancel(handle.engine, { op: op.info(), reason })),
        this.#cancelTimeout,
      );
    }
    // If the engine does not wind the op down in time, the handle is presumed lost.
    op.graceTimer = setTimeout(() => this.#abandon(op, reason), this.#cancelTimeout);
  }

  #abandon(op: Op<E>, reason: unknown): void {
    op.graceTimer = undefined;
    if (op.phase !== 'cancelling') return;
    this.#endRun(op);
    op.phase = 'abandoned';
    (op.lease as Lease).revoke(reason);
    this.#pool.retire(op.handle as Handle<E>, 'abandoned', reason);
    this.#events.emit('abandon', { op: op.info(), reason });
  }

  #runProbe(op: Op<E>, signal: AbortSignal): Promise<unknown> {
    const probe = this.#options.probe as NonNullable<EngineGuardOptions<E>['probe']>;
    return Promise.resolve(probe((op.handle as Handle<E>).engine, { signal, op: op.info() }));
  }

  /** Every conclusive probe: of a running op, or the check of an idle handle (`op` undefined). */
  #recordProbe(
    op: Op<E> | undefined,
    generation: number,
    ok: boolean,
    error: unknown,
    durationMs: number,
    consecutive: number,
  ): void {
    this.#lastProbe = {
      ok,
      at: Date.now(),
      durationMs,
      error: ok ? undefined : errorSummary(error).message,
    };
    if (!ok) {
      this.#counters.probeFailures++;
      this.#events.emit('probeFailure', { op: op?.info(), generation, error, consecutive });
    }
    this.#updateState();
  }

  #convict(op: Op<E>, lastError: unknown): void {
    if (op.phase !== 'running') return;
    this.#counters.stalls++;
    const error = new EngineStalledError({
      guardName: this.name,
      kind: op.kind,
      opId: op.id,
      label: op.label,
      generation: op.generation,
      probeFailures: op.probeFailures,
      cause: lastError,
    });
    this.#endRun(op);
    op.phase = 'stalled';
    op.abort(error);
    this.#recordError(error);
    op.reject(error);
    (op.lease as Lease).revoke(error);
    const cancel = this.#options.cancel;
    const handle = op.handle as Handle<E>;
    const info = op.info();
    const cancelFirst =
      cancel === undefined
        ? undefined
        : () => {
            this.#counters.cancels++;
            return settleWithin(
              Promise.resolve().then(() => cancel(handle.engine, { op: info, reason: error })),
              this.#cancelTimeout,
            );
          };
    this.#pool.retire(handle, 'stall', error, cancelFirst);
    this.#events.emit('stall', { op: info, error, probeFailures: op.probeFailures });
    // The caller has its answer while fn is still running: the guard stops waiting for it.
    if (!op.fnSettled) this.#events.emit('abandon', { op: info, reason: error });
    this.#updateState();
  }

  #recordError(error: unknown): void {
    const { message, code } = errorSummary(error);
    this.#lastError = { message, code, at: Date.now() };
  }

  #computeState(): GuardState {
    if (this.#closed) return 'closed';
    const pool = this.#pool;
    // Failing to connect, or a handle just lost and still being torn down.
    if (pool.failures > 0 || pool.retiring > 0) return 'degraded';
    for (let op = this.#ops.head; op !== null; op = op.next) {
      if (op.probeFailures > 0) return 'degraded';
    }
    if (pool.idleCount + pool.busyCount > 0) return 'ready';
    if (pool.connecting > 0) return 'connecting';
    return 'idle';
  }

  #updateState(): void {
    const next = this.#computeState();
    if (next === this.#state) return;
    const from = this.#state;
    this.#state = next;
    this.#events.emit('state', { from, to: next });
  }

  async #close(): Promise<void> {
    this.#closed = true;
    this.#updateState();
    const error = new GuardClosedError(this.name);
    this.#watchdog?.stop();
    const live: Op<E>[] = [];
    for (let op = this.#ops.head; op !== null; op = op.next) live.push(op);
    for (const op of live) {
      if (op.phase === 'waiting') {
        op.abort(error);
        continue;
      }
      if (op.phase !== 'running' && op.phase !== 'cancelling') continue;
      const wasRunning = op.phase === 'running';
      this.#endRun(op);
      op.phase = 'closed';
      op.abort(error);
      if (wasRunning) op.reject(error);
      (op.lease as Lease).revoke(error);
      const fnDone = op.fnSettled
        ? Promise.resolve()
        : new Promise<void>((resolve) => {
            op.onFnSettled = resolve;
          });
      this.#pool.retire(op.handle as Handle<E>, 'close', error, () => fnDone);
    }
    await settleWithin(this.#pool.close(), this.#closeTimeout);
  }

  *#liveOps(): Generator<Op<E>> {
    for (let op = this.#ops.head; op !== null; ) {
      // Read the link first: the consumer may unlink the op it is given.
      const next: Op<E> | null = op.next;
      yield op;
      op = next;
    }
  }

  #describe(): string {
    return this.name === undefined ? 'the engine guard' : `engine guard "${this.name}"`;
  }
}
