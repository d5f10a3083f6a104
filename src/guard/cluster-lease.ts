/**
 * The guard's side of a {@link Coordinator}: an op that needs a cluster lease (every write; reads
 * too when the coordinator coordinates them) takes it once it holds its local lease and handle,
 * before `fn` runs, and gives it back when the op ends, whichever way it ends.
 *
 * - The wait is bounded by the op's own signal (which also aborts on `close()`) and by what is
 *   left of its `timeout`.
 * - The coordinator renews the lease only while the op is alive by the guard's liveness rules
 *   (see {@link isOpAlive}).
 * - A lease lost while the op runs aborts the op like a caller abort, with a `LeaseLostError`.
 */
import type { ClusterLease, Coordinator, CoordinatorStatus } from '../coordination/coordinator.js';
import { LeaseLostError } from '../errors.js';
import { attempt, noop } from '../internal/promises.js';
import type { LockMode } from '../lock/lease.js';
import type { Op, OpFn } from './op.js';

/**
 * True while the op may keep its cluster lease: it runs (it was not convicted, abandoned or
 * closed, and is not being cancelled), and its engine did not fail the last probe since its
 * last heartbeat. A hung call thus stops its renewals at its first failed probe, before it is
 * convicted: the lease then runs out by the coordinator's bound instead of being held by an op
 * the guard already doubts. A heartbeat or a passing probe resumes the renewals.
 */
export function isOpAlive<E>(op: Op<E>): boolean {
  return op.state.tag === 'running' && op.probeFailures === 0;
}

/**
 * @throws TypeError when `value` is not a coordinator (naming the option).
 */
export function validateCoordinator(value: unknown): Coordinator | undefined {
  if (value === undefined) return undefined;
  const candidate = value as Partial<Coordinator> | null;
  if (
    candidate === null ||
    typeof candidate !== 'object' ||
    typeof candidate.acquire !== 'function' ||
    typeof candidate.status !== 'function' ||
    typeof candidate.close !== 'function'
  ) {
    throw new TypeError(
      'The "coordinator" option must be a Coordinator (an object with acquire, status and close functions)',
    );
  }
  return candidate as Coordinator;
}

// Coordinators taken by a guard: one guard's close() closes its coordinator, which would end the
// coordination of any other guard sharing it, and their local locks would not see each other.
const claimed = new WeakSet<Coordinator>();

/**
 * {@link validateCoordinator}, then claims it for the guard being built.
 * @throws TypeError when it is not a coordinator, or another guard already uses it.
 */
export function claimCoordinator(value: unknown): Coordinator | undefined {
  const coordinator = validateCoordinator(value);
  if (coordinator === undefined) return undefined;
  if (claimed.has(coordinator)) {
    throw new TypeError(
      'The "coordinator" option is already used by another EngineGuard: give each guard its own coordinator',
    );
  }
  claimed.add(coordinator);
  return coordinator;
}

/** See the module documentation. */
export class ClusterLeases<E> {
  readonly #coordinator: Coordinator;
  readonly #coordinatesReads: boolean;
  readonly #onLost: (op: Op<E>, error: LeaseLostError) => void;

  /**
   * @param onLost Aborts a running op whose lease was lost (the guard's caller-abort path, with
   *   `error` as the reason).
   */
  constructor(coordinator: Coordinator, onLost: (op: Op<E>, error: LeaseLostError) => void) {
    this.#coordinator = coordinator;
    // Read once: the guard's behaviour must not change under a running op.
    this.#coordinatesReads = coordinator.coordinatesReads === true;
    this.#onLost = onLost;
  }

  /**
   * `fn`, preceded by taking the op's cluster lease, when the op needs one; `fn` itself when not.
   * @param timeout The op's `timeout`, counted from when it was queued.
   */
  wrap(op: Op<E>, fn: OpFn<E>, timeout: number | undefined): OpFn<E> {
    const mode: LockMode = op.kind;
    if (mode === 'read' && !this.#coordinatesReads) return fn;
    return async (engine, ctx) => {
      const since = op.enqueuedAt || op.startedAt;
      const left =
        timeout === undefined ? undefined : Math.max(0, timeout - (performance.now() - since));
      const asked = performance.now();
      let lease: ClusterLease;
      try {
        lease = await this.#coordinator.acquire(mode, {
          signal: op.signal,
          timeout: left,
          isAlive: () => isOpAlive(op),
          label: op.label,
        });
      } finally {
        op.clusterWaitMs = performance.now() - asked;
      }
      this.#hold(op, lease);
      // The op ended (close, caller abort) in the turn the grant took to reach us.
      op.signal.throwIfAborted();
      return fn(engine, ctx);
    };
  }

  /** Ties the lease to the op: its release at the op's end, its fence, its loss. */
  #hold(op: Op<E>, lease: ClusterLease): void {
    let onLoss: (() => void) | undefined;
    const release = (): void => {
      try {
        if (onLoss !== undefined) lease.signal.removeEventListener('abort', onLoss);
      } catch {
        // a coordinator's broken signal must not keep the lease
      }
      // Called now, so the next holder can start before our caller hears back. It never rejects
      // by contract; a coordinator that breaks it must not crash us.
      attempt(() => lease.release()).catch(noop);
    };
    // First of all: whatever the lease's getters do below, it is given back when the op ends.
    if (!op.onEnd(release)) {
      release();
      return;
    }
    const { mode, fence, signal } = lease;
    op.fence = fence;
    onLoss = (): void => {
      if (op.state.tag !== 'running') return;
      const reason: unknown = signal.reason;
      const error =
        reason instanceof LeaseLostError
          ? reason
          : new LeaseLostError({ mode, fence, cause: reason });
      this.#onLost(op, error);
    };
    if (signal.aborted) {
      onLoss();
      return;
    }
    signal.addEventListener('abort', onLoss, { once: true });
  }

  /** The coordinator's cached view. Never waits; a throwing coordinator shows as undefined. */
  status(): CoordinatorStatus | undefined {
    try {
      return this.#coordinator.status();
    } catch {
      return undefined;
    }
  }

  /** Closes the coordinator; never rejects. */
  close(): Promise<void> {
    return attempt(() => this.#coordinator.close()).catch(noop);
  }
}
