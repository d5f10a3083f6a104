import type { Coordinator, CoordinatorStatus, Fence } from '../coordination/coordinator.js';
import type { BlockingOp, EngineStalledError } from '../errors.js';
import type { LockMode } from '../lock/lease.js';
import type { Fairness } from '../lock/rwlock.js';

/** Kind of a guarded operation: a shared `read` or an exclusive `write`. */
export type OpKind = LockMode;

/** What `probe` and `cancel` learn about the operation they concern. */
export interface OpInfo {
  /** Unique id of the operation within its guard. */
  readonly id: number;
  readonly kind: OpKind;
  readonly label: string | undefined;
  /** Generation of the handle it runs on. */
  readonly generation: number;
  /** `performance.now()` when it started running (after it got its lease and handle). */
  readonly startedAt: number;
}

/** Second argument of the function given to `guard.read` / `guard.write`. */
export interface OpContext {
  /**
   * Aborted when the caller's signal aborts, when the op is convicted of a stall (reason:
   * `EngineStalledError`) or when the guard closes (`GuardClosedError`). Pass it to the engine call.
   */
  readonly signal: AbortSignal;
  /**
   * Reports progress (e.g. once per row batch). Resets the liveness clock: an op that
   * heartbeats at least once per `liveness.interval` is never probed.
   */
  heartbeat(): void;
  /** Generation of the engine handle this op runs on. */
  readonly generation: number;
  /** Unique id of this op within its guard. */
  readonly id: number;
  readonly kind: OpKind;
  readonly label: string | undefined;
  /**
   * True for the first op of a session after its handle was lost and `restore` rebuilt the
   * session's state on a new handle (`restore` itself runs with this `ctx`). False otherwise.
   */
  readonly restored: boolean;
  /**
   * Fencing token of the op's cluster lease (see the guard's `coordinator`), or `undefined` when
   * the op holds none. Check it in the engine (e.g. `pgCheckFence`) so a stale holder's write is
   * refused.
   */
  readonly fence: Fence | undefined;
  /** Id of the session the op runs in, or `undefined` for a stateless op. */
  readonly sessionId: number | undefined;
}

/** What `reset` learns about the stateless op that just used the handle. */
export interface ResetContext {
  /** Aborts when `resetTimeout` passes or the guard closes. */
  readonly signal: AbortSignal;
  /** The op that used the handle. */
  readonly op: OpInfo;
  /** Whether the op's function succeeded. */
  readonly ok: boolean;
}

/**
 * One piece of connection state a handle holds for a session (see the guard's `state` hook):
 * what pins the session to that handle.
 */
export interface HeldState {
  /**
   * What it is, in the engine's words: `'temp table'`, `'setting'`, `'prepared statement'`,
   * `'advisory lock'`, `'listen'`, `'cursor'`, `'role'`...
   */
  readonly kind: string;
  /** Which one: the table, the setting, the channel... */
  readonly name: string;
}

/** What the `state` hook learns about the session op that just used the handle. */
export interface StateContext {
  /** Aborts when `resetTimeout` passes or the guard closes. */
  readonly signal: AbortSignal;
  /** The op that used the handle. */
  readonly op: OpInfo;
  /** Whether the op's function succeeded. */
  readonly ok: boolean;
  /** Id of the session the op ran in. */
  readonly sessionId: number;
}

/**
 * What a `state` check found: the state held (empty: clean), or `undefined` with the reason it
 * is unknown; `running` when the guard gave up on the hook (its bound, or `close()`) before it
 * returned, so it may still be using the handle. Internal to the guard (not exported by the
 * package).
 */
export type StateAnswer =
  | { readonly held: readonly HeldState[]; readonly error?: undefined; readonly running?: false }
  | { readonly held: undefined; readonly error: unknown; readonly running?: boolean };

/**
 * When a session takes a handle of its own:
 * - `'on-state'`: only while it holds connection state, as the guard's `state` hook reports it
 *   after each of its ops; until then (and again once the state is gone) its ops run on shared
 *   handles like stateless ops, side by side.
 * - `'always'`: from its first op until it closes; its ops run one at a time.
 */
export type SessionPin = 'on-state' | 'always';

/** Options of `guard.session()`. */
export interface SessionOptions<E> {
  /** Shown in `status()`, events and errors. */
  label?: string | undefined;
  /** Closes the session (and destroys its handle) once it has had no op for this long, ms. Default: never. */
  idleTimeout?: number | undefined;
  /**
   * Rebuilds the session's state on a new handle after the old one was lost (re-apply `SET`s,
   * re-attach, re-create temporary tables). Runs before the next op, with that op's `ctx`
   * (`ctx.restored` is true). Without it, the next op rejects with `SessionLostError`.
   */
  restore?: ((engine: E, ctx: OpContext) => unknown) | undefined;
  /**
   * When the session takes a handle of its own (see {@link SessionPin}). Default `'on-state'`
   * when the guard has a `state` hook, else `'always'`.
   */
  pin?: SessionPin | undefined;
}

/**
 * Lifecycle of a session:
 * - `new`: no handle yet (it is taken by the first op);
 * - `open`: holds its handle;
 * - `lost`: its handle died; the next op rejects with `SessionLostError` (or runs `restore`);
 * - `closed`: closed by `close()`, its idle timeout, or the guard.
 */
export type SessionState = 'new' | 'open' | 'lost' | 'closed';

/**
 * A caller's own engine handle, kept across its ops: its temporary tables, `SET`s and prepared
 * statements stay with it and are seen by no one else. Made by `guard.session()`.
 *
 * Invariants:
 * - The session's handle is opened lazily by its first op, never shared with another caller and
 *   never reset between its ops.
 * - Its ops run one at a time, in call order, on that handle. A session read runs beside other
 *   reads; a session write is exclusive guard-wide like every write.
 * - Losing the handle is never silent: the session becomes `lost` and its next op rejects with
 *   `SessionLostError`, unless `restore` rebuilds the state first.
 * - `close()` (or `await using`) destroys the handle and frees the session's slot.
 */
export interface Session<E> extends AsyncDisposable {
  /** Unique id of the session within its guard. */
  readonly id: number;
  readonly label: string | undefined;
  /**
   * Runs `fn` as a read on the session's handle, after the session's earlier ops. Rejects like
   * `guard.read`, and with `SessionLostError`, `SessionLimitError` (first op, no slot freed within
   * `timeout`) or `SessionClosedError`.
   */
  read<T>(
    fn: (engine: E, ctx: OpContext) => T | PromiseLike<T>,
    options?: OpOptions,
  ): Promise<Awaited<T>>;
  /** Runs `fn` as a write (exclusive guard-wide) on the session's handle. See `read`. */
  write<T>(
    fn: (engine: E, ctx: OpContext) => T | PromiseLike<T>,
    options?: OpOptions,
  ): Promise<Awaited<T>>;
  /** Synchronous snapshot; never waits. */
  status(): SessionStatus;
  /**
   * Accepts the loss of the session's state: a `lost` session continues on a fresh handle with
   * its next op. On an open session, drops its handle (after the op running now, if any), so the
   * next op starts from a clean handle.
   * @throws SessionClosedError when the session is closed.
   */
  reopen(): void;
  /**
   * Closes the session: ops not started yet reject with `SessionClosedError`, the op running now
   * (if any) finishes, then the handle is destroyed and its slot freed. Idempotent.
   */
  close(): Promise<void>;
}

/** Synchronous snapshot of one session. */
export interface SessionStatus {
  id: number;
  label: string | undefined;
  state: SessionState;
  /** Generation of its handle (0 before it has one); after a loss, the generation that was lost. */
  generation: number;
  /** Ops started in it so far. */
  ops: number;
  /** Ops queued in it, waiting for the previous one (or for a slot). */
  queued: number;
  /** True while one of its ops runs. */
  running: boolean;
  /** ms since it was made. */
  ageMs: number;
  /** ms since its last op ended (or since it was made). */
  idleMs: number;
  /** Times its handle was lost so far. */
  losses: number;
  /** When it takes a handle of its own (see {@link SessionPin}). */
  pin: SessionPin;
  /**
   * True while it holds a handle of its own (a `maxSessions` slot): always once a `pin: 'always'`
   * session has one; while its handle holds state for a `pin: 'on-state'` session.
   */
  pinned: boolean;
  /**
   * The state that holds the pin, as the `state` hook last reported it (empty when unpinned, and
   * for `pin: 'always'`). Frozen.
   */
  heldState: readonly HeldState[];
}

/** Liveness watchdog settings. All durations in milliseconds. */
export interface LivenessOptions {
  /**
   * An op with no heartbeat for this long is probed; probes repeat every `interval` while it
   * stays silent. Default 5,000.
   */
  interval?: number | undefined;
  /** Bound of one probe; a probe still pending after it counts as failed. Default 3,000. */
  timeout?: number | undefined;
  /** Consecutive failed probes that convict an op of a stall. Default 3. */
  failures?: number | undefined;
  /**
   * A watchdog timer that fires later than this (event-loop block, laptop sleep) convicts
   * nobody on that tick: it re-checks liveness instead. Default 1,000.
   */
  pauseThreshold?: number | undefined;
  /**
   * An idle handle unused for at least this long is probed before it is handed to an op, and
   * replaced if the probe fails. `false` turns the check off. Default: `interval`.
   */
  idleCheckAfter?: number | false | undefined;
}

/** Reconnect backoff after `create` (or `setup`) fails. */
export interface ReconnectOptions {
  /** First delay, ms. Default 100. */
  initialDelay?: number | undefined;
  /** Largest delay, ms. Default 10,000. */
  maxDelay?: number | undefined;
  /** Growth per consecutive failure. Default 2. */
  factor?: number | undefined;
  /** Fraction of each delay that is randomised, 0 to 1. Default 0.2. */
  jitter?: number | undefined;
  /**
   * After this many consecutive failures, while no handle is open at all, the engine counts as
   * down: new callers fail fast with `EngineUnavailableError` until an attempt (kept going in the
   * background) succeeds. Default 3.
   */
  failFastAfter?: number | undefined;
}

/** Options of {@link EngineGuard}. `E` is the engine handle type (a connection, a client...). */
export interface EngineGuardOptions<E> {
  /** Opens one engine handle. `signal` aborts when the attempt times out or the guard closes. */
  create: (ctx: { signal: AbortSignal; generation: number }) => Promise<E> | E;
  /** Closes a handle. Bounded by `destroyTimeout`; errors are reported, not thrown. */
  destroy?: ((engine: E, ctx: { reason: unknown }) => Promise<void> | void) | undefined;
  /**
   * Runs once per guard, on the first handle, before its `setup` (create the shared workspace,
   * the catalog). Single-flight across concurrent first ops; when it fails, the attempt fails and
   * the next attempt (after the reconnect backoff) runs it again; once it succeeded it never runs
   * again, across handle replacements.
   */
  bootstrap?:
    | ((engine: E, ctx: { signal: AbortSignal; generation: number }) => Promise<void> | void)
    | undefined;
  /** Prepares each new handle once, before its first op (attach, catalog, search path...). Sessions' handles included. */
  setup?:
    | ((engine: E, ctx: { signal: AbortSignal; generation: number }) => Promise<void> | void)
    | undefined;
  /**
   * Liveness check. Throwing (or rejecting) means failed. With `op` set, the handle is busy
   * running that op: check from the side (e.g. is the backend still active?). With `op`
   * undefined, the handle is idle and may be used directly.
   */
  probe?:
    | ((engine: E, ctx: { signal: AbortSignal; op: OpInfo | undefined }) => unknown)
    | undefined;
  /** Best-effort server-side cancel of a running op. Bounded by `cancelTimeout`. */
  cancel?:
    | ((engine: E, ctx: { op: OpInfo; reason: unknown }) => Promise<unknown> | unknown)
    | undefined;
  /**
   * Cheap synchronous check of an idle handle before it is handed out (e.g. "has the client
   * seen its socket close?"). `false` retires the handle and another is used or opened, so a
   * connection that died while idle (server restart) costs no caller an error.
   */
  isAlive?: ((engine: E) => boolean) | undefined;
  /** True for errors meaning "this handle is gone": the handle is replaced. */
  isFatal?: ((error: unknown) => boolean) | undefined;
  /**
   * Returns a shared handle to a clean state after a stateless op, before it serves another
   * caller (PostgreSQL: what `DISCARD ALL` clears). Bounded by `resetTimeout`; a reset that
   * fails or times out retires the handle. Never runs on a session's handle.
   */
  reset?: ((engine: E, ctx: ResetContext) => Promise<void> | void) | undefined;
  /**
   * Reports the connection state a session op left on its handle (temporary tables, `SET`s,
   * prepared statements, locks...): `[]` or `undefined` when it left none. Runs after each op of
   * a session that pins on state (see {@link SessionPin}), instead of `reset`: a clean handle
   * goes back to the pool as it is; state found pins the session to the handle, and a pinned
   * session whose handle is clean again lets it go. An answer given synchronously (the adapter
   * knows the op left nothing) costs no round trip. Throwing (or rejecting) means "unknown": the
   * state is discarded and the op's caller is told so. Bounded by `resetTimeout`: past it the
   * hook may still be using the handle, so the handle is retired (a pinned session's state is
   * lost with it, as when its handle dies).
   */
  state?:
    | ((
        engine: E,
        ctx: StateContext,
      ) => readonly HeldState[] | undefined | PromiseLike<readonly HeldState[] | undefined>)
    | undefined;
  /** Bound of one `reset` or `state` check, ms. Default 5,000. */
  resetTimeout?: number | undefined;
  /**
   * Most sessions holding a handle at once (handles reserved for sessions, beside `pool`).
   * Default 0: `session()` is refused.
   */
  maxSessions?: number | undefined;
  /**
   * Makes writes (and, when the coordinator asks, reads) exclusive across processes: a write takes
   * a cluster `write` lease after the local lock. See `Coordinator`.
   */
  coordinator?: Coordinator | undefined;
  /** Handles for concurrent reads. Default 1. */
  pool?: number | undefined;
  /** Liveness settings, or `false` for no watchdog. Without `probe`, liveness is off. */
  liveness?: LivenessOptions | false | undefined;
  /** Default bound of the wait for a lease and a handle, ms. Default: no bound. */
  acquireTimeout?: number | undefined;
  /** Most queued ops; more reject with `QueueFullError`. Default: no bound. */
  maxQueue?: number | undefined;
  reconnect?: ReconnectOptions | undefined;
  /** Bound of one `create` + `setup` attempt, ms. Default 30,000. */
  connectTimeout?: number | undefined;
  /**
   * Bound of one `destroy`, ms. Default 5,000. Also how long the destroy of a handle whose
   * `setup` was given up (on `connectTimeout` or `close()`) waits for that `setup` to settle first.
   */
  destroyTimeout?: number | undefined;
  /** Bound of one `cancel`, and grace for an aborted op to settle before its handle is dropped, ms. Default 5,000. */
  cancelTimeout?: number | undefined;
  /** Bound of `close()`, ms. Default 10,000. */
  closeTimeout?: number | undefined;
  /**
   * Default of each op's `waitForReady`. `false` (the default): once the engine counts as down
   * (see `reconnect.failFastAfter`), ops fail fast with `EngineUnavailableError`, those already
   * queued for a handle included. `true`: ops wait for the engine to come back, within their own
   * `signal` and `timeout` (gRPC's wait-for-ready).
   */
  waitForReady?: boolean | undefined;
  /**
   * Order in which queued ops are served (the guard's lock policy, see `RWLock`).
   * `'no-convoy'` (the default): a write that has waited `bypassAfter` ms for reads that are still
   * running lets later reads pass it until those reads end, so one long read plus one queued write
   * does not stall every other caller. `'fifo'`: strict FIFO phases (a queued write holds back every
   * read that arrives after it).
   */
  fairness?: Fairness | undefined;
  /** With `fairness: 'no-convoy'`: how long a write waits on running reads before later reads may pass it, ms. Default 100. */
  bypassAfter?: number | undefined;
  /** Name used in messages, status and diagnostics. */
  name?: string | undefined;
}

/** Options of one `guard.read` / `guard.write`. */
export interface OpOptions {
  /** Aborting it removes the op from the queue, or aborts `ctx.signal` and sends `cancel`. */
  signal?: AbortSignal | undefined;
  /**
   * Most ms to wait for a lease and a handle; `0` means "only if free right now". Never bounds
   * the op's run. Default `acquireTimeout`.
   */
  timeout?: number | undefined;
  /** Shown in `status()`, events, errors and traces. */
  label?: string | undefined;
  /**
   * `true`: while the engine is down, wait for it (within `signal` and `timeout`) instead of
   * failing fast with `EngineUnavailableError`. Default: the guard's `waitForReady`.
   */
  waitForReady?: boolean | undefined;
  /**
   * Fair-share key of a stateless op (a client id, a tenant): queued reads are served
   * round-robin across keys, so one key with many queued reads delays another key's read by at
   * most one op per handle. Ops without a key share one group. Ignored inside a session (its
   * ops share the session's key).
   */
  key?: string | number | undefined;
}

/**
 * Lifecycle state reported by `status()`:
 * - `idle`: no handle open and none being opened (before first use, or after all were lost);
 * - `connecting`: the first handle is being opened;
 * - `ready`: at least one handle is open and nothing is failing;
 * - `degraded`: opening handles fails (backing off), a running op has failed probes, or a lost
 *   handle is still being torn down;
 * - `closed`: `close()` was called.
 */
export type GuardState = 'idle' | 'connecting' | 'ready' | 'degraded' | 'closed';

/** One running op in `status()`. */
export interface RunningOpStatus {
  id: number;
  kind: OpKind;
  label: string | undefined;
  generation: number;
  /** ms since it started running. */
  ageMs: number;
  /** ms since its last heartbeat (or its start). */
  sinceHeartbeatMs: number;
  /** Consecutive failed probes so far. */
  probeFailures: number;
  /** `cancelling` after its caller aborted, while the engine winds it down. */
  phase: 'running' | 'cancelling';
  /** The session it runs in, or `undefined` for a stateless op. */
  sessionId: number | undefined;
}

/** One queued op in `status()`: waiting for a lease or for a handle. */
export interface QueuedOpStatus {
  id: number;
  kind: OpKind;
  label: string | undefined;
  /** ms since it was queued. */
  waitingMs: number;
  /**
   * The ops it waits for: every op holding a lease for a write, the write holding the lease
   * for a read; empty when it holds its lease and waits for a handle; its session's running op
   * for a call queued behind it in its session (a pinned session runs its ops one at a time).
   * Running ops come first, oldest first, then ops that hold their lease and wait for a handle
   * (`phase`). Shared between entries of one snapshot and frozen.
   */
  waitingFor: readonly BlockingOp[];
  /** The session it was called in, or `undefined` for a stateless op. */
  sessionId: number | undefined;
}

/** Counters since the guard was made. */
export interface GuardCounters {
  /** Ops started (granted a lease and a handle). */
  ops: number;
  succeeded: number;
  failed: number;
  stalls: number;
  /** Handles retired (stall, fatal error, failed idle check). */
  replacements: number;
  /** `cancel` calls sent. */
  cancels: number;
  lockTimeouts: number;
  /** Ops aborted by their caller (queued or running). */
  aborts: number;
  probeFailures: number;
  connectFailures: number;
}

/** Synchronous snapshot returned by `status()`. */
export interface GuardStatus {
  name: string | undefined;
  state: GuardState;
  /** Highest handle generation opened so far (0 before the first). */
  generation: number;
  /**
   * Shared handles: `total` = `busy` + `idle` (open handles in service); `connecting` and
   * `retiring` are apart. `sessions`: handles held by sessions (pinned, or `pin: 'always'`),
   * beside the shared ones, at most `maxSessions`.
   */
  handles: {
    total: number;
    busy: number;
    idle: number;
    connecting: number;
    retiring: number;
    sessions: number;
  };
  /**
   * How many handles the guard may hold: `pool` shared ones (for reads and writes) and
   * `maxSessions` for sessions, as configured. Frozen.
   */
  limits: { readonly pool: number; readonly maxSessions: number };
  running: RunningOpStatus[];
  /** Queued ops, oldest first, with what each waits for. */
  queued: QueuedOpStatus[];
  queue: { readers: number; writers: number; forHandle: number };
  lastProbe: { ok: boolean; at: number; durationMs: number; error: string | undefined } | null;
  lastError: { message: string; code: string | undefined; at: number } | null;
  reconnect: { failures: number; nextAttemptAt: number | undefined };
  counters: GuardCounters;
  /** Open sessions (not yet closed), oldest first. */
  sessions: SessionStatus[];
  /** The cluster lease (see `coordinator`), from the coordinator's cached state. */
  cluster: CoordinatorStatus | undefined;
}

/** Payloads of the typed events. */
export interface GuardEvents {
  /** An op was convicted of a stall. */
  stall: { op: OpInfo; error: EngineStalledError; probeFailures: number };
  /** A handle was retired; the next op needing one gets a new one. */
  replace: {
    generation: number;
    reason: 'stall' | 'fatal' | 'idle-check' | 'abandoned' | 'reset';
    cause: unknown;
  };
  /** A liveness probe failed (or timed out). */
  probeFailure: { op: OpInfo | undefined; generation: number; error: unknown; consecutive: number };
  /**
   * The guard answered an op's caller (stall, or a cancel the engine did not acknowledge in
   * `cancelTimeout`) while the op's function had not settled yet. The guard stops waiting for
   * it; the function may still settle later, and its result is dropped.
   */
  abandon: { op: OpInfo; reason: unknown };
  /** `create` or `setup` failed. */
  connectError: { error: unknown; attempts: number; retryInMs: number };
  /** A new handle is ready; `durationMs` is how long its `create` + `setup` (+ `bootstrap`) took. */
  connect: { generation: number; durationMs: number };
  /** `status().state` changed. */
  state: { from: GuardState; to: GuardState };
  /** `destroy` failed or timed out. */
  destroyError: { generation: number; error: unknown };
  /** A session took its handle (first op, after `reopen()`, or a restore). */
  sessionOpen: { session: SessionStatus };
  /** A session's handle died; the state it held is gone. */
  sessionLost: { session: SessionStatus; cause: unknown };
  /**
   * A `pin: 'on-state'` session's op left state on its handle: the session keeps that handle
   * (a `maxSessions` slot) and runs its ops on it, one at a time, until the state is gone.
   */
  sessionPin: { session: SessionStatus; state: readonly HeldState[] };
  /** A pinned `pin: 'on-state'` session's handle is clean again: it went back to the pool. */
  sessionUnpin: { session: SessionStatus };
  /** A session closed (`close()`, idle timeout, or the guard closing). */
  sessionClose: { session: SessionStatus; reason: 'closed' | 'idle' | 'guard-closed' };
  /** A `reset` failed or timed out; the handle was retired. */
  resetError: { generation: number; error: unknown };
}

/** What `on()` returns: call `dispose()` (or `using`) to unsubscribe. */
export interface Subscription extends Disposable {
  dispose(): void;
}
