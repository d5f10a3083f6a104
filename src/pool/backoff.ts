/** Reconnect options as the user gives them (validated by the guard's option parser). */
export interface BackoffOptions {
  initialDelay?: number | undefined;
  maxDelay?: number | undefined;
  factor?: number | undefined;
  jitter?: number | undefined;
  failFastAfter?: number | undefined;
}

/** Resolved reconnect settings. */
export interface BackoffPolicy {
  initialDelay: number;
  maxDelay: number;
  factor: number;
  jitter: number;
  failFastAfter: number;
}

export const defaultBackoff: BackoffPolicy = {
  initialDelay: 100,
  maxDelay: 10_000,
  factor: 2,
  jitter: 0.2,
  failFastAfter: 3,
};

/** Merges user options over the defaults (validation happens in the guard's option parser). */
export function resolveBackoff(options: BackoffOptions | undefined): BackoffPolicy {
  return {
    initialDelay: options?.initialDelay ?? defaultBackoff.initialDelay,
    maxDelay: options?.maxDelay ?? defaultBackoff.maxDelay,
    factor: options?.factor ?? defaultBackoff.factor,
    jitter: options?.jitter ?? defaultBackoff.jitter,
    failFastAfter: options?.failFastAfter ?? defaultBackoff.failFastAfter,
  };
}

/**
 * Delay before attempt `failures + 1`: exponential in the number of consecutive failures,
 * capped, with the top `jitter` fraction randomised so that many guards (or many processes)
 * that lost the same server do not reconnect in lockstep.
 */
export function backoffDelay(
  policy: BackoffPolicy,
  failures: number,
  random = Math.random,
): number {
  const exponent = Math.max(0, failures - 1);
  const base = Math.min(policy.maxDelay, policy.initialDelay * policy.factor ** exponent);
  return Math.round(base * (1 - policy.jitter * random()));
}
