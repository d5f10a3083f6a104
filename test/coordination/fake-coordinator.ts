/**
 * A scripted in-memory {@link Coordinator} for the guard-side tests: grants are held back until
 * the test calls `grant()`, losses are triggered with `lose()`, and every call is recorded.
 */
import type {
  ClusterAcquireOptions,
  ClusterLease,
  Coordinator,
  CoordinatorStatus,
} from '../../src/index.js';
import { LeaseLostError, type LockMode } from '../../src/index.js';

export interface FakeGrant {
  readonly mode: LockMode;
  readonly fence: number;
  readonly options: ClusterAcquireOptions;
  readonly controller: AbortController;
  released: boolean;
  releasedAt: number;
}

export interface PendingAcquire {
  readonly mode: LockMode;
  readonly options: ClusterAcquireOptions;
  settle(grant: boolean, reason?: unknown): void;
}

export class FakeCoordinator implements Coordinator {
  readonly coordinatesReads: boolean;
  /** When true, acquire() grants at once; otherwise it waits for `grant()`. */
  autoGrant: boolean;
  readonly grants: FakeGrant[] = [];
  readonly pending: PendingAcquire[] = [];
  closes = 0;
  #fence = 0;

  constructor(options: { coordinatesReads?: boolean; autoGrant?: boolean } = {}) {
    this.coordinatesReads = options.coordinatesReads ?? false;
    this.autoGrant = options.autoGrant ?? true;
  }

  acquire(mode: LockMode, options: ClusterAcquireOptions): Promise<ClusterLease> {
    return new Promise<ClusterLease>((resolve, reject) => {
      const signal = options.signal;
      if (signal?.aborted) {
        reject(signal.reason);
        return;
      }
      const pending: PendingAcquire = {
        mode,
        options,
        settle: (ok, reason) => {
          const index = this.pending.indexOf(pending);
          if (index < 0) return;
          this.pending.splice(index, 1);
          signal?.removeEventListener('abort', onAbort);
          if (ok) resolve(this.#grant(mode, options));
          else reject(reason);
        },
      };
      const onAbort = (): void => pending.settle(false, signal?.reason);
      signal?.addEventListener('abort', onAbort, { once: true });
      this.pending.push(pending);
      if (this.autoGrant) pending.settle(true);
    });
  }

  /** Grants the oldest pending acquire. */
  grant(): void {
    const next = this.pending[0];
    if (next === undefined) throw new Error('no pending acquire');
    next.settle(true);
  }

  /** Makes the grant lose its lease (its signal aborts with LeaseLostError). */
  lose(grant: FakeGrant): void {
    grant.controller.abort(new LeaseLostError({ mode: grant.mode, fence: grant.fence }));
  }

  #grant(mode: LockMode, options: ClusterAcquireOptions): ClusterLease {
    const controller = new AbortController();
    const grant: FakeGrant = {
      mode,
      fence: ++this.#fence,
      options,
      controller,
      released: false,
      releasedAt: 0,
    };
    this.grants.push(grant);
    return {
      mode,
      fence: grant.fence,
      signal: controller.signal,
      release: async () => {
        if (grant.released) return;
        grant.released = true;
        grant.releasedAt = performance.now();
      },
    };
  }

  status(): CoordinatorStatus {
    return {
      kind: 'fake',
      key: 'k',
      held: this.grants
        .filter((g) => !g.released)
        .map((g) => ({
          mode: g.mode,
          fence: g.fence,
          heldMs: 0,
          sinceRenewMs: 0,
          label: undefined,
        })),
      waiting: this.pending.map((p) => ({ mode: p.mode, waitingMs: 0, label: p.options.label })),
      connection: 'connected',
      lastError: undefined,
    };
  }

  async close(): Promise<void> {
    this.closes++;
  }
}
