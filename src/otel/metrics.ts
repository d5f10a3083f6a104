/**
 * The guard's metrics: the pool metrics of the database semantic conventions and the guard's
 * own. Gauges read `guard.status()` (which never waits) once per collection; histograms and
 * counters are fed by the guard's ops (from the tracing channel) and its events.
 */
import type {
  Attributes,
  BatchObservableCallback,
  Counter,
  Histogram,
  Meter,
  Observable,
} from '@opentelemetry/api';
import type { OpTraceContext } from '../diagnostics.js';
import type { GuardStatus, OpKind, Subscription } from '../guard/types.js';
import type { InstrumentableGuard } from './guard-like.js';
import {
  ATTR,
  CONNECTION_STATE,
  DB_METRICS,
  errorType,
  GUARD_METRICS,
  TIME_BUCKETS,
} from './names.js';

const SECONDS = { unit: 's', advice: { explicitBucketBoundaries: [...TIME_BUCKETS] } };

/** Open sessions that hold a handle of their own. */
function pinnedSessions(status: GuardStatus): number {
  let pinned = 0;
  for (const session of status.sessions) if (session.pinned) pinned++;
  return pinned;
}

/** The metrics of one guard; `dispose()` stops them. */
export class GuardMetrics {
  readonly #meter: Meter;
  readonly #observe: BatchObservableCallback;
  readonly #observables: Observable[];
  readonly #subscriptions: Subscription[];
  readonly #waitTime: Histogram;
  readonly #useTime: Histogram;
  readonly #clusterWait: Histogram;
  readonly #timeouts: Counter;
  readonly #ops: Counter;
  /** Attribute sets made once: most ops end the same way. */
  readonly #byKind: Readonly<Record<OpKind, Attributes>>;
  readonly #okByKind: Readonly<Record<OpKind, Attributes>>;

  constructor(meter: Meter, guard: InstrumentableGuard, poolName: string) {
    this.#meter = meter;
    const pool: Attributes = { [ATTR.poolName]: poolName };
    const withPool = (attributes: Attributes): Attributes => ({ ...pool, ...attributes });
    const gauge = (name: string, unit: string, description: string) =>
      meter.createObservableUpDownCounter(name, { unit, description });
    const counter = (name: string, unit: string, description: string) =>
      meter.createCounter(name, { unit, description });
    const seconds = (name: string, description: string) =>
      meter.createHistogram(name, { description, ...SECONDS });

    const count = gauge(
      DB_METRICS.count,
      '{connection}',
      'Open connections (engine handles) by state: idle, or used by an op or a pinned session.',
    );
    const limit = gauge(
      DB_METRICS.limit,
      '{connection}',
      'Most open connections allowed: the shared pool plus the session slots.',
    );
    const max = gauge(
      DB_METRICS.max,
      '{connection}',
      'Most open connections allowed (the earlier name of db.client.connection.limit).',
    );
    const idleMax = gauge(
      DB_METRICS.idleMax,
      '{connection}',
      'Most idle open connections allowed: the shared pool keeps every open handle.',
    );
    const pending = gauge(
      DB_METRICS.pendingRequests,
      '{request}',
      'Calls waiting for a connection (queued for the lock, a handle, or their session).',
    );
    const sessions = gauge(
      GUARD_METRICS.sessions,
      '{session}',
      'Open sessions, by whether they are pinned to a handle of their own.',
    );
    const sessionLimit = gauge(
      GUARD_METRICS.sessionLimit,
      '{session}',
      'Most sessions pinned to a handle at once (maxSessions): more wait for a slot.',
    );
    const idle = withPool({ [ATTR.connectionState]: CONNECTION_STATE.idle });
    const used = withPool({ [ATTR.connectionState]: CONNECTION_STATE.used });
    const pinnedAttributes = withPool({ [ATTR.sessionPinned]: true });
    const unpinnedAttributes = withPool({ [ATTR.sessionPinned]: false });
    this.#observables = [count, limit, max, idleMax, pending, sessions, sessionLimit];
    this.#observe = (observer) => {
      const status = guard.status();
      const { pool: shared, maxSessions } = status.limits;
      const pinned = pinnedSessions(status);
      // A session's handle is in use between its ops too: no one else may take it.
      observer.observe(count, status.handles.idle, idle);
      observer.observe(count, status.handles.busy + status.handles.sessions, used);
      observer.observe(limit, shared + maxSessions, pool);
      observer.observe(max, shared + maxSessions, pool);
      observer.observe(idleMax, shared, pool);
      // Queued ops, and calls queued in their sessions behind their own ops: all in `queued`.
      observer.observe(pending, status.queued.length, pool);
      observer.observe(sessions, pinned, pinnedAttributes);
      observer.observe(sessions, status.sessions.length - pinned, unpinnedAttributes);
      observer.observe(sessionLimit, maxSessions, pool);
    };
    meter.addBatchObservableCallback(this.#observe, this.#observables);

    this.#waitTime = seconds(
      DB_METRICS.waitTime,
      'Time ops waited for their lease and handle, from the call to the start of their run.',
    );
    this.#useTime = seconds(
      DB_METRICS.useTime,
      'Time ops held their handle: from the start of their run to their answer.',
    );
    this.#clusterWait = seconds(
      GUARD_METRICS.clusterLeaseWait,
      'Time ops waited for their cluster lease (inside their run).',
    );
    this.#timeouts = counter(
      DB_METRICS.timeouts,
      '{timeout}',
      'Waits for a connection that ran out (the op or session timeout).',
    );
    this.#ops = counter(
      GUARD_METRICS.ops,
      '{op}',
      'Ops answered, by kind, outcome and error.type.',
    );
    const createTime = seconds(
      DB_METRICS.createTime,
      'Time to open a handle: create, bootstrap and setup.',
    );
    const stalls = counter(
      GUARD_METRICS.stalls,
      '{stall}',
      'Ops convicted of a stall (their engine stopped answering).',
    );
    const replacements = counter(
      GUARD_METRICS.replacements,
      '{handle}',
      'Handles retired and replaced, by reason.',
    );
    const probeFailures = counter(
      GUARD_METRICS.probeFailures,
      '{probe}',
      'Failed liveness probes, of running ops (target op) or idle handles (idle).',
    );
    const resetFailures = counter(
      GUARD_METRICS.resetFailures,
      '{reset}',
      'reset calls that failed or timed out; their handle was retired.',
    );
    const byKind = {
      read: withPool({ [ATTR.opKind]: 'read' }),
      write: withPool({ [ATTR.opKind]: 'write' }),
    };
    this.#byKind = byKind;
    this.#okByKind = {
      read: { ...byKind.read, [ATTR.opOutcome]: 'ok' },
      write: { ...byKind.write, [ATTR.opOutcome]: 'ok' },
    };
    this.#subscriptions = [
      guard.on('connect', ({ durationMs }) => createTime.record(durationMs / 1000, pool)),
      guard.on('stall', ({ op }) => stalls.add(1, byKind[op.kind])),
      guard.on('replace', ({ reason }) =>
        replacements.add(1, withPool({ [ATTR.replaceReason]: reason })),
      ),
      guard.on('probeFailure', ({ op }) =>
        probeFailures.add(1, withPool({ [ATTR.probeTarget]: op === undefined ? 'idle' : 'op' })),
      ),
      guard.on('resetError', () => resetFailures.add(1, pool)),
    ];
  }

  /** An op of the guard was answered. */
  record(ctx: OpTraceContext): void {
    const kind = this.#byKind[ctx.kind];
    if (ctx.runMs !== undefined) {
      this.#waitTime.record((ctx.waitMs ?? 0) / 1000, kind);
      this.#useTime.record(ctx.runMs / 1000, kind);
    }
    if (ctx.clusterWaitMs !== undefined) this.#clusterWait.record(ctx.clusterWaitMs / 1000, kind);
    if (ctx.outcome === 'timeout') this.#timeouts.add(1, kind);
    const outcome = ctx.outcome ?? 'error';
    this.#ops.add(
      1,
      outcome === 'ok'
        ? this.#okByKind[ctx.kind]
        : { ...kind, [ATTR.opOutcome]: outcome, [ATTR.errorType]: errorType(ctx.error) },
    );
  }

  dispose(): void {
    for (const subscription of this.#subscriptions) subscription.dispose();
    this.#meter.removeBatchObservableCallback(this.#observe, this.#observables);
  }
}
