/**
 * pgCoordinator when its lock connection goes half-open (FaultProxy.blackhole) at an exact
 * moment: while a release's unlock, a grant's fence query or a lock wait is in flight, or while
 * close() runs. Silence on the lock session is detected within the documented bound whatever is
 * in flight, the acquires behind it reject instead of hanging, and later ones reconnect.
 *
 * The moment is hit deterministically: the link is blackholed from inside `pg.Client#query`,
 * just before the query of interest is written to the socket.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { pgQuery } from '../../../src/adapters/pg.js';
import { SideConnection } from '../../../src/adapters/pg-side.js';
import type { FaultProxy } from '../../../src/testing/index.js';
import { adminQuery, clientConfig } from '../../support/pg.js';
import { coordinatorKit, lockWaiters, onNextQuery, uniqueKey, until } from './kit.js';

const { coordinator, proxy, guard: guardOn } = coordinatorKit();
/** leaseTimeout 1,500 ms, renewInterval 300 ms: the holder's deadline L is 1,200 ms. */
const BOUNDS = { leaseTimeout: 1_500, renewInterval: 300 } as const;
const L = BOUNDS.leaseTimeout - BOUNDS.renewInterval;
/** Scheduling noise allowed on top of a bound (a shared machine). */
const MARGIN = 3_000;

afterEach(() => {
  vi.restoreAllMocks();
});

/** Blackholes `link` just before the next query starting with `prefix` is sent; resolves then. */
function blackholeOnSend(link: FaultProxy, prefix: string): Promise<number> {
  return new Promise((resolve) => {
    onNextQuery(prefix, () => {
      link.blackhole();
      resolve(performance.now());
    });
  });
}

const alive = { isAlive: () => true };

/**
 * The coordinators' side queries (a lock wait's check, a cancel) go straight to the server, not
 * through the proxy: a lock connection that is silent on its own, the server still reachable.
 */
function directSideQueries(): void {
  vi.spyOn(SideConnection.prototype, 'query').mockImplementation(
    async (_signal, text, values) => (await adminQuery(text, values)).rows as never,
  );
}

/** `promise`, and whether it has settled yet. */
function settle<T>(promise: Promise<T>): { promise: Promise<T | unknown>; settled: boolean } {
  const watched = {
    settled: false,
    promise: promise.then(
      (value) => {
        watched.settled = true;
        return value;
      },
      (error: unknown) => {
        watched.settled = true;
        return error;
      },
    ),
  };
  return watched;
}

/** What `promise` settled with, or `'still waiting'` after `ms`. */
function within<T>(promise: Promise<T>, ms: number): Promise<T | unknown> {
  return Promise.race([
    promise.then(
      (value) => value,
      (error: unknown) => error,
    ),
    new Promise((resolve) => setTimeout(() => resolve('still waiting'), ms).unref()),
  ]);
}

describe('pgCoordinator: a lock connection that goes silent', () => {
  it('while a release unlock is in flight: the next write rejects within the bound, and once the link is back a write reconnects', async () => {
    const key = uniqueKey();
    const link = await proxy();
    const c = coordinator(key, BOUNDS, clientConfig({ port: link.port }));
    const guard = guardOn(c);
    let cut: Promise<number> | undefined;
    await guard.write(async (handle, ctx) => {
      await pgQuery(handle, ctx, 'SELECT 1');
      cut = blackholeOnSend(link, 'SELECT pg_advisory_unlock(');
    });
    const cutAt = await cut!;
    const next = guard.write(() => 'ran');
    const outcome = await within(next, L + BOUNDS.renewInterval + MARGIN);
    // Was: still waiting (12 s and more in the issue; for ever here).
    expect(outcome).toMatchObject({ name: 'PgCoordinatorError', reason: 'session' });
    expect(performance.now() - cutAt).toBeLessThan(L + BOUNDS.renewInterval + MARGIN);
    expect(c.status().connection).not.toBe('connected');
    link.heal();
    expect(await guard.write((_h, ctx) => typeof ctx.fence, { timeout: 5_000 })).toBe('number');
    expect(c.status().connection).toBe('connected');
  });

  it('while a grant fence query is in flight: the acquire rejects within the bound and gives its local lock back', async () => {
    const link = await proxy();
    const c = coordinator(uniqueKey(), BOUNDS, clientConfig({ port: link.port }));
    await (await c.acquire('write', alive)).release();
    const cut = blackholeOnSend(link, 'SELECT nextval(');
    const acquiring = c.acquire('write', alive);
    const cutAt = await cut;
    const outcome = await within(acquiring, L + BOUNDS.renewInterval + MARGIN);
    expect(outcome).toMatchObject({ name: 'PgCoordinatorError', reason: 'session' });
    expect(performance.now() - cutAt).toBeLessThan(L + BOUNDS.renewInterval + MARGIN);
    link.heal();
    await (await c.acquire('write', { ...alive, timeout: 5_000 })).release();
  });

  it('while a renewal of a held lease is in flight: the lease is lost before the deadline runs out, and the next acquire reconnects', async () => {
    const link = await proxy();
    const c = coordinator(uniqueKey(), BOUNDS, clientConfig({ port: link.port }));
    const lease = await c.acquire('write', alive);
    const lost = new Promise<unknown>((resolve) =>
      lease.signal.addEventListener('abort', () => resolve(lease.signal.reason), { once: true }),
    );
    const cutAt = await blackholeOnSend(link, 'SELECT pg_backend_pid() AS pid');
    expect(await within(lost, L + MARGIN)).toMatchObject({ name: 'LeaseLostError' });
    expect(performance.now() - cutAt).toBeLessThan(L + MARGIN);
    await lease.release();
    link.heal();
    await (await c.acquire('write', { ...alive, timeout: 5_000 })).release();
  });

  it('while a lock wait is in flight and the whole route goes silent: the wait rejects within the bound', async () => {
    const key = uniqueKey();
    const link = await proxy();
    const a = coordinator(key);
    const b = coordinator(key, BOUNDS, clientConfig({ port: link.port }));
    const held = await a.acquire('write', alive);
    const waiting = b.acquire('write', alive);
    await until(async () => (await lockWaiters(key)) === 1, 5_000, 'b to wait on the server');
    const cutAt = performance.now();
    link.blackhole();
    // Was: still waiting (only TCP keepalives could end it; the proxy answers those).
    const outcome = await within(waiting, L + 2 * BOUNDS.renewInterval + MARGIN);
    expect(outcome).toMatchObject({ name: 'PgCoordinatorError', reason: 'session' });
    expect(performance.now() - cutAt).toBeLessThan(L + 2 * BOUNDS.renewInterval + MARGIN);
    // The close reaches the server: its backend stops waiting and nothing of b is left there.
    link.heal();
    await until(async () => (await lockWaiters(key)) === 0, 5_000, 'b to stop waiting');
    await held.release();
    await (await b.acquire('write', { ...alive, timeout: 5_000 })).release();
  });

  it('a lock wait on a silent lock connection that the server shows waiting goes on, and is dropped once the server shows it granted but the answer is lost', async () => {
    const key = uniqueKey();
    const link = await proxy();
    const a = coordinator(key);
    const b = coordinator(key, BOUNDS, clientConfig({ port: link.port }));
    directSideQueries();
    const held = await a.acquire('write', alive);
    const waiting = settle(b.acquire('write', alive));
    await until(async () => (await lockWaiters(key)) === 1, 5_000, 'b to wait on the server');
    link.blackhole();
    // Well past the deadline, the server still shows the wait: no false loss.
    await sleep(2 * L + BOUNDS.renewInterval);
    expect(waiting.settled).toBe(false);
    expect(b.status().lastError).toBeUndefined();
    // The grant's answer is lost in the blackhole: the server shows the backend idle.
    const releasedAt = performance.now();
    await held.release();
    const outcome = await within(waiting.promise, L + 2 * BOUNDS.renewInterval + MARGIN);
    expect(outcome).toMatchObject({ name: 'PgCoordinatorError', reason: 'session' });
    expect(performance.now() - releasedAt).toBeLessThan(L + 2 * BOUNDS.renewInterval + MARGIN);
    link.heal();
    await (await b.acquire('write', { ...alive, timeout: 5_000 })).release();
  });

  it('a lock wait on a silent lock connection that the server shows waiting is granted once the link is back', async () => {
    const key = uniqueKey();
    const link = await proxy();
    const a = coordinator(key);
    const b = coordinator(key, BOUNDS, clientConfig({ port: link.port }));
    directSideQueries();
    const held = await a.acquire('write', alive);
    const waiting = settle(b.acquire('write', alive));
    await until(async () => (await lockWaiters(key)) === 1, 5_000, 'b to wait on the server');
    link.blackhole();
    await sleep(2 * L + BOUNDS.renewInterval);
    link.heal();
    await held.release();
    const granted = await waiting.promise;
    expect(BigInt((granted as { fence: number }).fence)).toBeGreaterThan(BigInt(held.fence));
    await (granted as { release(): Promise<void> }).release();
    expect(b.status().lastError).toBeUndefined();
  });

  it.each([
    ['a release unlock', 'SELECT pg_advisory_unlock('],
    ['a fence query', 'SELECT nextval('],
    ['a renewal', 'SELECT pg_backend_pid() AS pid'],
    ['a lock wait', 'SELECT pg_advisory_lock('],
  ])(
    'close() while %s is in flight on a silent link returns within the bound',
    async (_moment, prefix) => {
      const key = uniqueKey();
      const link = await proxy();
      const c = coordinator(key, BOUNDS, clientConfig({ port: link.port }));
      await (await c.acquire('write', alive)).release();
      const cut = blackholeOnSend(link, prefix);
      const acquiring = settle(c.acquire('write', alive).then((lease) => lease.release()));
      await cut;
      const started = performance.now();
      await c.close();
      expect(performance.now() - started).toBeLessThan(L + MARGIN);
      // Whatever the moment did to it (granted and given back, or refused), it has settled.
      expect(await within(acquiring.promise, 1_000)).not.toBe('still waiting');
      expect(c.status()).toMatchObject({ connection: 'closed', held: [], waiting: [] });
    },
  );
});
