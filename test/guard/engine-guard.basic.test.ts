import { getEventListeners } from 'node:events';
import { describe, expect, it } from 'vitest';
import { EngineGuard, EngineStalledError } from '../../src/index.js';
import { FakeEngineFactory } from '../../src/testing/index.js';
import {
  captureWarnings,
  type FakeGuardOptions,
  fakeGuard as sharedFakeGuard,
} from '../support/guard.js';

/** The shared fake guard with this file's faster watchdog. */
function fakeGuard(factory: FakeEngineFactory, extra: Partial<FakeGuardOptions> = {}) {
  return sharedFakeGuard(factory, {
    liveness: { interval: 50, timeout: 50, failures: 2 },
    ...extra,
  });
}

describe('EngineGuard basics', () => {
  it('runs reads and writes and reports status', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { pool: 2 });
    expect(guard.status().state).toBe('idle');
    const [a, b] = await Promise.all([
      guard.read((e, ctx) => e.call('a', { signal: ctx.signal, duration: 20 })),
      guard.read((e, ctx) => e.call('b', { signal: ctx.signal, duration: 20 })),
    ]);
    expect([a, b]).toEqual(['a', 'b']);
    expect(factory.created.length).toBe(2);
    await expect(guard.write((e) => e.call('w'))).resolves.toBe('w');
    const s = guard.status();
    expect(s.state).toBe('ready');
    expect(s.counters.ops).toBe(3);
    await guard.close();
    expect(factory.live).toBe(0);
  });

  it('convicts a stalled op and replaces the engine', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory);
    await guard.read((e) => e.call(1));
    factory.created[0]?.nextCall('stall');
    const t0 = performance.now();
    const err = await guard
      .read((e, ctx) => e.call(2, { signal: ctx.signal }))
      .catch((e: unknown) => e);
    const elapsed = performance.now() - t0;
    expect(err).toBeInstanceOf(EngineStalledError);
    expect(elapsed).toBeLessThan(2000);
    await expect(guard.read((e) => e.call(3))).resolves.toBe(3);
    expect(factory.created.length).toBe(2);
    expect(guard.status().counters.stalls).toBe(1);
    await guard.close();
  });
});

describe('EngineGuard: many ops sharing one caller signal', () => {
  it('keeps one listener on the signal and aborts every queued op at once', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { pool: 1 });
    const ac = new AbortController();
    let release: () => void = () => {};
    const blocker = guard.write(() => new Promise<void>((resolve) => (release = resolve)));
    await new Promise((resolve) => setTimeout(resolve, 10));
    const ops = Array.from({ length: 20_000 }, () =>
      guard.read((e) => e.call(1), { signal: ac.signal }),
    );
    expect(getEventListeners(ac.signal, 'abort')).toHaveLength(1);
    const t0 = performance.now();
    ac.abort(new Error('shutting down'));
    const results = await Promise.allSettled(ops);
    expect(results.every((r) => r.status === 'rejected')).toBe(true);
    // Generous bound; the point is one listener, not a listener per op (quadratic to remove).
    expect(performance.now() - t0).toBeLessThan(10_000);
    expect(getEventListeners(ac.signal, 'abort')).toHaveLength(0);
    expect(guard.status().queue).toEqual({ readers: 0, writers: 0, forHandle: 0 });
    expect(guard.status().counters.aborts).toBe(20_000);
    release();
    await blocker;
    await guard.close();
  });
});

describe('EngineGuard: liveness without a probe', () => {
  it('warns that the watchdog is off instead of silently never detecting a stall', async () => {
    const { result: guard, warnings } = captureWarnings(
      () => new EngineGuard({ create: () => ({}), liveness: { interval: 100 } }),
    );
    expect(warnings.map((w) => w.code)).toEqual(['ENGINE_GUARD_NO_PROBE']);
    await guard.close();
  });
});

describe('FakeEngineFactory.guardOptions', () => {
  it('wires a guard to the fake engines: stalls are convicted, dead idle engines skipped', async () => {
    const factory = new FakeEngineFactory();
    const guard = new EngineGuard(
      factory.guardOptions({ pool: 2, liveness: { interval: 50, timeout: 50, failures: 2 } }),
    );
    try {
      await Promise.all([
        guard.read((e) => e.call(1, { duration: 20 })),
        guard.read((e) => e.call(2, { duration: 20 })),
      ]);
      expect(factory.created).toHaveLength(2);
      factory.created[0]?.kill(); // dies while idle: isAlive skips it
      factory.created[1]?.nextCall('stall');
      const [stalled] = await Promise.allSettled([
        guard.read((e, ctx) => e.call(3, { signal: ctx.signal })),
      ]);
      expect(stalled.status === 'rejected' && stalled.reason).toBeInstanceOf(EngineStalledError);
      await expect(guard.read((e) => e.call(4))).resolves.toBe(4);
      expect(guard.status().counters.replacements).toBeGreaterThanOrEqual(2);
    } finally {
      await guard.close();
    }
    expect(factory.live).toBe(0);
  });
});
