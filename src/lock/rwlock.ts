import { lockChannels } from '../diagnostics.js';
import { DeadlockError, LockTimeoutError, QueueFullError } from '../errors.js';
import { heldBy, runHolding } from '../internal/context.js';
import { isThenable, type Timer } from '../internal/promises.js';
import { SignalFanout } from '../internal/signal-fanout.js';
import {
  validateDuration,
  validateFunction,
  validateInteger,
  validateOptionalString,
  validateOptionsObject,
  validateSignal,
} from '../internal/validate.js';
import { type QueueNode, WaiterQueue } from '../internal/waiter-queue.js';
import { HeldLease, type Lease, type LockMode, type ReturnHold } from './lease.js';

/** Options of {@link RWLock}. */
export interface RWLockOptions {
  /** Name used in error messages and diagnostics. */
  name?: string | undefined;
  /**
   * Most waiters that may be queued at once; an acquire that would exceed it rejects with
   * {@link QueueFullError}. An acquire that is granted at once never counts. Default: `Infinity`.
   */
  maxQueue?: number | undefined;
  /**
   * Most read leases held at once; further readers queue in arrival order like everyone else.
   * Lets a lock hand out exactly as many shared leases as there are resources to share (an
   * engine guard sets it to its pool size). Default: `Infinity`.
   */
  maxReaders?: number | undefined;
}

/** Options of one acquisition. */
export interface AcquireOptions {
  /** Aborting it removes the waiter from the queue; the promise rejects with `signal.reason`. */
  signal?: AbortSignal | undefined;
  /**
   * Most milliseconds to wait in the queue; then the promise rejects with
   * {@link LockTimeoutError}. Bounds waiting only, never how long the lease is held. `0` means
   * "only if free right now".
   */
  timeout?: number | undefined;
}

/** Synchronous snapshot of a lock. */
export interface RWLockState {
  /** Read leases held now. */
  readers: number;
  /** True while a write lease is held. */
  writing: boolean;
  /** Readers waiting in the queue. */
  queuedReaders: number;
  /** Writers waiting in the queue. */
  queuedWriters: number;
}

/** A queued request. */
class Waiter implements QueueNode<Waiter> {
  prev: Waiter | null = null;
  next: Waiter | null = null;
  queued = false;
  /** The signal it waits with, if any (watched through the lock's fan-out). */
  signal: AbortSignal | undefined = undefined;
  timer: Timer | undefined = undefined;
  readonly enqueuedAt: number;

  constructor(
    readonly mode: LockMode,
    readonly resolve: (lease: HeldLease) => void,
    readonly reject: (reason: unknown) => void,
  ) {
    this.enqueuedAt = lockChannels.acquire.hasSubscribers ? performance.now() : 0;
  }
}

/**
 * A fair, abortable reader/writer lock for async code.
 *
 * Invariants:
 * - A write lease is never held together with any other lease.
 * - Waiters are served in arrival order, in phases: consecutive queued readers enter together;
 *   a queued writer waits for the readers ahead of it to leave and blocks every reader that
 *   arrives after it. Neither writers nor readers starve.
 * - A newcomer is granted at once only when compatible with the holders AND nobody is queued.
 * - An aborted or timed-out waiter leaves the queue in O(1), and whoever it was blocking is
 *   granted in the same turn. Its abort listener and timer are removed when it settles.
 * - `timeout` bounds the wait, never the hold.
 * - Inside `read(fn)` / `write(fn)`, a nested call on the same lock in the same async context
 *   joins the held lease (read in read, read in write, write in write). Write in read rejects at
 *   once with {@link DeadlockError}: waiting for it could never end.
 * - Every promise it returns settles.
 *
 * @example
 * ```ts
 * const lock = new RWLock({ name: 'catalog' });
 * const rows = await lock.read(() => db.query('select 1'), { timeout: 5_000 });
 * await lock.write(() => db.exec('create table t(x int)'));
 * ```
 */
export class RWLock {
  /** Name given at construction, used in messages and diagnostics. */
  readonly name: string | undefined;
  readonly #maxQueue: number;
  readonly #maxReaders: number;
  readonly #queue = new WaiterQueue<Waiter>();
  // One listener per signal however many waiters share it (see SignalFanout).
  readonly #signals = new SignalFanout<Waiter>((waiters, reason) =>
    this.#abortAll(waiters, reason),
  );
  #readers = 0;
  #writing = false;
  #queuedReaders = 0;
  #queuedWriters = 0;
  // Per lock, not per call: how leases give their hold back and how a waiter's timer fires,
  // without a method on the class that user code could call.
  readonly #returnHold: ReturnHold = (lease) => this.#release(lease.mode);
  readonly #onTimeout = (waiter: Waiter, timeout: number): void => {
    waiter.timer = undefined;
    this.#cancel(waiter, new LockTimeoutError(timeout, this.name));
  };

  constructor(options: RWLockOptions = {}) {
    validateOptionsObject(options);
    this.name = validateOptionalString(options.name, 'name');
    this.#maxQueue = validateInteger(options.maxQueue, 'maxQueue', 0, true) ?? Infinity;
    this.#maxReaders = validateInteger(options.maxReaders, 'maxReaders', 1, true) ?? Infinity;
  }

  /** Current holders and waiters. Synchronous; never blocks. */
  get state(): RWLockState {
    return {
      readers: this.#readers,
      writing: this.#writing,
      queuedReaders: this.#queuedReaders,
      queuedWriters: this.#queuedWriters,
    };
  }

  /**
   * Takes a shared lease if one can be had right now, else `null`: no writer holds the lock,
   * nobody is queued, and `maxReaders` is not reached. Never joins a held lease.
   */
  tryAcquireRead(): Lease | null {
    return this.#tryRead();
  }

  #tryRead(): HeldLease | null {
    if (this.#writing || this.#queue.size > 0 || this.#readers >= this.#maxReaders) return null;
    this.#readers++;
    return this.#granted('read', 0);
  }

  /** Takes the exclusive lease if the lock is free and nobody waits, else `null`. Never joins. */
  tryAcquireWrite(): Lease | null {
    return this.#tryWrite();
  }

  #tryWrite(): HeldLease | null {
    if (this.#writing || this.#readers > 0 || this.#queue.size > 0) return null;
    this.#writing = true;
    return this.#granted('write', 0);
  }

  /**
   * Waits for a shared lease. Release it with `lease.release()` (or `using`). Inside
   * `read(fn)`/`write(fn)` of this lock it joins the held lease instead.
   * @throws TypeError | RangeError at the call, on invalid options.
   */
  acquireRead(options?: AcquireOptions): Promise<Lease> {
    return this.#acquire('read', options);
  }

  /**
   * Waits for the exclusive lease. Release it with `lease.release()` (or `using`). Inside
   * `write(fn)` of this lock it joins the held lease; inside `read(fn)` it rejects with
   * {@link DeadlockError}.
   * @throws TypeError | RangeError at the call, on invalid options.
   */
  acquireWrite(options?: AcquireOptions): Promise<Lease> {
    return this.#acquire('write', options);
  }

  /**
   * Runs `fn` under a shared lease and always releases it, however `fn` ends. A nested
   * `read`/`write` call in `fn`'s async context joins this lease.
   */
  read<T>(fn: (lease: Lease) => T | PromiseLike<T>, options?: AcquireOptions): Promise<Awaited<T>> {
    return this.#run('read', fn, options);
  }

  /**
   * Runs `fn` under the exclusive lease and always releases it. A nested `read`/`write` in `fn`'s
   * async context joins it.
   */
  write<T>(
    fn: (lease: Lease) => T | PromiseLike<T>,
    options?: AcquireOptions,
  ): Promise<Awaited<T>> {
    return this.#run('write', fn, options);
  }

  /** The lease held by the current async context through `read(fn)`/`write(fn)`, if any. */
  heldLease(): Lease | undefined {
    return this.#held();
  }

  #held(): HeldLease | undefined {
    const held = heldBy<HeldLease>(this);
    return held === undefined || held.released ? undefined : held;
  }

  /** A lease gave its hold back (release or revoke). */
  #release(mode: LockMode): void {
    if (mode === 'read') {
      this.#readers--;
      // Still shared by others and not at the reader cap: nobody queued can be admitted.
      if (this.#readers > 0 && this.#readers + 1 < this.#maxReaders) {
        this.#publishRelease(mode);
        return;
      }
    } else {
      this.#writing = false;
    }
    this.#publishRelease(mode);
    this.#drain();
  }

  #publishCancel(mode: LockMode, reason: unknown): void {
    if (lockChannels.cancel.hasSubscribers) {
      lockChannels.cancel.publish({ lock: this.name, mode, reason });
    }
  }

  #publishRelease(mode: LockMode): void {
    if (lockChannels.release.hasSubscribers) {
      lockChannels.release.publish({ lock: this.name, mode });
    }
  }

  /** Removes a waiter that gave up (abort or timeout) and wakes whom it blocked. */
  #cancel(waiter: Waiter, reason: unknown): void {
    if (!waiter.queued) return;
    this.#dequeue(waiter);
    this.#publishCancel(waiter.mode, reason);
    waiter.reject(reason);
    this.#drain();
  }

  /** A signal shared by one or more waiters aborted: they all leave, then the queue drains once. */
  #abortAll(waiters: Waiter[], reason: unknown): void {
    for (const waiter of waiters) {
      if (!waiter.queued) continue;
      waiter.signal = undefined; // the fan-out already forgot it
      this.#dequeue(waiter);
      this.#publishCancel(waiter.mode, reason);
      waiter.reject(reason);
    }
    this.#drain();
  }

  #acquire(mode: LockMode, options: AcquireOptions | undefined): Promise<Lease> {
    validateOptionsObject(options);
    const signal = validateSignal(options?.signal);
    const timeout = validateDuration(options?.timeout, 'timeout');
    const held = this.#held();
    if (held !== undefined) return this.#join(held, mode, signal);
    return this.#enqueue(mode, signal, timeout);
  }

  #join(held: HeldLease, mode: LockMode, signal: AbortSignal | undefined): Promise<HeldLease> {
    // Joining never waits, but a caller that already gave up must not get a lease either.
    if (signal?.aborted) {
      this.#publishCancel(mode, signal.reason);
      return Promise.reject(signal.reason);
    }
    if (mode === 'write' && held.mode === 'read') {
      return Promise.reject(
        new DeadlockError(
          `Cannot acquire a write lease on ${this.#describe()} while holding a read lease on it in the same async context`,
          this.name,
        ),
      );
    }
    return Promise.resolve(HeldLease.joining(held));
  }

  #enqueue(
    mode: LockMode,
    signal: AbortSignal | undefined,
    timeout: number | undefined,
  ): Promise<HeldLease> {
    if (signal?.aborted) {
      this.#publishCancel(mode, signal.reason);
      return Promise.reject(signal.reason);
    }
    const lease = mode === 'read' ? this.#tryRead() : this.#tryWrite();
    if (lease !== null) return Promise.resolve(lease);
    if (timeout === 0) {
      const error = new LockTimeoutError(0, this.name);
      this.#publishCancel(mode, error);
      return Promise.reject(error);
    }
    if (this.#queue.size >= this.#maxQueue) {
      const error = new QueueFullError(this.#maxQueue, this.name);
      this.#publishCancel(mode, error);
      return Promise.reject(error);
    }
    return new Promise<HeldLease>((resolve, reject) => {
      const waiter = new Waiter(mode, resolve, reject);
      this.#queue.push(waiter);
      if (mode === 'read') this.#queuedReaders++;
      else this.#queuedWriters++;
      if (signal !== undefined) {
        waiter.signal = signal;
        this.#signals.add(signal, waiter);
      }
      if (timeout !== undefined) {
        waiter.timer = setTimeout(this.#onTimeout, timeout, waiter, timeout);
      }
    });
  }

  #dequeue(waiter: Waiter): void {
    this.#queue.remove(waiter);
    if (waiter.mode === 'read') this.#queuedReaders--;
    else this.#queuedWriters--;
    if (waiter.signal !== undefined) {
      this.#signals.remove(waiter.signal, waiter);
      waiter.signal = undefined;
    }
    if (waiter.timer !== undefined) {
      clearTimeout(waiter.timer);
      waiter.timer = undefined;
    }
  }

  /** Grants the head of the queue for as long as it is compatible with the holders. */
  #drain(): void {
    for (;;) {
      const head = this.#queue.head;
      if (head === null) return;
      if (head.signal?.aborted) {
        // Its signal fired but the listener has not reached it yet (an abort listener that
        // runs first released the lock): it gave up, do not grant it.
        const reason = head.signal.reason;
        this.#dequeue(head);
        head.reject(reason);
        continue;
      }
      if (head.mode === 'write') {
        if (this.#writing || this.#readers > 0) return;
        this.#dequeue(head);
        this.#writing = true;
        head.resolve(this.#granted('write', head.enqueuedAt));
        return;
      }
      if (this.#writing || this.#readers >= this.#maxReaders) return;
      this.#dequeue(head);
      this.#readers++;
      head.resolve(this.#granted('read', head.enqueuedAt));
    }
  }

  #granted(mode: LockMode, enqueuedAt: number): HeldLease {
    if (lockChannels.acquire.hasSubscribers) {
      lockChannels.acquire.publish({
        lock: this.name,
        mode,
        queued: enqueuedAt !== 0,
        waitedMs: enqueuedAt === 0 ? 0 : performance.now() - enqueuedAt,
      });
    }
    return new HeldLease(this.#returnHold, mode, 0);
  }

  #run<T>(
    mode: LockMode,
    fn: (lease: Lease) => T | PromiseLike<T>,
    options: AcquireOptions | undefined,
  ): Promise<Awaited<T>> {
    // Validate before going async, so bad input throws at the call.
    validateFunction(fn, 'fn');
    validateOptionsObject(options);
    const signal = validateSignal(options?.signal);
    const timeout = validateDuration(options?.timeout, 'timeout');
    const held = this.#held();
    if (held !== undefined) return this.#runJoined(held, mode, fn, signal);
    if (signal === undefined || !signal.aborted) {
      const lease = mode === 'read' ? this.#tryRead() : this.#tryWrite();
      if (lease !== null) return this.#runHeld(lease, fn);
    }
    return this.#enqueue(mode, signal, timeout).then((lease) => {
      // Granted, but the caller gave up before its turn came round: do not start fn.
      if (signal?.aborted) {
        lease.release();
        throw signal.reason;
      }
      return this.#runHeld(lease, fn);
    });
  }

  /** Nested call in a context that holds this lock: share the outer hold. */
  async #runJoined<T>(
    held: HeldLease,
    mode: LockMode,
    fn: (lease: Lease) => T | PromiseLike<T>,
    signal: AbortSignal | undefined,
  ): Promise<Awaited<T>> {
    const joined = await this.#join(held, mode, signal);
    try {
      return await fn(joined);
    } finally {
      joined.release();
    }
  }

  /**
   * Runs fn under a held lease and releases it however fn ends. Written with `then` rather than
   * `async`/`await`: one promise fewer per call on the uncontended path.
   */
  #runHeld<T>(lease: Lease, fn: (lease: Lease) => T | PromiseLike<T>): Promise<Awaited<T>> {
    let result: T | PromiseLike<T>;
    try {
      result = runHolding(this, lease, fn, lease);
    } catch (error) {
      lease.release();
      return Promise.reject(error);
    }
    if (!isThenable(result)) {
      lease.release();
      return Promise.resolve(result as Awaited<T>);
    }
    return Promise.resolve(result).then(
      (value) => {
        lease.release();
        return value;
      },
      (error: unknown) => {
        lease.release();
        throw error;
      },
    );
  }

  #describe(): string {
    return this.name === undefined ? 'the lock' : `lock "${this.name}"`;
  }
}
