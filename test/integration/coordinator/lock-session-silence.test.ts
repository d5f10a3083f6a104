/**
 * pgCoordinator when its lock connection goes half-open (FaultProxy.blackhole) at an exact
 * moment: while a release's unlock, a grant's fence query or a lock wait is in flight, or while
 * close() runs. Silence on the lock session is detected within the documented bound whatever is
 * in flight, the acquires behind it reject instead of hanging, and later ones reconnect.
 *
 * The moment is hit deterministically: the link is blackholed from inside `pg.Client#query`,
 * just before the query of interest is written to the socket.
 */
import pg from 'pg';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { pgQuery } from '../../../src/adapters/pg.js';
import type { FaultProxy } from '../../../src/testing/index.js';
import { clientConfig } from '../../support/pg.js';
import { coordinatorKit, uniqueKey } from './kit.js';

const { coordinator, proxy, guard: guardOn } = coordinatorKit();
/** leaseTimeout 1,500 ms, renewInterval 300 ms: the holder's deadline L is 1,200 ms. */
const BOUNDS = { leaseTimeout: 1_500, renewInterval: 300 } as const;
const L = BOUNDS.leaseTimeout - BOUNDS.renewInterval;
/** Scheduling noise allowed on top of a bound (a shared machine). */
const MARGIN = 3_000;

afterEach(() => {
  vi.restoreAllMocks();
});

/**
 * Blackholes `link` just before the next query whose text starts with `prefix` is sent on any
 * `pg` client; resolves with `performance.now()` at that moment.
 */
function blackholeOnSend(link: FaultProxy, prefix: string): Promise<number> {
  const query = pg.Client.prototype.query;
  return new Promise((resolve) => {
    let armed = true;
    vi.spyOn(pg.Client.prototype, 'query').mockImplementation(function (
      this: pg.Client,
      ...args: unknown[]
    ) {
      if (armed && typeof args[0] === 'string' && args[0].startsWith(prefix)) {
        armed = false;
        link.blackhole();
        resolve(performance.now());
      }
      return (query as (...a: unknown[]) => unknown).apply(this, args);
    } as typeof query);
  });
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
});
