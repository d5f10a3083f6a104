/**
 * pgCoordinator when the lock session fails between the grant of the advisory lock and the
 * answer of the fence query (issue 16, item 1), or during the lock wait: the acquire rejects,
 * and the process can write again (its local lock is given back, the lock session is opened
 * anew).
 *
 * The moment is held open deterministically: another connection runs `ALTER SEQUENCE` on the
 * fence sequence in an open transaction, so the grant's `nextval` waits for it. A schema of this
 * file's own keeps that from holding back the other coordinator tests.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { pgQuery } from '../../../src/adapters/pg.js';
import { terminateBackend } from '../../support/pg.js';
import {
  advisoryLocks,
  coordinatorKit,
  fenceWaiters,
  holdFenceSequence,
  lockPids,
  lockWaiters,
  uniqueKey,
  until,
} from './kit.js';

const SCHEMA = 'engine_guard_grant_test';
const { coordinator, guard: guardOn } = coordinatorKit(SCHEMA);
const alive = { isAlive: () => true };

describe('pgCoordinator: the lock session fails between grant and fence answer', () => {
  it('lock session terminated while the fence query waits: the acquire rejects, the next one reconnects and is granted', async () => {
    const key = uniqueKey();
    const c = coordinator(key);
    // Creates the fence objects and opens the lock session.
    await (await c.acquire('write', alive)).release();
    const hold = await holdFenceSequence(SCHEMA);
    let failed: unknown;
    // The next acquire starts in the turn the first one fails: before the client has seen its
    // connection end, so it is handed the dying session, and must not fail with it.
    const next = c.acquire('write', alive).catch((error: unknown) => {
      failed = error;
      return c.acquire('write', { ...alive, timeout: 10_000 });
    });
    await until(
      async () => (await fenceWaiters(SCHEMA)).length === 1,
      5_000,
      'the fence query to wait',
    );
    const [pid] = await lockPids(key, true);
    expect(await fenceWaiters(SCHEMA)).toEqual([pid]);
    await terminateBackend(pid!);
    await until(() => failed !== undefined, 5_000, 'the first acquire to fail');
    expect(failed).toMatchObject({ name: 'PgCoordinatorError', reason: 'session' });
    await hold.release();
    // Was: LockTimeoutError, for ever (the local write lock of the failed grant was never given back).
    const lease = await next;
    expect(c.status().connection).toBe('connected');
    expect(BigInt(lease.fence)).toBeGreaterThan(0n);
    await lease.release();
  });

  it('fence answer after the holder deadline: that write rejects, later writes of the guard run', async () => {
    const key = uniqueKey();
    // L = leaseTimeout - renewInterval = 1,200 ms.
    const c = coordinator(key, { leaseTimeout: 1_500, renewInterval: 300 });
    const guard = guardOn(c);
    await guard.write((pg, ctx) => pgQuery(pg, ctx, 'SELECT 1'));
    const hold = await holdFenceSequence(SCHEMA);
    let ran = false;
    const first = guard
      .write(async () => {
        ran = true;
      })
      .catch((error: unknown) => error);
    await until(
      async () => (await fenceWaiters(SCHEMA)).length === 1,
      5_000,
      'the fence query to wait',
    );
    await sleep(c.bounds.lossAfter + 500);
    await hold.release();
    expect(await first).toMatchObject({ name: 'PgCoordinatorError', reason: 'session' });
    expect(ran).toBe(false);
    // Was: LockTimeoutError "cluster:<key>" for every later write (coordinator down, no reconnect).
    const fence = await guard.write((_pg, ctx) => ctx.fence, { timeout: 5_000 });
    expect(typeof fence).toBe('number');
    expect(c.status().connection).toBe('connected');
    // Nothing is left held: not the late grant's lock (its session was discarded), not this one.
    await until(async () => (await advisoryLocks(key, true)) === 0, 5_000, 'no lock held');
  });

  it('lock session terminated during the lock wait itself: the acquire rejects, the next one reconnects and is granted', async () => {
    const key = uniqueKey();
    const a = coordinator(key);
    const b = coordinator(key);
    const held = await a.acquire('write', alive);
    let failed: unknown;
    // As above: the next acquire is handed the dying session.
    const next = b.acquire('write', alive).catch((error: unknown) => {
      failed = error;
      return b.acquire('write', { ...alive, timeout: 10_000 });
    });
    await until(async () => (await lockWaiters(key)) === 1, 5_000, 'b to wait on the server');
    const [pid] = await lockPids(key, false);
    await terminateBackend(pid!);
    await until(() => failed !== undefined, 5_000, 'the first acquire to fail');
    expect(failed).toMatchObject({ name: 'PgCoordinatorError', reason: 'session' });
    await held.release();
    const lease = await next;
    expect(BigInt(lease.fence)).toBeGreaterThan(BigInt(held.fence));
    await lease.release();
  });
});
