/**
 * What the guard reports about itself: counters, the last probe and error, the lifecycle state
 * (and its `state` events), and the synchronous `status()` snapshot built from them. Kept apart
 * from the coordination in engine-guard.ts: nothing here waits or changes what ops do.
 */
import type { BlockingOp } from '../errors.js';
import type { WaiterQueue } from '../internal/waiter-queue.js';
import type { HandlePool } from '../pool/handle-pool.js';
import type { TypedEvents } from './events.js';
import type { Op } from './op.js';
import type { PoolEvents } from './pool-hooks.js';
import type {
  GuardCounters,
  GuardEvents,
  GuardState,
  GuardStatus,
  OpInfo,
  QueuedOpStatus,
  RunningOpStatus,
} from './types.js';

const NO_BLOCKERS: readonly BlockingOp[] = Object.freeze([]);

function errorSummary(error: unknown): { message: string; code: string | undefined } {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return { message: error.message, code: typeof code === 'string' ? code : undefined };
  }
  return { message: String(error), code: undefined };
}

/**
 * The ops that hold a lease, as blockers: the running ones, oldest first, then the queued ones
 * that hold their lease and wait for a handle (they block a waiter just the same). Only writes
 * when `writesOnly`. Frozen, shareable.
 */
function blocking<E>(
  running: WaiterQueue<Op<E>>,
  queued: WaiterQueue<Op<E>>,
  now: number,
  writesOnly: boolean,
): readonly BlockingOp[] {
  const list: BlockingOp[] = [];
  for (let op = running.head; op !== null; op = op.next) {
    if (writesOnly && op.kind !== 'write') continue;
    list.push({ id: op.id, kind: op.kind, label: op.label, ageMs: now - op.startedAt });
  }
  for (let op = queued.head; op !== null; op = op.next) {
    if (op.state.tag !== 'leased' || (writesOnly && op.kind !== 'write')) continue;
    list.push({
      id: op.id,
      kind: op.kind,
      label: op.label,
      ageMs: now - op.enqueuedAt,
      phase: 'waiting for a handle',
    });
  }
  return list.length === 0 ? NO_BLOCKERS : Object.freeze(list);
}

/** See the module documentation. */
export class GuardHealth<E> {
  readonly counters: GuardCounters = {
    ops: 0,
    succeeded: 0,
    failed: 0,
    stalls: 0,
    replacements: 0,
    cancels: 0,
    lockTimeouts: 0,
    aborts: 0,
    probeFailures: 0,
    connectFailures: 0,
  };
  readonly #name: string | undefined;
  readonly #events: TypedEvents<GuardEvents>;
  readonly #running: WaiterQueue<Op<E>>;
  readonly #queued: WaiterQueue<Op<E>>;
  // Set by watchPool() right after construction: the pool reports through this object.
  #pool!: HandlePool<E>;
  #closed = false;
  #state: GuardState = 'idle';
  #lastProbe: GuardStatus['lastProbe'] = null;
  #lastError: GuardStatus['lastError'] = null;
  readonly #limits: GuardStatus['limits'];

  constructor(
    name: string | undefined,
    events: TypedEvents<GuardEvents>,
    running: WaiterQueue<Op<E>>,
    queued: WaiterQueue<Op<E>>,
    limits: GuardStatus['limits'],
  ) {
    this.#name = name;
    this.#limits = Object.freeze({ ...limits });
    this.#events = events;
    this.#running = running;
    this.#queued = queued;
  }

  /** The pool it reports on (made after this, as the pool reports through it). */
  watchPool(pool: HandlePool<E>): void {
    this.#pool = pool;
  }

  /** How the pool's happenings show up in events, counters and state. */
  poolEvents(): PoolEvents<E> {
    return {
      onConnect: (generation, durationMs) => {
        this.#events.emit('connect', { generation, durationMs });
        this.update();
      },
      onConnectError: (error, attempts, retryInMs) => {
        this.counters.connectFailures++;
        this.recordError(error);
        this.#events.emit('connectError', { error, attempts, retryInMs });
        this.update();
      },
      onRetire: (handle, reason, cause) => {
        this.counters.replacements++;
        this.#events.emit('replace', { generation: handle.generation, reason, cause });
        this.update();
      },
      onDestroyError: (generation, error) => {
        this.#events.emit('destroyError', { generation, error });
      },
      onChange: () => this.update(),
      onIdleProbe: (generation, ok, error, durationMs) =>
        this.recordProbe(undefined, generation, ok, error, durationMs, ok ? 0 : 1),
    };
  }

  /** Every conclusive probe: of a running op, or the check of an idle handle (`op` undefined). */
  recordProbe(
    op: OpInfo | undefined,
    generation: number,
    ok: boolean,
    error: unknown,
    durationMs: number,
    consecutive: number,
  ): void {
    this.#lastProbe = {
      ok,
      at: Date.now(),
      durationMs,
      error: ok ? undefined : errorSummary(error).message,
    };
    if (!ok) {
      this.counters.probeFailures++;
      this.#events.emit('probeFailure', { op, generation, error, consecutive });
    }
    this.update();
  }

  recordError(error: unknown): void {
    const { message, code } = errorSummary(error);
    this.#lastError = { message, code, at: Date.now() };
  }

  /** `close()` was called: the state is `closed` from now on. */
  close(): void {
    this.#closed = true;
    this.update();
  }

  /** Re-derives the state and emits `state` when it changed. */
  update(): void {
    const next = this.#compute();
    if (next === this.#state) return;
    const from = this.#state;
    this.#state = next;
    this.#events.emit('state', { from, to: next });
  }

  #compute(): GuardState {
    const pool = this.#pool;
    if (this.#closed) return 'closed';
    // Failing to connect, or a handle just lost and still being torn down.
    if (pool.failures > 0 || pool.retiring > 0) return 'degraded';
    for (let op = this.#running.head; op !== null; op = op.next) {
      if (op.probeFailures > 0) return 'degraded';
    }
    if (pool.idleCount + pool.busyCount > 0) return 'ready';
    if (pool.connecting > 0) return 'connecting';
    return 'idle';
  }

  /** What a queued op waits for (see {@link QueuedOpStatus.waitingFor}). */
  blockersOf(op: Op<E>, now: number): readonly BlockingOp[] {
    if (op.state.tag === 'leased') return NO_BLOCKERS;
    return blocking(this.#running, this.#queued, now, op.kind === 'read');
  }

  /** The `status()` snapshot, lock queue lengths given by the caller. */
  snapshot(
    queue: GuardStatus['queue'],
    sessions: GuardStatus['sessions'],
    cluster: GuardStatus['cluster'],
    sessionHandles: number,
    sessionQueued: readonly QueuedOpStatus[],
  ): GuardStatus {
    const now = performance.now();
    const running: RunningOpStatus[] = [];
    for (let op = this.#running.head; op !== null; op = op.next) {
      running.push({
        id: op.id,
        kind: op.kind,
        label: op.label,
        generation: op.generation,
        ageMs: now - op.startedAt,
        sinceHeartbeatMs: now - (op.lastBeat || op.startedAt),
        probeFailures: op.probeFailures,
        phase: op.state.tag === 'cancelling' ? 'cancelling' : 'running',
        sessionId: op.sessionId,
      });
    }
    const queued: QueuedOpStatus[] = [];
    if (this.#queued.head !== null) {
      // One list per kind of wait, shared by the entries of this snapshot.
      const all = blocking(this.#running, this.#queued, now, false);
      const writes = blocking(this.#running, this.#queued, now, true);
      for (let op: Op<E> | null = this.#queued.head; op !== null; op = op.next) {
        queued.push({
          id: op.id,
          kind: op.kind,
          label: op.label,
          waitingMs: now - op.enqueuedAt,
          waitingFor: op.state.tag === 'leased' ? NO_BLOCKERS : op.kind === 'write' ? all : writes,
          sessionId: op.sessionId,
        });
      }
    }
    // Calls waiting in their sessions' own queues, behind their sessions' running ops.
    if (sessionQueued.length > 0) {
      queued.push(...sessionQueued);
      queued.sort((a, b) => b.waitingMs - a.waitingMs);
    }
    const pool = this.#pool;
    return {
      name: this.#name,
      state: this.#compute(),
      generation: pool.generation,
      handles: {
        total: pool.idleCount + pool.busyCount,
        busy: pool.busyCount,
        idle: pool.idleCount,
        connecting: pool.connecting,
        retiring: pool.retiring,
        sessions: sessionHandles,
      },
      limits: this.#limits,
      running,
      queued,
      queue,
      lastProbe: this.#lastProbe === null ? null : { ...this.#lastProbe },
      lastError: this.#lastError === null ? null : { ...this.#lastError },
      reconnect: { failures: pool.failures, nextAttemptAt: pool.nextAttemptAt },
      counters: { ...this.counters },
      sessions,
      cluster,
    };
  }
}
