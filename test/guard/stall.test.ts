/**
 * EngineGuard on the FakeEngine (no real server). Stalls: a writer queued behind a wedged reader (SPEC section 4, liveness).
 * Timing margins are generous on purpose (noisy 2-core machines); assertions are on behaviour.
 */
import { describe, expect, it } from 'vitest';
import { EngineStalledError } from '../../src/index.js';
import { type FakeEngine, FakeEngineFactory } from '../../src/testing/index.js';
import { errorOf, fakeGuard, waitFor } from '../support/guard.js';

describe('a. writer queued behind a wedged reader', () => {
  it('convicts the reader, revokes its lease and runs the queued write on a new handle', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { pool: 1 });
    try {
      await guard.read((e) => e.call('warm'));
      const engine = factory.created[0]!;
      // A call that never returns and cannot be aborted, on a handle that answers nothing.
      engine.wedge();
      engine.nextCall('ignore-abort');
      let readerGeneration = 0;
      const reader = guard.read(
        (e, ctx) => {
          readerGeneration = ctx.generation;
          return e.call('r', { signal: ctx.signal, duration: 60_000 });
        },
        { label: 'wedged reader' },
      );
      const readerError = errorOf(reader);
      await waitFor(() => guard.status().running.length === 1, 5_000, 'the reader');
      let writeEngine: FakeEngine | undefined;
      let writeGeneration = 0;
      let readerSettledBeforeWrite = false;
      void readerError.then(() => {
        readerSettledBeforeWrite = writeEngine === undefined;
      });
      const writer = guard.write(
        (e, ctx) => {
          writeEngine = e;
          writeGeneration = ctx.generation;
          return e.call('w', { signal: ctx.signal });
        },
        { label: 'queued write' },
      );
      expect(guard.status().queue).toEqual({ readers: 0, writers: 1, forHandle: 0 });

      const error = await readerError;
      expect(error).toBeInstanceOf(EngineStalledError);
      expect(error).toMatchObject({
        indeterminate: false,
        kind: 'read',
        label: 'wedged reader',
        generation: readerGeneration,
        probeFailures: 2,
      });
      await expect(writer).resolves.toBe('w');
      expect(readerSettledBeforeWrite).toBe(true);
      expect(writeEngine).not.toBe(engine);
      expect(writeGeneration).toBeGreaterThan(readerGeneration);
      expect(factory.created).toHaveLength(2);
      expect(guard.status().counters).toMatchObject({ stalls: 1, replacements: 1 });
      await waitFor(() => factory.destroyed.includes(engine), 5_000, 'the wedged engine destroyed');
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('also frees the queue behind a stalled call that honours its signal', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { pool: 2 });
    try {
      await guard.read((e) => e.call('warm'));
      factory.created[0]!.nextCall('stall');
      const reader = errorOf(guard.read((e, ctx) => e.call('r', { signal: ctx.signal })));
      await waitFor(() => guard.status().running.length === 1, 5_000, 'the reader');
      const writer = guard.write((e) => e.call('w'));
      expect(guard.status().queue.writers).toBe(1);
      const error = await reader;
      expect(error).toBeInstanceOf(EngineStalledError);
      expect((error as EngineStalledError).indeterminate).toBe(false);
      await expect(writer).resolves.toBe('w');
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('reports a stalled write as indeterminate and lets the queued reads through', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { pool: 2 });
    try {
      await guard.read((e) => e.call('warm'));
      const engine = factory.created[0]!;
      engine.nextCall('stall');
      const write = errorOf(
        guard.write((e, ctx) => e.call('w', { signal: ctx.signal }), { label: 'ddl' }),
      );
      await waitFor(() => guard.status().running.length === 1, 5_000, 'the write');
      const reads = [guard.read((e) => e.call(1)), guard.read((e) => e.call(2))];
      expect(guard.status().queue.readers).toBe(2);
      const error = await write;
      expect(error).toBeInstanceOf(EngineStalledError);
      expect(error).toMatchObject({ indeterminate: true, kind: 'write', label: 'ddl' });
      expect((error as Error).message).toMatch(/indeterminate/);
      await expect(Promise.all(reads)).resolves.toEqual([1, 2]);
    } finally {
      await guard.close();
    }
  }, 30_000);
});
