/**
 * A job that reschedules itself from inside `guard.read(fn)` must not keep every earlier op
 * reachable through the async-context chain (issue 7, item 4: 13.8 MB over 20k runs before).
 */
import { describe, expect, it } from 'vitest';
import { chainDepth } from '../../src/internal/context.js';
import { FakeEngineFactory } from '../../src/testing/index.js';
import { fakeGuard } from '../support/guard.js';

describe('guard ops in the async-context chain', () => {
  it('a self-rescheduling job keeps the chain as deep as the live nesting', async () => {
    const guard = fakeGuard(new FakeEngineFactory());
    const runs = 5_000;
    let count = 0;
    let maxDepth = 0;
    await new Promise<void>((resolve, reject) => {
      const tick = (): void => {
        guard
          .read(async (engine) => {
            await engine.call('x');
            maxDepth = Math.max(maxDepth, chainDepth());
            if (++count < runs) setImmediate(tick);
            else resolve();
          })
          .catch(reject);
      };
      tick();
    });
    expect(count).toBe(runs);
    expect(maxDepth).toBeLessThanOrEqual(1);
    await guard.close();
  }, 30_000);
});
