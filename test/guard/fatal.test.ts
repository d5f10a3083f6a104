/**
 * EngineGuard on the FakeEngine (no real server). Fatal errors retire the handle; cancellation is never fatal.
 * Timing margins are generous on purpose (noisy 2-core machines); assertions are on behaviour.
 */
import { describe, expect, it } from 'vitest';
import {
  FakeEngineConnectionError,
  FakeEngineError,
  FakeEngineFactory,
} from '../../src/testing/index.js';
import { errorOf, fakeGuard, record, waitFor } from '../support/guard.js';

describe('e. fatal errors', () => {
  it('retires the handle on a fatal error and gives the caller the original error', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory);
    const replaced = record(guard, 'replace');
    try {
      const generation = await guard.read((_e, ctx) => ctx.generation);
      let thrown: unknown;
      factory.created[0]!.nextCall('fatal');
      const error = await errorOf(
        guard.read((e) =>
          e.call('x').catch((err: unknown) => {
            thrown = err;
            throw err;
          }),
        ),
      );
      expect(error).toBeInstanceOf(FakeEngineConnectionError);
      expect(error).toBe(thrown);
      expect(replaced).toEqual([{ generation, reason: 'fatal', cause: error }]);
      const next = await guard.read((_e, ctx) => ctx.generation);
      expect(next).toBeGreaterThan(generation);
      expect(factory.created).toHaveLength(2);
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('keeps the handle on a non-fatal error', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory);
    try {
      const generation = await guard.read((_e, ctx) => ctx.generation);
      factory.created[0]!.nextCall('fail');
      await expect(guard.read((e) => e.call('x'))).rejects.toBeInstanceOf(FakeEngineError);
      await expect(guard.read((_e, ctx) => ctx.generation)).resolves.toBe(generation);
      expect(factory.created).toHaveLength(1);
      expect(guard.status().counters.replacements).toBe(0);
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('does not treat cancellation as fatal, even with an isFatal that says yes to anything', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { isFatal: () => true });
    try {
      const generation = await guard.read((_e, ctx) => ctx.generation);
      for (const reason of [undefined, new Error('custom reason')]) {
        const ac = new AbortController();
        const op = guard.read((e, ctx) => e.call('x', { signal: ctx.signal, duration: 10_000 }), {
          signal: ac.signal,
        });
        await waitFor(() => guard.status().running.length === 1, 5_000, 'the op');
        ac.abort(reason);
        const error = await errorOf(op);
        expect(error).toBe(ac.signal.reason);
        await waitFor(() => guard.status().running.length === 0, 5_000, 'the op to end');
      }
      await expect(guard.read((_e, ctx) => ctx.generation)).resolves.toBe(generation);
      expect(guard.status().counters.replacements).toBe(0);
      expect(factory.created).toHaveLength(1);
    } finally {
      await guard.close();
    }
  }, 30_000);
});
