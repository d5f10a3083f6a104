/**
 * EngineGuard on the FakeEngine (no real server). The guarantees issue 7 found broken in the
 * guard and the pool, each reproduced as its report describes it.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { DeadlockError, GuardClosedError, LockTimeoutError } from '../../src/index.js';
import { type FakeEngine, FakeEngineFactory } from '../../src/testing/index.js';
import { errorOf, fakeGuard, record, waitFor } from '../support/guard.js';

describe('#2 a cancel slower than cancelTimeout', () => {
  it('never lets the handle serve the next op while the cancel is in flight', async () => {
    const factory = new FakeEngineFactory();
    let cancelReturnedAt = Number.POSITIVE_INFINITY;
    const guard = fakeGuard(factory, {
      pool: 1,
      cancelTimeout: 100,
      cancel: async () => {
        await sleep(400);
        cancelReturnedAt = performance.now();
      },
    });
    try {
      const first = await guard.read((_e, ctx) => ctx.generation);
      const ac = new AbortController();
      // Honours its signal: fn settles at once, the cancel does not.
      const aborted = errorOf(
        guard.read((e, ctx) => e.call('long', { signal: ctx.signal, duration: 10_000 }), {
          signal: ac.signal,
        }),
      );
      await waitFor(() => guard.status().running.length === 1, 5_000, 'the op');
      ac.abort();
      await aborted;
      const next = await guard.read((_e, ctx) => ({
        at: performance.now(),
        generation: ctx.generation,
      }));
      // Either it ran after the cancel returned, or on another handle.
      expect(next.generation !== first || next.at >= cancelReturnedAt).toBe(true);
    } finally {
      await guard.close();
    }
  }, 30_000);
});

describe('#3 every path out of fn releases lease and handle', () => {
  const hostile: [string, () => unknown][] = [
    [
      'an object whose `then` getter throws',
      () => ({
        // biome-ignore lint/suspicious/noThenProperty: the hostile value under test
        get then(): never {
          throw new Error('then getter');
        },
      }),
    ],
    [
      'a revoked Proxy',
      () => {
        const { proxy, revoke } = Proxy.revocable({}, {});
        revoke();
        return proxy;
      },
    ],
    [
      'a thenable whose `then` throws after resolving',
      () => ({
        // biome-ignore lint/suspicious/noThenProperty: the hostile value under test
        then(resolve: (value: unknown) => void): never {
          resolve('early');
          throw new Error('late throw');
        },
      }),
    ],
  ];
  for (const [title, make] of hostile) {
    it(`fn returning ${title}`, async () => {
      const factory = new FakeEngineFactory();
      const guard = fakeGuard(factory, { pool: 1, destroyTimeout: 5_000 });
      try {
        await guard.read(make).catch(() => undefined);
        expect(guard.status().running).toEqual([]);
        await expect(guard.write(() => 'after', { timeout: 1_000 })).resolves.toBe('after');
      } finally {
        const started = performance.now();
        await guard.close();
        expect(performance.now() - started).toBeLessThan(2_000);
      }
    }, 30_000);
  }
});

describe('#5 cleanup inside an aborted op', () => {
  it('joins the op on its handle at once instead of queueing on its own lease', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { pool: 1, cancelTimeout: 3_000 });
    const abandoned = record(guard, 'abandon');
    try {
      const ac = new AbortController();
      let cleanup: Promise<{ engine: FakeEngine; at: number }> | undefined;
      let deadlock: Promise<unknown> | undefined;
      let outer: FakeEngine | undefined;
      const aborted = errorOf(
        guard.read(
          async (e, ctx) => {
            outer = e;
            try {
              await e.call('long', { signal: ctx.signal, duration: 10_000 });
            } catch (error) {
              cleanup = guard.read((engine) => ({ engine, at: performance.now() }));
              deadlock = errorOf(guard.write(() => 'never'));
              await cleanup;
              throw error;
            }
          },
          { signal: ac.signal },
        ),
      );
      await waitFor(() => guard.status().running.length === 1, 5_000, 'the op');
      const abortedAt = performance.now();
      ac.abort();
      await aborted;
      await waitFor(() => cleanup !== undefined, 5_000, 'the cleanup call');
      const done = await cleanup!;
      expect(done.engine).toBe(outer);
      expect(done.at - abortedAt).toBeLessThan(1_500);
      expect(await deadlock).toBeInstanceOf(DeadlockError);
      await waitFor(() => guard.status().running.length === 0, 5_000, 'the op to end');
      expect(abandoned).toEqual([]);
      expect(guard.status().counters.replacements).toBe(0);
    } finally {
      await guard.close();
    }
  }, 30_000);
});

describe('#6 one stuck connect', () => {
  it('does not starve the pool: a later caller gets an attempt on the free slot', async () => {
    const factory = new FakeEngineFactory();
    let creates = 0;
    const guard = fakeGuard(factory, {
      pool: 2,
      connectTimeout: 20_000,
      create: ({ signal }) => {
        creates++;
        // The first connect is lost (a dropped SYN): it never settles.
        if (creates === 1) return new Promise<FakeEngine>(() => {});
        return factory.create({ signal });
      },
    });
    try {
      const first = await errorOf(guard.read((e) => e.call('first'), { timeout: 100 }));
      expect(first).toBeInstanceOf(LockTimeoutError);
      const started = performance.now();
      await expect(guard.read((e) => e.call('second'), { timeout: 5_000 })).resolves.toBe('second');
      expect(performance.now() - started).toBeLessThan(2_000);
      expect(creates).toBe(2);
    } finally {
      await guard.close();
    }
  }, 30_000);
});

describe('#7 close() during an idle check', () => {
  it('resolves only after the checked handle was destroyed', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, {
      pool: 1,
      liveness: { interval: 50, timeout: 2_000, failures: 2, idleCheckAfter: 20 },
      probe: async (engine, { op }) => {
        if (op === undefined) await sleep(300);
        return engine.ping();
      },
    });
    await guard.read((e) => e.call('open'));
    await sleep(60);
    const checked = errorOf(guard.read((e) => e.call('after check')));
    await sleep(20);
    await guard.close();
    expect(await checked).toBeInstanceOf(GuardClosedError);
    expect(factory.created).toHaveLength(1);
    expect(factory.live).toBe(0);
  }, 30_000);
});

describe('#8 state events', () => {
  /** Probes of running ops fail (never enough to convict): the guard turns degraded meanwhile. */
  const probesFailForOps = () =>
    fakeGuard(new FakeEngineFactory(), {
      liveness: { interval: 40, timeout: 100, failures: 5 },
      probe: (engine, { op }) =>
        op === undefined ? engine.ping() : Promise.reject(new Error('probe failed')),
    });

  it('end where status().state is, after an op with failed probes ends', async () => {
    const guard = probesFailForOps();
    const states = record(guard, 'state');
    try {
      await guard.read(async () => {
        await waitFor(() => guard.status().state === 'degraded', 5_000, 'a failed probe');
      });
      expect(guard.status().state).toBe('ready');
      expect(states.at(-1)?.to).toBe('ready');
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('end where status().state is, after a caller abort', async () => {
    const guard = probesFailForOps();
    const states = record(guard, 'state');
    try {
      const ac = new AbortController();
      const aborted = errorOf(
        guard.read((e, ctx) => e.call('long', { signal: ctx.signal, duration: 10_000 }), {
          signal: ac.signal,
        }),
      );
      await waitFor(() => guard.status().state === 'degraded', 5_000, 'a failed probe');
      ac.abort();
      await aborted;
      await waitFor(() => guard.status().running.length === 0, 5_000, 'the op to end');
      expect(guard.status().state).toBe('ready');
      expect(states.at(-1)?.to).toBe('ready');
    } finally {
      await guard.close();
    }
  }, 30_000);
});
