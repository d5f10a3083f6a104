/**
 * EngineGuard on the FakeEngine (no real server). Event-loop pauses: the local-pause guard convicts nothing healthy.
 * Timing margins are generous on purpose (noisy 2-core machines); assertions are on behaviour.
 */
import { stat } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { EngineStalledError } from '../../src/index.js';
import { FakeEngineFactory } from '../../src/testing/index.js';
import { busyWait, errorOf, fakeGuard, record } from '../support/guard.js';

describe('c. event-loop pause', () => {
  it('a 2 s pause during a slow op convicts nothing healthy', async () => {
    const factory = new FakeEngineFactory({ slowDuration: 3_000 });
    const guard = fakeGuard(factory, { liveness: { interval: 200, timeout: 200, failures: 2 } });
    const stalls = record(guard, 'stall');
    try {
      await guard.read((e) => e.call('warm'));
      factory.created[0]!.nextCall('slow');
      const pause = setTimeout(() => busyWait(2_000), 600);
      const t0 = performance.now();
      try {
        await expect(guard.read((e, ctx) => e.call('done', { signal: ctx.signal }))).resolves.toBe(
          'done',
        );
      } finally {
        clearTimeout(pause);
      }
      expect(performance.now() - t0).toBeGreaterThan(2_500);
      expect(stalls).toEqual([]);
      expect(guard.status().counters).toMatchObject({ stalls: 0, replacements: 0 });
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('a pause that catches a probe in flight (reply via I/O) convicts nothing, even with failures 1', async () => {
    const factory = new FakeEngineFactory({ slowDuration: 3_000 });
    let probes = 0;
    const guard = fakeGuard(factory, {
      liveness: { interval: 200, timeout: 200, failures: 1 },
      probe: async (engine, { signal }) => {
        probes++;
        // The block starts while this probe waits on I/O, so its timeout fires ~2 s late.
        if (probes === 2) setImmediate(() => busyWait(2_000));
        await stat(import.meta.dirname);
        await engine.ping({ signal });
      },
    });
    const stalls = record(guard, 'stall');
    try {
      await guard.read((e) => e.call('warm'));
      factory.created[0]!.nextCall('slow');
      await expect(guard.read((e, ctx) => e.call('done', { signal: ctx.signal }))).resolves.toBe(
        'done',
      );
      expect(probes).toBeGreaterThanOrEqual(3);
      expect(stalls).toEqual([]);
      expect(guard.status().counters.stalls).toBe(0);
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('still convicts an engine that really died during the pause', async () => {
    const factory = new FakeEngineFactory({ slowDuration: 20_000 });
    const guard = fakeGuard(factory, { liveness: { interval: 200, timeout: 200, failures: 2 } });
    try {
      await guard.read((e) => e.call('warm'));
      const engine = factory.created[0]!;
      engine.nextCall('slow');
      let pauseEnded = 0;
      const pause = setTimeout(() => {
        engine.wedge(); // the engine dies while we are paused
        busyWait(2_000);
        pauseEnded = performance.now();
      }, 600);
      try {
        const error = await errorOf(guard.read((e, ctx) => e.call('x', { signal: ctx.signal })));
        expect(error).toBeInstanceOf(EngineStalledError);
        expect(pauseEnded).toBeGreaterThan(0);
        // Convicted on fresh evidence after the pause: 2 failed probes, not the pause itself.
        const after = performance.now() - pauseEnded;
        expect(after).toBeGreaterThan(150);
        expect(after).toBeLessThan(5_000);
      } finally {
        clearTimeout(pause);
      }
      expect(guard.status().counters.stalls).toBe(1);
    } finally {
      await guard.close();
    }
  }, 30_000);
});
