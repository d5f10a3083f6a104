/**
 * Found in review (a test that failed before the fix): when `setup` fails, pool-hooks.ts destroys the half-made engine with a
 * fire-and-forget `void bounded(destroy...)` that the pool does not track, so `close()` resolves
 * while that destroy still runs (the class of bug of issue 7 item 7: "close() resolves before a
 * handle under an idle check is destroyed"; the docs promise close resolves once every destroy
 * settled).
 */
import { describe, expect, it } from 'vitest';
import { EngineGuard } from '../../src/index.js';

describe('close() and the destroy of a handle whose setup failed', () => {
  it('close() resolves only after the destroy of a handle whose setup failed has settled', async () => {
    let destroyStarted = false;
    let destroyDone = false;
    const guard = new EngineGuard<{ id: number }>({
      create: () => ({ id: 1 }),
      setup: () => {
        throw new Error('setup failed');
      },
      destroy: async () => {
        destroyStarted = true;
        await new Promise((resolve) => setTimeout(resolve, 300));
        destroyDone = true;
      },
      liveness: false,
      reconnect: { initialDelay: 10_000, jitter: 0 },
    });
    const read = guard.read(() => 'never', { timeout: 50 }).catch((error: unknown) => error);
    await read;
    expect(destroyStarted).toBe(true);
    await guard.close();
    expect(destroyDone).toBe(true);
  }, 30_000);
});
