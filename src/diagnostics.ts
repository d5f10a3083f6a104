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
  /** {@link GuardEventMessage}: every guard event (stall, replace, probe failure, ...). */
  guardEvent: 'engine-guard:guard:event',
} as const;

/** Message on `engine-guard:lock:acquire`. */
export interface LockAcquireMessage {
  lock: string | undefined;
  mode: LockMode;
  /** False when granted at once. */
  queued: boolean;
  /** Time spent queued, in ms (0 when granted at once). */
  waitedMs: number;
}

/** Message on `engine-guard:lock:release`. */
export interface LockReleaseMessage {
  lock: string | undefined;
  mode: LockMode;
}

/** Message on `engine-guard:lock:cancel`. */
export interface LockCancelMessage {
  lock: string | undefined;
  mode: LockMode;
  /** The abort reason, the `LockTimeoutError`, or `'queue-full'`. */
  reason: unknown;
}

/** Context object of the `engine-guard:op` tracing channel. */
export interface OpTraceContext {
  guard: string | undefined;
  id: number;
  kind: LockMode;
  label: string | undefined;
  /** Set on `asyncEnd` when the op succeeded. */
  result?: unknown;
  /** Set on `error`. */
  error?: unknown;
}

/** Message on `engine-guard:guard:event`. */
export interface GuardEventMessage {
  guard: string | undefined;
  type: string;
  event: unknown;
}

/** @internal */
export const lockChannels = {
  acquire: diagnosticsChannel.channel(channelNames.lockAcquire),
  release: diagnosticsChannel.channel(channelNames.lockRelease),
  cancel: diagnosticsChannel.channel(channelNames.lockCancel),
};

/** @internal */
export const opTracing = diagnosticsChannel.tracingChannel<unknown, OpTraceContext>(
  channelNames.op,
);

/** @internal */
export const guardEventChannel = diagnosticsChannel.channel(channelNames.guardEvent);
