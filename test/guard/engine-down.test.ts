/**
 * EngineGuard on the FakeEngine (no real server). Engine down: reconnect backoff, fail fast, waitForReady.
 * Timing margins are generous on purpose (noisy 2-core machines); assertions are on behaviour.
 */
import { describe, expect, it } from 'vitest';
import { EngineUnavailableError } from '../../src/index.js';
import { FakeEngineConnectionError, FakeEngineFactory } from '../../src/testing/index.js';
import { errorOf, fakeGuard, record, waitFor } from '../support/guard.js';

describe('d. engine down', () => {
  it('waitForReady callers wait within their own timeout, new ones fail fast, reads resume after', async () => {
    const factory = new FakeEngineFactory();
    let down = true;
    let attempts = 0;
    let lastThrown: Error | undefined;
    const guard = fakeGuard(factory, {
      pool: 1,
      create: ({ signal }) => {
        attempts++;
        if (down) {
          lastThrown = new FakeEngineConnectionError(`refused #${attempts}`, {
            code: 'ECONNREFUSED',
          });
          return Promise.reject(lastThrown);
        }
        return factory.create({ signal });
      },
      reconnect: { initialDelay: 20, maxDelay: 60, factor: 2, jitter: 0, failFastAfter: 3 },
    });
    const connectErrors = record(guard, 'connectError');
    try {
      const t0 = performance.now();
      // Short wait: gives up within its own timeout.
      const short = guard
        .read((e) => e.call('short'), { timeout: 400, waitForReady: true })
        .then(
          () => ({ error: undefined as unknown, last: undefined as unknown, at: 0 }),
          (error: unknown) => ({ error, last: lastThrown, at: performance.now() - t0 }),
        );
      // Long wait: still queued when the engine comes back.
      const long = guard.read((e) => e.call('long'), { timeout: 10_000, waitForReady: true });
      const shortOutcome = await short;
      expect(shortOutcome.error).toBeInstanceOf(EngineUnavailableError);
      expect((shortOutcome.error as Error).cause).toBe(shortOutcome.last);
      expect((shortOutcome.error as EngineUnavailableError).attempts).toBeGreaterThanOrEqual(3);
      expect(shortOutcome.at).toBeGreaterThanOrEqual(350);
      expect(shortOutcome.at).toBeLessThan(2_000);

      // Down: a new caller fails fast, with the last cause.
      await waitFor(() => guard.status().reconnect.failures >= 3, 5_000, '3 failures');
      const t1 = performance.now();
      const fast = await errorOf(guard.read((e) => e.call('fast')));
      expect(performance.now() - t1).toBeLessThan(50);
      expect(fast).toBeInstanceOf(EngineUnavailableError);
      expect((fast as Error).cause).toBeInstanceOf(FakeEngineConnectionError);
      expect((fast as Error).cause).toBe(lastThrown);
      expect(guard.status().state).toBe('degraded');
      expect(connectErrors.length).toBeGreaterThanOrEqual(3);
      expect(connectErrors[0]).toMatchObject({ attempts: 1, retryInMs: 20 });
      expect(connectErrors[1]).toMatchObject({ attempts: 2, retryInMs: 40 });

      // Back up: the background retry succeeds, the long waiter and new reads go through.
      down = false;
      await expect(long).resolves.toBe('long');
      await expect(guard.read((e) => e.call('again'))).resolves.toBe('again');
      expect(guard.status()).toMatchObject({ state: 'ready', reconnect: { failures: 0 } });
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('a background retry revives the guard while nobody waits', async () => {
    const factory = new FakeEngineFactory();
    factory.failNextCreates(5);
    const guard = fakeGuard(factory, {
      reconnect: { initialDelay: 10, maxDelay: 40, jitter: 0, failFastAfter: 2 },
    });
    try {
      const first = await errorOf(guard.read((e) => e.call(1), { timeout: 100 }));
      expect(first).toBeInstanceOf(EngineUnavailableError);
      expect((first as Error).cause).toBeInstanceOf(FakeEngineConnectionError);
      // Nobody waits now; retries continue in the background until the 6th create succeeds.
      await waitFor(() => factory.created.length === 1, 5_000, 'a background create');
      await expect(guard.read((e) => e.call(2))).resolves.toBe(2);
      expect(factory.attempts).toBe(6);
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('fails fast an op queued for a handle before the engine was declared down (issue 7 repro)', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, {
      pool: 1,
      create: () =>
        Promise.reject(new FakeEngineConnectionError('refused', { code: 'ECONNREFUSED' })),
      reconnect: { initialDelay: 20, maxDelay: 40, jitter: 0, failFastAfter: 3 },
    });
    try {
      const queuedFirst = errorOf(guard.read((e) => e.call('first')));
      const queuedBehind = errorOf(guard.write((e) => e.call('behind')));
      await waitFor(() => guard.status().reconnect.failures >= 3, 5_000, '3 failures');
      const later = await errorOf(guard.read((e) => e.call('later')));
      expect(later).toBeInstanceOf(EngineUnavailableError);
      // Bounded wait: before the fix the first one never settled.
      const settled = await Promise.race([
        Promise.all([queuedFirst, queuedBehind]),
        new Promise((resolve) => setTimeout(resolve, 2_000, 'still pending')),
      ]);
      expect(settled).not.toBe('still pending');
      const [first, behind] = settled as unknown[];
      expect(first).toBeInstanceOf(EngineUnavailableError);
      expect(behind).toBeInstanceOf(EngineUnavailableError);
      expect(guard.status().queued).toEqual([]);
    } finally {
      await guard.close();
    }
  }, 30_000);

  for (const where of ['op', 'guard'] as const) {
    it(`waitForReady (${where} option) waits through the outage and succeeds when the engine returns`, async () => {
      const factory = new FakeEngineFactory();
      let down = true;
      const guard = fakeGuard(factory, {
        pool: 1,
        ...(where === 'guard' ? { waitForReady: true } : {}),
        create: ({ signal }) =>
          down
            ? Promise.reject(new FakeEngineConnectionError('refused', { code: 'ECONNREFUSED' }))
            : factory.create({ signal }),
        reconnect: { initialDelay: 20, maxDelay: 40, jitter: 0, failFastAfter: 2 },
      });
      const options = where === 'op' ? { waitForReady: true } : {};
      try {
        const waiting = guard.read((e) => e.call('waited'), options);
        await waitFor(() => guard.status().reconnect.failures >= 4, 5_000, '4 failures');
        // New callers that opted in queue too, within their own bound.
        const bounded = await errorOf(guard.read((e) => e.call('x'), { ...options, timeout: 100 }));
        expect(bounded).toBeInstanceOf(EngineUnavailableError);
        expect(guard.status().queued.map((q) => q.label)).toEqual([undefined]);
        down = false;
        await expect(waiting).resolves.toBe('waited');
        expect(guard.status().state).toBe('ready');
      } finally {
        await guard.close();
      }
    }, 30_000);
  }

  it('waitForReady still honours the caller signal', async () => {
    const factory = new FakeEngineFactory();
    factory.failNextCreates(1_000);
    const guard = fakeGuard(factory, {
      pool: 1,
      reconnect: { initialDelay: 10, maxDelay: 20, jitter: 0, failFastAfter: 1 },
    });
    try {
      const ac = new AbortController();
      const waiting = errorOf(
        guard.read((e) => e.call(1), { waitForReady: true, signal: ac.signal }),
      );
      await waitFor(() => guard.status().reconnect.failures >= 3, 5_000, '3 failures');
      const reason = new Error('gave up');
      ac.abort(reason);
      expect(await waiting).toBe(reason);
    } finally {
      await guard.close();
    }
  }, 30_000);
});
