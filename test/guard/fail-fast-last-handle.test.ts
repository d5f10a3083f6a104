/**
 * Found in review (a test that failed before the fix): the engine can become "down" without a failed connect attempt: the last open
 * handle is retired (here: a fatal error) while earlier attempts already failed. New callers then
 * fail fast with EngineUnavailableError at once, but an op already queued for a handle is not
 * told: `HandlePool.#failFast` only runs after a failed connect, and `#pump` does nothing while a
 * retry timer is set, so the queued op waits for the next retry (here 10 s) to fail first.
 */
import { describe, expect, it } from 'vitest';
import { EngineGuard, EngineUnavailableError } from '../../src/index.js';

describe('fail fast for ops already queued when the last handle dies', () => {
  it('an op queued for a handle rejects with EngineUnavailableError as soon as new callers do', async () => {
    let creates = 0;
    const fatal = Object.assign(new Error('connection lost'), { code: 'FATAL' });
    const guard = new EngineGuard<{ id: number }>({
      create: () => {
        creates++;
        if (creates === 1) return { id: 1 };
        throw new Error('engine refuses connections');
      },
      destroy: () => {},
      isFatal: (error) => error === fatal,
      pool: 2,
      liveness: false,
      reconnect: { initialDelay: 10_000, maxDelay: 10_000, jitter: 0, failFastAfter: 1 },
    });
    try {
      let failFirst: () => void = () => {};
      const first = guard.read(
        () =>
          new Promise((_resolve, reject) => {
            failFirst = () => reject(fatal);
          }),
      );
      const firstOutcome = first.catch((error: unknown) => error);
      await new Promise((resolve) => setTimeout(resolve, 50));
      // The second read waits for a handle; its connect attempt fails (engine not down yet: one
      // handle is still open and busy).
      const second = guard.read(() => 'second').catch((error: unknown) => error);
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(guard.status().queue.forHandle).toBe(1);
      // The last open handle dies: the engine is down now.
      failFirst();
      expect(await firstOutcome).toBe(fatal);
      const fresh = await guard.read(() => 'fresh').catch((error: unknown) => error);
      expect(fresh).toBeInstanceOf(EngineUnavailableError);
      const outcome = await Promise.race([
        second,
        new Promise((resolve) => setTimeout(() => resolve('still queued'), 1_000)),
      ]);
      expect(outcome).toBeInstanceOf(EngineUnavailableError);
    } finally {
      await guard.close();
    }
  }, 30_000);
});
