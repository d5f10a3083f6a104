/**
 * EngineGuard on the FakeEngine (no real server). guard.cache(): values served from memory, refreshed in the background.
 * Timing margins are generous on purpose (noisy 2-core machines); assertions are on behaviour.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { EngineStalledError } from '../../src/index.js';
import { FakeEngineError, FakeEngineFactory } from '../../src/testing/index.js';
import { fakeGuard, waitFor } from '../support/guard.js';

describe('i. cached value', () => {
  it('serves without waiting, refreshes in the background, single-flight, keeps the last good value', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { liveness: { interval: 50, timeout: 50, failures: 2 } });
    try {
      let loads = 0;
      let failNext = false;
      const cache = guard.cache(
        (e, ctx) => {
          loads++;
          if (failNext) {
            failNext = false;
            e.nextCall('fail');
          }
          return e.call(loads, { signal: ctx.signal });
        },
        { maxAge: 100 },
      );
      // First get: nothing yet, a refresh starts, nothing waits.
      const first = cache.get();
      expect(first).toMatchObject({ value: undefined, stale: true, refreshing: true });
      await waitFor(() => cache.peek().value === 1, 5_000, 'the first load');
      expect(cache.get()).toMatchObject({ value: 1, stale: false, refreshing: false });
      expect(loads).toBe(1);

      // A failed refresh keeps the last good value and reports the error.
      await sleep(120);
      failNext = true;
      cache.get();
      await waitFor(() => !cache.peek().refreshing, 5_000, 'the failed refresh');
      expect(cache.peek()).toMatchObject({ value: 1, stale: true });
      expect(cache.peek().error).toBeInstanceOf(FakeEngineError);

      // Wedge the engine: get() still answers at once with the stale value.
      factory.created[0]!.wedge();
      const loadsBefore = loads;
      const t0 = performance.now();
      const snapshots = Array.from({ length: 20 }, () => cache.get());
      expect(performance.now() - t0).toBeLessThan(20);
      for (const snapshot of snapshots) {
        expect(snapshot).toMatchObject({ value: 1, stale: true, refreshing: true });
      }
      // Single-flight: 20 gets, one refresh; refresh() joins it.
      expect(cache.refresh()).toBe(cache.refresh());
      await waitFor(() => loads === loadsBefore + 1, 5_000, 'the refresh to start');
      await sleep(30);
      expect(loads).toBe(loadsBefore + 1);
      // The wedged refresh is convicted; the last good value stays.
      await waitFor(() => !cache.peek().refreshing, 5_000, 'the wedged refresh to end');
      expect(cache.peek().value).toBe(1);
      expect(cache.peek().error).toBeInstanceOf(EngineStalledError);

      // A new handle: the next refresh succeeds and clears the error.
      cache.get();
      await waitFor(
        () => cache.peek().value === loads && !cache.peek().refreshing,
        5_000,
        'recovery',
      );
      expect(cache.peek()).toMatchObject({ stale: false, error: undefined });
      expect(cache.peek().value).toBeGreaterThan(1);
    } finally {
      await guard.close();
    }
  }, 30_000);
});
