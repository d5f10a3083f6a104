/**
 * Argument validation shared by the public entry points. Each helper throws at the call, with a
 * message naming the offending option, so that a bad argument is a programmer error reported
 * where it was made rather than a promise that never settles.
 */

/** setTimeout clamps larger delays to 1 ms; refuse them instead of firing early. */
export const MAX_TIMER_MS = 2_147_483_647;

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'string') return `"${value}"`;
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') {
    return String(value);
  }
  return typeof value;
}

/** A duration in ms: finite, >= 0 and small enough for a Node timer. `undefined` passes. */
export function validateDuration(value: unknown, name: string): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || Number.isNaN(value)) {
    throw new TypeError(
      `The "${name}" option must be a number of milliseconds, got ${describe(value)}`,
    );
  }
  if (!Number.isFinite(value) || value < 0 || value > MAX_TIMER_MS) {
    throw new RangeError(
      `The "${name}" option must be a finite number of milliseconds from 0 to ${MAX_TIMER_MS}, got ${describe(value)}`,
    );
  }
  return value;
}

/** A positive duration (> 0). */
export function validatePositiveDuration(value: unknown, name: string): number | undefined {
  const ms = validateDuration(value, name);
  if (ms === 0) {
    throw new RangeError(`The "${name}" option must be greater than 0, got 0`);
  }
  return ms;
}

/** An integer >= `min`, or Infinity when `allowInfinity`. `undefined` passes. */
export function validateInteger(
  value: unknown,
  name: string,
  min: number,
  allowInfinity = false,
): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || Number.isNaN(value)) {
    throw new TypeError(`The "${name}" option must be a number, got ${describe(value)}`);
  }
  if (value === Number.POSITIVE_INFINITY && allowInfinity) return value;
  if (!Number.isInteger(value) || value < min) {
    throw new RangeError(
      `The "${name}" option must be an integer >= ${min}${allowInfinity ? ' or Infinity' : ''}, got ${describe(value)}`,
    );
  }
  return value;
}

/** A finite number within [min, max]. */
export function validateNumberInRange(
  value: unknown,
  name: string,
  min: number,
  max: number,
): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || Number.isNaN(value)) {
    throw new TypeError(`The "${name}" option must be a number, got ${describe(value)}`);
  }
  if (!Number.isFinite(value) || value < min || value > max) {
    throw new RangeError(
      `The "${name}" option must be a number from ${min} to ${max}, got ${describe(value)}`,
    );
  }
  return value;
}

/** An AbortSignal, or undefined. Duck-typing is not enough: we attach listeners to it. */
export function validateSignal(value: unknown, name = 'signal'): AbortSignal | undefined {
  if (value === undefined) return undefined;
  if (!(value instanceof AbortSignal)) {
    throw new TypeError(`The "${name}" option must be an AbortSignal, got ${describe(value)}`);
  }
  return value;
}

/** A function. */
export function validateFunction(value: unknown, name: string): void {
  if (typeof value !== 'function') {
    throw new TypeError(`The "${name}" argument must be a function, got ${describe(value)}`);
  }
}

/** An optional function. */
export function validateOptionalFunction(value: unknown, name: string): void {
  if (value !== undefined && typeof value !== 'function') {
    throw new TypeError(`The "${name}" option must be a function, got ${describe(value)}`);
  }
}

/** An options bag: undefined or a plain object. */
export function validateOptionsObject(value: unknown, name = 'options'): void {
  if (value !== undefined && (value === null || typeof value !== 'object')) {
    throw new TypeError(`The "${name}" argument must be an object, got ${describe(value)}`);
  }
}

/** An optional string. */
export function validateOptionalString(value: unknown, name: string): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string') {
    throw new TypeError(`The "${name}" option must be a string, got ${describe(value)}`);
  }
  return value;
}

/** An optional boolean. */
export function validateBoolean(value: unknown, name: string): boolean | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'boolean') {
    throw new TypeError(`The "${name}" option must be a boolean, got ${describe(value)}`);
  }
  return value;
}

/** Levenshtein distance, for "did you mean" hints on misspelled option names. */
function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = (previous[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1);
      current[j] = Math.min((previous[j] ?? 0) + 1, (current[j - 1] ?? 0) + 1, substitution);
    }
    previous = current;
  }
  return previous[b.length] ?? 0;
}

/** The known name closest to `name`, when close enough to be a likely typo. */
function closest(name: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Math.max(2, Math.floor(name.length / 3)) + 1;
  for (const candidate of known) {
    const distance = editDistance(name.toLowerCase(), candidate.toLowerCase());
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return best;
}

/**
 * Rejects own enumerable keys of `options` that are not in `known`: a misspelled option would
 * otherwise be ignored silently and its default used. `prefix` names the nesting (`liveness.`).
 */
export function validateUnknownKeys(
  options: object,
  known: readonly string[],
  prefix: string,
): void {
  // Inherited keys too: options are read with plain property access, which sees them.
  for (const key in options) {
    if (known.includes(key)) continue;
    const hint = closest(key, known);
    throw new TypeError(
      `Unknown option "${prefix}${key}"${hint === undefined ? '' : `; did you mean "${prefix}${hint}"?`}`,
    );
  }
}
