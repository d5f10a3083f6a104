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

/** Context object of the `engine-guard:op` tracing channel. */
export interface OpTraceContext {
  /** Name of the guard, when it has one. */
  guard: string | undefined;
  /** Id of the op within its guard. */
  id: number;
  kind: LockMode;
  /** The op's `label` option. */
  label: string | undefined;
  /** Set on `asyncEnd` when the op succeeded. */
  result?: unknown;
  /** Set on `error`. */
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
