/**
 * EngineGuard on the FakeEngine (no real server). Re-entrancy: nested ops join the outer one on its handle.
 * Timing margins are generous on purpose (noisy 2-core machines); assertions are on behaviour.
 */
import { describe, expect, it } from 'vitest';
import { DeadlockError } from '../../src/index.js';
import { type FakeEngine, FakeEngineFactory } from '../../src/testing/index.js';
import { errorOf, fakeGuard, waitFor } from '../support/guard.js';

describe('f. re-entrancy', () => {
  it('joins nested read-in-read, read-in-write and write-in-write on the same handle', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { pool: 2 });
    try {
      const rr = await guard.read(async (outer, octx) => {
        const inner = await guard.read((e, ctx) => ({ e, id: ctx.id, gen: ctx.generation }));
        return {
          same: inner.e === outer,
          id: inner.id === octx.id,
          gen: inner.gen === octx.generation,
        };
      });
      expect(rr).toEqual({ same: true, id: true, gen: true });
      const rw = await guard.write(async (outer, octx) => {
        const inner = await guard.read((e, ctx) => ({ e, id: ctx.id }));
        return { same: inner.e === outer, id: inner.id === octx.id };
      });
      expect(rw).toEqual({ same: true, id: true });
      const ww = await guard.write(async (outer, octx) => {
        const inner = await guard.write((e, ctx) => ({ e, id: ctx.id }));
        return { same: inner.e === outer, id: inner.id === octx.id };
      });
      expect(ww).toEqual({ same: true, id: true });
      // Sequential, each joined: one handle was ever needed.
      expect(factory.created).toHaveLength(1);
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('does not deadlock on a nested op with a writer queued behind the outer one', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { pool: 2 });
    try {
      for (const outerKind of ['read', 'write'] as const) {
        for (const innerKind of outerKind === 'read'
          ? (['read'] as const)
          : (['read', 'write'] as const)) {
          let release!: () => void;
          const gate = new Promise<void>((resolve) => {
            release = resolve;
          });
          const outerFn = async (engine: FakeEngine): Promise<string> => {
            await gate;
            const inner =
              innerKind === 'read'
                ? await guard.read((e) => e === engine)
                : await guard.write((e) => e === engine);
            return inner ? 'joined' : 'other handle';
          };
          const outer = outerKind === 'read' ? guard.read(outerFn) : guard.write(outerFn);
          await waitFor(() => guard.status().running.length === 1, 5_000, 'the outer op');
          // A writer from outside queues behind the outer op.
          const writer = guard.write((e) => e.call('queued writer'));
          expect(guard.status().queue.writers).toBe(1);
          release();
          const t0 = performance.now();
          await expect(outer).resolves.toBe('joined');
          expect(performance.now() - t0).toBeLessThan(1_000);
          await expect(writer).resolves.toBe('queued writer');
        }
      }
      expect(factory.created.length).toBeLessThanOrEqual(2);
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('rejects a write inside a read with DeadlockError at once', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory);
    try {
      const outcome = await guard.read(async () => {
        const t0 = performance.now();
        const error = await errorOf(guard.write((e) => e.call('never')));
        return { error, ms: performance.now() - t0 };
      });
      expect(outcome.error).toBeInstanceOf(DeadlockError);
      expect((outcome.error as DeadlockError).code).toBe('ERR_DEADLOCK');
      expect(outcome.ms).toBeLessThan(50);
      // The guard is fine afterwards.
      await expect(guard.write((e) => e.call('w'))).resolves.toBe('w');
    } finally {
      await guard.close();
    }
  }, 30_000);
});
