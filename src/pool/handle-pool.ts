/**
 * The handle pool: opens engine handles lazily, hands them out, and replaces dead ones.
 *
 * Invariants:
 * - In service (idle + busy + being opened) there are never more than `size` handles. A retired
 *   handle leaves service at once; its `destroy` runs in the background, bounded by
 *   `destroyTimeout`, so a `destroy` that never settles cannot shrink the pool for good.
 * - Handles are opened on demand only: one attempt per waiter while the engine is healthy,
 *   a single attempt at a time (with jittered exponential backoff) after a failure. An attempt
 *   whose waiter gave up (orphaned) does not count as serving later waiters.
 * - `setup` runs once per new handle, inside the attempt, before the handle serves anyone.
 * - Waiters are served in arrival order; one that aborts leaves the queue in O(1). A handle
 *   opened for a waiter that left goes idle for the next one: nothing is leaked.
 * - After `failFastAfter` consecutive failed attempts the engine counts as down: attempts go on
 *   in the background, and new and already queued waiters fail fast with
 *   `EngineUnavailableError` until one succeeds, except those that asked to `waitForReady`.
 * - `close()` resolves once every destroy settled, handles caught in an idle check included.
 */
import {
  EngineUnavailableError,
  GuardClosedError,
  HookTimeoutError,
  LockTimeoutError,
  ProbeTimeoutError,
} from '../errors.js';
import { bounded, noop, type Timer } from '../internal/promises.js';
import { type QueueNode, WaiterQueue, type Withdrawable } from '../internal/waiter-queue.js';
import { type BackoffPolicy, backoffDelay } from './backoff.js';

/** One engine handle and its bookkeeping. */
export class Handle<E> {
  state: 'idle' | 'busy' | 'retiring' = 'idle';
  idleSince: number = performance.now();
  constructor(
    readonly engine: E,
    readonly generation: number,
  ) {}
}

/** Why a handle was taken out of service. */
export type RetireReason =
  | 'stall'
  | 'fatal'
  | 'idle-check'
  | 'abandoned'
  | 'reset'
  | 'session-end'
  | 'close';

/** A handle generation counter, shared by the pools of one guard so generations never repeat. */
export interface GenerationCounter {
  value: number;
}

/** What the pool calls out to. */
export interface PoolHooks<E> {
  /** Opens a handle and runs its setup; rejects if either fails. */
  open(signal: AbortSignal, generation: number): Promise<E>;
  /** Destroys a handle (already bounded by the pool). */
  destroy(engine: E, reason: unknown): Promise<void> | void;
  /** Cheap synchronous check of an idle handle before reuse; false retires it. */
  isAlive: ((engine: E) => boolean) | undefined;
  /** Probes an idle handle before reuse; undefined when there is no probe. */
  probeIdle: ((engine: E, signal: AbortSignal) => Promise<unknown>) | undefined;
  /** A handle is open; `durationMs` is how long its `create` + `setup` took. */
  onConnect(generation: number, durationMs: number): void;
  onConnectError(error: unknown, attempts: number, retryInMs: number): void;
  onRetire(
    handle: Handle<E>,
    reason: Exclude<RetireReason, 'close' | 'session-end'>,
    cause: unknown,
  ): void;
  onDestroyError(generation: number, error: unknown): void;
  onIdleProbe(generation: number, ok: boolean, error: unknown, durationMs: number): void;
  /** Counts changed (an attempt started or ended, a destroy finished): re-derive state. */
  onChange(): void;
}

/** Resolved pool settings. */
export interface PoolSettings {
  size: number;
  backoff: BackoffPolicy;
  connectTimeout: number;
  destroyTimeout: number;
  /** Probe an idle handle unused for this long before reuse; undefined: never. */
  idleCheckAfter: number | undefined;
  probeTimeout: number;
  /** Name of the owning guard, for the errors the pool raises. */
  name: string | undefined;
  /** Where generations come from (shared between a guard's pools). */
  generations: GenerationCounter;
}

class HandleWaiter<E> implements QueueNode<HandleWaiter<E>> {
  prev: HandleWaiter<E> | null = null;
  next: HandleWaiter<E> | null = null;
  queued = false;
  signal: AbortSignal | undefined = undefined;
  timer: Timer | undefined = undefined;
  constructor(
    readonly pool: HandlePool<E>,
    /** Waits through an engine outage instead of failing fast. */
    readonly waitForReady: boolean,
    readonly resolve: (handle: Handle<E>) => void,
    readonly reject: (reason: unknown) => void,
  ) {}
  handleEvent(): void {
    this.pool[kGiveUp](this, this.signal?.reason);
  }
}

const kGiveUp = Symbol('giveUp');

/** See the module documentation. */
export class HandlePool<E> {
  readonly settings: PoolSettings;
  readonly #hooks: PoolHooks<E>;
  readonly #idle: Handle<E>[] = [];
  /** Handles lent out; a count, not a set: a busy handle is only ever found through its op. */
  #busy = 0;
  readonly #waiters = new WaiterQueue<HandleWaiter<E>>();
  readonly #attempts = new Set<AbortController>();
  readonly #destroying = new Set<Promise<void>>();
  /** Idle checks in flight (each bounded by probeTimeout): close() waits for them. */
  readonly #checks = new Set<Promise<void>>();
  /** Callers waiting for an idle check of the handle they will get: they wait for a handle. */
  #waitingForCheck = 0;
  #connecting = 0;
  /**
   * Attempts in flight that no waiter is left to claim (their waiters gave up). They do not
   * count as serving the waiters that come later: a connect lost in a network blip must not
   * make them wait for `connectTimeout` while a slot is free.
   */
  #orphaned = 0;
  #retiring = 0;
  #failures = 0;
  #lastError: unknown = undefined;
  #retryTimer: Timer | undefined = undefined;
  #nextAttemptAt: number | undefined = undefined;
  #closed = false;

  constructor(settings: PoolSettings, hooks: PoolHooks<E>) {
    this.settings = settings;
    this.#hooks = hooks;
  }

  get generation(): number {
    return this.settings.generations.value;
  }
  get idleCount(): number {
    return this.#idle.length;
  }
  get busyCount(): number {
    return this.#busy;
  }
  get connecting(): number {
    return this.#connecting;
  }
  get retiring(): number {
    return this.#retiring;
  }
  /** Callers waiting for a handle: queued, or waiting for the idle check of theirs. */
  get waiting(): number {
    return this.#waiters.size + this.#waitingForCheck;
  }
  get failures(): number {
    return this.#failures;
  }
  /** Epoch ms of the next scheduled attempt. */
  get nextAttemptAt(): number | undefined {
    return this.#nextAttemptAt;
  }
  /** Consecutive failures reached `failFastAfter` and no handle is open at all. */
  get isDown(): boolean {
    return (
      this.#failures >= this.settings.backoff.failFastAfter &&
      this.#idle.length === 0 &&
      this.#busy === 0
    );
  }

  #inService(): number {
    return this.#idle.length + this.#busy + this.#connecting;
  }

  /** The error a caller gets when it gives up, or is refused, while the engine is failing. */
  unavailableError(): EngineUnavailableError {
    return new EngineUnavailableError(
      this.#failures,
      this.#lastError,
      this.#nextAttemptAt,
      this.settings.name,
    );
  }

  /**
   * An idle handle that needs no check, or `null`. Never waits, never opens. `now` is the
   * caller's `performance.now()`, to save a clock read on the hot path.
   */
  tryAcquire(now: number = performance.now()): Handle<E> | null {
    if (this.#closed) return null;
    const handle = this.#takeLiveIdle(false);
    if (handle === undefined || this.#needsIdleCheck(handle, now)) return null;
    this.#idle.pop();
    handle.state = 'busy';
    this.#busy++;
    return handle;
  }

  /** Sat unused long enough that it must pass a probe before it serves anyone. */
  #needsIdleCheck(handle: Handle<E>, now: number): boolean {
    const check = this.settings.idleCheckAfter;
    return (
      check !== undefined && this.#hooks.probeIdle !== undefined && now - handle.idleSince >= check
    );
  }

  /** What a caller gets when its wait for a handle runs out. */
  #giveUpError(reportedTimeout: number): Error {
    return this.#failures > 0
      ? this.unavailableError()
      : new LockTimeoutError(reportedTimeout, this.settings.name);
  }

  /**
   * The newest idle handle that `isAlive` does not reject (dead ones are retired on the way),
   * popped off the idle list when `pop`, else left on top of it.
   */
  #takeLiveIdle(pop: boolean): Handle<E> | undefined {
    const isAlive = this.#hooks.isAlive;
    for (;;) {
      const handle = this.#idle.at(-1);
      if (handle === undefined) return undefined;
      let alive = true;
      if (isAlive !== undefined) {
        try {
          alive = isAlive(handle.engine) !== false;
        } catch {
          alive = false;
        }
      }
      if (alive) {
        if (pop) this.#idle.pop();
        return handle;
      }
      this.retire(handle, 'fatal', new Error('isAlive() reported the idle handle dead'));
    }
  }

  /**
   * Takes a handle: an idle one at once (after an idle check if it sat unused too long), else
   * waits for one to be opened or returned. `timeout` bounds the wait; `reportedTimeout` is the
   * bound named in the error when it runs out (the caller's whole bound, of which `timeout` is
   * what was left after queueing for the lock). When it waits, `exit` (if given) gets the way
   * to withdraw it (the promise then rejects with the reason given, as on abort).
   */
  acquire(
    signal: AbortSignal | undefined,
    timeout: number | undefined,
    reportedTimeout: number | undefined = timeout,
    waitForReady = false,
    exit?: Withdrawable,
  ): Handle<E> | Promise<Handle<E>> {
    if (this.#closed) return Promise.reject(new GuardClosedError(this.settings.name));
    const handle = this.#takeLiveIdle(true);
    if (handle !== undefined) {
      if (this.#needsIdleCheck(handle, performance.now())) {
        return this.#checkIdle(
          handle,
          signal,
          timeout,
          reportedTimeout ?? timeout,
          waitForReady,
          exit,
        );
      }
      handle.state = 'busy';
      this.#busy++;
      return handle;
    }
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.isDown && !waitForReady) return Promise.reject(this.unavailableError());
    return new Promise<Handle<E>>((resolve, reject) => {
      const waiter = new HandleWaiter(this, waitForReady, resolve, reject);
      this.#waiters.push(waiter);
      if (exit !== undefined) exit.withdraw = (reason) => this[kGiveUp](waiter, reason);
      if (signal !== undefined) {
        waiter.signal = signal;
        signal.addEventListener('abort', waiter, { once: true });
      }
      if (timeout !== undefined) {
        waiter.timer = setTimeout(() => {
          waiter.timer = undefined;
          this[kGiveUp](waiter, this.#giveUpError(reportedTimeout ?? timeout));
        }, timeout);
      }
      // A background retry timer now has someone waiting on it.
      this.#retryTimer?.ref();
      this.#pump();
    });
  }

  /**
   * Probes a handle that sat idle before handing it out. The caller's signal and timeout keep
   * running meanwhile: a probe stuck on a half-open link must not hold the caller past either.
   */
  #checkIdle(
    handle: Handle<E>,
    signal: AbortSignal | undefined,
    timeout: number | undefined,
    reportedTimeout: number | undefined,
    waitForReady: boolean,
    exit: Withdrawable | undefined,
  ): Promise<Handle<E>> {
    handle.state = 'busy';
    this.#busy++;
    const controller = new AbortController();
    const started = performance.now();
    const probed = bounded(
      Promise.resolve().then(() => this.#hooks.probeIdle?.(handle.engine, controller.signal)),
      this.settings.probeTimeout,
      () => new ProbeTimeoutError(this.settings.probeTimeout),
    );
    return new Promise<Handle<E>>((resolve, reject) => {
      let waiting = true;
      this.#waitingForCheck++;
      let timer: Timer | undefined;
      const stopWaiting = (): void => {
        waiting = false;
        this.#waitingForCheck--;
        signal?.removeEventListener('abort', onAbort);
        if (timer !== undefined) clearTimeout(timer);
      };
      const onAbort = (): void => {
        if (!waiting) return;
        stopWaiting();
        reject(signal?.reason);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      // Withdrawn: as on abort, the handle goes to the next caller once it passed its check.
      if (exit !== undefined) {
        exit.withdraw = (reason) => {
          if (!waiting) return;
          stopWaiting();
          reject(reason);
        };
      }
      if (timeout !== undefined) {
        timer = setTimeout(() => {
          if (!waiting) return;
          stopWaiting();
          reject(this.#giveUpError(reportedTimeout ?? timeout));
        }, timeout);
      }
      const checked = probed.then((result) => {
        this.#checks.delete(checked);
        if (this.#closed) {
          // Closed while checking: the handle goes straight to destroy, close() waits for it.
          this.#busy--;
          this.#destroy(handle, new GuardClosedError(this.settings.name));
          if (!waiting) return;
          stopWaiting();
          reject(new GuardClosedError(this.settings.name));
          return;
        }
        this.#hooks.onIdleProbe(
          handle.generation,
          result.ok,
          result.ok ? undefined : result.error,
          performance.now() - started,
        );
        if (result.ok) {
          handle.idleSince = performance.now();
          if (waiting) {
            stopWaiting();
            resolve(handle);
          } else {
            // The caller left while we checked: the handle is fine, give it to someone else.
            this.release(handle);
          }
          return;
        }
        controller.abort(result.error);
        this.retire(handle, 'idle-check', result.error);
        if (!waiting) return;
        stopWaiting();
        const remaining =
          timeout === undefined ? undefined : Math.max(0, timeout - (performance.now() - started));
        Promise.resolve(this.acquire(signal, remaining, reportedTimeout, waitForReady, exit)).then(
          resolve,
          reject,
        );
      });
      this.#checks.add(checked);
    });
  }

  /**
   * Gives a handle back: to the first waiter, else to the idle list. `aliveAt` is the last time
   * the handle was known to answer (its op's last sign of life); the idle check counts from it.
   */
  release(handle: Handle<E>, aliveAt?: number): void {
    if (handle.state !== 'busy') return;
    this.#busy--;
    this.#offer(handle, aliveAt);
  }

  /**
   * Takes `handle`, busy and opened by another pool of the same guard, into this pool's service,
   * still busy, if a slot is free. A session that pins a shared handle moves it into the
   * sessions' pool this way, and an unpinned one moves it back. A slot that only an idle handle
   * holds is free: that handle is retired for it (in the sessions' pool, one opened for a
   * session that left before it came). False when the pool is busy or opening to its size, or
   * closed: the caller keeps the handle where it was.
   */
  tryAdopt(handle: Handle<E>): boolean {
    if (this.#closed || handle.state !== 'busy') return false;
    const full = this.#inService() >= this.settings.size;
    const idle = full ? this.#idle[0] : undefined;
    if (full && idle === undefined) return false;
    this.#busy++;
    // Counted busy first: the pool never looks empty (down) in between.
    if (idle !== undefined) this.retire(idle, 'session-end', undefined);
    return true;
  }

  /**
   * `handle`, busy, leaves this pool's service without being destroyed: another pool adopted
   * it (see {@link HandlePool.tryAdopt}). Its slot is free at once, for a waiter too.
   */
  detach(handle: Handle<E>): void {
    if (handle.state !== 'busy') return;
    this.#busy--;
    this.#pump();
  }

  #offer(handle: Handle<E>, aliveAt: number = performance.now()): void {
    if (this.#closed) {
      this.#destroy(handle, new GuardClosedError(this.settings.name));
      return;
    }
    const waiter = this.#waiters.head;
    if (waiter !== null) {
      this.#dequeue(waiter);
      handle.state = 'busy';
      this.#busy++;
      waiter.resolve(handle);
      return;
    }
    handle.state = 'idle';
    handle.idleSince = aliveAt;
    this.#idle.push(handle);
  }

  /**
   * Takes a handle out of service for good and destroys it in the background, after
   * `beforeDestroy` (e.g. a server-side cancel) settled or timed out.
   */
  retire(
    handle: Handle<E>,
    reason: RetireReason,
    cause: unknown,
    beforeDestroy?: () => Promise<unknown>,
  ): void {
    if (handle.state === 'retiring') return;
    if (handle.state === 'busy') this.#busy--;
    else {
      const at = this.#idle.indexOf(handle);
      if (at >= 0) this.#idle.splice(at, 1);
    }
    this.#destroy(handle, cause, beforeDestroy);
    // Closing (the guard, or a session) is not a replacement: no event for it.
    if (reason !== 'close' && reason !== 'session-end') this.#hooks.onRetire(handle, reason, cause);
    // The last open handle gone after failed connects: the engine is down now, and the waiters
    // get the answer new callers get, not a wait for the next retry.
    if (this.isDown) {
      this.#failFast();
      this.#keepTrying();
    }
    // The slot is free: a waiter may need a fresh handle now.
    this.#pump();
  }

  #destroy(handle: Handle<E>, reason: unknown, beforeDestroy?: () => Promise<unknown>): void {
    handle.state = 'retiring';
    this.#retiring++;
    const run = async (): Promise<void> => {
      if (beforeDestroy !== undefined) {
        await bounded(
          beforeDestroy(),
          this.settings.destroyTimeout,
          () => new HookTimeoutError('cancel', this.settings.destroyTimeout),
        );
      }
      const result = await bounded(
        Promise.resolve().then(() => this.#hooks.destroy(handle.engine, reason)),
        this.settings.destroyTimeout,
        () => new HookTimeoutError('destroy', this.settings.destroyTimeout),
      );
      if (!result.ok) this.#hooks.onDestroyError(handle.generation, result.error);
    };
    const done = run().finally(() => {
      this.#retiring--;
      this.#destroying.delete(done);
      this.#hooks.onChange();
    });
    this.#destroying.add(done);
  }

  [kGiveUp](waiter: HandleWaiter<E>, reason: unknown): void {
    if (!waiter.queued) return;
    this.#dequeue(waiter);
    if (this.#connecting - this.#orphaned > this.#waiters.size) this.#orphaned++;
    waiter.reject(reason);
  }

  /** An attempt ended: orphans are the attempts beyond those still in flight. */
  #attemptEnded(controller: AbortController, timer: Timer): void {
    clearTimeout(timer);
    this.#attempts.delete(controller);
    this.#connecting--;
    if (this.#orphaned > this.#connecting) this.#orphaned = this.#connecting;
  }

  #dequeue(waiter: HandleWaiter<E>): void {
    this.#waiters.remove(waiter);
    if (waiter.signal !== undefined) {
      waiter.signal.removeEventListener('abort', waiter);
      waiter.signal = undefined;
    }
    if (waiter.timer !== undefined) {
      clearTimeout(waiter.timer);
      waiter.timer = undefined;
    }
  }

  /** Opens handles for the waiters that no attempt in flight will serve. */
  #pump(): void {
    if (this.#closed || this.#retryTimer !== undefined) return;
    while (
      this.#waiters.size > this.#connecting - this.#orphaned &&
      this.#inService() < this.settings.size &&
      // After a failure, probe the engine with one attempt at a time.
      !(this.#failures > 0 && this.#connecting > 0)
    ) {
      this.#connect();
    }
  }

  #connect(): void {
    this.#connecting++;
    const startedAt = performance.now();
    const generation = ++this.settings.generations.value;
    const controller = new AbortController();
    this.#attempts.add(controller);
    const timer = setTimeout(
      () => controller.abort(new HookTimeoutError('connect', this.settings.connectTimeout)),
      this.settings.connectTimeout,
    );
    let opened: Promise<E>;
    try {
      opened = Promise.resolve(this.#hooks.open(controller.signal, generation));
    } catch (error) {
      opened = Promise.reject(error);
    }
    // An attempt that ignores its signal must not hold the slot forever.
    const abandoned = new Promise<never>((_, reject) => {
      controller.signal.addEventListener('abort', () => reject(controller.signal.reason), {
        once: true,
      });
    });
    this.#hooks.onChange();
    const handled = Promise.race([opened, abandoned]).then(
      (engine) => {
        this.#attemptEnded(controller, timer);
        this.#failures = 0;
        this.#lastError = undefined;
        this.#nextAttemptAt = undefined;
        const handle = new Handle(engine, generation);
        this.#offer(handle);
        if (!this.#closed) this.#hooks.onConnect(generation, performance.now() - startedAt);
        this.#pump();
      },
      (error: unknown) => {
        this.#attemptEnded(controller, timer);
        // A late success of an abandoned attempt still owns a handle: close it. close() waits
        // for the attempt as long as for a destroy (destroyTimeout), not for ever.
        const late = bounded(
          opened.then(
            (engine) => this.#destroy(new Handle(engine, generation), error),
            () => {},
          ),
          this.settings.destroyTimeout,
          noop,
        );
        if (this.#closed) return late;
        this.#failures++;
        this.#lastError = error;
        const delay = backoffDelay(this.settings.backoff, this.#failures);
        this.#nextAttemptAt = Date.now() + delay;
        this.#hooks.onConnectError(error, this.#failures, delay);
        if (this.isDown) this.#failFast();
        this.#scheduleRetry(delay);
        return late;
      },
    );
    // close() waits until the attempt settled and what it made was offered or destroyed
    // (bounded as above, and by the guard's closeTimeout): a caller that frees the engine's
    // resource after close() (a DuckDB instance, a driver's pool) must not free it under a
    // connect still in flight; DuckDB's closeSync() crashed or hung the process there.
    this.trackDestroy(handled);
  }

  /**
   * The engine counts as down: waiters that did not opt into waiting for it get the same
   * answer as new callers, now, instead of waiting for an engine that may never return.
   */
  #failFast(): void {
    for (let waiter = this.#waiters.head; waiter !== null; ) {
      const next: HandleWaiter<E> | null = waiter.next;
      if (!waiter.waitForReady) this[kGiveUp](waiter, this.unavailableError());
      waiter = next;
    }
  }

  /**
   * Down, with nothing in service and no attempt planned (the last retry found a handle still in
   * service and stopped): plan one, or new callers would fail fast for ever.
   */
  #keepTrying(): void {
    if (this.#closed || this.#retryTimer !== undefined || this.#inService() > 0) return;
    const delay = backoffDelay(this.settings.backoff, this.#failures);
    this.#nextAttemptAt = Date.now() + delay;
    this.#scheduleRetry(delay);
  }

  #scheduleRetry(delay: number): void {
    if (this.#retryTimer !== undefined) clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      if (this.#closed) return;
      if (this.#waiters.size > 0) {
        this.#pump();
      } else if (this.isDown && this.#inService() === 0) {
        // Nobody waits (new callers fail fast), so keep trying in the background.
        this.#connect();
      } else {
        this.#nextAttemptAt = undefined;
      }
    }, delay);
    // Background retries alone must not keep the process alive; waiters have their own timers.
    if (this.#waiters.size === 0) this.#retryTimer.unref();
  }

  /**
   * Stops the pool: rejects waiters, aborts attempts, destroys idle handles. Busy handles are
   * destroyed when released or retired. Resolves when every destroy started so far settled, and
   * every attempt in flight settled (a handle it still made destroyed).
   */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      if (this.#retryTimer !== undefined) clearTimeout(this.#retryTimer);
      this.#retryTimer = undefined;
      const closed = new GuardClosedError(this.settings.name);
      for (let w = this.#waiters.head; w !== null; w = this.#waiters.head) this[kGiveUp](w, closed);
      for (const controller of this.#attempts) controller.abort(closed);
      for (const handle of this.#idle.splice(0)) this.#destroy(handle, closed);
    }
    await this.drained();
  }

  /**
   * Counts `work` (a destroy made outside the pool: a handle whose setup failed inside an
   * attempt; an attempt in flight) among the destroys that `close()` and `drained()` wait for.
   */
  trackDestroy(work: Promise<unknown>): void {
    const done: Promise<void> = work.then(
      () => {
        this.#destroying.delete(done);
      },
      () => {
        this.#destroying.delete(done);
      },
    );
    this.#destroying.add(done);
  }

  /** Resolves when no idle check and no destroy is in flight. */
  async drained(): Promise<void> {
    while (this.#checks.size > 0 || this.#destroying.size > 0) {
      await Promise.all([...this.#checks, ...this.#destroying]);
    }
  }
}
