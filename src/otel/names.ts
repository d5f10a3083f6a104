/**
 * Metric, attribute and event names: the OpenTelemetry database semantic conventions for the
 * pool (`db.client.connection.*`), and the guard's own under `engine_guard.*`.
 *
 * The semantic-convention names are copied here, not imported from
 * `@opentelemetry/semantic-conventions/incubating`: that entry point is unstable by design and its
 * maintainers ask libraries to copy what they use. test/otel/names.test.ts checks each copy
 * against the package.
 */

/** `db.client.connection.*` metrics (UpDownCounters `{connection}`/`{request}` unless noted). */
export const DB_METRICS = {
  /** By `db.client.connection.state`: `idle` or `used`. */
  count: 'db.client.connection.count',
  /** Most open connections allowed (the conventions' current name). */
  limit: 'db.client.connection.limit',
  /** Most open connections allowed (the earlier name, still read by many dashboards). */
  max: 'db.client.connection.max',
  /** Most idle open connections allowed. */
  idleMax: 'db.client.connection.idle.max',
  /** Requests waiting for an open connection. */
  pendingRequests: 'db.client.connection.pending_requests',
  /** Counter `{timeout}`: waits for a connection that ran out. */
  timeouts: 'db.client.connection.timeouts',
  /** Histogram, s: the time to create a connection. */
  createTime: 'db.client.connection.create_time',
  /** Histogram, s: the time to obtain an open connection. */
  waitTime: 'db.client.connection.wait_time',
  /** Histogram, s: the time between borrowing a connection and giving it back. */
  useTime: 'db.client.connection.use_time',
} as const;

/** The guard's own metrics. */
export const GUARD_METRICS = {
  /** Counter `{op}`: ops answered, by kind, outcome and `error.type`. */
  ops: 'engine_guard.ops',
  /** Counter `{stall}`: ops convicted of a stall. */
  stalls: 'engine_guard.stalls',
  /** Counter `{handle}`: handles retired, by reason. */
  replacements: 'engine_guard.replacements',
  /** Counter `{probe}`: failed liveness probes, of running ops or idle handles. */
  probeFailures: 'engine_guard.probe.failures',
  /** Counter `{reset}`: `reset` calls that failed or timed out (their handle was retired). */
  resetFailures: 'engine_guard.reset.failures',
  /** UpDownCounter `{session}`: open sessions, by whether they are pinned to a handle. */
  sessions: 'engine_guard.session.count',
  /** UpDownCounter `{session}`: most sessions pinned at once (`maxSessions`). */
  sessionLimit: 'engine_guard.session.limit',
  /** Histogram, s: the wait of ops for their cluster lease (with a `coordinator`). */
  clusterLeaseWait: 'engine_guard.cluster.lease.wait_time',
} as const;

/** Attribute names. */
export const ATTR = {
  poolName: 'db.client.connection.pool.name',
  connectionState: 'db.client.connection.state',
  errorType: 'error.type',
  opId: 'engine_guard.op.id',
  opKind: 'engine_guard.op.kind',
  opLabel: 'engine_guard.op.label',
  opKey: 'engine_guard.op.key',
  opOutcome: 'engine_guard.op.outcome',
  opWaitTime: 'engine_guard.op.wait_time',
  opRunTime: 'engine_guard.op.run_time',
  clusterLeaseWait: 'engine_guard.cluster.lease.wait_time',
  sessionId: 'engine_guard.session.id',
  sessionPinned: 'engine_guard.session.pinned',
  generation: 'engine_guard.handle.generation',
  replaceReason: 'engine_guard.replace.reason',
  probeTarget: 'engine_guard.probe.target',
  probeConsecutive: 'engine_guard.probe.consecutive',
  probeFailures: 'engine_guard.probe.failures',
  indeterminate: 'engine_guard.stall.indeterminate',
} as const;

/** Span event names. */
export const SPAN_EVENTS = {
  /** The op got its lease and handle and started running (time: when it did). */
  waitEnd: 'engine_guard.wait.end',
  /** A liveness probe of the running op failed. */
  probeFailure: 'engine_guard.probe.failure',
  /** The op was convicted of a stall. */
  conviction: 'engine_guard.conviction',
} as const;

/** `db.client.connection.state` values. */
export const CONNECTION_STATE = { idle: 'idle', used: 'used' } as const;

/** `error.type` when an error names no type of its own. */
export const ERROR_TYPE_OTHER = '_OTHER';

/**
 * Bucket bounds of the time histograms, s: from 0.1 ms (an uncontended wait) to a minute, about
 * 2.5× apart, so a p99 read from them is within one step. Override with a View.
 */
export const TIME_BUCKETS: readonly number[] = Object.freeze([
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
  30, 60,
]);

/**
 * `error.type` of an error: its string `code` (engine-guard's `ERR_*`, a PostgreSQL SQLSTATE, a
 * Node.js `ECONNRESET`), else its `name` when it has a specific one (`AbortError`), else `_OTHER`.
 */
export function errorType(error: unknown): string {
  if (typeof error !== 'object' || error === null) return ERROR_TYPE_OTHER;
  try {
    const { code, name } = error as { code?: unknown; name?: unknown };
    if (typeof code === 'string' && code !== '') return code;
    if (typeof name === 'string' && name !== '' && name !== 'Error') return name;
  } catch {
    // A getter that throws (a revoked Proxy as the rejection value) names no type.
  }
  return ERROR_TYPE_OTHER;
}
