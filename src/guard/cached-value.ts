import {
  validateDuration,
  validateOptionalString,
  validateOptionsObject,
  validatePositiveDuration,
  validateUnknownKeys,
} from '../internal/validate.js';
import type { OpOptions } from './types.js';

/** Options of `guard.cache()`. */
export interface CachedValueOptions {
  /** Age in ms after which `get()` starts a background refresh. Default 30,000. */
  maxAge?: number | undefined;
  /** Bound of the refresh's wait for a lease and a handle, ms. Default 10,000. */
  timeout?: number | undefined;
  /** Label of the refresh op, shown in `status()`. Default `'cache refresh'`. */
  label?: string | undefined;
}

/** What `get()` returns: the value as last loaded, and how fresh it is. */
export interface CachedSnapshot<T> {
  /** The last loaded value; `undefined` until the first load succeeds. */
  value: T | undefined;
  /** Epoch ms of the last successful load, or `undefined`. */
  updatedAt: number | undefined;
  /** ms since the last successful load (`Infinity` before the first). */
  ageMs: number;
  /** True when older than `maxAge` (or never loaded). */
  stale: boolean;
  /** True while a refresh is in flight. */
  refreshing: boolean;
  /** The last refresh's error, cleared by the next success. */
  error: unknown;
}

/**
 * A value loaded from the engine under a guarded read and served from memory; made by
 * `EngineGuard.cache()`.
 *
 * Invariants: `get()` is synchronous and never waits on the engine; at most one refresh is in
 * flight; a failed refresh keeps the last good value (stale-while-revalidate) and reports the
 * error beside it.
 */
export interface CachedValue<T> {
  /** The cached value now; starts a background refresh when stale. Never waits. */
  get(): CachedSnapshot<T>;
  /** The cached value now, without starting a refresh. */
  peek(): CachedSnapshot<T>;
  /** Loads now (joining a refresh already in flight) and resolves with the fresh value. */
  refresh(): Promise<T>;
}

/** The one implementation, private to the guard so users never construct one half-wired. */
export class GuardCachedValue<T> implements CachedValue<T> {
  readonly #load: (options: OpOptions) => Promise<T>;
  readonly #maxAge: number;
  readonly #timeout: number;
  readonly #label: string;
  #value: T | undefined = undefined;
  #updatedAt: number | undefined = undefined;
  #loadedAt = Number.NEGATIVE_INFINITY;
  #error: unknown = undefined;
  #inflight: Promise<T> | undefined = undefined;

  constructor(load: (options: OpOptions) => Promise<T>, options: CachedValueOptions = {}) {
    validateOptionsObject(options);
    validateUnknownKeys(options, ['maxAge', 'timeout', 'label'], '');
    this.#load = load;
    this.#maxAge = validateDuration(options.maxAge, 'maxAge') ?? 30_000;
    this.#timeout = validatePositiveDuration(options.timeout, 'timeout') ?? 10_000;
    this.#label = validateOptionalString(options.label, 'label') ?? 'cache refresh';
  }

  /** The cached value now; starts a background refresh when stale. Never waits. */
  get(): CachedSnapshot<T> {
    const snapshot = this.peek();
    if (snapshot.stale && this.#inflight === undefined) {
      this.refresh().catch(() => {
        // Reported through `error` on the next get().
      });
      snapshot.refreshing = true;
    }
    return snapshot;
  }

  /** The cached value now, without starting a refresh. */
  peek(): CachedSnapshot<T> {
    const ageMs = performance.now() - this.#loadedAt;
    return {
      value: this.#value,
      updatedAt: this.#updatedAt,
      ageMs,
      stale: ageMs >= this.#maxAge,
      refreshing: this.#inflight !== undefined,
      error: this.#error,
    };
  }

  /** Loads now (joining a refresh already in flight) and resolves with the fresh value. */
  refresh(): Promise<T> {
    this.#inflight ??= this.#load({ timeout: this.#timeout, label: this.#label }).then(
      (value) => {
        this.#value = value;
        this.#updatedAt = Date.now();
        this.#loadedAt = performance.now();
        this.#error = undefined;
        this.#inflight = undefined;
        return value;
      },
      (error: unknown) => {
        this.#error = error;
        this.#inflight = undefined;
        throw error;
      },
    );
    return this.#inflight;
  }
}
