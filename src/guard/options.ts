/**
 * The guard's options in one place: validation (names checked, so a misspelled option is an
 * error rather than a silently ignored default), defaults, and the settings each part of the
 * guard is built from (lock, pool, watchdog).
 */

import {
  validateBoolean,
  validateDuration,
  validateFunction,
  validateInteger,
  validateNumberInRange,
  validateOptionalFunction,
  validateOptionalString,
  validateOptionsObject,
  validatePositiveDuration,
  validateSignal,
  validateUnknownKeys,
} from '../internal/validate.js';
import type { WatchdogSettings } from '../liveness/watchdog.js';
import type { RWLockOptions } from '../lock/rwlock.js';
import { type BackoffPolicy, resolveBackoff } from '../pool/backoff.js';
import { validateCoordinator } from './cluster-lease.js';
import type { OpTrace } from './op-trace.js';
import type { EngineGuardOptions, OpOptions } from './types.js';

/** Liveness defaults: a silent op is convicted within 3 × 5 s + 3 s = 18 s. */
export const DEFAULT_LIVENESS = {
  interval: 5_000,
  timeout: 3_000,
  failures: 3,
  pauseThreshold: 1_000,
} as const;

// Every option name, so that a misspelling is caught (and a close match suggested).
const GUARD_KEYS: readonly (keyof EngineGuardOptions<unknown>)[] = [
  'create',
  'destroy',
  'setup',
  'probe',
  'cancel',
  'isAlive',
  'isFatal',
  'pool',
  'liveness',
  'acquireTimeout',
  'maxQueue',
  'reconnect',
  'connectTimeout',
  'destroyTimeout',
  'cancelTimeout',
  'closeTimeout',
  'waitForReady',
  'fairness',
  'bypassAfter',
  'name',
  'bootstrap',
  'reset',
  'resetTimeout',
  'state',
  'maxSessions',
  'coordinator',
];
const LIVENESS_KEYS = ['interval', 'timeout', 'failures', 'pauseThreshold', 'idleCheckAfter'];
const RECONNECT_KEYS = ['initialDelay', 'maxDelay', 'factor', 'jitter', 'failFastAfter'];
const OP_KEYS: readonly (keyof OpOptions)[] = ['signal', 'timeout', 'label', 'waitForReady', 'key'];

/** Everything the guard is built from, validated and with defaults applied. */
export interface GuardSettings {
  name: string | undefined;
  pool: number;
  acquireTimeout: number | undefined;
  cancelTimeout: number;
  closeTimeout: number;
  connectTimeout: number;
  destroyTimeout: number;
  waitForReady: boolean;
  resetTimeout: number;
  /** Session handles at most (0: sessions refused). */
  maxSessions: number;
  /** Watchdog settings; undefined when liveness is off (or there is no probe). */
  liveness: WatchdogSettings | undefined;
  /** Probe an idle handle unused this long before reuse; undefined: never. */
  idleCheckAfter: number | undefined;
  probeTimeout: number;
  backoff: BackoffPolicy;
  /** Options of the guard's own lock. */
  lock: RWLockOptions;
}

/**
 * Validates `options` and resolves the defaults.
 * @throws TypeError | RangeError naming the offending option.
 */
export function parseGuardOptions<E>(options: EngineGuardOptions<E>): GuardSettings {
  if (options === null || typeof options !== 'object') {
    throw new TypeError(
      'The "options" argument must be an object with at least a "create" function',
    );
  }
  validateUnknownKeys(options, GUARD_KEYS, '');
  validateFunction(options.create, 'create');
  validateOptionalFunction(options.destroy, 'destroy');
  validateOptionalFunction(options.setup, 'setup');
  validateOptionalFunction(options.probe, 'probe');
  validateOptionalFunction(options.cancel, 'cancel');
  validateOptionalFunction(options.isFatal, 'isFatal');
  validateOptionalFunction(options.isAlive, 'isAlive');
  validateOptionalFunction(options.bootstrap, 'bootstrap');
  validateOptionalFunction(options.reset, 'reset');
  validateOptionalFunction(options.state, 'state');
  validateCoordinator(options.coordinator);
  const maxSessions = validateInteger(options.maxSessions, 'maxSessions', 0) ?? 0;
  const name = validateOptionalString(options.name, 'name');
  const pool = validateInteger(options.pool, 'pool', 1) ?? 1;
  const maxQueue = validateInteger(options.maxQueue, 'maxQueue', 0, true);
  const reconnect = options.reconnect;
  validateOptionsObject(reconnect, 'reconnect');
  if (reconnect !== undefined) validateUnknownKeys(reconnect, RECONNECT_KEYS, 'reconnect.');
  validateDuration(reconnect?.initialDelay, 'reconnect.initialDelay');
  validateDuration(reconnect?.maxDelay, 'reconnect.maxDelay');
  validateNumberInRange(reconnect?.factor, 'reconnect.factor', 1, 1_000);
  validateNumberInRange(reconnect?.jitter, 'reconnect.jitter', 0, 1);
  validateInteger(reconnect?.failFastAfter, 'reconnect.failFastAfter', 1);
  const liveness = parseLiveness(options);
  const idleCheck = parseIdleCheck(options, liveness);
  return {
    name,
    pool,
    acquireTimeout: validateDuration(options.acquireTimeout, 'acquireTimeout'),
    cancelTimeout: validatePositiveDuration(options.cancelTimeout, 'cancelTimeout') ?? 5_000,
    closeTimeout: validatePositiveDuration(options.closeTimeout, 'closeTimeout') ?? 10_000,
    connectTimeout: validatePositiveDuration(options.connectTimeout, 'connectTimeout') ?? 30_000,
    destroyTimeout: validatePositiveDuration(options.destroyTimeout, 'destroyTimeout') ?? 5_000,
    waitForReady: validateBoolean(options.waitForReady, 'waitForReady') ?? false,
    resetTimeout: validatePositiveDuration(options.resetTimeout, 'resetTimeout') ?? 5_000,
    maxSessions,
    liveness,
    idleCheckAfter: idleCheck,
    probeTimeout: liveness?.timeout ?? DEFAULT_LIVENESS.timeout,
    backoff: resolveBackoff(reconnect),
    // The one place the lock is configured (lock policy options pass through here).
    lock: {
      ...(name === undefined ? {} : { name }),
      ...(maxQueue === undefined ? {} : { maxQueue }),
      ...(options.fairness === undefined ? {} : { fairness: options.fairness }),
      ...(options.bypassAfter === undefined ? {} : { bypassAfter: options.bypassAfter }),
      // One read lease per shared handle: a granted stateless reader has a handle to run on. A
      // read on a session's own handle takes an uncapped lease (it brings its handle), so it never
      // waits behind stateless reads that wait for a shared one.
      maxReaders: pool,
    },
  };
}

function parseLiveness<E>(options: EngineGuardOptions<E>): WatchdogSettings | undefined {
  const liveness = options.liveness;
  if (liveness === false) return undefined;
  validateOptionsObject(liveness, 'liveness');
  if (liveness !== undefined) validateUnknownKeys(liveness, LIVENESS_KEYS, 'liveness.');
  const settings: WatchdogSettings = {
    interval:
      validatePositiveDuration(liveness?.interval, 'liveness.interval') ??
      DEFAULT_LIVENESS.interval,
    timeout:
      validatePositiveDuration(liveness?.timeout, 'liveness.timeout') ?? DEFAULT_LIVENESS.timeout,
    failures:
      validateInteger(liveness?.failures, 'liveness.failures', 1) ?? DEFAULT_LIVENESS.failures,
    pauseThreshold:
      validatePositiveDuration(liveness?.pauseThreshold, 'liveness.pauseThreshold') ??
      DEFAULT_LIVENESS.pauseThreshold,
  };
  // Liveness needs a way to ask the engine; without a probe there is nothing to check.
  if (options.probe === undefined) {
    if (liveness !== undefined) {
      process.emitWarning(
        'engine-guard: "liveness" is set but there is no "probe": the watchdog is off and a stalled op is never detected',
        { code: 'ENGINE_GUARD_NO_PROBE' },
      );
    }
    return undefined;
  }
  return settings;
}

function parseIdleCheck<E>(
  options: EngineGuardOptions<E>,
  liveness: WatchdogSettings | undefined,
): number | undefined {
  const option = options.liveness === false ? false : options.liveness?.idleCheckAfter;
  if (option === false) return undefined;
  const ms = validateDuration(option, 'liveness.idleCheckAfter');
  return liveness === undefined ? undefined : (ms ?? liveness.interval);
}

/** One op's options, validated, with the guard's defaults applied. */
export interface OpSettings {
  signal: AbortSignal | undefined;
  timeout: number | undefined;
  label: string | undefined;
  waitForReady: boolean;
  /** Fair-share key; undefined: the keyless group. */
  key?: string | number | undefined;
  /** The call's trace, while `engine-guard:op` has subscribers (see op-trace.ts). */
  trace?: OpTrace | undefined;
}

/** `settings` carrying the call's trace (a copy: `settings` may be the shared defaults). */
export function withTrace(settings: OpSettings, trace: OpTrace): OpSettings {
  return {
    signal: settings.signal,
    timeout: settings.timeout,
    label: settings.label,
    waitForReady: settings.waitForReady,
    key: settings.key,
    trace,
  };
}

/**
 * Validates the options of one `read`/`write`. Returns `defaults` itself when there are none,
 * so the common call allocates nothing.
 * @throws TypeError | RangeError naming the offending option.
 */
export function parseOpOptions(options: OpOptions | undefined, defaults: OpSettings): OpSettings {
  if (options === undefined) return defaults;
  validateOptionsObject(options);
  validateUnknownKeys(options, OP_KEYS, '');
  return {
    signal: validateSignal(options.signal),
    timeout: validateDuration(options.timeout, 'timeout') ?? defaults.timeout,
    label: validateOptionalString(options.label, 'label'),
    waitForReady: validateBoolean(options.waitForReady, 'waitForReady') ?? defaults.waitForReady,
    key: validateKey(options.key),
  };
}

/** A fair-share key: a string or a number (compared like `Map` keys), or undefined. */
function validateKey(value: unknown): string | number | undefined {
  if (value === undefined || typeof value === 'string' || typeof value === 'number') return value;
  throw new TypeError(
    `The "key" option must be a string or a number, got ${value === null ? 'null' : typeof value}`,
  );
}
