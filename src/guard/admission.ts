/**
 * Admission: how an op gets its lease and then its handle. The fast path (lock free, handle idle)
 * queues nothing. Otherwise the op waits on the lock with its caller's own `signal` (if any) and
 * `timeout`, nothing else: no `AbortController`, listener or timer of its own. The guard's other
 * exits (close) answer the caller through {@link Admission.leave}, and a lease or handle granted
 * later to an op that already left is given straight back.
 */
import { LockTimeoutError } from '../errors.js';
import type { WaiterQueue } from '../internal/waiter-queue.js';
import type { Lease } from '../lock/lease.js';
import type { RWLock } from '../lock/rwlock.js';
import type { Handle, HandlePool } from '../pool/handle-pool.js';
import type { GuardHealth } from './health.js';
import { LEFT, type Op, type OpFn } from './op.js';

export type { OpFn } from './op.js';

/** Starts an op that holds its lease and handle (the guard's `run`). */
export type StartOp<E> = (
  op: Op<E>,
  fn: OpFn<E>,
  lease: Lease,
  handle: Handle<E>,
  now: number,
) => void;

/** See the module documentation. */
export class Admission<E> {
  readonly #lock: RWLock;
  readonly #pool: HandlePool<E>;
  readonly #queued: WaiterQueue<Op<E>>;
  readonly #health: GuardHealth<E>;
  readonly #name: string | undefined;
  readonly #run: StartOp<E>;

  constructor(
    lock: RWLock,
    pool: HandlePool<E>,
    queued: WaiterQueue<Op<E>>,
    health: GuardHealth<E>,
    name: string | undefined,
    run: StartOp<E>,
  ) {
    this.#lock = lock;
    this.#pool = pool;
    this.#queued = queued;
    this.#health = health;
    this.#name = name;
    this.#run = run;
  }

  /** Gives `op` its lease and handle, now or once free, then starts it (see `run`). */
  admit(op: Op<E>, fn: OpFn<E>, timeout: number | undefined): void {
    // Fast path: lock free and a handle idle: nothing to wait on.
    const lease = op.kind === 'read' ? this.#lock.tryAcquireRead() : this.#lock.tryAcquireWrite();
    const now = performance.now();
    if (lease !== null) {
      const handle = op.ownHandle ?? this.#pool.tryAcquire(now);
      if (handle !== null) {
        this.#run(op, fn, lease, handle, now);
        return;
      }
    }
    op.enqueuedAt = now;
    this.#queued.push(op);
    if (lease !== null) {
      op.to({ tag: 'leased', lease });
      this.#waitForHandle(op, fn, timeout, timeout);
      return;
    }
    // The caller's own signal (if any) is all the lock needs: close() and the guard's other
    // exits answer the caller themselves, and a lease granted to an op that left is given back.
    // The lock takes turns by key among queued reads (writes ignore it).
    const waiting =
      op.kind === 'read'
        ? this.#lock.acquireRead({ signal: op.callerSignal, timeout, key: op.key })
        : this.#lock.acquireWrite({ signal: op.callerSignal, timeout });
    waiting.then(
      (granted) => this.#onLease(op, fn, granted, timeout),
      (error: unknown) => this.leave(op, error),
    );
  }

  #onLease(op: Op<E>, fn: OpFn<E>, lease: Lease, timeout: number | undefined): void {
    if (op.state.tag !== 'waiting') {
      lease.release();
      return;
    }
    // Aborted in the turn between the grant and this reaction: the lock's listener had already
    // fired, so nothing else will answer the caller.
    if (op.callerSignal?.aborted) {
      lease.release();
      this.leave(op, op.callerSignal.reason);
      return;
    }
    const now = performance.now();
    const handle = op.ownHandle ?? this.#pool.tryAcquire(now);
    if (handle !== null) {
      this.#run(op, fn, lease, handle, now);
      return;
    }
    op.to({ tag: 'leased', lease });
    const left = timeout === undefined ? undefined : Math.max(0, timeout - (now - op.enqueuedAt));
    this.#waitForHandle(op, fn, left, timeout);
  }

  #waitForHandle(
    op: Op<E>,
    fn: OpFn<E>,
    timeout: number | undefined,
    reportedTimeout: number | undefined,
  ): void {
    const handle = this.#pool.acquire(op.callerSignal, timeout, reportedTimeout, op.waitForReady);
    if (!(handle instanceof Promise)) {
      this.#onHandle(op, fn, handle);
      return;
    }
    handle.then(
      (granted) => this.#onHandle(op, fn, granted),
      (error: unknown) => this.leave(op, error),
    );
  }

  #onHandle(op: Op<E>, fn: OpFn<E>, handle: Handle<E>): void {
    const state = op.state;
    if (state.tag !== 'leased') {
      this.#pool.release(handle);
      return;
    }
    // Aborted in the turn between grant and start: the listener has not reached it yet.
    if (op.callerSignal?.aborted) {
      this.#pool.release(handle);
      this.leave(op, op.callerSignal.reason);
      return;
    }
    this.#run(op, fn, state.lease, handle, performance.now());
  }

  /** A queued op gives up (abort, timeout, refusal, close); its caller gets `error`. */
  leave(op: Op<E>, error: unknown): void {
    const state = op.state;
    if (state.tag !== 'waiting' && state.tag !== 'leased') return;
    let reason = error;
    if (error instanceof LockTimeoutError && this.#pool.failures > 0) {
      // Timed out behind ops that wait for an engine that keeps failing: say so, as the pool
      // does for its own waiters.
      reason = this.#pool.unavailableError();
    } else if (error instanceof LockTimeoutError) {
      this.#health.counters.lockTimeouts++;
      reason = new LockTimeoutError(error.timeout, this.#name, {
        waitingFor: this.#health.blockersOf(op, performance.now()),
      });
    } else if (op.callerSignal?.aborted && error === op.callerSignal.reason) {
      this.#health.counters.aborts++;
    }
    this.#queued.remove(op);
    op.to(LEFT);
    if (state.tag === 'leased') state.lease.release();
    op.reject(reason);
  }
}
