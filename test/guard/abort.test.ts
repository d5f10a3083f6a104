/**
 * EngineGuard on the FakeEngine (no real server). Caller abort: queued, waiting for a handle, running, ignoring the abort.
 * Timing margins are generous on purpose (noisy 2-core machines); assertions are on behaviour.
 */
import { describe, expect, it } from 'vitest';
import type { OpContext } from '../../src/index.js';
import { FakeEngineCancelledError, FakeEngineFactory } from '../../src/testing/index.js';
import { errorOf, fakeGuard, record, waitFor } from '../support/guard.js';

describe('g. caller abort', () => {
  it('removes a caller queued for the lock at once', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { pool: 1 });
    try {
      const holder = guard.write((e) => e.call('holder', { duration: 300 }));
      await waitFor(() => guard.status().running.length === 1, 5_000, 'the holder');
      const ac = new AbortController();
      const reason = new Error('not needed any more');
      const waiting = errorOf(guard.read((e) => e.call('r'), { signal: ac.signal }));
      expect(guard.status().queue.readers).toBe(1);
      ac.abort(reason);
      expect(guard.status().queue.readers).toBe(0);
      await expect(waiting).resolves.toBe(reason);
      expect(guard.status().counters.aborts).toBe(1);
      await expect(holder).resolves.toBe('holder');
      expect(factory.created[0]!.calls).toBe(1); // the aborted read never ran
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('removes a caller waiting for a handle at once', async () => {
    const factory = new FakeEngineFactory({ createDuration: 300 });
    const guard = fakeGuard(factory, { pool: 1 });
    try {
      const ac = new AbortController();
      const waiting = errorOf(guard.read((e) => e.call('r'), { signal: ac.signal }));
      await waitFor(() => guard.status().queue.forHandle === 1, 5_000, 'the handle waiter');
      ac.abort();
      expect(guard.status().queue.forHandle).toBe(0);
      expect(await waiting).toBe(ac.signal.reason);
      // The handle opened for it is not leaked: it serves the next caller.
      await expect(guard.read((e) => e.call('next'))).resolves.toBe('next');
      expect(factory.created).toHaveLength(1);
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('aborts ctx.signal and sends cancel for a running op; keeps the handle when the engine acknowledges', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { pool: 1 });
    const replaced = record(guard, 'replace');
    try {
      const generation = await guard.read((_e, ctx) => ctx.generation);
      const engine = factory.created[0]!;
      const ac = new AbortController();
      const reason = new Error('user pressed stop');
      let seenCtx: OpContext | undefined;
      let fnError: unknown;
      // The engine call does not take the signal: only the server-side cancel can stop it.
      const op = guard.read(
        (e, ctx) => {
          seenCtx = ctx;
          return e.call('x', { duration: 10_000 }).catch((err: unknown) => {
            fnError = err;
            throw err;
          });
        },
        { signal: ac.signal },
      );
      await waitFor(() => guard.status().running.length === 1, 5_000, 'the op');
      const t0 = performance.now();
      ac.abort(reason);
      await expect(op).rejects.toBe(reason);
      expect(performance.now() - t0).toBeLessThan(100);
      expect(seenCtx?.signal.aborted).toBe(true);
      expect(seenCtx?.signal.reason).toBe(reason);
      await waitFor(() => guard.status().running.length === 0, 5_000, 'the op to wind down');
      expect(fnError).toBeInstanceOf(FakeEngineCancelledError);
      expect(engine.cancels).toBe(1);
      expect(guard.status().counters).toMatchObject({ cancels: 1, aborts: 1, replacements: 0 });
      expect(replaced).toEqual([]);
      await expect(guard.read((_e, ctx) => ctx.generation)).resolves.toBe(generation);
      expect(factory.created).toHaveLength(1);
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('abandons an op that ignores abort after cancelTimeout and replaces its handle', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { pool: 1, cancelTimeout: 200 });
    const abandoned = record(guard, 'abandon');
    const replaced = record(guard, 'replace');
    try {
      const generation = await guard.read((_e, ctx) => ctx.generation);
      const engine = factory.created[0]!;
      engine.nextCall('ignore-abort');
      const ac = new AbortController();
      const reason = new Error('stop');
      const op = guard.read((e, ctx) => e.call('x', { signal: ctx.signal, duration: 10_000 }), {
        signal: ac.signal,
        label: 'stubborn',
      });
      await waitFor(() => guard.status().running.length === 1, 5_000, 'the op');
      ac.abort(reason);
      await expect(op).rejects.toBe(reason);
      expect(guard.status().running[0]?.phase).toBe('cancelling');
      await waitFor(() => abandoned.length === 1, 3_000, 'the abandon event');
      expect(abandoned[0]).toMatchObject({
        op: { kind: 'read', label: 'stubborn', generation },
        reason,
      });
      expect(replaced).toEqual([{ generation, reason: 'abandoned', cause: reason }]);
      const next = await guard.read((_e, ctx) => ctx.generation);
      expect(next).toBeGreaterThan(generation);
      await waitFor(() => factory.destroyed.includes(engine), 3_000, 'the old engine destroyed');
    } finally {
      await guard.close();
    }
  }, 30_000);
});
