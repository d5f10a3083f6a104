/**
 * `node:diagnostics_channel` channels engine-guard publishes on. Subscribing costs nothing to
 * install (no dependency, no global hook) and publishing is skipped entirely while a channel has
 * no subscribers, so tracing is free when nobody listens.
 *
 * @example
 * ```ts
 * import diagnostics_channel from 'node:diagnostics_channel';
 * diagnostics_channel.subscribe('engine-guard:lock:acquire', (msg) => console.log(msg));
 * diagnostics_channel.tracingChannel('engine-guard:op').subscribe({ start(ctx) {}, asyncEnd(ctx) {}, error(ctx) {} });
 * ```
 *
 * @packageDocumentation
 */
import diagnosticsChannel from 'node:diagnostics_channel';
import type { LockMode } from './lock/lease.js';

/** Names of the plain channels. */
export const channelNames = {
  /** {@link LockAcquireMessage}: a lease was granted (at once or after queueing). */
  lockAcquire: 'engine-guard:lock:acquire',
  /** {@link LockReleaseMessage}: a lease was released or revoked. */
  lockRelease: 'engine-guard:lock:release',
  /** {@link LockCancelMessage}: a waiter gave up (abort, timeout) or was refused (queue full). */
  lockCancel: 'engine-guard:lock:cancel',
  /**
   * Tracing channel (`diagnostics_channel.tracingChannel`) of guard operations: `start`, `end`,
   * `asyncStart`, `asyncEnd` and `error` events with an {@link OpTraceContext}.
   */
  op: 'engine-guard:op',
  /**
   * `GuardEventMessage` (exported by the package, defined with the guard's events): every guard
   * event (stall, replace, probe failure, ...).
   */
  guardEvent: 'engine-guard:guard:event',
} as const;

/** Message on `engine-guard:lock:acquire`. */
export interface LockAcquireMessage {
  /** Name of the lock (or of the guard that owns it), when it has one. */
  lock: string | undefined;
  mode: LockMode;
  /** False when granted at once. */
  queued: boolean;
  /** Time spent queued, in ms (0 when granted at once). */
  waitedMs: number;
}

/** Message on `engine-guard:lock:release`. */
export interface LockReleaseMessage {
  /** Name of the lock (or of the guard that owns it), when it has one. */
  lock: string | undefined;
  mode: LockMode;
}

/** Message on `engine-guard:lock:cancel`. */
export interface LockCancelMessage {
  /** Name of the lock (or of the guard that owns it), when it has one. */
  lock: string | undefined;
  mode: LockMode;
  /**
   * What the waiter was rejected with, the very value its promise rejects with, never a
   * description of it: the caller's `signal.reason` when it aborted (whatever the caller passed
   * to `abort()`, a `DOMException` `AbortError` by default), the `LockTimeoutError` when its
   * `timeout` elapsed, or the `QueueFullError` when it was refused at `maxQueue`. Typed
   * `unknown` because an abort reason can be any value; branch with `instanceof` or on `code`.
   */
  reason: unknown;
}

/**
 * How a traced op ended, from its caller's side (set with the op's times, before `asyncEnd`):
 * - `'ok'`: `fn` returned; its value is the context's `result`.
 * - `'error'`: `fn` threw or rejected, or anything not listed below (a lost cluster lease, a
 *   failed `restore`).
 * - `'aborted'`: the caller's `signal` aborted it, queued or running.
 * - `'timeout'`: its `timeout` passed before it ran (`LockTimeoutError`, `SessionLimitError`).
 * - `'stalled'`: convicted of a stall (`EngineStalledError`).
 * - `'closed'`: the guard or the session closed (`GuardClosedError`, `SessionClosedError`).
 * - `'refused'`: it was never queued or given up before it ran: queue full, engine down,
 *   a session whose handle was lost, a deadlock (`QueueFullError`, `EngineUnavailableError`,
 *   `SessionLostError`, `DeadlockError`).
 */
export type OpOutcome = 'ok' | 'error' | 'aborted' | 'timeout' | 'stalled' | 'closed' | 'refused';

/**
 * Context object of the `engine-guard:op` tracing channel: one per call of `read`/`write` (on a
 * guard or a session), the same object in all five events of that call. Calls made inside a
 * running op of the same guard (which join it) are not traced apart: they are part of that op.
 *
 * What is known when the call is made is set before `start`; the rest (the op's `id` once it is
 * made, its times, `generation`, `outcome`) is filled in as the op goes, and all of it is set
 * before `error` and `asyncEnd`. `end` fires when the call returns its promise, which is before
 * the op ends; for a call refused at once, the outcome is set before `end` already.
 */
export interface OpTraceContext {
  /** Name of the guard, when it has one. */
  guard: string | undefined;
  /**
   * The `EngineGuard` that runs the op (a session's guard for a session's op). Tell guards apart
   * by identity (`ctx.source === guard`): names need not be unique, nor set.
   */
  source: object;
  /**
   * Id of the op within its guard, as in `status()`, events and errors. `undefined` until the op
   * is made (a session's call waits for its turn first), and for a call refused before that.
   */
  id: number | undefined;
  kind: LockMode;
  /** The op's `label` option. */
  label: string | undefined;
  /** Id of the session the op runs in; `undefined` for a stateless op. */
  sessionId: number | undefined;
  /** The op's fair-share `key` option (stateless ops only: a session's ops share its own). */
  key: string | number | undefined;
  /**
   * ms from the call to the start of its run: its wait for a lease and a handle (for a session's
   * op, also for the session's earlier ops and for a session slot). For an op that never ran,
   * how long it waited before it was answered. Set at the end.
   */
  waitMs: number | undefined;
  /**
   * ms from the start of its run (lease and handle held) to its caller's answer, its cluster
   * lease wait included; `undefined` when it never ran. Set at the end.
   */
  runMs: number | undefined;
  /**
   * ms the op waited for its cluster lease (see the guard's `coordinator`), inside its run;
   * `undefined` when it took none. Set at the end.
   */
  clusterWaitMs: number | undefined;
  /** Generation of the handle it ran on; `undefined` when it never ran. Set at the end. */
  generation: number | undefined;
  /** How it ended (see {@link OpOutcome}); `undefined` until then. */
  outcome: OpOutcome | undefined;
  /** Set (by `diagnostics_channel`) before `asyncStart` when the op succeeded. */
  result?: unknown;
  /** Set (by `diagnostics_channel`) before `error` when it failed: what its promise rejects with. */
  error?: unknown;
}

/**
 * The publishing side of a channel, typed by its message: a `Channel` (whose `publish` takes
 * `unknown`) narrowed so that a publisher cannot send a message of the wrong shape.
 *
 * @internal
 */
export interface TypedChannel<M> {
  readonly hasSubscribers: boolean;
  publish(message: M): void;
}

/** @internal */
export const lockChannels: {
  readonly acquire: TypedChannel<LockAcquireMessage>;
  readonly release: TypedChannel<LockReleaseMessage>;
  readonly cancel: TypedChannel<LockCancelMessage>;
} = {
  acquire: diagnosticsChannel.channel(channelNames.lockAcquire),
  release: diagnosticsChannel.channel(channelNames.lockRelease),
  cancel: diagnosticsChannel.channel(channelNames.lockCancel),
};

/** @internal */
export const opTracing = diagnosticsChannel.tracingChannel<unknown, OpTraceContext>(
  channelNames.op,
);

/**
 * Left as a plain `Channel` (publish takes `unknown`) because `TypedEvents` publishes for a
 * generic event map; the guard instantiates it with `GuardEvents` only, so what it sends is a
 * `GuardEventMessage` (guard/events.ts).
 *
 * @internal
 */
export const guardEventChannel = diagnosticsChannel.channel(channelNames.guardEvent);
