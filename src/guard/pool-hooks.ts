/**
 * The guard's side of the pool: how a handle is opened (create, then setup, each bounded by the
 * attempt's signal), closed and checked, in terms of the user's hooks.
 */
import { attempt, bounded, noop, untilAborted } from '../internal/promises.js';
import { type GenerationCounter, HandlePool, type PoolHooks } from '../pool/handle-pool.js';
import { type Bootstrap, runConnectHook } from './bootstrap.js';
import type { GuardSettings } from './options.js';
import type { EngineGuardOptions } from './types.js';

/** What the guard itself reacts to; the rest of {@link PoolHooks} comes from the user's hooks. */
export type PoolEvents<E> = Omit<PoolHooks<E>, 'open' | 'destroy' | 'isAlive' | 'probeIdle'>;

/** What a guard's pools share: the generation counter and the once-per-guard bootstrap. */
export interface SharedPoolParts<E> {
  generations: GenerationCounter;
  bootstrap: Bootstrap<E>;
  /** The guard: ops it is asked for inside `setup` are refused (see `BootstrapHold`). */
  owner: object;
}

/** A pool of the guard (the shared one, or the sessions'), wired to the user's hooks. */
export function openPool<E>(
  options: EngineGuardOptions<E>,
  settings: GuardSettings,
  size: number,
  shared: SharedPoolParts<E>,
  events: PoolEvents<E>,
): HandlePool<E> {
  const { create, setup, destroy, probe } = options;
  const { bootstrap } = shared;
  const destroyTimeout = settings.destroyTimeout;
  const pool: HandlePool<E> = new HandlePool<E>(
    {
      size,
      backoff: settings.backoff,
      connectTimeout: settings.connectTimeout,
      destroyTimeout,
      idleCheckAfter: settings.idleCheckAfter,
      probeTimeout: settings.probeTimeout,
      name: settings.name,
      generations: shared.generations,
    },
    {
      open: async (signal, generation) => {
        const engine = await create({ signal, generation });
        if (setup === undefined && bootstrap.done) return engine;
        // The setup in flight: given up on the attempt's signal, it may still be using the engine.
        let setupRun: Promise<unknown> | undefined;
        try {
          // A hook that ignores its signal must not keep the attempt (and the engine) forever.
          const bootstrapped = bootstrap.ensure(engine, signal, generation);
          if (bootstrapped !== undefined) await untilAborted(bootstrapped, signal);
          if (setup !== undefined) {
            setupRun = runConnectHook(shared.owner, 'setup', setup, engine, { signal, generation });
            await untilAborted(setupRun, signal);
          }
        } catch (error) {
          // The half-made handle still holds resources; close() waits for its destroy too. Not
          // under a setup still running on it (given up on a close or the connect timeout): the
          // destroy waits for that (bounded), as DuckDB closes a connection mid-query badly.
          const setupDone =
            setupRun === undefined ? Promise.resolve() : bounded(setupRun, destroyTimeout, noop);
          pool.trackDestroy(
            setupDone.then(() =>
              bounded(
                attempt(() => destroy?.(engine, { reason: error })),
                destroyTimeout,
                noop,
              ),
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
