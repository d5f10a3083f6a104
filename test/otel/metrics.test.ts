/**
 * engine-guard/otel metrics, read back from the real OpenTelemetry SDK (`@opentelemetry/sdk-metrics`,
 * a MetricReader the test collects from): the pool metrics of the database semantic conventions
 * and the guard's own, with the names, units, instrument kinds and attributes dashboards expect,
 * and values that agree with what the ops really did.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Histogram } from '@opentelemetry/sdk-metrics';
import { describe, expect, it } from 'vitest';
import { EngineGuard, EngineStalledError, LockTimeoutError } from '../../src/index.js';
import { instrumentGuard } from '../../src/otel/index.js';
import { FakeEngineFactory } from '../../src/testing/index.js';
import { FakeCoordinator } from '../coordination/fake-coordinator.js';
import { errorOf, fakeGuard, gate, stalledRead, waitFor } from '../support/guard.js';
import { meterHarness, pointValue } from './support.js';

const POOL = { 'db.client.connection.pool.name': 'orders' };

/** Timestamps of one op, from the test's side. */
interface Timed {
  kind: 'read' | 'write';
  callBefore: number;
  callAfter: number;
  fnStart: number;
  fnEnd: number;
  answered: number;
}

function histogram(value: unknown): Histogram {
  expect(value, 'a histogram point').toMatchObject({ count: expect.any(Number) });
  return value as Histogram;
}

describe('engine-guard/otel metrics', () => {
  it('reports the pool under contention (pool 2, 6 callers) with the real waits and uses', async () => {
    const { meterProvider, collect } = meterHarness();
    const guard = new EngineGuard<object>({
      name: 'orders',
      create: async () => {
        await sleep(5);
        return {};
      },
      pool: 2,
      maxSessions: 1,
    });
    using _instrumentation = instrumentGuard(guard, { meterProvider });
    const first = gate();
    let released = 0;
    const timed: Timed[] = [];
    const run = (kind: 'read' | 'write', hold: Promise<void> | undefined): Promise<void> => {
      const t: Timed = { kind, callBefore: 0, callAfter: 0, fnStart: 0, fnEnd: 0, answered: 0 };
      timed.push(t);
      const fn = async (): Promise<void> => {
        t.fnStart = performance.now();
        await (hold ?? sleep(15));
        t.fnEnd = performance.now();
      };
      t.callBefore = performance.now();
      const promise = kind === 'read' ? guard.read(fn) : guard.write(fn);
      t.callAfter = performance.now();
      return promise.then(() => {
        t.answered = performance.now();
      });
    };
    try {
      // Two reads take both handles and hold them; four callers queue behind them.
      const holding = [run('read', first.promise), run('read', first.promise)];
      await waitFor(() => guard.status().running.length === 2, 5_000, 'two running reads');
      const queued = [run('write', undefined), run('read', undefined)];
      queued.push(run('write', undefined), run('read', undefined));
      await waitFor(() => guard.status().queued.length === 4, 5_000, 'four queued callers');

      const busy = await collect();
      expect(
        pointValue(busy, 'db.client.connection.count', {
          ...POOL,
          'db.client.connection.state': 'used',
        }),
      ).toBe(2);
      expect(
        pointValue(busy, 'db.client.connection.count', {
          ...POOL,
          'db.client.connection.state': 'idle',
        }),
      ).toBe(0);
      expect(pointValue(busy, 'db.client.connection.pending_requests', POOL)).toBe(4);
      expect(pointValue(busy, 'db.client.connection.limit', POOL)).toBe(3);
      expect(pointValue(busy, 'db.client.connection.max', POOL)).toBe(3);
      expect(pointValue(busy, 'db.client.connection.idle.max', POOL)).toBe(2);

      await sleep(30);
      released = performance.now();
      first.open();
      await Promise.all([...holding, ...queued]);
    } finally {
      first.open();
    }

    const done = await collect();
    // Names, units and instrument kinds as the semantic conventions define them.
    const expected: [string, string, string][] = [
      ['db.client.connection.count', '{connection}', 'UpDownCounter'],
      ['db.client.connection.limit', '{connection}', 'UpDownCounter'],
      ['db.client.connection.max', '{connection}', 'UpDownCounter'],
      ['db.client.connection.idle.max', '{connection}', 'UpDownCounter'],
      ['db.client.connection.pending_requests', '{request}', 'UpDownCounter'],
      ['db.client.connection.create_time', 's', 'Histogram'],
      ['db.client.connection.wait_time', 's', 'Histogram'],
      ['db.client.connection.use_time', 's', 'Histogram'],
      ['engine_guard.ops', '{op}', 'Counter'],
      ['engine_guard.session.count', '{session}', 'UpDownCounter'],
    ];
    for (const [name, unit, type] of expected) {
      expect(done.get(name), name).toMatchObject({ unit, kind: type });
      for (const point of done.get(name)?.points ?? []) {
        expect(point.attributes, name).toMatchObject(POOL);
      }
    }
    expect(
      pointValue(done, 'db.client.connection.count', { 'db.client.connection.state': 'idle' }),
    ).toBe(2);
    expect(
      pointValue(done, 'db.client.connection.count', { 'db.client.connection.state': 'used' }),
    ).toBe(0);
    expect(pointValue(done, 'db.client.connection.pending_requests')).toBe(0);

    const created = histogram(pointValue(done, 'db.client.connection.create_time'));
    expect(created.count).toBe(2);
    expect(created.sum).toBeGreaterThanOrEqual(2 * 0.004);

    for (const kind of ['read', 'write'] as const) {
      const ops = timed.filter((t) => t.kind === kind);
      const attributes = { 'engine_guard.op.kind': kind };
      const wait = histogram(pointValue(done, 'db.client.connection.wait_time', attributes));
      const use = histogram(pointValue(done, 'db.client.connection.use_time', attributes));
      expect(wait.count, kind).toBe(ops.length);
      expect(use.count, kind).toBe(ops.length);
      // Each op's wait lies between what the test saw of it: at most from just before its call
      // to its fn's start; for those queued behind the holding reads, at least from just after
      // their call to the holders' release.
      const waitAtMost = ops.reduce((sum, t) => sum + (t.fnStart - t.callBefore), 0) / 1000;
      expect(wait.sum, kind).toBeLessThanOrEqual(waitAtMost);
      const useAtLeast = ops.reduce((sum, t) => sum + (t.fnEnd - t.fnStart), 0) / 1000;
      // An op ran from no earlier than its call (the holders) or the holders' release (the
      // queued ones) to its answer.
      const startedNoEarlier = (t: Timed) =>
        timed.indexOf(t) < 2 ? t.callBefore : Math.max(t.callBefore, released);
      const useAtMost = ops.reduce((sum, t) => sum + (t.answered - startedNoEarlier(t)), 0) / 1000;
      expect(use.sum, kind).toBeGreaterThanOrEqual(useAtLeast);
      expect(use.sum, kind).toBeLessThanOrEqual(useAtMost);
      expect(
        pointValue(done, 'engine_guard.ops', { ...attributes, 'engine_guard.op.outcome': 'ok' }),
      ).toBe(ops.length);
    }
    const queuedOps = timed.slice(2);
    const waitedAtLeast =
      queuedOps.reduce((sum, t) => sum + Math.max(0, released - t.callAfter), 0) / 1000;
    const allWaits =
      (histogram(
        pointValue(done, 'db.client.connection.wait_time', { 'engine_guard.op.kind': 'read' }),
      ).sum ?? 0) +
      (histogram(
        pointValue(done, 'db.client.connection.wait_time', { 'engine_guard.op.kind': 'write' }),
      ).sum ?? 0);
    expect(allWaits).toBeGreaterThanOrEqual(waitedAtLeast);
    expect(waitedAtLeast).toBeGreaterThan(0.1); // four callers queued for 30 ms and more
    await guard.close();
  });

  it('counts timeouts, and every op by outcome and error.type', async () => {
    const { meterProvider, collect } = meterHarness();
    const guard = new EngineGuard<object>({ name: 'orders', create: () => ({}) });
    using _instrumentation = instrumentGuard(guard, { meterProvider });
    const hold = gate();
    try {
      const holder = guard.write(() => hold.promise);
      await waitFor(() => guard.status().running.length === 1, 5_000, 'the write');
      expect(await errorOf(guard.read(() => 1, { timeout: 10 }))).toBeInstanceOf(LockTimeoutError);
      hold.open();
      await holder;
      await errorOf(
        guard.read(() => {
          throw Object.assign(new Error('relation missing'), { code: '42P01' });
        }),
      );
    } finally {
      hold.open();
      await guard.close();
    }
    await errorOf(guard.read(() => 1));
    const metrics = await collect();
    expect(metrics.get('db.client.connection.timeouts')).toMatchObject({
      unit: '{timeout}',
      kind: 'Counter',
    });
    expect(
      pointValue(metrics, 'db.client.connection.timeouts', {
        ...POOL,
        'engine_guard.op.kind': 'read',
      }),
    ).toBe(1);
    const ops = (outcome: string, errorType: string) =>
      pointValue(metrics, 'engine_guard.ops', {
        'engine_guard.op.outcome': outcome,
        'error.type': errorType,
      });
    expect(ops('timeout', 'ERR_LOCK_TIMEOUT')).toBe(1);
    expect(ops('error', '42P01')).toBe(1);
    expect(ops('closed', 'ERR_GUARD_CLOSED')).toBe(1);
    // A timed-out op never held a handle: it is not in wait_time (nor use_time).
    expect(
      histogram(
        pointValue(metrics, 'db.client.connection.wait_time', { 'engine_guard.op.kind': 'read' }),
      ).count,
    ).toBe(1);
  });

  it('counts stalls, replacements and failed probes on a convicted op', async () => {
    const { meterProvider, collect } = meterHarness();
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { name: 'orders', pool: 1 });
    using _instrumentation = instrumentGuard(guard, { meterProvider });
    try {
      expect(await stalledRead(guard, factory)).toBeInstanceOf(EngineStalledError);
      await waitFor(() => guard.status().counters.replacements === 1, 5_000, 'the replacement');
    } finally {
      await guard.close();
    }
    const metrics = await collect();
    expect(metrics.get('engine_guard.stalls')).toMatchObject({ unit: '{stall}', kind: 'Counter' });
    expect(
      pointValue(metrics, 'engine_guard.stalls', { ...POOL, 'engine_guard.op.kind': 'read' }),
    ).toBe(1);
    expect(
      pointValue(metrics, 'engine_guard.replacements', {
        ...POOL,
        'engine_guard.replace.reason': 'stall',
      }),
    ).toBe(1);
    expect(
      pointValue(metrics, 'engine_guard.probe.failures', {
        ...POOL,
        'engine_guard.probe.target': 'op',
      }),
    ).toBe(2);
    expect(
      pointValue(metrics, 'engine_guard.ops', {
        'engine_guard.op.outcome': 'stalled',
        'error.type': 'ERR_ENGINE_STALLED',
      }),
    ).toBe(1);
  });

  it('records the cluster lease wait of a coordinated write', async () => {
    const { meterProvider, collect } = meterHarness();
    const coordinator = new FakeCoordinator({ autoGrant: false });
    const guard = new EngineGuard<object>({ name: 'orders', create: () => ({}), coordinator });
    using _instrumentation = instrumentGuard(guard, { meterProvider });
    let asked = 0;
    let granted = 0;
    try {
      const write = guard.write(() => 'w');
      await waitFor(() => coordinator.pending.length === 1, 5_000, 'the cluster acquire');
      asked = performance.now();
      await sleep(30);
      granted = performance.now();
      coordinator.pending[0]?.settle(true);
      await write;
      await guard.read(() => 'r'); // takes no cluster lease
    } finally {
      await guard.close();
    }
    const metrics = await collect();
    expect(metrics.get('engine_guard.cluster.lease.wait_time')).toMatchObject({
      unit: 's',
      kind: 'Histogram',
    });
    const wait = histogram(
      pointValue(metrics, 'engine_guard.cluster.lease.wait_time', {
        ...POOL,
        'engine_guard.op.kind': 'write',
      }),
    );
    expect(wait.count).toBe(1);
    expect(wait.sum).toBeGreaterThanOrEqual((granted - asked) / 1000);
    expect(
      pointValue(metrics, 'engine_guard.cluster.lease.wait_time', {
        'engine_guard.op.kind': 'read',
      }),
    ).toBeUndefined();
  });

  it('counts reset failures', async () => {
    const { meterProvider, collect } = meterHarness();
    const guard = new EngineGuard<object>({
      name: 'orders',
      create: () => ({}),
      reset: () => {
        throw new Error('could not clean the handle');
      },
    });
    using _instrumentation = instrumentGuard(guard, { meterProvider });
    await guard.read(() => 1);
    await waitFor(() => guard.status().counters.replacements === 1, 5_000, 'the retired handle');
    await guard.close();
    const metrics = await collect();
    expect(pointValue(metrics, 'engine_guard.reset.failures', POOL)).toBe(1);
    expect(
      pointValue(metrics, 'engine_guard.replacements', { 'engine_guard.replace.reason': 'reset' }),
    ).toBe(1);
  });

  it('counts sessions pinned to a handle, and their handle as used', async () => {
    const { meterProvider, collect } = meterHarness();
    const guard = new EngineGuard<object>({ name: 'orders', create: () => ({}), maxSessions: 2 });
    using _instrumentation = instrumentGuard(guard, { meterProvider });
    try {
      const holding = guard.session({ label: 'holds a handle' });
      const fresh = guard.session({ label: 'no op yet' });
      // A session that pins on every op ('always', the default without a `state` hook) holds
      // its handle from its first op on.
      await holding.read(() => 1);
      expect(guard.status().sessions.map((s) => s.pinned)).toEqual([true, false]);
      const metrics = await collect();
      expect(
        pointValue(metrics, 'engine_guard.session.count', {
          ...POOL,
          'engine_guard.session.pinned': true,
        }),
      ).toBe(1);
      expect(
        pointValue(metrics, 'engine_guard.session.count', {
          ...POOL,
          'engine_guard.session.pinned': false,
        }),
      ).toBe(1);
      expect(
        pointValue(metrics, 'db.client.connection.count', { 'db.client.connection.state': 'used' }),
      ).toBe(1);
      expect(pointValue(metrics, 'engine_guard.session.limit', POOL)).toBe(2);
      await fresh.close();
      await holding.close();
      const closed = await collect();
      expect(
        pointValue(closed, 'engine_guard.session.count', { 'engine_guard.session.pinned': true }),
      ).toBe(0);
    } finally {
      await guard.close();
    }
  });

  it('stops on dispose, frees the pool name, and refuses a second instrumentation under it', async () => {
    const { meterProvider, collect } = meterHarness();
    const guard = new EngineGuard<object>({ name: 'orders', create: () => ({}) });
    const other = new EngineGuard<object>({ name: 'orders', create: () => ({}) });
    try {
      const instrumentation = instrumentGuard(guard, { meterProvider });
      expect(() => instrumentGuard(other, { meterProvider })).toThrow(
        /already instrumented under the pool name "orders"/,
      );
      await guard.read(() => 1);
      instrumentation.dispose();
      instrumentation.dispose(); // idempotent
      await guard.read(() => 1);
      const metrics = await collect();
      expect(pointValue(metrics, 'engine_guard.ops', { 'engine_guard.op.outcome': 'ok' })).toBe(1);
      expect(metrics.get('db.client.connection.count')?.points ?? []).toEqual([]);
      // The name is free again: another guard may take it.
      using _again = instrumentGuard(other, { meterProvider });
    } finally {
      await guard.close();
      await other.close();
    }
  });

  it('validates its arguments, naming what is wrong', () => {
    const guard = new EngineGuard<object>({ create: () => ({}) });
    expect(() => instrumentGuard({} as never)).toThrow(/"guard" argument must be an EngineGuard/);
    expect(() => instrumentGuard(guard, { meterProvidr: {} } as never)).toThrow(
      /Unknown option "meterProvidr"; did you mean "meterProvider"\?/,
    );
    expect(() => instrumentGuard(guard, { meterProvider: {} } as never)).toThrow(
      /"meterProvider" option must be an OpenTelemetry meterProvider/,
    );
    expect(() => instrumentGuard(guard, { tracerProvider: 7 } as never)).toThrow(TypeError);
    expect(() => instrumentGuard(guard, null as never)).toThrow(/"options" argument/);
  });
});
