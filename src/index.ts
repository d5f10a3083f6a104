/**
 * engine-guard: concurrency-safe access to a shared engine.
 *
 * @packageDocumentation
 */

export type {
  ClusterAcquireOptions,
  ClusterLease,
  Coordinator,
  CoordinatorStatus,
  Fence,
} from './coordination/coordinator.js';
export {
  channelNames,
  type LockAcquireMessage,
  type LockCancelMessage,
  type LockReleaseMessage,
  type OpOutcome,
  type OpTraceContext,
} from './diagnostics.js';
export * from './errors.js';
export type {
  CachedSnapshot,
  CachedValue,
  CachedValueOptions,
} from './guard/cached-value.js';
export { DEFAULT_LIVENESS, EngineGuard } from './guard/engine-guard.js';
export type { GuardEventMessage } from './guard/events.js';
export type {
  EngineGuardOptions,
  GuardCounters,
  GuardEvents,
  GuardState,
  GuardStatus,
  HeldState,
  LivenessOptions,
  OpContext,
  OpInfo,
  OpKind,
  OpOptions,
  QueuedOpStatus,
  ReconnectOptions,
  ResetContext,
  RunningOpStatus,
  Session,
  SessionOptions,
  SessionPin,
  SessionState,
  SessionStatus,
  StateContext,
  Subscription,
} from './guard/types.js';
export type { Lease, LockMode } from './lock/lease.js';
export {
  type AcquireOptions,
  DEFAULT_BYPASS_AFTER,
  type Fairness,
  RWLock,
  type RWLockOptions,
  type RWLockState,
} from './lock/rwlock.js';
