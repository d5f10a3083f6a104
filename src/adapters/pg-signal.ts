/**
 * Abort signals as the pg adapter uses them: one listener per signal however many queries wait
 * on it, and a promise raced against a signal.
 */

export function noop(): void {}

/** Callbacks waiting on one signal, behind a single 'abort' listener. */
interface AbortWaiters {
  readonly callbacks: Set<() => void>;
  readonly listener: () => void;
}

const abortWaiters = new WeakMap<AbortSignal, AbortWaiters>();

/**
 * Calls `callback` once `signal` aborts; returns the unsubscribe function. All callbacks on one
 * signal share one listener, so many concurrent queries of one op add no listener each (which
 * would trip Node's MaxListenersExceededWarning on the op's signal).
 */
export function onAbort(signal: AbortSignal, callback: () => void): () => void {
  let waiters = abortWaiters.get(signal);
  if (waiters === undefined) {
    const callbacks = new Set<() => void>();
    const listener = (): void => {
      abortWaiters.delete(signal);
      for (const waiting of callbacks) waiting();
    };
    waiters = { callbacks, listener };
    abortWaiters.set(signal, waiters);
    signal.addEventListener('abort', listener, { once: true });
  }
  const { callbacks, listener } = waiters;
  callbacks.add(callback);
  return () => {
    if (!callbacks.delete(callback) || callbacks.size > 0) return;
    if (abortWaiters.get(signal)?.callbacks === callbacks) abortWaiters.delete(signal);
    signal.removeEventListener('abort', listener);
  };
}

/**
 * Settles like `promise`, or rejects with `signal.reason` as soon as the signal aborts (after
 * calling `abort`). The promise's own outcome is always handled, never left unhandled.
 */
export function raceSignal<T>(
  promise: Promise<T>,
  signal: AbortSignal,
  abort: () => void = noop,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    if (signal.aborted) {
      promise.catch(noop);
      abort();
      reject(signal.reason);
      return;
    }
    const unsubscribe = onAbort(signal, () => {
      abort();
      reject(signal.reason);
    });
    promise.then(
      (value) => {
        unsubscribe();
        resolve(value);
      },
      (error: unknown) => {
        unsubscribe();
        reject(error);
      },
    );
  });
}
