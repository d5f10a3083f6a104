/**
 * pgCoordinator across real processes (SPEC section 10): each child runs `node --import tsx
 * child.ts` with its own guard and coordinator against the test cluster, and records every write
 * it performs as [start, end, fence] (server clock). Every child is killed by the test's cleanup.
 *
 * Bounds used here: leaseTimeout 2,000 ms, renewInterval 400 ms (the holder's own deadline is
 * 1,600 ms after its last answered renewal). Margins on top are generous: this machine is shared.
 */
import { describe, expect, it } from 'vitest';
import { FaultProxy } from '../../../src/testing/index.js';
import { adminQuery, pgConfig } from '../../support/pg.js';
import { freshTables, lockWaiters, spawnChild, uniqueKey, until, writeLog } from './kit.js';

const LEASE = { leaseTimeout: 2_000, renewInterval: 400 };
/** Scheduling noise allowed on top of a bound. */
const MARGIN = 3_000;

describe('pgCoordinator across processes', () => {
  it('4 processes × 200 writes with random reads: no overlapping writes, fences increase', async () => {
    await freshTables();
    const key = uniqueKey();
    const writes = 200;
    const children = [1, 2, 3, 4].map((n) =>
      spawnChild({ kind: 'writers', name: `w${n}`, key, writes, ...LEASE }),
    );
    for (const child of children) await child.next('done', 110_000);
    const log = await writeLog();
    expect(log.writes).toHaveLength(4 * writes);
    expect(log.overlaps).toEqual([]);
    expect(log.fenceInversions).toEqual([]);
    // The unguarded read-modify-write lost no update.
    const { rows } = await adminQuery<{ v: number }>('SELECT v FROM coord_counter');
    expect(rows[0]!.v).toBe(4 * writes);
    expect(new Set(log.writes.map((w) => w.proc)).size).toBe(4);
  }, 120_000);

  it('kill -9 of the holder mid-write: a waiting process gets the lease within 1 s', async () => {
    await freshTables();
    const key = uniqueKey();
    const holder = spawnChild({ kind: 'hold', name: 'holder', key, ...LEASE });
    await holder.next('holding');
    const waiter = spawnChild({ kind: 'once', name: 'waiter', key, ...LEASE });
    await until(async () => (await lockWaiters(key)) === 1, 20_000, 'the waiter to wait');
    const killedAt = Date.now();
    holder.process.kill('SIGKILL');
    const granted = await waiter.next('granted', 10_000);
    expect((granted.at as number) - killedAt).toBeLessThan(1_000);
    await waiter.next('done');
    const log = await writeLog();
    expect(log.writes.map((w) => w.proc)).toEqual(['waiter']);
  }, 60_000);

  it('SIGSTOP of the holder mid-write: another gets the lease within the bound; after SIGCONT the holder gets LeaseLostError and its fenced write is refused', async () => {
    await freshTables();
    const key = uniqueKey();
    const holder = spawnChild({ kind: 'hold', name: 'holder', key, ...LEASE });
    const holding = await holder.next('holding');
    const waiter = spawnChild({ kind: 'once', name: 'waiter', key, ...LEASE });
    await until(async () => (await lockWaiters(key)) === 1, 20_000, 'the waiter to wait');
    const stoppedAt = Date.now();
    holder.process.kill('SIGSTOP');
    try {
      const granted = await waiter.next('granted', LEASE.leaseTimeout + MARGIN + 5_000);
      // The server ends the silent session leaseTimeout after its last query.
      expect((granted.at as number) - stoppedAt).toBeLessThan(LEASE.leaseTimeout + MARGIN);
      expect(BigInt(granted.fence as string)).toBeGreaterThan(BigInt(holding.fence as string));
      await waiter.next('done');
    } finally {
      holder.process.kill('SIGCONT');
    }
    holder.send('go');
    expect(await holder.next('noticed')).toMatchObject({ noticed: true, reason: 'LeaseLostError' });
    expect(await holder.next('fenced-write')).toMatchObject({
      ok: false,
      name: 'PgFenceRefusedError',
      code: 'ERR_PG_FENCE_REFUSED',
    });
    expect(await holder.next('op')).toMatchObject({
      ok: false,
      name: 'LeaseLostError',
      indeterminate: true,
    });
    const log = await writeLog();
    expect(log.writes.map((w) => w.proc)).toEqual(['waiter']);
    expect(log.overlaps).toEqual([]);
  }, 60_000);

  it('the holder lock connection blackholed: same outcome as SIGSTOP', async () => {
    await freshTables();
    const key = uniqueKey();
    const proxy = await FaultProxy.start({ target: { port: pgConfig().port } });
    try {
      const holder = spawnChild({
        kind: 'hold',
        name: 'holder',
        key,
        lockPort: proxy.port,
        ...LEASE,
      });
      const holding = await holder.next('holding');
      const waiter = spawnChild({ kind: 'once', name: 'waiter', key, ...LEASE });
      await until(async () => (await lockWaiters(key)) === 1, 20_000, 'the waiter to wait');
      const cutAt = Date.now();
      proxy.blackhole();
      const granted = await waiter.next('granted', LEASE.leaseTimeout + MARGIN + 5_000);
      expect((granted.at as number) - cutAt).toBeLessThan(LEASE.leaseTimeout + MARGIN);
      expect(BigInt(granted.fence as string)).toBeGreaterThan(BigInt(holding.fence as string));
      await waiter.next('done');
      holder.send('go');
      expect(await holder.next('noticed')).toMatchObject({
        noticed: true,
        reason: 'LeaseLostError',
      });
      expect(await holder.next('fenced-write')).toMatchObject({
        ok: false,
        name: 'PgFenceRefusedError',
      });
      expect(await holder.next('op')).toMatchObject({ ok: false, name: 'LeaseLostError' });
      const log = await writeLog();
      expect(log.writes.map((w) => w.proc)).toEqual(['waiter']);
    } finally {
      await proxy.close();
    }
  }, 60_000);
});
