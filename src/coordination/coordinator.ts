/**
 * The contract between an {@link EngineGuard} and a cluster-wide lock service: how writes (and,
 * when the coordinator asks for it, reads) stay exclusive across processes. Engine-agnostic; the
 * PostgreSQL implementation is `pgCoordinator` in `engine-guard/pg`.
 *
 * Invariants a coordinator keeps:
 * - At most one `write` lease is held across the cluster at a time, and never together with a
 *   `read` lease.
 * - Each grant carries a `fence` strictly greater than every fence granted before it for the same
 *   key, so an engine can refuse a write from a holder whose lease has since been granted to
 *   another.
 * - A lease is renewed only while its holder says it is alive (`isAlive`); once renewals stop, the
 *   lease is lost within a stated bound, and the holder's `signal` aborts (with
 *   `LeaseLostError`) before the server-side bound runs out.
 * - `status()` never waits.
 *
 * @packageDocumentation
 */
import type { LockMode } from '../lock/lease.js';

/** A fencing token: strictly increasing across grants of one coordinator key. */
export type Fence = number | bigint;

/** Options of one {@link Coordinator.acquire}. */
export interface ClusterAcquireOptions {
  /** Aborting it gives up the wait (on the server too); the promise rejects with its reason. */
  signal?: AbortSignal | undefined;
  /** Most ms to wait for the grant. Default: no bound. */
  timeout?: number | undefined;
  /**
   * Asked before each renewal: `false` (the op is no longer alive by the guard's liveness rules)
   * stops renewing, so the lease runs out on the server by itself.
   */
  isAlive: () => boolean;
  /** Shown in `status()`. */
  label?: string | undefined;
}

/** A granted cluster lease. */
export interface ClusterLease {
  readonly mode: LockMode;
  /** This grant's fencing token. */
  readonly fence: Fence;
  /** Aborts (reason: `LeaseLostError`) when the lease is lost while held. */
  readonly signal: AbortSignal;
  /** Gives the lease back. Idempotent; never rejects. */
  release(): Promise<void>;
}

/** Synchronous view of a coordinator, from cached state. */
export interface CoordinatorStatus {
  /** Coordinator kind, e.g. `'pg'`. */
  readonly kind: string;
  /** The cluster key (what the lease is for). */
  readonly key: string;
  /**
   * The leases held now, oldest first: empty when none, one write lease, or any number of read
   * leases (when the coordinator coordinates reads).
   */
  readonly held: {
    mode: LockMode;
    fence: Fence;
    heldMs: number;
    /** Since the send of the last answered renewal (or of the grant's fence query). */
    sinceRenewMs: number;
    label: string | undefined;
  }[];
  /** Acquires waiting now. */
  readonly waiting: { mode: LockMode; waitingMs: number; label: string | undefined }[];
  /** `connected` when the lock session is open, `connecting`, `down` after failures, `closed`. */
  readonly connection: 'idle' | 'connecting' | 'connected' | 'down' | 'closed';
  /** Last error seen on the lock session. */
  readonly lastError: { message: string; at: number } | undefined;
}

/** A cluster-wide lock service for an `EngineGuard` (option `coordinator`). */
export interface Coordinator {
  /** Whether reads also take a cluster `read` lease (a cluster-wide cap on concurrent reads). */
  readonly coordinatesReads: boolean;
  /** Waits for a cluster lease in `mode`. */
  acquire(mode: LockMode, options: ClusterAcquireOptions): Promise<ClusterLease>;
  /** Never waits. */
  status(): CoordinatorStatus;
  /** Releases what is held, rejects waiters, closes the lock session. Idempotent. */
  close(): Promise<void>;
}
