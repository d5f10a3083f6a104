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
  validateUnknownKeys,
} from '../internal/validate.js';
import type { Withdrawable } from '../internal/waiter-queue.js';

const LOCK_KEYS = ['name', 'maxQueue', 'maxReaders', 'fairness', 'bypassAfter'];
const ACQUIRE_KEYS = ['signal', 'timeout', 'key'];

import { FairQueue, type FairQueueMember, WaiterGroup } from './fair-queue.js';
import { HeldLease, type Lease, type LockMode, type ReturnHold } from './lease.js';
import { WriterPatience } from './patience.js';

/**
 * How an {@link RWLock} orders readers and writers (see the class documentation):
 * - `'no-convoy'` (default): FIFO phases, except that a writer which has waited `bypassAfter` ms
 *   for reads that are still running lets readers pass it until those reads end.
 * - `'fifo'`: strict FIFO phases; a queued writer holds back every later reader for as long as
 *   it waits, however long the reads ahead of it run.
 */
export type Fairness = 'no-convoy' | 'fifo';

/** Default of {@link RWLockOptions.bypassAfter}, in ms. */
export const DEFAULT_BYPASS_AFTER = 100;

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
  /** Order of service; see {@link Fairness}. Default: `'no-convoy'`. */
  fairness?: Fairness | undefined;
  /**
   * With `fairness: 'no-convoy'`: how many ms a writer at the head of the queue holds back later
   * readers while it waits for running reads. Past that, while any read that was running when
   * it started waiting still runs, readers pass it. It is the longest a read waits behind a
   * writer that is itself waiting for long reads. A finite number >= 0. Default: 100.
   */
  bypassAfter?: number | undefined;
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
  /**
   * Fair-share key of a reader (a client id, a tenant; compared like `Map` keys): queued readers
   * are granted round-robin across keys, within the lock's FIFO phases (see "Order of service"
   * in the {@link RWLock} documentation). Readers without a key share one group. Writers ignore
   * it: they are always served in arrival order.
   */
  key?: unknown;
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
  /**
   * True while readers pass the writer at the head of the queue: it has waited `bypassAfter` ms
   * for reads that still run (`fairness: 'no-convoy'` only).
   */
  bypassing: boolean;
}

/**
 * When each waiter queued, for the `waitedMs` of the acquire channel: kept aside, and only while
 * someone listens, so that a queued waiter stays as small as it can (it is the lock's memory per
 * waiter).
 */
const enqueuedAt = new WeakMap<object, number>();

/** A queued request. */
class Waiter implements FairQueueMember<Waiter> {
  prev: Waiter | null = null;
  next: Waiter | null = null;
  queued = false;
  before: Waiter | null = null;
  after: Waiter | null = null;
  /**
   * How it may leave early: the signal it waits with (watched through the lock's fan-out), the
   * timer of its timeout, or both. One slot rather than two, because every field is paid by every
   * queued waiter, and most waiters have neither.
   */
  exit: AbortSignal | Timer | SignalAndTimer | undefined = undefined;

  constructor(
    /** Its key's readers, or the writers. */
    readonly group: WaiterGroup<Waiter>,
    /** Arrival order across readers and writers. */
    readonly seq: number,
    readonly resolve: (lease: HeldLease) => void,
    /** Told, at once, when it leaves without a lease (see {@link queueFor}). */
    readonly reject: (reason: unknown) => void,
  ) {
    if (lockChannels.acquire.hasSubscribers) enqueuedAt.set(this, performance.now());
  }

  get mode(): LockMode {
    return this.group.mode;
  }

  get signal(): AbortSignal | undefined {
    const exit = this.exit;
    if (exit instanceof AbortSignal) return exit;
    return exit instanceof SignalAndTimer ? exit.signal : undefined;
  }

  get timer(): Timer | undefined {
    const exit = this.exit;
    if (exit === undefined || exit instanceof AbortSignal) return undefined;
    return exit instanceof SignalAndTimer ? exit.timer : exit;
  }
}

/** {@link Waiter.exit} of a waiter with both a signal and a timeout. */
class SignalAndTimer {
  constructor(
    readonly signal: AbortSignal,
    readonly timer: Timer,
  ) {}
}

/** See {@link queueFor}. */
type QueueFor = (
  lock: RWLock,
  mode: LockMode,
  signal: AbortSignal | undefined,
  timeout: number | undefined,
  key: unknown,
  leave: (reason: unknown) => void,
  /** A reader that brings its own resource (see {@link RWLock.tryAcquireReadUncapped}). */
  uncapped?: boolean,
  /** Given the way to withdraw the waiter, when it queues. */
  exit?: Withdrawable,
) => Promise<Lease> | undefined;

// Set by the class's static block, which can reach its private queue.
let enqueueFor: QueueFor;

/**
 * The guard's way into a lock it owns: `acquireRead`/`acquireWrite` without what the guard has
 * done already (options validated; the lock is never held through `read(fn)`/`write(fn)`, so
 * there is nothing to join), and a waiter that leaves without a lease (abort, timeout, a full
 * queue) is reported to `leave` in the turn it leaves, not through a rejection a microtask later:
 * the guard's `status()` must not list a queued op whose caller already has its answer. Returns
 * the grant, which never rejects, or `undefined` when the waiter left at once.
 */
export const queueFor: QueueFor = (
  lock,
  mode,
  signal,
  timeout,
  key,
  leave,
  uncapped = false,
  exit = undefined,
) => enqueueFor(lock, mode, signal, timeout, key, leave, uncapped, exit);

/** Why an acquire may neither be granted nor queue (see `#admit`). */
class Refused {
  constructor(readonly reason: unknown) {}
}

function validateFairness(value: unknown): Fairness {
  if (value === undefined) return 'no-convoy';
  if (value !== 'no-convoy' && value !== 'fifo') {
    throw new (typeof value === 'string' ? RangeError : TypeError)(
      `The "fairness" option must be 'no-convoy' or 'fifo', got ${typeof value === 'string' ? `"${value}"` : typeof value}`,
    );
  }
  return value;
}

/**
 * A fair, abortable reader/writer lock for async code.
 *
 * Order of service. Waiters queue in arrival order, and the queue is served in phases: the
 * readers at its head enter together (up to `maxReaders`); a writer at its head enters alone
 * once the lock is free. Writers are always served in arrival order. With the default
 * `fairness: 'no-convoy'`, one exception keeps a long read and a queued write from stalling
 * everyone else: a writer at the head that waits only for reads
 * - holds back every reader that arrives after it for `bypassAfter` ms (its patience), so under
 *   a stream of short reads it enters as soon as the reads it found running end;
 * - then, while any read that was running when it reached the head still runs, lets queued and
 *   newly arriving readers pass it (up to `maxReaders`): `state.bypassing` is true;
 * - once the last of those reads ends, holds back later readers again and enters as soon as the
 *   reads admitted during the bypass have ended.
 * So a writer that reaches the head at `t0` enters by `t0 + L` when `L <= bypassAfter`, and by
 * `t0 + L + D` otherwise, where `L` is the longest remaining time of the reads running at `t0`
 * and `D` the longest read admitted during the bypass. A reader waits behind such a writer at
 * most `bypassAfter` ms, unless the writer enters first. `fairness: 'fifo'` turns the
 * exception off: strict FIFO phases, where a queued writer holds back later readers for as long
 * as it waits.
 *
 * Fair share. Within those rules, queued readers take turns by their `key` (readers without one
 * form one group): the lock never picks a reader that the phases would not let in now (one ahead
 * of the first queued writer, or one behind it while the bypass is open), but among those it
 * goes round-robin. The groups whose oldest queued reader is ahead of the first writer form one
 * ring, the others a second ring that is served only while the writer is bypassed. Each grant
 * goes to the oldest reader of the first group of the ring being served, and that group moves to
 * the back of the ring its next reader belongs in. A group joins the back of a ring with its
 * first queued reader; when the first writer enters or leaves, the groups whose oldest reader is
 * then ahead of the new first writer move to the back of the first ring, in the arrival order of
 * those readers; a group whose oldest reader gives up keeps its place, unless its next reader is
 * behind the first writer (then it moves to the back of the second ring). So a reader that is its
 * key's oldest and may enter is granted before any other key is granted twice, for as long as
 * the first writer and the bypass stay as they are: one caller with 1,000 queued reads lets
 * another caller's read in after at most one more of its own. Writers ignore keys.
 *
 * Invariants:
 * - A write lease is never held together with any other lease; at most `maxReaders` read leases
 *   are held at once.
 * - Neither writers nor readers starve: every waiter is served, or leaves by abort or timeout.
 * - A newcomer is granted at once only when it would be granted if it queued: compatible with
 *   the holders and nobody queued, or, for a reader, while the bypass is open and no reader
 *   waits.
 * - An aborted or timed-out waiter leaves the queue in O(1), and whoever it was blocking is
 *   granted in the same turn. Its abort listener and timer are removed when it settles; the one
 *   patience timer of the lock is removed when the writer it counts for is granted or leaves.
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
  static {
    enqueueFor = (lock, mode, signal, timeout, key, leave, uncapped = false, exit = undefined) => {
      const now = lock.#admit(mode, signal, timeout, uncapped);
      if (now === undefined) {
        return new Promise<HeldLease>((resolve) => {
          const waiter = lock.#wait(mode, signal, timeout, key, resolve, leave, uncapped);
          // The path an abort takes: unlinked with its listener and timer, the lock drained.
          if (exit !== undefined) exit.withdraw = (reason) => lock.#cancel(waiter, reason);
        });
      }
      if (now instanceof Refused) {
        leave(now.reason);
        return undefined;
      }
      return Promise.resolve(now);
    };
  }

  /** Name given at construction, used in messages and diagnostics. */
  readonly name: string | undefined;
  readonly #maxQueue: number;
  readonly #maxReaders: number;
  /** Undefined with `fairness: 'fifo'`. */
  readonly #patience: WriterPatience<Waiter> | undefined;
  // Writers in arrival order, readers grouped by key in two rings (ahead of / behind the first
  // writer): every step of the round-robin is O(1), and so is the bypass's reach past writers.
  readonly #queue = new FairQueue<Waiter>();
  #seq = 0;
  // One listener per signal however many waiters share it (see SignalFanout).
  readonly #signals = new SignalFanout<Waiter>((waiters, reason) =>
    this.#abortAll(waiters, reason),
  );
  #readers = 0;
  /**
   * Readers that bring their own resource (an engine guard's session reads, on the session's own
   * handle): they wait for their phase, never for `maxReaders`, and do not count toward it. Kept
   * apart from the fair queue, in arrival order.
   */
  readonly #uncapped = new WaiterGroup<Waiter>('read', undefined);
  /** Of `#readers`, those granted uncapped. */
  #uncappedHeld = 0;
  #writing = false;
  // Per lock, not per call: how leases give their hold back and how a waiter's timer fires,
  // without a method on the class that user code could call.
  readonly #returnHold: ReturnHold = (lease) => this.#release(lease, false);
  readonly #returnUncapped: ReturnHold = (lease) => this.#release(lease, true);
  readonly #onTimeout = (waiter: Waiter, timeout: number): void => {
    waiter.exit = waiter.signal; // fired: nothing to clear
    this.#cancel(waiter, new LockTimeoutError(timeout, this.name));
  };

  /** @throws TypeError | RangeError at the call, on invalid options, naming the option. */
  constructor(options: RWLockOptions = {}) {
    validateOptionsObject(options);
    validateUnknownKeys(options, LOCK_KEYS, '');
    this.name = validateOptionalString(options.name, 'name');
    this.#maxQueue = validateInteger(options.maxQueue, 'maxQueue', 0, true) ?? Infinity;
    this.#maxReaders = validateInteger(options.maxReaders, 'maxReaders', 1, true) ?? Infinity;
    const fairness = validateFairness(options.fairness);
    const bypassAfter =
      validateDuration(options.bypassAfter, 'bypassAfter') ?? DEFAULT_BYPASS_AFTER;
    this.#patience =
      fairness === 'fifo' ? undefined : new WriterPatience(bypassAfter, () => this.#drain());
  }

  /** Current holders and waiters. Synchronous; never blocks. */
  get state(): RWLockState {
    return {
      readers: this.#readers,
      writing: this.#writing,
      queuedReaders: this.#queue.readers + this.#uncapped.size,
      queuedWriters: this.#queue.writers.size,
      bypassing: this.#patience?.bypassing === true,
    };
  }

  /**
   * Takes a shared lease if one can be had right now, else `null`: exactly when a reader that
   * queued now would be granted at once (see the class documentation). Never joins a held lease.
   */
  tryAcquireRead(): Lease | null {
    return this.#tryRead();
  }

  #tryRead(): HeldLease | null {
    if (
      this.#writing ||
      this.#readers - this.#uncappedHeld >= this.#maxReaders ||
      this.#queue.readers > 0 ||
      (this.#queue.writers.size > 0 && this.#patience?.bypassing !== true)
    ) {
      return null;
    }
    this.#readers++;
    return this.#granted('read', undefined);
  }

  /**
   * @internal
   * A shared lease for a reader that brings its own resource (a session's own engine handle):
   * it enters with the readers' phase whatever `maxReaders` says, and does not count toward it.
   * `null` unless it would be granted at once had it queued. Never joins.
   */
  tryAcquireReadUncapped(): Lease | null {
    return this.#tryReadUncapped();
  }

  #tryReadUncapped(): HeldLease | null {
    if (
      this.#writing ||
      this.#uncapped.size > 0 ||
      (this.#queue.writers.size > 0 && this.#patience?.bypassing !== true)
    ) {
      return null;
    }
    this.#readers++;
    this.#uncappedHeld++;
    return this.#granted('read', undefined, true);
  }

  /**
   * @internal
   * Waits for an uncapped shared lease (see {@link RWLock.tryAcquireReadUncapped}): only for
   * writers that hold the lock or queued before it, never behind readers that wait for
   * `maxReaders`.
   */
  acquireReadUncapped(
    signal: AbortSignal | undefined,
    timeout: number | undefined,
  ): Promise<Lease> {
    return this.#enqueue('read', signal, timeout, undefined, true);
  }

  /** Takes the exclusive lease if the lock is free and nobody waits, else `null`. Never joins. */
  tryAcquireWrite(): Lease | null {
    return this.#tryWrite();
  }

  #tryWrite(): HeldLease | null {
    if (this.#writing || this.#readers > 0 || this.#queue.size > 0) {
      return null;
    }
    this.#writing = true;
    return this.#granted('write', undefined);
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
  #release(lease: HeldLease, uncapped: boolean): void {
    const mode = lease.mode;
    if (mode === 'read') {
      this.#readers--;
      if (uncapped) this.#uncappedHeld--;
      this.#patience?.readEnded(lease.epoch);
      // Still shared by others, and the reader cap did not hold anyone back (an uncapped read
      // never counted toward it): nobody queued can be admitted.
      if (
        this.#readers > 0 &&
        (uncapped || this.#readers - this.#uncappedHeld + 1 < this.#maxReaders)
      ) {
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
    this.#dequeue(waiter, false);
    this.#publishCancel(waiter.mode, reason);
    waiter.reject(reason);
    this.#drain();
  }

  /** A signal shared by one or more waiters aborted: they all leave, then the queue drains once. */
  #abortAll(waiters: Waiter[], reason: unknown): void {
    for (const waiter of waiters) {
      if (!waiter.queued) continue;
      // The fan-out already forgot the signal: only a timer is left to clear.
      const exit = waiter.exit;
      waiter.exit = exit instanceof SignalAndTimer ? exit.timer : undefined;
      this.#dequeue(waiter, false);
      this.#publishCancel(waiter.mode, reason);
      waiter.reject(reason);
    }
    this.#drain();
  }

  #acquire(mode: LockMode, options: AcquireOptions | undefined): Promise<Lease> {
    validateOptionsObject(options);
    if (options !== undefined) validateUnknownKeys(options, ACQUIRE_KEYS, '');
    const signal = validateSignal(options?.signal);
    const timeout = validateDuration(options?.timeout, 'timeout');
    const key = options?.key; // read once, at the call, like every option
    const held = this.#held();
    if (held !== undefined) return this.#join(held, mode, signal);
    return this.#enqueue(mode, signal, timeout, key);
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
    key: unknown,
    uncapped = false,
  ): Promise<HeldLease> {
    const now = this.#admit(mode, signal, timeout, uncapped);
    if (now === undefined) {
      return new Promise<HeldLease>((resolve, reject) =>
        this.#wait(mode, signal, timeout, key, resolve, reject, uncapped),
      );
    }
    return now instanceof Refused ? Promise.reject(now.reason) : Promise.resolve(now);
  }

  /** A lease now, a refusal (already published), or `undefined`: the acquire must queue. */
  #admit(
    mode: LockMode,
    signal: AbortSignal | undefined,
    timeout: number | undefined,
    uncapped: boolean,
  ): HeldLease | Refused | undefined {
    let reason: unknown;
    if (signal?.aborted) {
      reason = signal.reason;
    } else {
      const lease = uncapped
        ? this.#tryReadUncapped()
        : mode === 'read'
          ? this.#tryRead()
          : this.#tryWrite();
      if (lease !== null) return lease;
      if (timeout === 0) reason = new LockTimeoutError(0, this.name);
      else if (this.#queue.size + this.#uncapped.size >= this.#maxQueue) {
        reason = new QueueFullError(this.#maxQueue, this.name);
      } else {
        return undefined;
      }
    }
    this.#publishCancel(mode, reason);
    return new Refused(reason);
  }

  /** Queues a waiter; `leave` is how it hears that it gave up (abort, timeout). */
  #wait(
    mode: LockMode,
    signal: AbortSignal | undefined,
    timeout: number | undefined,
    key: unknown,
    resolve: (lease: HeldLease) => void,
    leave: (reason: unknown) => void,
    uncapped: boolean,
  ): Waiter {
    const queue = this.#queue;
    const group = uncapped ? this.#uncapped : mode === 'read' ? queue.groupOf(key) : queue.writers;
    const waiter = new Waiter(group, this.#seq++, resolve, leave);
    if (signal !== undefined) this.#signals.add(signal, waiter);
    if (timeout === undefined) waiter.exit = signal;
    else {
      const timer = setTimeout(this.#onTimeout, timeout, waiter, timeout);
      waiter.exit = signal === undefined ? timer : new SignalAndTimer(signal, timer);
    }
    if (uncapped) {
      this.#uncapped.push(waiter);
      return waiter;
    }
    queue.push(waiter);
    // A writer alone in the queue, held by reads only: its patience starts now. (With
    // bypassAfter 0 the bypass opens at once, but no reader is queued behind it to admit.)
    if (mode === 'write' && this.#readers > 0 && queue.size === 1) {
      this.#patience?.watch(waiter, this.#readers);
    }
    return waiter;
  }

  /** Unlinks a waiter that is `granted` or gave up, with its listener and timer. */
  #dequeue(waiter: Waiter, granted: boolean): void {
    if (waiter.group === this.#uncapped) this.#uncapped.remove(waiter);
    else this.#queue.remove(waiter, granted);
    if (this.#patience?.watched === waiter) this.#patience.end();
    const exit = waiter.exit;
    if (exit === undefined) return;
    waiter.exit = undefined;
    if (exit instanceof AbortSignal) this.#signals.remove(exit, waiter);
    else if (!(exit instanceof SignalAndTimer)) clearTimeout(exit);
    else {
      this.#signals.remove(exit.signal, waiter);
      clearTimeout(exit.timer);
    }
  }

  /**
   * Its signal fired but the listener has not reached it yet (an abort listener that ran first
   * released the lock): it gave up, so it is removed instead of granted.
   */
  #gaveUp(waiter: Waiter): boolean {
    if (waiter.exit === undefined) return false;
    const signal = waiter.signal;
    if (signal === undefined || !signal.aborted) return false;
    this.#dequeue(waiter, false);
    waiter.reject(signal.reason);
    return true;
  }

  /** Grants waiters in order of service for as long as they are compatible with the holders. */
  #drain(): void {
    // Uncapped readers first: one that queued before the first writer enters before it. Again
    // after the others: a writer that gave up may have been all that held them back.
    this.#drainUncapped();
    this.#drainQueue();
    this.#drainUncapped();
  }

  /** Grants the uncapped readers whose phase it is: no writer holds, none queued before them. */
  #drainUncapped(): void {
    for (let reader = this.#uncapped.head; reader !== null; reader = this.#uncapped.head) {
      if (this.#gaveUp(reader)) continue;
      if (this.#writing) return;
      const writer = this.#queue.writers.head;
      if (writer !== null && writer.seq < reader.seq && this.#patience?.bypassing !== true) return;
      this.#dequeue(reader, true);
      this.#readers++;
      this.#uncappedHeld++;
      reader.resolve(this.#granted('read', reader, true));
    }
  }

  #drainQueue(): void {
    const queue = this.#queue;
    for (;;) {
      // A group in `front` means a reader heads the queue: the readers' phase. Else the first
      // writer heads it, and readers may only pass it while it is bypassed.
      let group = queue.front.head;
      if (group !== null) {
        if (this.#writing) return;
      } else {
        const head = queue.writers.head;
        if (head === null) return;
        if (this.#gaveUp(head)) continue;
        if (this.#writing) return;
        if (this.#readers === 0) {
          this.#dequeue(head, true);
          this.#writing = true;
          head.resolve(this.#granted('write', head));
          return;
        }
        // Waiting for reads only: patient, or bypassed.
        const patience = this.#patience;
        if (patience === undefined) return;
        if (patience.watched !== head) patience.watch(head, this.#readers);
        if (!patience.bypassing) return;
        group = queue.behind.head;
        if (group === null) return;
      }
      if (this.#readers - this.#uncappedHeld >= this.#maxReaders) return;
      const reader = group.head as Waiter;
      if (this.#gaveUp(reader)) continue;
      this.#dequeue(reader, true);
      this.#readers++;
      reader.resolve(this.#granted('read', reader));
    }
  }

  /** A lease for a newcomer (`waiter` undefined) or a waiter granted now. */
  #granted(mode: LockMode, waiter: Waiter | undefined, uncapped = false): HeldLease {
    if (lockChannels.acquire.hasSubscribers) {
      const since = waiter === undefined ? undefined : enqueuedAt.get(waiter);
      lockChannels.acquire.publish({
        lock: this.name,
        mode,
        queued: since !== undefined,
        waitedMs: since === undefined ? 0 : performance.now() - since,
      });
    }
    return new HeldLease(
      uncapped ? this.#returnUncapped : this.#returnHold,
      mode,
      this.#patience?.epoch ?? 0,
    );
  }

  #run<T>(
    mode: LockMode,
    fn: (lease: Lease) => T | PromiseLike<T>,
    options: AcquireOptions | undefined,
  ): Promise<Awaited<T>> {
    // Validate before going async, so bad input throws at the call.
    validateFunction(fn, 'fn');
    validateOptionsObject(options);
    if (options !== undefined) validateUnknownKeys(options, ACQUIRE_KEYS, '');
    const signal = validateSignal(options?.signal);
    const timeout = validateDuration(options?.timeout, 'timeout');
    const key = options?.key; // read once, at the call, like every option
    const held = this.#held();
    if (held !== undefined) return this.#runJoined(held, mode, fn, signal);
    if (signal === undefined || !signal.aborted) {
      const lease = mode === 'read' ? this.#tryRead() : this.#tryWrite();
      if (lease !== null) return this.#runHeld(lease, fn);
    }
    return this.#enqueue(mode, signal, timeout, key).then((lease) => {
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
