import { LeaseRevokedError } from '../errors.js';

/** Mode of a lease: shared (`read`) or exclusive (`write`). */
export type LockMode = 'read' | 'write';

/**
 * A held lock: shared for `read`, exclusive for `write`. Only {@link RWLock} makes leases.
 *
 * Invariants:
 * - `release()` is idempotent; only the first call of `release()` or `revoke()` frees the lock,
 *   so a late `release()` by a holder whose lease was revoked can never free someone else's.
 * - `revoke()` of a lease that is already released is a no-op, joined or not.
 * - `signal` aborts when, and only when, the lease is revoked.
 * - A *joined* lease (handed to a nested `read`/`write` in the same async context) shares its
 *   parent's hold: releasing it does not free the lock, and its signal is its parent's.
 *
 * Works with explicit resource management: `using lease = await lock.acquireRead()`.
 */
export interface Lease extends Disposable, AsyncDisposable {
  /** `'read'` for a shared lease, `'write'` for an exclusive one. */
  readonly mode: LockMode;
  /** True once released or revoked (for a joined lease: or once its parent is). */
  readonly released: boolean;
  /** True if this lease (or, for a joined lease, its parent) was revoked. */
  readonly revoked: boolean;
  /** True for a lease that joined an outer hold instead of acquiring the lock itself. */
  readonly joined: boolean;
  /** Aborted with the revocation reason when the lease is revoked; never aborted otherwise. */
  readonly signal: AbortSignal;
  /** Frees the lock. Idempotent, and a no-op after `revoke()`. */
  release(): void;
  /**
   * Force-releases the lease now and aborts `signal` with `reason` (default: a
   * {@link LeaseRevokedError}). The holder keeps running until it notices the signal, but the
   * lock is already free for the next waiter. Revoking a live joined lease revokes the hold it
   * joined. A no-op on a lease that is already released, joined or not.
   */
  revoke(reason?: unknown): void;
}

/** How a lease gives its hold back to its lock: one function per lock, never exported. */
export type ReturnHold = (lease: HeldLease) => void;

/**
 * The lock's own lease object. Module-internal: the package exports only the {@link Lease}
 * interface, so user code cannot construct one, join one, or reach the lock's bookkeeping.
 */
export class HeldLease implements Lease {
  readonly mode: LockMode;
  /**
   * The lock's fairness epoch when this read was granted: tells the lock whether the read was
   * already running when the writer it is counting for started waiting.
   */
  readonly epoch: number;
  #returnHold: ReturnHold | null;
  #parent: HeldLease | null;
  #released = false;
  #revoked = false;
  #reason: unknown = undefined;
  // Created on first access, so a lease whose signal is never read costs no AbortController.
  #controller: AbortController | undefined = undefined;

  constructor(
    returnHold: ReturnHold | null,
    mode: LockMode,
    epoch: number,
    parent: HeldLease | null = null,
  ) {
    this.#returnHold = returnHold;
    this.mode = mode;
    this.epoch = epoch;
    this.#parent = parent;
  }

  /** A lease that shares `held`'s hold, for a nested call in the same async context. */
  static joining(held: HeldLease): HeldLease {
    return new HeldLease(null, held.mode, held.epoch, held.#parent ?? held);
  }

  get released(): boolean {
    return this.#released || this.#parent?.released === true;
  }

  get revoked(): boolean {
    return this.#revoked || this.#parent?.revoked === true;
  }

  get joined(): boolean {
    return this.#parent !== null;
  }

  get signal(): AbortSignal {
    if (this.#parent !== null) return this.#parent.signal;
    if (this.#controller === undefined) {
      this.#controller = new AbortController();
      if (this.#revoked) this.#controller.abort(this.#reason);
    }
    return this.#controller.signal;
  }

  release(): void {
    if (this.#released) return;
    this.#released = true;
    const returnHold = this.#returnHold;
    this.#returnHold = null;
    returnHold?.(this);
  }

  revoke(reason: unknown = new LeaseRevokedError()): void {
    // Checked before anything else: a late revoke of a released joined lease must not reach the
    // hold it once shared, which may be running a write that still needs exclusion.
    if (this.released) return;
    if (this.#parent !== null) {
      this.#released = true;
      this.#parent.revoke(reason);
      return;
    }
    this.#revoked = true;
    this.#reason = reason;
    this.release();
    this.#controller?.abort(reason);
  }

  [Symbol.dispose](): void {
    this.release();
  }

  [Symbol.asyncDispose](): Promise<void> {
    this.release();
    return Promise.resolve();
  }
}
