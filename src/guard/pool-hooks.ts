/**
 * The guard's side of the pool: how a handle is opened (create, then setup, each bounded by the
 * attempt's signal), closed and checked, in terms of the user's hooks.
 */
import { attempt, bounded, noop } from '../internal/promises.js';
import { HandlePool, type PoolHooks } from '../pool/handle-pool.js';
import type { GuardSettings } from './options.js';
import type { EngineGuardOptions } from './types.js';

/** What the guard itself reacts to; the rest of {@link PoolHooks} comes from the user's hooks. */
export type PoolEvents<E> = Omit<PoolHooks<E>, 'open' | 'destroy' | 'isAlive' | 'probeIdle'>;

/** Settles like `promise`, or rejects with `signal.reason` as soon as `signal` aborts. */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
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

/** The guard's pool, wired to the user's hooks. */
export function openPool<E>(
  options: EngineGuardOptions<E>,
  settings: GuardSettings,
  events: PoolEvents<E>,
): HandlePool<E> {
  const { create, setup, destroy, probe } = options;
  const destroyTimeout = settings.destroyTimeout;
  const pool: HandlePool<E> = new HandlePool<E>(
    {
      size: settings.pool,
      backoff: settings.backoff,
      connectTimeout: settings.connectTimeout,
      destroyTimeout,
      idleCheckAfter: settings.idleCheckAfter,
      probeTimeout: settings.probeTimeout,
      name: settings.name,
    },
    {
      open: async (signal, generation) => {
        const engine = await create({ signal, generation });
        if (setup === undefined) return engine;
        try {
          // A setup that ignores its signal must not keep the attempt (and the engine) forever.
          await untilAborted(
            attempt(() => setup(engine, { signal, generation })),
            signal,
          );
        } catch (error) {
          // The half-made handle still holds resources; close() waits for its destroy too.
          pool.trackDestroy(
            bounded(
              attempt(() => destroy?.(engine, { reason: error })),
              destroyTimeout,
              noop,
            ),
          );
          throw error;
        }
        return engine;
      },
      destroy: (engine, reason) => destroy?.(engine, { reason }),
      isAlive: options.isAlive,
      probeIdle:
        probe === undefined
          ? undefined
          : (engine, signal) => attempt(() => probe(engine, { signal, op: undefined })),
      ...events,
    },
  );
  return pool;
}
