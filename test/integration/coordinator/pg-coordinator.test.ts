/**
 * pgCoordinator in one process against the test cluster: grants, fences, waits and aborts, a
 * live long write, the status, and bad options.
 */
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it, vi } from 'vitest';
import {
  PgCoordinatorError,
  PgFenceRefusedError,
  pgCheckFence,
  pgCoordinator,
  pgQuery,
} from '../../../src/adapters/pg.js';
import { SideConnection } from '../../../src/adapters/pg-side.js';
import { LeaseLostError, LockTimeoutError } from '../../../src/index.js';
import { FaultProxy } from '../../../src/testing/index.js';
import { adminQuery, clientConfig, pgConfig, terminateBackend } from '../../support/pg.js';
import {
  advisoryLocks,
  coordinatorKit,
  lockPids,
  lockWaiters,
  SCHEMA,
  uniqueKey,
  until,
} from './kit.js';

const { coordinator, proxy, closeLater, guard: guardOn } = coordinatorKit();

const alive = { isAlive: () => true };

describe('pgCoordinator', () => {
  it('grants one write lease at a time, with fences increasing in grant order', async () => {
    const key = uniqueKey();
    const a = coordinator(key);
    const b = coordinator(key);
    const first = await a.acquire('write', alive);
    let second: Awaited<ReturnType<typeof b.acquire>> | undefined;
    const waiting = b.acquire('write', alive).then((lease) => {
      second = lease;
      return lease;
    });
    await until(async () => (await lockWaiters(key)) === 1, 5_000, 'b to wait on the server');
    expect(second).toBeUndefined();
    expect(b.status().waiting).toMatchObject([{ mode: 'write' }]);
    expect(a.status()).toMatchObject({
      kind: 'pg',
      key,
      connection: 'connected',
      held: [{ mode: 'write', fence: first.fence }],
    });
    await first.release();
    const granted = await waiting;
    expect(BigInt(granted.fence)).toBeGreaterThan(BigInt(first.fence));
    await granted.release();
    expect(b.status().held).toEqual([]);
  });

  it('shares read leases across processes and keeps writes out while they are held', async () => {
    const key = uniqueKey();
    const a = coordinator(key, { coordinateReads: true });
    const b = coordinator(key, { coordinateReads: true });
    expect(a.coordinatesReads).toBe(true);
    const r1 = await a.acquire('read', alive);
    const r2 = await b.acquire('read', alive);
    let wrote = false;
    const w = a.acquire('write', alive).then((lease) => {
      wrote = true;
      return lease;
    });
    // a's own write waits for a's read locally; release it and it waits for b's on the server.
    await r1.release();
    await until(
      async () => (await lockWaiters(key)) === 1,
      5_000,
      'the write to wait on the server',
    );
    expect(wrote).toBe(false);
    await r2.release();
    await (await w).release();
  });

  it('abort of a waiting acquire rejects with the reason and leaves no waiter in pg_locks', async () => {
    const key = uniqueKey();
    const a = coordinator(key);
    const b = coordinator(key);
    const held = await a.acquire('write', alive);
    const controller = new AbortController();
    const waiting = b.acquire('write', { ...alive, signal: controller.signal });
    await until(async () => (await lockWaiters(key)) === 1, 5_000, 'b to wait on the server');
    const reason = new Error('caller gave up');
    controller.abort(reason);
    await expect(waiting).rejects.toBe(reason);
    await until(async () => (await lockWaiters(key)) === 0, 5_000, 'the server-side waiter to go');
    // b's session still serves: once a lets go, b gets the lease.
    await held.release();
    const next = await b.acquire('write', { ...alive, timeout: 5_000 });
    expect(BigInt(next.fence)).toBeGreaterThan(BigInt(held.fence));
    await next.release();
  });

  it('a cancel that lands after the server granted the wait does not leave the lock held', async () => {
    // The backend of b is stopped once the server granted it the lock, and resumed with our
    // cancel pending: its lock query then fails "canceling statement" with the session lock held.
    const key = uniqueKey();
    const a = coordinator(key);
    const b = coordinator(key);
    const held = await a.acquire('write', alive);
    const controller = new AbortController();
    const waiting = b.acquire('write', { ...alive, signal: controller.signal });
    waiting.catch(() => undefined);
    await until(async () => (await lockWaiters(key)) === 1, 5_000, 'b to wait on the server');
    const [pid] = await lockPids(key, false);
    process.kill(pid!, 'SIGSTOP');
    try {
      await held.release();
      await until(
        async () => (await lockPids(key, true)).includes(pid!),
        5_000,
        'the server to grant b while its backend is stopped',
      );
      controller.abort(new Error('caller gave up'));
      // SIGINT (bit 2) pending on the stopped backend: our pg_cancel_backend arrived.
      await until(
        () => {
          const status = readFileSync(`/proc/${pid}/status`, 'utf8');
          const pending = /ShdPnd:\s*([0-9a-f]+)/.exec(status)?.[1] ?? '0';
          return (BigInt(`0x${pending}`) & 2n) !== 0n;
        },
        5_000,
        'the cancel to reach the stopped backend',
      );
    } finally {
      process.kill(pid!, 'SIGCONT');
    }
    await expect(waiting).rejects.toThrow('caller gave up');
    const c = coordinator(key);
    const next = await c.acquire('write', { ...alive, timeout: 5_000 });
    expect(BigInt(next.fence)).toBeGreaterThan(BigInt(held.fence));
    await next.release();
  });

  it('a cancel whose delivery is unconfirmed cannot hit a later wait on the same session', async () => {
    // The side connection's pg_cancel_backend times out on our side but still runs on the
    // server, late: simulated by answering "failed" at once and sending the cancel 1 s later.
    const key = uniqueKey();
    const a = coordinator(key);
    const b = coordinator(key, { leaseTimeout: 3_000, renewInterval: 250 });
    const late: Promise<unknown>[] = [];
    const spy = vi.spyOn(SideConnection.prototype, 'query').mockImplementation(function (
      this: SideConnection,
      _signal,
      text,
      values,
    ) {
      late.push(sleep(1_000).then(() => adminQuery(text, values).catch(() => undefined)));
      return Promise.reject(new Error('side query timed out'));
    });
    try {
      const first = await a.acquire('write', alive);
      const controller = new AbortController();
      const waiting = b.acquire('write', { ...alive, signal: controller.signal });
      waiting.catch(() => undefined);
      await until(async () => (await lockWaiters(key)) === 1, 5_000, 'b to wait on the server');
      controller.abort(new Error('caller gave up'));
      await first.release();
      await expect(waiting).rejects.toThrow('caller gave up');
      // a takes the lock again, and b's next acquire waits on the server while the late cancel lands.
      const second = await a.acquire('write', { ...alive, timeout: 5_000 });
      const next = b.acquire('write', { ...alive, timeout: 10_000 });
      next.catch(() => undefined);
      await Promise.all(late);
      await sleep(200);
      await second.release();
      const lease = await next;
      await lease.release();
    } finally {
      spy.mockRestore();
    }
  });

  it('a timed-out acquire rejects with LockTimeoutError and leaves no waiter', async () => {
    const key = uniqueKey();
    const a = coordinator(key);
    const b = coordinator(key);
    const held = await a.acquire('write', alive);
    await expect(b.acquire('write', { ...alive, timeout: 300 })).rejects.toBeInstanceOf(
      LockTimeoutError,
    );
    await until(async () => (await lockWaiters(key)) === 0, 5_000, 'the server-side waiter to go');
    await held.release();
  });

  it('a lease whose op stops being alive is lost before the server bound, and the next holder gets it', async () => {
    const key = uniqueKey();
    const a = coordinator(key, { leaseTimeout: 1_500, renewInterval: 300 });
    const b = coordinator(key);
    let isAlive = true;
    const lease = await a.acquire('write', { isAlive: () => isAlive });
    const t0 = performance.now();
    isAlive = false;
    const lost = new Promise<unknown>((resolve) =>
      lease.signal.addEventListener('abort', () => resolve(lease.signal.reason), { once: true }),
    );
    const reason = await lost;
    const lostAfter = performance.now() - t0;
    expect(reason).toBeInstanceOf(LeaseLostError);
    expect(reason).toMatchObject({ mode: 'write', indeterminate: true, fence: lease.fence });
    // lossAfter = leaseTimeout - renewInterval = 1,200 ms after the last answered renewal.
    expect(lostAfter).toBeLessThan(1_500);
    const next = await b.acquire('write', { ...alive, timeout: 5_000 });
    expect(BigInt(next.fence)).toBeGreaterThan(BigInt(lease.fence));
    await next.release();
    await lease.release();
    expect(a.status().lastError?.message).toMatch(/No renewal/);
  });

  it('a live 5 s write keeps its lease: no false loss', async () => {
    const key = uniqueKey();
    const c = coordinator(key, { leaseTimeout: 1_500, renewInterval: 300 });
    const guard = guardOn(c);
    const result = await guard.write(async (pg, ctx) => {
      await pgQuery(pg, ctx, 'SELECT pg_sleep(5)');
      return { fence: ctx.fence, aborted: ctx.signal.aborted };
    });
    expect(result.aborted).toBe(false);
    expect(typeof result.fence).toBe('number');
    expect(c.status().lastError).toBeUndefined();
  }, 20_000);

  it('pgCheckFence refuses a write whose fence is older than one that wrote', async () => {
    const key = uniqueKey();
    const c = coordinator(key);
    const guard = guardOn(c);
    let stale: number | bigint | undefined;
    await guard.write(async (pg, ctx) => {
      stale = ctx.fence;
      await pgQuery(pg, ctx, 'BEGIN');
      await pgCheckFence(pg, ctx, c);
      await pgQuery(pg, ctx, 'COMMIT');
    });
    await guard.write(async (pg, ctx) => {
      await pgQuery(pg, ctx, 'BEGIN');
      await pgCheckFence(pg, ctx, c);
      await pgQuery(pg, ctx, 'COMMIT');
    });
    const error = await guard.write(async (pg, ctx) => {
      await pgQuery(pg, ctx, 'BEGIN');
      try {
        await pgCheckFence(
          pg,
          { ...ctx, fence: stale, heartbeat: ctx.heartbeat, signal: ctx.signal },
          c,
        );
        return undefined;
      } catch (e) {
        return e;
      } finally {
        await pgQuery(pg, ctx, 'ROLLBACK');
      }
    });
    expect(error).toBeInstanceOf(PgFenceRefusedError);
    expect(error).toMatchObject({ code: 'ERR_PG_FENCE_REFUSED', key, fence: stale });
    // Outside a transaction, or without a fence, it refuses to run.
    await expect(guard.write((pg, ctx) => pgCheckFence(pg, ctx, c))).rejects.toThrow(
      /inside the write transaction/,
    );
    await expect(guard.read((pg, ctx) => pgCheckFence(pg, ctx, c))).rejects.toThrow(
      /needs ctx.fence/,
    );
  });

  it('close() gives the lease back and rejects waiters', async () => {
    const key = uniqueKey();
    const a = coordinator(key);
    const b = coordinator(key);
    await a.acquire('write', alive);
    const waiting = b.acquire('write', alive).catch((error: unknown) => error);
    await until(async () => (await lockWaiters(key)) === 1, 5_000, 'b to wait');
    await b.close();
    expect(await waiting).toMatchObject({ name: 'PgCoordinatorError', reason: 'closed' });
    expect(await lockWaiters(key)).toBe(0);
    expect(await advisoryLocks(key, true)).toBe(1);
    await a.close();
    expect(a.status().connection).toBe('closed');
    expect(await advisoryLocks(key, true)).toBe(0);
    await expect(a.acquire('write', alive)).rejects.toMatchObject({ reason: 'closed' });
  });

  it('a lock session that ends (backend terminated) loses the lease at once; the next acquire reconnects', async () => {
    const key = uniqueKey();
    const c = coordinator(key);
    const lease = await c.acquire('write', alive);
    // Only this key's holder: other test files run coordinators at the same time.
    const pids = await lockPids(key, true);
    expect(pids).toHaveLength(1);
    const lost = new Promise<unknown>((resolve) =>
      lease.signal.addEventListener('abort', () => resolve(lease.signal.reason), { once: true }),
    );
    for (const pid of pids) await terminateBackend(pid);
    expect(await lost).toMatchObject({ name: 'LeaseLostError', fence: lease.fence });
    expect(c.status()).toMatchObject({ connection: 'down', held: [] });
    await lease.release();
    await lease.release();
    const next = await c.acquire('write', { ...alive, timeout: 5_000 });
    expect(BigInt(next.fence)).toBeGreaterThan(BigInt(lease.fence));
    expect(c.status().connection).toBe('connected');
    await next.release();
  });

  it('an idle lock session that stops answering is dropped: a waiting acquire rejects instead of hanging', async () => {
    const link = await proxy();
    const c = coordinator(
      uniqueKey(),
      { leaseTimeout: 1_000, renewInterval: 250, connectTimeout: 1_000 },
      clientConfig({ port: link.port }),
    );
    await (await c.acquire('write', alive)).release();
    expect(c.status().connection).toBe('connected');
    // A partition: the renewal in flight is never answered, and the server's close is held.
    link.blackhole();
    await sleep(400);
    const outcome = await Promise.race([
      c.acquire('write', alive).then(
        async (lease) => {
          await lease.release();
          return 'granted';
        },
        (error: unknown) => error,
      ),
      sleep(6_000).then(() => 'still waiting'),
    ]);
    expect(outcome).toMatchObject({ name: 'PgCoordinatorError', reason: 'session' });
    expect(c.status().connection).not.toBe('connected');
  });

  it('a grant whose fence answer comes back after the holder deadline is not handed out', async () => {
    // T = 3 s, R = 1 s: the holder's deadline is 2 s after the fence query's send. A one-way
    // delay of 1.25 s makes that answer arrive 2.5 s after the send, while the server (idle
    // between grant and fence query for 2.5 s < T) still keeps the session.
    const key = uniqueKey();
    const link = await proxy();
    const a = coordinator(key);
    const b = coordinator(
      key,
      { leaseTimeout: 3_000, renewInterval: 1_000 },
      clientConfig({ port: link.port }),
    );
    const first = await a.acquire('write', alive);
    const waiting = b.acquire('write', { ...alive, timeout: 20_000 }).then(
      (lease) => ({ signalAbortedAtGrant: lease.signal.aborted, lease }),
      (error: unknown) => error,
    );
    await until(async () => (await lockWaiters(key)) === 1, 5_000, 'b to wait on the server');
    link.latency(1_250);
    await first.release();
    const outcome = await waiting;
    if ('lease' in (outcome as object))
      await (outcome as { lease: { release(): Promise<void> } }).lease.release();
    expect(outcome).toMatchObject({ name: 'PgCoordinatorError', reason: 'session' });
  });

  it('close() while the lock session is being opened rejects the acquire and leaves nothing held', async () => {
    const key = uniqueKey();
    // A slow route, so that the connect is still going on when close() comes.
    const link = await proxy();
    link.latency(300);
    const c = coordinator(key, {}, clientConfig({ port: link.port }));
    const acquiring = c.acquire('write', alive).catch((error: unknown) => error);
    await until(() => c.status().connection === 'connecting', 2_000, 'the connect to start');
    await c.close();
    expect(await acquiring).toMatchObject({ name: 'PgCoordinatorError', reason: 'closed' });
    expect(c.status()).toMatchObject({ connection: 'closed', waiting: [] });
    await sleep(1_000);
    expect(await advisoryLocks(key, true)).toBe(0);
    expect(await advisoryLocks(key, false)).toBe(0);
  });

  it('an acquire whose lock session cannot be opened rejects with a session error naming the cause', async () => {
    const proxy = await FaultProxy.start({ target: { port: pgConfig().port } });
    const port = proxy.port;
    await proxy.close();
    const c = pgCoordinator(clientConfig({ port }), { key: uniqueKey(), schema: SCHEMA });
    closeLater(c);
    const error = await c.acquire('write', alive).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PgCoordinatorError);
    expect(error).toMatchObject({ code: 'ERR_PG_COORDINATOR', reason: 'session' });
    expect((error as Error).cause).toMatchObject({ code: 'ECONNREFUSED' });
    expect(c.status()).toMatchObject({ connection: 'down', held: [] });
  });

  it('close() in the same turn as acquire() rejects it', async () => {
    const c = coordinator(uniqueKey());
    const acquiring = c.acquire('write', alive).catch((error: unknown) => error);
    await c.close();
    expect(await acquiring).toMatchObject({ reason: 'closed' });
  });

  it('refuses bad options at the call, naming them', () => {
    expect(() => pgCoordinator(clientConfig(), { key: '' })).toThrow(/"key"/);
    expect(() => pgCoordinator(clientConfig(), { key: 'k', schema: 'Bad-Name' })).toThrow(
      /"schema"/,
    );
    expect(() => pgCoordinator(clientConfig(), { key: 'k', leaseTimeout: 500 })).toThrow(
      /"leaseTimeout"/,
    );
    expect(() => pgCoordinator(clientConfig(), { key: 'k', renewInterval: 4_000 })).toThrow(
      /"renewInterval"/,
    );
    expect(() => pgCoordinator(clientConfig(), { key: 'k', lease: 1 } as never)).toThrow(/"lease"/);
  });
});
