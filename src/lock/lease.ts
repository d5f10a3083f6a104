import { LeaseRevokedError } from '../errors.js';

/** Mode of a lease: shared (`read`) or exclusive (`write`). */
export type LockMode = 'read' | 'write';

/** @internal What a lease calls back into when it is released. */
export interface LeaseHost {
  /** @internal */
  releaseLease(mode: LockMode): void;
}

/**
 * A held lock: shared for `read`, exclusive for `write`.
 *
 * Invariants:
 * - `release()` is idempotent; only the first call of `release()` or `revoke()` frees the lock,
 *   so a late `release()` by a holder whose lease was revoked can never free someone else's.
 * - `signal` aborts when, and only when, the lease is revoked. It is created on first access, so
 *   a lease whose signal is never read costs no `AbortController`.
 * - A *joined* lease (handed to a nested `read`/`write` in the same async context) shares its
 *   parent's hold: releasing it does not free the lock, and its signal is its parent's.
 *
 * Works with explicit resource management: `using lease = await lock.acquireRead()`.
 */
export class Lease implements Disposable, AsyncDisposable {
  /** `'read'` for a shared lease, `'write'` for an exclusive one. */
  readonly mode: LockMode;
  #host: LeaseHost | null;
  #parent: Lease | null;
  #released = false;
  #revoked = false;
  #reason: unknown = undefined;
  #controller: AbortController | undefined = undefined;

  /** @internal Leases are made by {@link RWLock}; user code never constructs one. */
  constructor(host: LeaseHost | null, mode: LockMode, parent: Lease | null = null) {
    this.#host = host;
    this.mode = mode;
    this.#parent = parent;
  }

  /** True once released or revoked (for a joined lease: or once its parent is). */
  get released(): boolean {
    return this.#released || this.#parent?.released === true;
  }

  /** True if this lease (or, for a joined lease, its parent) was revoked. */
  get revoked(): boolean {
    return this.#revoked || this.#parent?.revoked === true;
  }

  /** True for a lease that joined an outer hold instead of acquiring the lock itself. */
  get joined(): boolean {
    return this.#parent !== null;
  }

  /** Aborted with the revocation reason when the lease is revoked; never aborted otherwise. */
  get signal(): AbortSignal {
    if (this.#parent !== null) return this.#parent.signal;
    if (this.#controller === undefined) {
      this.#controller = new AbortController();
      if (this.#revoked) this.#controller.abort(this.#reason);
    }
    return this.#controller.signal;
  }

  /** Frees the lock. Idempotent, and a no-op after `revoke()`. */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    const host = this.#host;
    this.#host = null;
    host?.releaseLease(this.mode);
  }

  /**
   * Force-releases the lease now and aborts `signal` with `reason` (default: a
   * {@link LeaseRevokedError}). The holder keeps running until it notices the signal, but the lock
   * is already free for the next waiter. Revoking a joined lease revokes the hold it joined.
   * A no-op on a lease that is already released.
   */
  revoke(reason: unknown = new LeaseRevokedError()): void {
    if (this.#parent !== null) {
      this.#released = true;
      this.#parent.revoke(reason);
      return;
    }
    if (this.#released) return;
    this.#revoked = true;
    this.#reason = reason;
    this.release();
    this.#controller?.abort(reason);
  }

  /** @internal A lease that shares this one's hold, for a nested call in the same context. */
  join(): Lease {
    return new Lease(null, this.mode, this.#parent ?? this);
  }

  /** Same as `release()`, for `using`. */
  [Symbol.dispose](): void {
    this.release();
  }

  /** Same as `release()`, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    this.release();
    return Promise.resolve();
  }
}
