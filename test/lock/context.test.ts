/**
 * The shared async-context chain (src/internal/context.ts) must stay as deep as the live nesting:
 * a job that reschedules itself from inside `read(fn)` must not grow it by one frame per run.
 */
import { describe, expect, it } from 'vitest';
import { RWLock } from '../../src/index.js';
import { chainDepth, heldBy, runHolding } from '../../src/internal/context.js';

describe('async-context chain', () => {
  it('a job rescheduling itself from inside read(fn) keeps the chain bounded', async () => {
    const lock = new RWLock();
    const other = new RWLock();
    const runs = 20_000;
    let maxDepth = 0;
    let count = 0;
    await new Promise<void>((resolve, reject) => {
      const tick = (): void => {
        lock
          .read(async () => {
            // A second lock nested inside, as a job touching two resources would.
            await other.read(() => {
              maxDepth = Math.max(maxDepth, chainDepth());
            });
            if (++count < runs) setImmediate(tick);
            else resolve();
          })
          .catch(reject);
      };
      tick();
    });
    expect(count).toBe(runs);
    // The live nesting is two locks deep at most.
    expect(maxDepth).toBeLessThanOrEqual(2);
  });

  it('also when each run reschedules while it still holds the lease (synchronous fn)', async () => {
    const lock = new RWLock();
    let maxDepth = 0;
    let count = 0;
    await new Promise<void>((resolve, reject) => {
      const tick = (): void => {
        lock
          .read(() => {
            maxDepth = Math.max(maxDepth, chainDepth());
            if (++count < 5_000) setImmediate(tick);
            else resolve();
          })
          .catch(reject);
      };
      tick();
    });
    expect(maxDepth).toBe(1);
  });

  it('heldBy skips a released hold but finds a live one behind it', () => {
    const a = {};
    const b = {};
    const outer = { released: false };
    const inner = { released: false };
    runHolding(a, outer, () => {
      runHolding(b, inner, () => {
        expect(heldBy(a)).toBe(outer);
        expect(heldBy(b)).toBe(inner);
        inner.released = true;
        expect(heldBy(b)).toBeUndefined();
        expect(heldBy(a)).toBe(outer);
        // A frame created now does not keep the dead one reachable.
        runHolding(b, { released: false }, () => {
          expect(chainDepth()).toBe(2);
        });
      });
    });
    // Values without a `released` flag are live for as long as their context runs.
    const plain = { id: 1 };
    runHolding(a, plain, () => {
      expect(heldBy(a)).toBe(plain);
    });
  });
});
