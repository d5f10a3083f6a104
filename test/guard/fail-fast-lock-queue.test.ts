/**
 * Found in review (a test that failed before the fix): fail-fast reaches ops queued for a handle, but not ops queued for the lock
 * behind an op that opted into `waitForReady`. Such an op holds its lease while it waits for the
 * engine, so a default op queued behind it waits (without a timeout: forever) on a dead engine,
 * while new callers are refused at once. SPEC: "Nothing waits forever on a dead engine by
 * default."
 */
import { describe, expect, it } from 'vitest';
import { EngineGuard, EngineUnavailableError } from '../../src/index.js';

describe('fail fast for ops queued for the lock behind a waitForReady op', () => {
  it('a default op queued for the lock rejects with EngineUnavailableError once the engine is down, like a new caller', async () => {
    const guard = new EngineGuard<{ id: number }>({
      create: () => {
        throw new Error('engine refuses connections');
      },
      liveness: false,
      pool: 1,
      reconnect: { initialDelay: 20, maxDelay: 20, jitter: 0, failFastAfter: 2 },
    });
    try {
      // Holds the write lease while it waits for the engine to come back.
      const patient = guard
        .write(() => 'patient', { waitForReady: true })
        .catch((error: unknown) => error);
      // Queued for the lock before the engine counts as down.
      const queued = guard.read(() => 'queued').catch((error: unknown) => error);
      expect(guard.status().queue.readers).toBe(1);
      await new Promise((resolve) => setTimeout(resolve, 300));
      const fresh = await guard.read(() => 'fresh').catch((error: unknown) => error);
      expect(fresh).toBeInstanceOf(EngineUnavailableError); // the engine is down by now
      const outcome = await Promise.race([
        queued,
        new Promise((resolve) => setTimeout(() => resolve('still queued'), 1_000)),
      ]);
      expect(outcome).toBeInstanceOf(EngineUnavailableError);
      void patient;
    } finally {
      await guard.close();
    }
  }, 30_000);
});
