/**
 * Promise helpers shared by the lock, the pool and the guard. One copy of each, so a fix (a
 * `then` getter that throws, a revoked Proxy) reaches every caller.
 */

/** A timer handle, typed without `@types/node` so the published declarations need none. */
export type Timer = ReturnType<typeof setTimeout>;

export function noop(): void {}

/**
 * True when `value` has a callable `then`. Looking runs user code (a `then` getter, a Proxy
 * trap, a revoked Proxy's `getPrototypeOf` under `instanceof`): anything that throws while
 * looking counts as a thenable, so the caller goes down its asynchronous path and meets the same
 * error when it calls `Promise.resolve(value)`.
 */
export function isThenable(value: unknown): value is PromiseLike<unknown> {
  if (value === null || (typeof value !== 'object' && typeof value !== 'function')) return false;
  try {
    // Inside the try: `instanceof` asks a revoked Proxy for its prototype, which throws.
    return value instanceof Promise || typeof (value as { then?: unknown }).then === 'function';
  } catch {
    return true;
  }
}

/** Outcome of {@link bounded}. */
export type Bounded<T> = { ok: true; value: T } | { ok: false; error: unknown };

/**
 * Races `promise` against a timer of `ms`; never rejects. On timeout the result is
 * `{ ok: false, error: timeoutError() }` and the promise's own outcome is ignored.
 */
export function bounded<T>(
  promise: PromiseLike<T>,
  ms: number,
  timeoutError: () => unknown,
): Promise<Bounded<T>> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve({ ok: false, error: timeoutError() }), ms);
    Promise.resolve(promise).then(
      (value) => {
        clearTimeout(timer);
        resolve({ ok: true, value });
      },
      (error: unknown) => {
        clearTimeout(timer);
        resolve({ ok: false, error });
      },
    );
  });
}

/** Calls `fn` and turns whatever it does (a value, a throw, a thenable) into a promise. */
export function attempt<T>(fn: () => T | PromiseLike<T>): Promise<T> {
  try {
    return Promise.resolve(fn());
  } catch (error) {
    return Promise.reject(error);
  }
}

/** Settles like `promise`, or rejects with `signal.reason` as soon as `signal` aborts. */
export function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) {
    // Nobody will read it any more, but a rejection must not go unhandled.
    promise.catch(noop);
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}
