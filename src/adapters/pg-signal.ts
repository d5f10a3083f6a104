/**
 * Abort signals as the pg adapter uses them: one listener per signal however many queries wait
 * on it, and a promise raced against a signal. An op's abort is read from the guard's
 * {@link ABORT_WATCH} when its `ctx` has one (no `AbortSignal` made), from `ctx.signal` otherwise.
 */
import { ABORT_WATCH, type AbortWatch, type MaybeWatched } from '../internal/abort-watch.js';

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
export function onAbort(signal: AbortSource, callback: () => void): () => void {
  if (!(signal instanceof AbortSignal)) return signal.onAbort(callback);
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
  signal: AbortSource,
  abort: () => void = noop,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    if (signal.aborted) {
      promise.catch(noop);
      abort();
      reject(abortReason(signal));
      return;
    }
    const unsubscribe = onAbort(signal, () => {
      abort();
      reject(abortReason(signal));
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

/** Where a query learns of its op's abort: the guard's watch, or a signal. */
export type AbortSource = AbortSignal | AbortWatch;

/** The abort source of `ctx`: the guard's watch when it has one (see the module documentation). */
export function abortSourceOf(ctx: { readonly signal: AbortSignal }): AbortSource {
  return (ctx as MaybeWatched)[ABORT_WATCH] ?? ctx.signal;
}

/** Why `source` aborted (`signal.reason`). */
export function abortReason(source: AbortSource): unknown {
  return source instanceof AbortSignal ? source.reason : source.abortReason;
}

/** Throws why `source` aborted, if it has. */
export function throwIfAborted(source: AbortSource): void {
  if (source.aborted) throw abortReason(source);
}
