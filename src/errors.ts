/**
 * Errors thrown by engine-guard.
 *
 * Every error is an exported class with a stable `name` and `code`, so callers can branch on
 * `err.code` (or `instanceof`) without parsing messages. Errors that wrap another carry it as
 * the standard `cause`.
 *
 * @packageDocumentation
 */

/** Stable codes of every error engine-guard throws. */
export type EngineGuardErrorCode =
  | 'ERR_LOCK_TIMEOUT'
  | 'ERR_DEADLOCK'
  | 'ERR_QUEUE_FULL'
  | 'ERR_LEASE_REVOKED'
  | 'ERR_ENGINE_STALLED'
  | 'ERR_ENGINE_UNAVAILABLE'
  | 'ERR_GUARD_CLOSED'
  | 'ERR_PROBE_TIMEOUT'
  | 'ERR_HOOK_TIMEOUT'
  | 'ERR_SESSION_LOST'
  | 'ERR_SESSION_LIMIT'
  | 'ERR_SESSION_CLOSED'
  | 'ERR_SESSION_STATE_DISCARDED'
  | 'ERR_LEASE_LOST';

/**
 * Marks every engine-guard error, whichever copy of the package made it. `Symbol.for` is shared
 * across realms and module instances, so an app that loads both the ESM and the CJS build (or two
 * copies in `node_modules`) still gets `instanceof` right, as undici does for its errors.
 */
const kBrand = Symbol.for('engine-guard.error');
/** The stable code of each error class, for the cross-build `instanceof` check. */
const classCodes = new WeakMap<Function, EngineGuardErrorCode>();

/**
 * Base class of every error engine-guard throws.
 *
 * `instanceof` works across the ESM and CJS builds: an error made by one build is an instance of
 * the same-named class of the other (matched by its stable `code`).
 */
export abstract class EngineGuardError extends Error {
  /** Stable machine-readable code, e.g. `ERR_LOCK_TIMEOUT`. */
  abstract readonly code: EngineGuardErrorCode;

  constructor(message?: string, options?: ErrorOptions) {
    super(message, options);
    Object.defineProperty(this, kBrand, { value: true });
  }

  /** Recognises errors of this class made by any copy of engine-guard (ESM or CJS build). */
  static override [Symbol.hasInstance](value: unknown): boolean {
    // `this` is whichever class stands right of `instanceof`: a subclass, not always this one,
    // so neither rule's fix (naming the class) would be right here.
    // biome-ignore lint/complexity/noThisInStatic: see above
    // biome-ignore lint/complexity/noUselessThisAlias: see above
    const target: Function = this;
    if (Function.prototype[Symbol.hasInstance].call(target, value)) return true;
    if (typeof value !== 'object' || value === null) return false;
    if ((value as Record<symbol, unknown>)[kBrand] !== true) return false;
    if (target === EngineGuardError) return true;
    const code = classCodes.get(target);
    return code !== undefined && (value as { code?: unknown }).code === code;
  }
}

/** One op a queued op was waiting for when it gave up (see {@link LockTimeoutError.waitingFor}). */
export interface BlockingOp {
  /** Id of the op within its guard. */
  readonly id: number;
  readonly kind: 'read' | 'write';
  readonly label: string | undefined;
  /**
   * How long it had been running, ms; for an op waiting for a handle, how long since it was
   * called.
   */
  readonly ageMs: number;
  /** The session it runs in, when it is a session's op. */
  readonly sessionId?: number | undefined;
  /**
   * `'waiting for a handle'` for an op that holds its lease (so it blocks the waiter as a running
   * op would) but waits for an engine handle to be opened, checked or returned. Absent for a
   * running op.
   */
  readonly phase?: 'waiting for a handle' | undefined;
}

function describeBlockers(blockers: readonly BlockingOp[]): string {
  if (blockers.length === 0) return '';
  const shown = blockers.slice(0, 3).map((b) => {
    const name = b.label === undefined ? '' : ` "${b.label}"`;
    const session = b.sessionId === undefined ? '' : ` of session ${b.sessionId}`;
    return `${b.kind} #${b.id}${name}${session} (${b.phase ?? 'running'} ${formatAge(b.ageMs)})`;
  });
  const more = blockers.length > 3 ? ` and ${blockers.length - 3} more` : '';
  return `; it was waiting for ${shown.join(', ')}${more}`;
}

function formatAge(ms: number): string {
  if (ms < 1_000) return `${Math.round(ms)} ms`;
  if (ms < 120_000) return `${(ms / 1_000).toFixed(1)} s`;
  return `${Math.round(ms / 60_000)} min`;
}

/** A waiter's `timeout` elapsed before it was granted the lock. The lease was never held. */
export class LockTimeoutError extends EngineGuardError {
  override readonly name = 'LockTimeoutError';
  readonly code = 'ERR_LOCK_TIMEOUT';
  /** The timeout, in milliseconds, that elapsed. */
  readonly timeout: number;
  /** Name of the lock or guard that timed out, when it has one. */
  readonly lockName: string | undefined;
  /**
   * The ops the waiter was waiting for when it gave up: the running ones, oldest first, then
   * those that held their lease and waited for a handle (filled in by an {@link EngineGuard};
   * empty for a bare lock).
   */
  readonly waitingFor: readonly BlockingOp[];

  constructor(
    timeout: number,
    lockName?: string,
    options?: ErrorOptions & { waitingFor?: readonly BlockingOp[] | undefined },
  ) {
    const waitingFor = options?.waitingFor ?? [];
    super(
      `Timed out after ${timeout} ms waiting for ${lockName ? `lock "${lockName}"` : 'the lock'}${describeBlockers(waitingFor)}`,
      options?.cause === undefined ? undefined : { cause: options.cause },
    );
    this.timeout = timeout;
    this.lockName = lockName;
    this.waitingFor = waitingFor;
  }
}

/**
 * The call could never succeed because the caller already holds the lock in a mode that blocks
 * it (a write requested inside a read of the same lock). Raised at once instead of hanging.
 */
export class DeadlockError extends EngineGuardError {
  override readonly name = 'DeadlockError';
  readonly code = 'ERR_DEADLOCK';
  /** Name of the lock or guard, when it has one. */
  readonly lockName: string | undefined;

  constructor(message: string, lockName?: string) {
    super(message);
    this.lockName = lockName;
  }
}

/** The wait queue is at its `maxQueue` bound; the request was not queued. */
export class QueueFullError extends EngineGuardError {
  override readonly name = 'QueueFullError';
  readonly code = 'ERR_QUEUE_FULL';
  /** The configured bound. */
  readonly maxQueue: number;
  /** Name of the lock or guard, when it has one. */
  readonly lockName: string | undefined;

  constructor(maxQueue: number, lockName?: string) {
    super(
      `Queue of ${lockName ? `lock "${lockName}"` : 'the lock'} is full (maxQueue ${maxQueue})`,
    );
    this.maxQueue = maxQueue;
    this.lockName = lockName;
  }
}

/** Default reason a lease's `signal` aborts with when `revoke()` is called without a reason. */
export class LeaseRevokedError extends EngineGuardError {
  override readonly name = 'LeaseRevokedError';
  readonly code = 'ERR_LEASE_REVOKED';

  constructor(message = 'The lease was revoked', options?: ErrorOptions) {
    super(message, options);
  }
}

/**
 * An operation lost liveness: its engine stopped answering probes for `failures` consecutive
 * intervals. The operation's `ctx.signal` aborted with this error, its lease was revoked and its
 * engine handle was replaced.
 */
export class EngineStalledError extends EngineGuardError {
  override readonly name = 'EngineStalledError';
  readonly code = 'ERR_ENGINE_STALLED';
  /**
   * True for a stalled write: its effect may or may not have landed on the engine. Check the
   * engine's state before retrying a non-idempotent write.
   */
  readonly indeterminate: boolean;
  /** Kind of the stalled operation. */
  readonly kind: 'read' | 'write';
  /** Id of the stalled operation. */
  readonly opId: number;
  /** The operation's label, when it had one. */
  readonly label: string | undefined;
  /** Engine generation the operation ran on. */
  readonly generation: number;
  /** Consecutive failed probes that convicted it. */
  readonly probeFailures: number;
  /** Name of the guard, when it has one. */
  readonly guardName: string | undefined;

  constructor(info: {
    guardName?: string | undefined;
    kind: 'read' | 'write';
    opId: number;
    label?: string | undefined;
    generation: number;
    probeFailures: number;
    cause?: unknown;
  }) {
    const what = info.label ? `${info.kind} "${info.label}"` : info.kind;
    super(
      `Engine stalled during ${what} (op ${info.opId}): ${info.probeFailures} consecutive liveness probes failed; the engine handle is being replaced${info.kind === 'write' ? '. The write is indeterminate: it may or may not have been applied' : ''}`,
      info.cause === undefined ? undefined : { cause: info.cause },
    );
    this.kind = info.kind;
    this.indeterminate = info.kind === 'write';
    this.opId = info.opId;
    this.label = info.label;
    this.generation = info.generation;
    this.probeFailures = info.probeFailures;
    this.guardName = info.guardName;
  }
}

/**
 * The engine cannot be reached: opening a handle failed repeatedly and the guard is backing off.
 * `cause` holds the last error `create` (or `setup`) threw.
 */
export class EngineUnavailableError extends EngineGuardError {
  override readonly name = 'EngineUnavailableError';
  readonly code = 'ERR_ENGINE_UNAVAILABLE';
  /** Consecutive failed attempts to open a handle. */
  readonly attempts: number;
  /** Epoch ms of the next reconnect attempt, when one is scheduled. */
  readonly retryAt: number | undefined;
  /** Name of the guard, when it has one. */
  readonly guardName: string | undefined;

  constructor(attempts: number, cause: unknown, retryAt?: number, guardName?: string) {
    super(
      `Engine${guardName ? ` of guard "${guardName}"` : ''} unavailable after ${attempts} failed attempt${attempts === 1 ? '' : 's'} to connect${cause instanceof Error ? `: ${cause.message}` : ''}`,
      { cause },
    );
    this.attempts = attempts;
    this.retryAt = retryAt;
    this.guardName = guardName;
  }
}

/** The guard is closed (or closing); no new operation is accepted and queued ones are rejected. */
export class GuardClosedError extends EngineGuardError {
  override readonly name = 'GuardClosedError';
  readonly code = 'ERR_GUARD_CLOSED';
  /** Name of the guard, when it has one. */
  readonly guardName: string | undefined;

  constructor(guardName?: string) {
    super(`Engine guard${guardName ? ` "${guardName}"` : ''} is closed`);
    this.guardName = guardName;
  }
}

/** A liveness probe did not answer within `liveness.timeout`; it counts as a failed probe. */
export class ProbeTimeoutError extends EngineGuardError {
  override readonly name = 'ProbeTimeoutError';
  readonly code = 'ERR_PROBE_TIMEOUT';
  /** The probe bound, ms. */
  readonly timeout: number;

  constructor(timeout: number) {
    super(`Liveness probe did not answer within ${timeout} ms`);
    this.timeout = timeout;
  }
}

/**
 * A lifecycle hook (`create` + `setup`, `destroy`, `cancel`) outlived its bound
 * (`connectTimeout`, `destroyTimeout`, `cancelTimeout`). Seen as the cause of an
 * `EngineUnavailableError`, or in `connectError` / `destroyError` events.
 */
export class HookTimeoutError extends EngineGuardError {
  override readonly name = 'HookTimeoutError';
  readonly code = 'ERR_HOOK_TIMEOUT';
  /** Which hook timed out. */
  readonly hook: 'connect' | 'destroy' | 'cancel' | 'reset' | 'state';
  /** The bound, ms. */
  readonly timeout: number;

  constructor(hook: 'connect' | 'destroy' | 'cancel' | 'reset' | 'state', timeout: number) {
    super(`The ${hook} hook did not finish within ${timeout} ms`);
    this.hook = hook;
    this.timeout = timeout;
  }
}

/**
 * A session's engine handle died (stall, fatal error, engine restart, failed idle check) and the
 * state it held (temporary tables, `SET`s, prepared statements...) is gone. The session's next
 * op rejects with this error, unless the session has a `restore` hook; `session.reopen()`
 * accepts the loss and continues on a fresh handle.
 */
export class SessionLostError extends EngineGuardError {
  override readonly name = 'SessionLostError';
  readonly code = 'ERR_SESSION_LOST';
  /** Id of the session within its guard. */
  readonly sessionId: number;
  /** The session's label, when it has one. */
  readonly label: string | undefined;
  /** Generation of the handle that was lost (its state went with it). */
  readonly generation: number;
  /** Name of the guard, when it has one. */
  readonly guardName: string | undefined;

  constructor(info: {
    sessionId: number;
    label?: string | undefined;
    generation: number;
    guardName?: string | undefined;
    cause?: unknown;
  }) {
    const what = info.label
      ? `Session ${info.sessionId} "${info.label}"`
      : `Session ${info.sessionId}`;
    super(
      `${what} lost its engine handle (generation ${info.generation}) and the state it held; call session.reopen() to continue on a fresh handle, or give the session a restore hook`,
      info.cause === undefined ? undefined : { cause: info.cause },
    );
    this.sessionId = info.sessionId;
    this.label = info.label;
    this.generation = info.generation;
    this.guardName = info.guardName;
  }
}

/**
 * A new session's first op found every one of the guard's `maxSessions` session handles taken
 * and none freed within its `timeout` (or `acquireTimeout`).
 */
export class SessionLimitError extends EngineGuardError {
  override readonly name = 'SessionLimitError';
  readonly code = 'ERR_SESSION_LIMIT';
  /** The guard's `maxSessions`. */
  readonly maxSessions: number;
  /** How long the op waited for a slot, ms. */
  readonly timeout: number;
  /** Name of the guard, when it has one. */
  readonly guardName: string | undefined;

  constructor(maxSessions: number, timeout: number, guardName?: string) {
    super(
      `No session slot${guardName ? ` on guard "${guardName}"` : ''} freed within ${timeout} ms: all ${maxSessions} are held by open sessions (close idle sessions, or raise maxSessions)`,
    );
    this.maxSessions = maxSessions;
    this.timeout = timeout;
    this.guardName = guardName;
  }
}

/** The session was closed (by `close()`, its idle timeout, or the guard's `close()`). */
export class SessionClosedError extends EngineGuardError {
  override readonly name = 'SessionClosedError';
  readonly code = 'ERR_SESSION_CLOSED';
  /** Id of the session within its guard. */
  readonly sessionId: number;
  /** The session's label, when it has one. */
  readonly label: string | undefined;
  /** Why it closed. */
  readonly reason: 'closed' | 'idle' | 'guard-closed';

  constructor(
    sessionId: number,
    label: string | undefined,
    reason: 'closed' | 'idle' | 'guard-closed',
  ) {
    const what = label ? `Session ${sessionId} "${label}"` : `Session ${sessionId}`;
    const why =
      reason === 'idle'
        ? 'after its idle timeout'
        : reason === 'guard-closed'
          ? 'with its guard'
          : '';
    super(`${what} is closed${why ? ` (${why})` : ''}`);
    this.sessionId = sessionId;
    this.label = label;
    this.reason = reason;
  }
}

/** Why {@link SessionStateDiscardedError} discarded a session's state. */
export type StateDiscardReason = 'no-slot' | 'split' | 'unknown';

/**
 * A session op left connection state on its handle (a temporary table, a `SET`...) that the
 * session could not keep, so the state was discarded (the handle was reset, or replaced) and
 * the op's caller gets this error instead of its result. Never a later "relation does not
 * exist". What the op committed stays committed: only connection state is discarded. When the
 * op's `fn` failed (after it left the state), its error is `opError`, and the `cause` unless the
 * state check failed too.
 *
 * `reason`:
 * - `'no-slot'`: pinning needs one of the guard's `maxSessions` slots and all were taken;
 * - `'split'`: the session already holds state on another handle (a concurrent op of the same
 *   session left it there first), and one session's state must live on one handle;
 * - `'unknown'`: the `state` check failed (see `cause`, the check's error: the link failed, or
 *   the engine cannot keep connection state, as behind a transaction-mode pooler), so the state
 *   could not be trusted.
 */
export class SessionStateDiscardedError extends EngineGuardError {
  override readonly name = 'SessionStateDiscardedError';
  readonly code = 'ERR_SESSION_STATE_DISCARDED';
  /** Id of the session within its guard. */
  readonly sessionId: number;
  /** The session's label, when it has one. */
  readonly label: string | undefined;
  /** What was discarded, as the `state` hook reported it; `undefined` when the check failed. */
  readonly discarded: readonly { readonly kind: string; readonly name: string }[] | undefined;
  /** Why it could not be kept. */
  readonly reason: StateDiscardReason;
  /** Name of the guard, when it has one. */
  readonly guardName: string | undefined;
  /**
   * What the call's own `fn` threw (a unique violation after it made a temp table, say), or
   * `undefined` when it succeeded. The call rejects with this error instead, so its own error
   * is kept here; it is also the `cause` when the state check gave no error of its own.
   */
  readonly opError: unknown;

  constructor(info: {
    sessionId: number;
    label?: string | undefined;
    discarded: readonly { readonly kind: string; readonly name: string }[] | undefined;
    reason: StateDiscardReason;
    maxSessions?: number | undefined;
    guardName?: string | undefined;
    /** The state check's error, when it failed. */
    cause?: unknown;
    /** What the call's fn threw, when it failed. */
    opError?: unknown;
  }) {
    const what = info.label
      ? `Session ${info.sessionId} "${info.label}"`
      : `Session ${info.sessionId}`;
    const state =
      info.discarded === undefined
        ? 'whatever connection state this call left'
        : info.discarded.map((entry) => `${entry.kind} ${entry.name}`).join(', ');
    const why =
      info.reason === 'no-slot'
        ? info.maxSessions === 0
          ? 'the guard has no session slots (maxSessions is 0): set maxSessions to let sessions keep state'
          : `every session slot is taken (maxSessions ${info.maxSessions ?? '?'}): close idle sessions or raise maxSessions`
        : info.reason === 'split'
          ? 'the session already holds state on another connection (left by a call that ran at the same time): run calls that make state one at a time'
          : `its state could not be checked${info.cause instanceof Error ? `: ${info.cause.message}` : ''}`;
    const failed =
      info.opError === undefined
        ? ''
        : ` The call itself failed${info.opError instanceof Error ? `: ${info.opError.message}` : ''} (see opError).`;
    const cause = info.cause === undefined ? info.opError : info.cause;
    super(
      `${what}: discarded ${state}, because ${why}. What the call committed stays committed.${failed}`,
      cause === undefined ? undefined : { cause },
    );
    this.sessionId = info.sessionId;
    this.label = info.label;
    this.discarded = info.discarded;
    this.reason = info.reason;
    this.guardName = info.guardName;
    this.opError = info.opError;
  }
}

/**
 * The cluster lease of an op (see `Coordinator`) was lost while the op ran: the coordinator could
 * no longer prove it held it (its lock session ended, or renewals stopped). The op's `ctx.signal`
 * aborted with this error and `cancel` was sent.
 */
export class LeaseLostError extends EngineGuardError {
  override readonly name = 'LeaseLostError';
  readonly code = 'ERR_LEASE_LOST';
  /**
   * True for a write: its effect may or may not have landed. A fenced write (checked against
   * `ctx.fence` inside its transaction) that lost its lease is refused by the engine.
   */
  readonly indeterminate: boolean;
  /** Mode of the lost lease. */
  readonly mode: 'read' | 'write';
  /** Fence of the lost grant. */
  readonly fence: number | bigint;

  constructor(info: {
    mode: 'read' | 'write';
    fence: number | bigint;
    message?: string;
    cause?: unknown;
  }) {
    super(
      info.message ??
        `Cluster ${info.mode} lease (fence ${String(info.fence)}) was lost while held${info.mode === 'write' ? '; the write is indeterminate' : ''}`,
      info.cause === undefined ? undefined : { cause: info.cause },
    );
    this.mode = info.mode;
    this.fence = info.fence;
    this.indeterminate = info.mode === 'write';
  }
}

for (const [cls, code] of [
  [LockTimeoutError, 'ERR_LOCK_TIMEOUT'],
  [DeadlockError, 'ERR_DEADLOCK'],
  [QueueFullError, 'ERR_QUEUE_FULL'],
  [LeaseRevokedError, 'ERR_LEASE_REVOKED'],
  [EngineStalledError, 'ERR_ENGINE_STALLED'],
  [EngineUnavailableError, 'ERR_ENGINE_UNAVAILABLE'],
  [GuardClosedError, 'ERR_GUARD_CLOSED'],
  [ProbeTimeoutError, 'ERR_PROBE_TIMEOUT'],
  [HookTimeoutError, 'ERR_HOOK_TIMEOUT'],
  [SessionLostError, 'ERR_SESSION_LOST'],
  [SessionLimitError, 'ERR_SESSION_LIMIT'],
  [SessionClosedError, 'ERR_SESSION_CLOSED'],
  [SessionStateDiscardedError, 'ERR_SESSION_STATE_DISCARDED'],
  [LeaseLostError, 'ERR_LEASE_LOST'],
] as const) {
  classCodes.set(cls, code);
}
