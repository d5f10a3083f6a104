/**
 * Admission: how an op gets its lease and then its handle. The fast path (lock free, handle idle)
 * queues nothing. Otherwise the op waits on the lock with its caller's own `signal` (if any) and
 * `timeout`, nothing else: no `AbortController`, listener or timer of its own. The guard's other
 * exits (close) answer the caller through {@link Admission.leave}, and a lease or handle granted
 * later to an op that already left is given straight back.
 */
import { LockTimeoutError } from '../errors.js';
import { SignalFanout } from '../internal/signal-fanout.js';
import type { WaiterQueue } from '../internal/waiter-queue.js';
import type { Lease } from '../lock/lease.js';
import { queueFor, type RWLock } from '../lock/rwlock.js';
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
  /**
   * The callers' signals of ops waiting for a handle. The pool hears of an abort too, but
   * answers through its promise a microtask later; the op must leave the guard's queue in the
   * turn its caller aborts, as it does when it waits for the lock (see `queueFor`).
   */
  readonly #handleWaits = new SignalFanout<Op<E>>((ops, reason) => {
    for (const op of ops) this.leave(op, reason);
  });

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
    // Fast path: lock free and a handle idle: nothing to wait on. A read on a session's own
    // handle needs no shared handle, so the lock's reader cap (the shared handles) is not its.
    const own = op.ownHandle !== undefined;
    const lease =
      op.kind === 'write'
        ? this.#lock.tryAcquireWrite()
        : own
          ? this.#lock.tryAcquireReadUncapped()
          : this.#lock.tryAcquireRead();
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
    // The lock takes turns by key among queued reads (writes ignore it), and tells of an op
    // that gives up (abort, timeout, a full queue) in that very turn. A read on a session's own
    // handle takes an uncapped lease.
    const waiting = queueFor(
      this.#lock,
      op.kind,
      op.callerSignal,
      timeout,
      op.key,
      (error) => this.leave(op, error),
      own && op.kind === 'read',
      op,
    );
    waiting?.then((granted) => this.#onLease(op, fn, granted, timeout));
  }

  #onLease(op: Op<E>, fn: OpFn<E>, lease: Lease, timeout: number | undefined): void {
    // Granted: nothing left to withdraw from the lock.
    op.withdraw = undefined;
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
    const handle = this.#pool.acquire(
      op.callerSignal,
      timeout,
      reportedTimeout,
      op.waitForReady,
      op,
    );
    if (!(handle instanceof Promise)) {
      this.#onHandle(op, fn, handle);
      return;
    }
    if (op.callerSignal !== undefined) this.#handleWaits.add(op.callerSignal, op);
    handle.then(
      (granted) => this.#onHandle(op, fn, granted),
      (error: unknown) => this.leave(op, error),
    );
  }

  #onHandle(op: Op<E>, fn: OpFn<E>, handle: Handle<E>): void {
    op.withdraw = undefined;
    if (op.callerSignal !== undefined) this.#handleWaits.remove(op.callerSignal, op);
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

  /**
   * A queued op gives up (abort, timeout, refusal, close, taken back by its session); its caller
   * gets `error`. Its waiter leaves the lock's or the pool's queue with it (when it is not the
   * one leaving already): a waiter whose caller has its answer must not hold a queue slot, show
   * in `status().queue`, or hold back the readers behind it.
   */
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
    // After the move: the withdrawn waiter tells `leave` again, and finds the op gone. The lock
    // wakes whom a withdrawn writer held back in this turn.
    const withdraw = op.withdraw;
    op.withdraw = undefined;
    withdraw?.(reason);
    if (state.tag === 'leased') {
      if (op.callerSignal !== undefined) this.#handleWaits.remove(op.callerSignal, op);
      state.lease.release();
    }
    op.reject(reason);
  }
}
