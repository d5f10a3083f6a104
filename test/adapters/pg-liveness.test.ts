/**
 * engine-guard/pg's busy-handle probe in a guard, against the real PostgreSQL through a
 * FaultProxy: no false conviction of an op that works in the application between two queries
 * of a transaction; conviction when a query is in flight and its answer was lost; and the
 * adapter's default liveness convicting a silent dead op within 5 s.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { EngineGuard, EngineStalledError } from 'engine-guard';
import { PG_LIVENESS, type PgHandle, pgGuardOptions, pgQuery } from 'engine-guard/pg';
import { FaultProxy } from 'engine-guard/testing';
import { describe, expect, it, onTestFinished } from 'vitest';
import { adminQuery, clientConfig, pgConfig } from '../support/pg.js';
import { activity, settle, waitFor } from '../support/pg-faults-kit.js';

const LIVENESS = { interval: 200, timeout: 300, failures: 2 } as const;
/** Generous margin on top of a bound, for this noisy machine. */
const MARGIN = 3_000;

async function proxy(): Promise<FaultProxy> {
  const { host, port } = pgConfig();
  const p = await FaultProxy.start({ target: { host, port } });
  onTestFinished(() => p.close());
  return p;
}

function guardOf(options: ConstructorParameters<typeof EngineGuard<PgHandle>>[0]) {
  const guard = new EngineGuard<PgHandle>(options);
  onTestFinished(() => guard.close());
  return guard;
}

describe('pg busy-handle probe in a guard', () => {
  it('an op idle in transaction for many intervals (work in the application) is not convicted', async () => {
    const p = await proxy();
    const guard = guardOf(
      pgGuardOptions(
        { config: clientConfig({ host: p.host, port: p.port }) },
        { liveness: LIVENESS },
      ),
    );
    let pid = 0;
    const result = await guard.write(async (pg, ctx) => {
      pid = pg.pid;
      await pgQuery(pg, ctx, 'BEGIN');
      await pgQuery(pg, ctx, 'SELECT 1');
      // Application work: 10 probe intervals with no query in flight.
      await sleep(10 * LIVENESS.interval);
      expect((await activity(pid))?.state).toBe('idle in transaction');
      await pgQuery(pg, ctx, 'COMMIT');
      return 'done';
    });
    expect(result).toBe('done');
    const { counters } = guard.status();
    expect(counters.stalls).toBe(0);
    expect(counters.probeFailures).toBe(0);
  });

  it('a query in flight whose answer is lost is convicted (backend idle on the server)', async () => {
    const p = await proxy();
    // The side connection goes straight to the server: only the handle's route loses bytes,
    // so what convicts the op is the backend being idle while a query is in flight.
    const guard = guardOf(
      pgGuardOptions(
        { config: clientConfig({ host: p.host, port: p.port }), sideConfig: clientConfig() },
        { liveness: LIVENESS, cancelTimeout: 500 },
      ),
    );
    let pid = 0;
    const started = settle(
      guard.read((pg, ctx) => {
        pid = pg.pid;
        return pgQuery(pg, ctx, 'SELECT pg_sleep(0.3)');
      }),
    );
    await waitFor(
      async () => pid > 0 && (await activity(pid))?.state === 'active',
      5_000,
      'active',
    );
    // Drop the answer: the server finishes the query, the reply never reaches the client,
    // whose socket stays open.
    p.blackhole();
    await waitFor(async () => (await activity(pid))?.state === 'idle', 5_000, 'idle');
    const outcome = await started;
    expect(outcome.ok).toBe(false);
    if (outcome.ok) return;
    expect(outcome.error).toBeInstanceOf(EngineStalledError);
  });
});

describe('pg busy-handle probe on a slow link', () => {
  it('a query sent just now that has not reached the server yet is not an answer lost', async () => {
    const p = await proxy();
    const options = pgGuardOptions({
      config: clientConfig({ host: p.host, port: p.port }),
      sideConfig: clientConfig(),
    });
    const handle = await options.create({ signal: new AbortController().signal, generation: 1 });
    onTestFinished(() => options.destroy?.(handle, { reason: 'test' }));
    const op = { id: 1, kind: 'write' as const, label: undefined, generation: 1, startedAt: 0 };
    const ctx = { signal: new AbortController().signal, heartbeat() {} };
    await pgQuery(handle, ctx, 'BEGIN');
    await sleep(300); // idle in transaction on the server for a while
    p.latency(300);
    const next = pgQuery(handle, ctx, 'SELECT 1 AS one'); // 300 ms on its way to the server
    await expect(
      options.probe?.(handle, { signal: AbortSignal.timeout(1_000), op }),
    ).resolves.toBeUndefined();
    expect((await next).rows).toEqual([{ one: 1 }]);
    await pgQuery(handle, ctx, 'ROLLBACK');
  });
});

describe('pg adapter default liveness', () => {
  it('convicts nobody on a slow link: a long query and an op idle in transaction, 100 ± 50 ms each way', async () => {
    const p = await proxy();
    const guard = guardOf(
      pgGuardOptions({ config: clientConfig({ host: p.host, port: p.port }) }, { pool: 2 }),
    );
    await guard.read((pg, ctx) => pgQuery(pg, ctx, 'SELECT 1'));
    p.latency(100, 50);
    const failures: string[] = [];
    guard.on('probeFailure', (e) => failures.push(`${e.op?.kind ?? 'idle'}: ${String(e.error)}`));
    const [long, inTransaction] = await Promise.all([
      guard.read((pg, ctx) => pgQuery(pg, ctx, 'SELECT pg_sleep(4) AS slept')),
      guard.write(async (pg, ctx) => {
        await pgQuery(pg, ctx, 'BEGIN');
        await sleep(4 * PG_LIVENESS.interval); // work in the application
        await pgQuery(pg, ctx, 'ROLLBACK');
        return 'done';
      }),
    ]);
    expect(long.rows).toHaveLength(1);
    expect(inTransaction).toBe('done');
    const { counters } = guard.status();
    expect(failures).toEqual([]);
    expect(counters.stalls).toBe(0);
    expect(counters.probeFailures).toBe(0);
  }, 30_000);

  it('convicts a silent op on a half-open link within 5 s', async () => {
    const p = await proxy();
    const guard = guardOf(
      pgGuardOptions(
        { config: clientConfig({ host: p.host, port: p.port }) },
        { cancelTimeout: 500 },
      ),
    );
    const long = settle(guard.read((pg, ctx) => pgQuery(pg, ctx, 'SELECT pg_sleep(30)')));
    await sleep(2 * PG_LIVENESS.interval);
    expect(guard.status().counters.probeFailures).toBe(0);
    p.blackhole();
    const at = performance.now();
    const outcome = await long;
    const elapsed = outcome.at - at;
    expect(outcome.ok).toBe(false);
    if (outcome.ok) return;
    expect(outcome.error).toBeInstanceOf(EngineStalledError);
    // The bound the defaults promise: interval × failures + timeout.
    const bound = PG_LIVENESS.interval * PG_LIVENESS.failures + PG_LIVENESS.timeout;
    expect(bound).toBeLessThanOrEqual(5_000);
    expect(elapsed).toBeLessThan(bound + MARGIN);
  });
});

describe('pg side connection', () => {
  it('is never trusted: a dead side connection fails the probe and is replaced', async () => {
    const sideProxy = await proxy();
    const app = `eg-side-${process.pid}-${Date.now()}`;
    const options = pgGuardOptions({
      config: clientConfig(),
      sideConfig: clientConfig({
        host: sideProxy.host,
        port: sideProxy.port,
        application_name: app,
      }),
    });
    const handle = await options.create({ signal: new AbortController().signal, generation: 1 });
    onTestFinished(() => options.destroy?.(handle, { reason: 'test' }));
    const op = { id: 1, kind: 'read' as const, label: undefined, generation: 1, startedAt: 0 };
    const probe = (ms = 1_000) => options.probe?.(handle, { signal: AbortSignal.timeout(ms), op });
    const ctx = { signal: new AbortController().signal, heartbeat() {} };
    // Long enough to outlast the test: it is cancelled at the end.
    const running = pgQuery(handle, ctx, 'SELECT pg_sleep(20)').catch((e: unknown) => e);
    await waitFor(async () => (await activity(handle.pid))?.state === 'active', 5_000, 'active');
    await expect(probe()).resolves.toBeUndefined();
    const sidePids = async () =>
      (
        await adminQuery<{ pid: number }>(
          'SELECT pid FROM pg_stat_activity WHERE application_name = $1',
          [app],
        )
      ).rows.map((r) => r.pid);
    const [first] = await sidePids();
    expect(first).toBeGreaterThan(0);

    // Half-open side route: the probe fails within its signal, and that connection is dropped.
    sideProxy.blackhole();
    await expect(probe(300)).rejects.toThrow();
    sideProxy.heal();
    await expect(probe()).resolves.toBeUndefined();
    const second = await sidePids();
    expect(second).not.toContain(first);

    // Its backend terminated: the probe that finds it gone fails, the next one reconnects.
    await adminQuery('SELECT pg_terminate_backend($1)', [second[0]]);
    await waitFor(
      async () => {
        try {
          await probe();
          return false;
        } catch {
          return true;
        }
      },
      5_000,
      'a probe fails on the terminated side connection',
    );
    await expect(probe()).resolves.toBeUndefined();
    expect(await sidePids()).not.toContain(second[0]);
    await adminQuery('SELECT pg_cancel_backend($1)', [handle.pid]);
    expect(await running).toMatchObject({ code: '57014' });
  });
});
