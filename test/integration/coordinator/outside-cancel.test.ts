/**
 * pgCoordinator and outside cancels (`pg_cancel_backend` from elsewhere, as a DBA's tool sends
 * to long queries) at exact moments. With `coordinateReads` one lock session holds the shared
 * lock once per read lease of the process: `status().held` lists every one, and a read whose
 * lock query fails never drops another read's shared lock. An unlock that fails never leaves the
 * lock held.
 *
 * The cancel's exact moment is made deterministic by rewriting that one lock query so that it
 * sleeps before (or after) it takes the lock: the outside cancel then lands while the lock is
 * not (or already) taken, as it can at the real query's start (or end).
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { PgCoordinator } from '../../../src/adapters/pg.js';
import type { ClusterLease } from '../../../src/coordination/coordinator.js';
import { LockTimeoutError } from '../../../src/index.js';
import { adminQuery } from '../../support/pg.js';
import { coordinatorKit, lockPids, onNextQuery, uniqueKey, until } from './kit.js';

const { coordinator } = coordinatorKit();
const alive = { isAlive: () => true };
const READS = { coordinateReads: true };

afterEach(() => {
  vi.restoreAllMocks();
});

/** Rewrites the next shared-lock query to `rewritten` (same parameter). */
function rewriteNextSharedLock(rewritten: string): void {
  onNextQuery('SELECT pg_advisory_lock_shared(', (args) => {
    args[0] = rewritten;
  });
}

/** Cancels, from outside, the query `pid` runs once it sleeps in pg_sleep. */
async function cancelWhenSleeping(pid: number): Promise<void> {
  await until(
    async () =>
      (
        await adminQuery(
          "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'PgSleep'",
          [pid],
        )
      ).rows.length === 1,
    5_000,
    'the lock query to sleep',
  );
  await adminQuery('SELECT pg_cancel_backend($1)', [pid]);
}

/**
 * Holds a read lease `r1` on `a`, then fails a second read's lock query (rewritten to
 * `rewritten`) with an outside cancel; that acquire rejects with a session error.
 */
async function secondReadCancelled(
  a: PgCoordinator,
  key: string,
  rewritten: string,
): Promise<{ r1: ClusterLease; pid: number }> {
  const r1 = await a.acquire('read', alive);
  const [pid] = await lockPids(key, true);
  rewriteNextSharedLock(rewritten);
  const r2 = a.acquire('read', alive).catch((error: unknown) => error);
  await cancelWhenSleeping(pid!);
  expect(await r2).toMatchObject({ name: 'PgCoordinatorError', reason: 'session' });
  return { r1, pid: pid! };
}

describe('pgCoordinator: outside cancels, and reads sharing one lock session', () => {
  it('status().held lists every read lease of the process', async () => {
    const c = coordinator(uniqueKey(), READS);
    const r1 = await c.acquire('read', { ...alive, label: 'one' });
    const r2 = await c.acquire('read', { ...alive, label: 'two' });
    expect(c.status().held).toMatchObject([
      { mode: 'read', fence: r1.fence, label: 'one' },
      { mode: 'read', fence: r2.fence, label: 'two' },
    ]);
    await r1.release();
    expect(c.status().held).toMatchObject([{ mode: 'read', fence: r2.fence, label: 'two' }]);
    await r2.release();
    expect(c.status().held).toEqual([]);
  });

  it('an outside cancel that fails a read lock query before it took the lock keeps the other reads lock', async () => {
    const key = uniqueKey();
    const a = coordinator(key, READS);
    const b = coordinator(key, READS);
    const { r1, pid } = await secondReadCancelled(
      a,
      key,
      'SELECT pg_sleep(30), pg_advisory_lock_shared($1::bigint)',
    );
    // r1 still holds the shared lock: a write elsewhere waits (was: granted at once, beside r1).
    await expect(b.acquire('write', { ...alive, timeout: 1_000 })).rejects.toBeInstanceOf(
      LockTimeoutError,
    );
    expect(await lockPids(key, true)).toEqual([pid]);
    await r1.release();
    const w = await b.acquire('write', { ...alive, timeout: 5_000 });
    await w.release();
  });

  it('an outside cancel that fails a read lock query after it took the lock leaves nothing held once the reads end', async () => {
    const key = uniqueKey();
    const a = coordinator(key, READS);
    const b = coordinator(key, READS);
    const { r1 } = await secondReadCancelled(
      a,
      key,
      'SELECT pg_advisory_lock_shared($1::bigint), pg_sleep(30)',
    );
    await r1.release();
    // The hold the failed query took is gone with the last read: a write elsewhere gets in.
    const w = await b.acquire('write', { ...alive, timeout: 5_000 });
    await w.release();
    // The session is still trusted and serves the next read.
    const r3 = await a.acquire('read', { ...alive, timeout: 5_000 });
    expect(a.status().held).toHaveLength(1);
    await r3.release();
  });

  it('a lone read whose lock query failed after it took the lock leaves nothing held', async () => {
    const key = uniqueKey();
    const a = coordinator(key, READS);
    const b = coordinator(key, READS);
    await (await a.acquire('read', alive)).release();
    rewriteNextSharedLock('SELECT pg_advisory_lock_shared($1::bigint), pg_sleep(30)');
    const r = a.acquire('read', alive).catch((error: unknown) => error);
    await until(
      async () => (await lockPids(key, true)).length === 1,
      5_000,
      'the lock to be taken',
    );
    const [holder] = await lockPids(key, true);
    await cancelWhenSleeping(holder!);
    expect(await r).toMatchObject({ name: 'PgCoordinatorError', reason: 'session' });
    const w = await b.acquire('write', { ...alive, timeout: 5_000 });
    await w.release();
  });

  it('an outside cancel that fails a release unlock discards the lock session instead of keeping the lock', async () => {
    const key = uniqueKey();
    const a = coordinator(key);
    const b = coordinator(key);
    const lease = await a.acquire('write', alive);
    const [pid] = await lockPids(key, true);
    onNextQuery('SELECT pg_advisory_unlock(', (args) => {
      args[0] = 'SELECT pg_sleep(30), pg_advisory_unlock($1::bigint)';
    });
    const released = lease.release();
    await cancelWhenSleeping(pid!);
    await released;
    // Was: the session kept the lock while it renewed, and b waited for ever.
    await (await b.acquire('write', { ...alive, timeout: 5_000 })).release();
    expect(a.status().lastError?.message).toMatch(/Giving back a lock failed/);
    await (await a.acquire('write', { ...alive, timeout: 5_000 })).release();
  });
});
