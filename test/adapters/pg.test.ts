/**
 * Unit-level tests of the PostgreSQL recipe (examples/recipes/postgres.ts) against the shared
 * real PostgreSQL cluster, with a FaultProxy where a broken link is needed.
 */
import { getEventListeners } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import type pg from 'pg';
import { describe, expect, it, onTestFinished } from 'vitest';
import {
  isFatalPgError,
  PG_LIVENESS,
  type PgHandle,
  pgGuardOptions,
  pgQuery,
} from '../../src/adapters/pg.js';
import { EngineGuard, EngineStalledError, type OpInfo } from '../../src/index.js';
import { ABORT_WATCH, type MaybeWatched } from '../../src/internal/abort-watch.js';
import { FaultProxy } from '../../src/testing/index.js';
import { adminQuery, clientConfig, pgConfig, terminateBackend } from '../support/pg.js';
import { activity, type PgOptions, settle, viaProxy, waitFor } from '../support/pg-faults-kit.js';

type Ctx = { signal: AbortSignal; heartbeat(): void };

const withCode = (code: string, message = `error ${code}`): Error =>
  Object.assign(new Error(message), { code });

/** The `pg.Client` behind a handle, for its internals (the adapter types it structurally). */
const raw = (handle: PgHandle): pg.Client => handle.client as unknown as pg.Client;

function opInfo(id = 1): OpInfo {
  return { id, kind: 'read', label: undefined, generation: 1, startedAt: performance.now() };
}

function ctxOf(signal: AbortSignal = new AbortController().signal): Ctx & { beats: number } {
  const ctx = {
    signal,
    beats: 0,
    heartbeat() {
      ctx.beats++;
    },
  };
  return ctx;
}

async function startProxy(): Promise<FaultProxy> {
  const { host, port } = pgConfig();
  const proxy = await FaultProxy.start({ target: { host, port } });
  onTestFinished(() => proxy.close());
  return proxy;
}

/** Recipe hooks (the non-null ones) for `config`. */
function recipe(config: pg.ClientConfig, overrides: Partial<PgOptions> = {}) {
  const options = pgGuardOptions({ config }, overrides);
  return {
    options,
    create: (signal: AbortSignal = new AbortController().signal) =>
      Promise.resolve(options.create({ signal, generation: 1 })),
    destroy: (handle: PgHandle) => Promise.resolve(options.destroy?.(handle, { reason: 'test' })),
    probe: (handle: PgHandle, op: OpInfo | undefined, signal?: AbortSignal) =>
      Promise.resolve(
        options.probe?.(handle, { signal: signal ?? AbortSignal.timeout(5_000), op }),
      ),
    cancel: (handle: PgHandle) =>
      Promise.resolve(options.cancel?.(handle, { op: opInfo(), reason: 'test' })),
  };
}

/** A handle that is destroyed when the test finishes. */
async function openHandle(r: ReturnType<typeof recipe>): Promise<PgHandle> {
  const handle = await r.create();
  onTestFinished(() => r.destroy(handle));
  return handle;
}

describe('isFatalPgError', () => {
  it.each([
    'ECONNRESET',
    'EPIPE',
    'ETIMEDOUT',
    'ECONNREFUSED',
    'ECONNABORTED',
    'EHOSTUNREACH',
    'ENETUNREACH',
  ])('socket error %s is fatal', (code) => {
    expect(isFatalPgError(withCode(code))).toBe(true);
  });

  it.each([
    '08000',
    '08003',
    '08006',
    '08001',
    '08004',
    '08007',
    '08P01',
    '57P01',
    '57P02',
    '57P03',
  ])('SQLSTATE %s is fatal', (code) => {
    expect(isFatalPgError(withCode(code))).toBe(true);
  });

  it.each([
    'Connection terminated',
    'Connection terminated unexpectedly',
    'Connection terminated due to connection timeout',
    'Client has encountered a connection error and is not queryable',
    'Client was closed and is not queryable',
  ])('pg error "%s" is fatal', (message) => {
    expect(isFatalPgError(new Error(message))).toBe(true);
  });

  it.each([
    ['query_canceled 57014', withCode('57014', 'canceling statement due to user request')],
    ['unique_violation 23505', withCode('23505')],
    ['syntax_error 42601', withCode('42601')],
    ['serialization_failure 40001', withCode('40001')],
    ['lock_not_available 55P03', withCode('55P03')],
    ['a plain error', new Error('boom')],
    ['an AbortError', new DOMException('This operation was aborted', 'AbortError')],
    ['a query read timeout', new Error('Query read timeout')],
    [
      'an engine stall',
      new EngineStalledError({ kind: 'read', opId: 1, generation: 1, probeFailures: 2 }),
    ],
    ['a string', 'ECONNRESET'],
    ['a number', 57],
    ['null', null],
    ['undefined', undefined],
    ['a code that only starts like class 08', withCode('080')],
  ])('%s is not fatal', (_name, error) => {
    expect(isFatalPgError(error)).toBe(false);
  });

  it('looks through cause chains and AggregateErrors', () => {
    expect(isFatalPgError(new Error('wrapped', { cause: withCode('ECONNRESET') }))).toBe(true);
    expect(
      isFatalPgError(new Error('a', { cause: new Error('b', { cause: withCode('57P01') }) })),
    ).toBe(true);
    expect(isFatalPgError(new AggregateError([new Error('x'), withCode('ECONNREFUSED')]))).toBe(
      true,
    );
    expect(isFatalPgError(new Error('wrapped', { cause: withCode('57014') }))).toBe(false);
    const cyclic: Error & { cause?: unknown } = new Error('cyclic');
    cyclic.cause = cyclic;
    expect(isFatalPgError(cyclic)).toBe(false);
  });

  it('classifies real server and socket errors', async () => {
    const r = recipe(clientConfig());
    const handle = await openHandle(r);
    const syntax = await handle.client.query('SELEC 1').catch((e: unknown) => e);
    expect((syntax as { code?: string }).code).toBe('42601');
    expect(isFatalPgError(syntax)).toBe(false);

    const sleeping = handle.client.query('SELECT pg_sleep(10)').catch((e: unknown) => e);
    await waitFor(async () => (await activity(handle.pid))?.state === 'active', 5_000, 'active');
    await adminQuery('SELECT pg_cancel_backend($1)', [handle.pid]);
    const cancelled = await sleeping;
    expect((cancelled as { code?: string }).code).toBe('57014');
    expect(isFatalPgError(cancelled)).toBe(false);
    // The connection survived the cancel.
    expect((await handle.client.query('SELECT 1 AS one')).rows[0]?.one).toBe(1);

    const terminated = await handle.client
      .query('SELECT pg_terminate_backend(pg_backend_pid())')
      .catch((e: unknown) => e);
    expect(isFatalPgError(terminated)).toBe(true);
    const after = await handle.client.query('SELECT 1').catch((e: unknown) => e);
    expect(isFatalPgError(after)).toBe(true);
  });

  it('classifies a reset connection as fatal', async () => {
    const proxy = await startProxy();
    const r = recipe(viaProxy(proxy));
    const handle = await openHandle(r);
    const pending = handle.client.query('SELECT pg_sleep(5)').catch((e: unknown) => e);
    await sleep(100);
    proxy.reset();
    const error = await pending;
    expect(error).toBeInstanceOf(Error);
    expect(isFatalPgError(error)).toBe(true);
  });
});

describe('pgGuardOptions', () => {
  it('returns every hook, with overrides on top and undefined overrides ignored', () => {
    const options = pgGuardOptions({ config: clientConfig() });
    for (const hook of ['create', 'destroy', 'probe', 'cancel', 'isFatal'] as const) {
      expect(typeof options[hook]).toBe('function');
    }
    expect(options.isFatal).toBe(isFatalPgError);
    expect(options.liveness).toEqual(PG_LIVENESS);

    const isFatal = () => false;
    const overridden = pgGuardOptions(
      { config: clientConfig() },
      {
        pool: 3,
        isFatal,
        liveness: { interval: 100, timeout: undefined },
        create: undefined,
        probe: undefined,
      },
    );
    expect(overridden.pool).toBe(3);
    expect(overridden.isFatal).toBe(isFatal);
    // Merged over the adapter's defaults, field by field; undefined fields keep the default.
    expect(overridden.liveness).toEqual({ ...PG_LIVENESS, interval: 100 });
    expect(typeof overridden.probe).toBe('function');
    expect(pgGuardOptions({ config: clientConfig() }, { liveness: false }).liveness).toBe(false);
    expect(typeof overridden.create).toBe('function');
    // The guard accepts them as they are.
    const guard = new EngineGuard(overridden);
    onTestFinished(() => guard.close());
  });

  it('rejects bad input with a TypeError', () => {
    expect(() => pgGuardOptions(null as never)).toThrow(TypeError);
    expect(() => pgGuardOptions({} as never)).toThrow(/config/);
  });

  it('create connects, reads the backend pid and turns TCP keepalive on', async () => {
    const r = recipe(clientConfig());
    const handle = await openHandle(r);
    const { rows } = await raw(handle).query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    expect(handle.pid).toBe(rows[0]!.pid);
    expect((await activity(handle.pid))?.state).toBe('idle');
    // pg keeps the setting on its Connection and applies it to the socket on connect.
    const connection = raw(handle).connection as unknown as {
      _keepAlive: boolean;
      _keepAliveInitialDelayMillis: number;
    };
    expect(connection._keepAlive).toBe(true);
    expect(connection._keepAliveInitialDelayMillis).toBeGreaterThan(0);

    const off = pgGuardOptions({ config: clientConfig(), keepAlive: false });
    const plain = await off.create({ signal: new AbortController().signal, generation: 1 });
    onTestFinished(() => off.destroy?.(plain, { reason: 'test' }));
    expect((raw(plain).connection as unknown as { _keepAlive: boolean })._keepAlive).toBe(false);
  });

  it('create rejects promptly with the signal reason and leaves no socket behind', async () => {
    const proxy = await startProxy();
    proxy.blackhole(); // the TCP connect succeeds, the startup is never answered
    const r = recipe(viaProxy(proxy));
    const reason = new Error('give up');
    const controller = new AbortController();
    const started = performance.now();
    setTimeout(() => controller.abort(reason), 150);
    const error = await r.create(controller.signal).catch((e: unknown) => e);
    const elapsed = performance.now() - started;
    expect(error).toBe(reason);
    expect(elapsed).toBeLessThan(1_000);
    proxy.heal(); // deliver the held close: the proxy forgets the connection once both sides closed
    await waitFor(() => proxy.connections === 0, 5_000, 'the proxy connection to close');

    const accepted = proxy.stats.accepted;
    const already = AbortSignal.abort(reason);
    await expect(r.create(already)).rejects.toBe(reason);
    expect(proxy.stats.accepted).toBe(accepted);
  });

  it('a connection error on an idle handle never crashes the process', async () => {
    const r = recipe(clientConfig());
    const handle = await openHandle(r);
    expect(await terminateBackend(handle.pid)).toBe(true);
    await sleep(200); // the 'error' event arrives on the idle client meanwhile
    await expect(r.probe(handle, undefined)).rejects.toThrow(/gone/);
    const error = await pgQuery(handle, ctxOf(), 'SELECT 1').catch((e: unknown) => e);
    expect(isFatalPgError(error)).toBe(true);
  });

  it('destroy closes a healthy handle politely', async () => {
    const r = recipe(clientConfig());
    const handle = await r.create();
    await r.destroy(handle);
    expect(raw(handle).connection.stream.destroyed).toBe(true);
    await waitFor(async () => (await activity(handle.pid)) === undefined, 5_000, 'backend exit');
  });

  it('destroy is bounded on a half-open link and never throws', async () => {
    const proxy = await startProxy();
    const r = recipe(viaProxy(proxy));
    const handle = await r.create();
    proxy.blackhole();
    const started = performance.now();
    await expect(r.destroy(handle)).resolves.toBeUndefined();
    const elapsed = performance.now() - started;
    expect(elapsed).toBeLessThan(1_500);
    expect(raw(handle).connection.stream.destroyed).toBe(true);
    // Twice, and on an already-destroyed socket: still fine.
    await expect(r.destroy(handle)).resolves.toBeUndefined();
    proxy.heal();
  });

  it('destroy is bounded while a query runs on a half-open link', async () => {
    const proxy = await startProxy();
    const r = recipe(viaProxy(proxy));
    const handle = await r.create();
    const pending = settle(handle.client.query('SELECT pg_sleep(5)'));
    proxy.blackhole();
    const started = performance.now();
    await r.destroy(handle);
    expect(performance.now() - started).toBeLessThan(1_500);
    const outcome = await pending;
    expect(outcome.ok).toBe(false);
    proxy.heal();
  });
});

describe('probe', () => {
  it('passes on an idle handle', async () => {
    const r = recipe(clientConfig());
    const handle = await openHandle(r);
    await expect(r.probe(handle, undefined)).resolves.toBeUndefined();
  });

  it('fails within its signal on an idle half-open handle', async () => {
    const proxy = await startProxy();
    const r = recipe(viaProxy(proxy));
    const handle = await openHandle(r);
    proxy.blackhole();
    const started = performance.now();
    await expect(r.probe(handle, undefined, AbortSignal.timeout(200))).rejects.toThrow();
    expect(performance.now() - started).toBeLessThan(1_000);
    proxy.heal();
  });

  it('passes from the side while the handle runs a query', async () => {
    const r = recipe(clientConfig());
    const handle = await openHandle(r);
    const running = pgQuery(handle, ctxOf(), 'SELECT pg_sleep(1.5)');
    await waitFor(async () => (await activity(handle.pid))?.state === 'active', 5_000, 'active');
    const started = performance.now();
    await expect(r.probe(handle, opInfo())).resolves.toBeUndefined();
    // Side connection: the probe did not queue behind the running query.
    expect(performance.now() - started).toBeLessThan(1_000);
    await running;
  });

  it('passes while no query is in flight: the op is in the application between two queries', async () => {
    const r = recipe(clientConfig());
    const handle = await openHandle(r);
    await pgQuery(handle, ctxOf(), 'BEGIN');
    await pgQuery(handle, ctxOf(), 'SELECT 1');
    await sleep(100);
    expect((await activity(handle.pid))?.state).toBe('idle in transaction');
    await expect(r.probe(handle, opInfo())).resolves.toBeUndefined();
    await pgQuery(handle, ctxOf(), 'ROLLBACK');
  });

  it('fails when a query is in flight but its backend is idle (the answer was lost), or gone', async () => {
    const r = recipe(clientConfig());
    const handle = await openHandle(r);
    const other = await openHandle(r);
    await sleep(100);
    // The probe looks at `other`'s backend (idle) while a query is in flight on the client.
    const running = pgQuery(handle, ctxOf(), 'SELECT pg_sleep(1)');
    // In flight for much longer than a probe takes: it has reached the server by now.
    await sleep(200);
    const lost: PgHandle = { client: handle.client, pid: other.pid };
    await expect(r.probe(lost, opInfo())).rejects.toThrow(/idle for \d+ ms while a query/);
    // A pid that is no backend at all.
    const wrong: PgHandle = { client: handle.client, pid: 2_147_483_000 };
    await expect(r.probe(wrong, opInfo())).rejects.toThrow(/gone/);
    await running;
  });

  it('passes when the op finished while the probe was under way (its answer is on the way)', async () => {
    const proxy = await startProxy();
    const r = recipe(viaProxy(proxy));
    const handle = await openHandle(r);
    proxy.latency(150); // each way: a round trip takes 300 ms
    // Sent at t0, on the server from t0 + 150 to t0 + 400, answer back at t0 + 550.
    const running = pgQuery(handle, ctxOf(), 'SELECT pg_sleep(0.25)');
    await sleep(150);
    // The probe's side connection starts up (one round trip) and queries at about t0 + 600:
    // the backend has been idle for 200 ms, less than the probe has been running.
    await expect(r.probe(handle, opInfo())).resolves.toBeUndefined();
    await running;
    // The answer arrived: nothing in flight, the op is back in the application's hands.
    await sleep(1_500);
    await expect(r.probe(handle, opInfo())).resolves.toBeUndefined();
  });

  it('fails when the side connection cannot connect within its signal', async () => {
    const proxy = await startProxy();
    const r = recipe(viaProxy(proxy));
    const handle = await openHandle(r);
    const running = settle(pgQuery(handle, ctxOf(), 'SELECT pg_sleep(3)'));
    await waitFor(async () => (await activity(handle.pid))?.state === 'active', 5_000, 'active');
    await expect(r.probe(handle, opInfo())).resolves.toBeUndefined();
    proxy.blackhole();
    const started = performance.now();
    const reason = new Error('probe timeout');
    const controller = new AbortController();
    setTimeout(() => controller.abort(reason), 250);
    await expect(r.probe(handle, opInfo(), controller.signal)).rejects.toBe(reason);
    expect(performance.now() - started).toBeLessThan(1_000);
    proxy.heal();
    await r.destroy(handle);
    await running;
  });
});

describe('cancel', () => {
  it('cancels the running query on the server and keeps the connection usable', async () => {
    const r = recipe(clientConfig());
    const handle = await openHandle(r);
    const started = performance.now();
    const running = handle.client.query('SELECT pg_sleep(30)').catch((e: unknown) => e);
    await waitFor(async () => (await activity(handle.pid))?.state === 'active', 5_000, 'active');
    await expect(r.cancel(handle)).resolves.toBe(true);
    const error = await running;
    expect((error as { code?: string }).code).toBe('57014');
    expect(performance.now() - started).toBeLessThan(5_000);
    expect(isFatalPgError(error)).toBe(false);
    expect((await pgQuery(handle, ctxOf(), 'SELECT 2 AS two')).rows[0]!.two).toBe(2);
  });

  it('is bounded by cancelTimeout when the route is dead, and then cuts the handle', async () => {
    const proxy = await startProxy();
    const r = recipe(viaProxy(proxy), { cancelTimeout: 300 });
    const handle = await openHandle(r);
    const running = settle(handle.client.query('SELECT pg_sleep(30)'));
    await waitFor(async () => (await activity(handle.pid))?.state === 'active', 5_000, 'active');
    proxy.blackhole();
    const started = performance.now();
    await expect(r.cancel(handle)).rejects.toThrow(/cancel timed out/);
    expect(performance.now() - started).toBeLessThan(1_500);
    // Nothing the op still had queued or running on it can be sent or answered later.
    expect(await running).toMatchObject({ ok: false });
    expect(r.options.isAlive?.(handle)).toBe(false);
    proxy.heal();
  });

  it('sends nothing when no query runs on the handle (a cancel could hit the next op)', async () => {
    const r = recipe(clientConfig());
    const handle = await openHandle(r);
    await expect(r.cancel(handle)).resolves.toBe(false);
    expect((await pgQuery(handle, ctxOf(), 'SELECT 3 AS n')).rows[0]!.n).toBe(3);
  });
});

describe('pgQuery', () => {
  it('runs a query with parameters', async () => {
    const r = recipe(clientConfig());
    const handle = await openHandle(r);
    const result = await pgQuery<{ n: number }>(handle, ctxOf(), 'SELECT $1::int + 1 AS n', [41]);
    expect(result.rows).toEqual([{ n: 42 }]);
  });

  it('rejects promptly with the abort reason and leaves the client usable', async () => {
    const r = recipe(clientConfig());
    const handle = await openHandle(r);
    const controller = new AbortController();
    const reason = new Error('caller gave up');
    const pending = pgQuery(handle, ctxOf(controller.signal), 'SELECT pg_sleep(0.5)');
    await sleep(100);
    const abortedAt = performance.now();
    controller.abort(reason);
    await expect(pending).rejects.toBe(reason);
    expect(performance.now() - abortedAt).toBeLessThan(50);
    // The query completes on the server later; the next query queues behind it and works.
    const { rows } = await pgQuery<{ n: number }>(handle, ctxOf(), 'SELECT 7 AS n');
    expect(rows[0]!.n).toBe(7);
  });

  it('leaves the client usable when the abandoned query later fails', async () => {
    const r = recipe(clientConfig());
    const handle = await openHandle(r);
    const controller = new AbortController();
    const pending = pgQuery(handle, ctxOf(controller.signal), 'SELECT pg_sleep(30)');
    await waitFor(async () => (await activity(handle.pid))?.state === 'active', 5_000, 'active');
    controller.abort();
    await expect(pending).rejects.toMatchObject({ name: 'AbortError' });
    await r.cancel(handle); // the query now fails with 57014, which nobody awaits
    const { rows } = await pgQuery<{ n: number }>(handle, ctxOf(), 'SELECT 8 AS n');
    expect(rows[0]!.n).toBe(8);
  });

  it('does not send anything when the signal is already aborted', async () => {
    const r = recipe(clientConfig());
    const handle = await openHandle(r);
    let sent = 0;
    const original = handle.client.query.bind(handle.client);
    handle.client.query = ((...args: Parameters<typeof original>) => {
      sent++;
      return original(...args);
    }) as typeof handle.client.query;
    const reason = new Error('already');
    await expect(pgQuery(handle, ctxOf(AbortSignal.abort(reason)), 'SELECT 1')).rejects.toBe(
      reason,
    );
    expect(sent).toBe(0);
  });

  it('heartbeats while a large result streams in, and on completion', async () => {
    const r = recipe(clientConfig());
    const handle = await openHandle(r);
    const stream = raw(handle).connection.stream;
    const baseline = stream.listenerCount('data');
    const ctx = ctxOf();
    const { rows } = await pgQuery(
      handle,
      ctx,
      "SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g",
    );
    expect(rows.length).toBe(20_000);
    expect(ctx.beats).toBeGreaterThan(5);
    expect(stream.listenerCount('data')).toBe(baseline);

    const small = ctxOf();
    await pgQuery(handle, small, 'SELECT 1');
    expect(small.beats).toBeGreaterThanOrEqual(1);
  });

  it('shares one data listener among concurrent queries on a handle', async () => {
    const r = recipe(clientConfig());
    const handle = await openHandle(r);
    const stream = raw(handle).connection.stream;
    // pg's own, and the adapter's one for heartbeats, added when the client connected.
    const baseline = stream.listenerCount('data');
    expect(baseline).toBe(2);
    const warnings: Error[] = [];
    const onWarning = (w: Error) => warnings.push(w);
    process.on('warning', onWarning);
    onTestFinished(() => {
      process.off('warning', onWarning);
    });
    const ctx = ctxOf();
    const results = Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        pgQuery<{ n: number }>(handle, ctx, 'SELECT $1::int AS n', [i]),
      ),
    );
    expect(stream.listenerCount('data')).toBe(baseline);
    expect((await results).map((res) => res.rows[0]!.n)).toEqual(
      Array.from({ length: 20 }, (_, i) => i),
    );
    expect(stream.listenerCount('data')).toBe(baseline);
    expect(getEventListeners(ctx.signal, 'abort')).toHaveLength(0);
    await sleep(10);
    expect(warnings.filter((w) => w.name === 'MaxListenersExceededWarning')).toEqual([]);
  });
});

describe("pgQuery on a guard op's abort watch (no AbortSignal made)", () => {
  it('rejects at the caller abort with its reason, once, and the handle serves the next op', async () => {
    const guard = new EngineGuard(pgGuardOptions({ config: clientConfig() }, { pool: 1 }));
    onTestFinished(() => guard.close());
    const controller = new AbortController();
    const reason = new Error('caller gave up');
    const told: string[] = [];
    const op = guard.read(
      async (handle, ctx) => {
        const watch = (ctx as MaybeWatched)[ABORT_WATCH];
        expect(watch?.aborted).toBe(false);
        const stop = watch!.onAbort(() => told.push('stopped'));
        stop();
        watch!.onAbort(() => told.push('told'));
        setTimeout(() => controller.abort(reason), 100);
        try {
          return await pgQuery(handle, ctx, 'SELECT pg_sleep(5)');
        } finally {
          told.push(`aborted: ${watch!.aborted}, reason: ${(watch!.abortReason as Error).message}`);
        }
      },
      { signal: controller.signal },
    );
    const started = performance.now();
    await expect(op).rejects.toBe(reason);
    expect(performance.now() - started).toBeLessThan(3_000);
    expect(told).toEqual(['told', 'aborted: true, reason: caller gave up']);
    const { rows } = await guard.read((handle, ctx) =>
      pgQuery<{ n: number }>(handle, ctx, 'SELECT 2 AS n'),
    );
    expect(rows[0]!.n).toBe(2);
  });

  it('a query queued behind one the abort hit is never sent', async () => {
    const guard = new EngineGuard(pgGuardOptions({ config: clientConfig() }, { pool: 1 }));
    onTestFinished(() => guard.close());
    const table = `abort_watch_${process.pid}_${Date.now()}`;
    await adminQuery(`CREATE TABLE ${table} (n int)`);
    onTestFinished(async () => {
      await adminQuery(`DROP TABLE IF EXISTS ${table}`);
    });
    const controller = new AbortController();
    const op = guard.write(
      (handle, ctx) => {
        setTimeout(() => controller.abort(new Error('stop')), 100);
        return Promise.all([
          pgQuery(handle, ctx, 'SELECT pg_sleep(5)'),
          pgQuery(handle, ctx, `INSERT INTO ${table} VALUES (1)`),
        ]);
      },
      { signal: controller.signal },
    );
    await expect(op).rejects.toThrow('stop');
    // The next op on the same (only) handle runs once the aborted one drained.
    await guard.read((handle, ctx) => pgQuery(handle, ctx, 'SELECT 1'));
    const { rows } = await adminQuery<{ n: number }>(`SELECT count(*)::int AS n FROM ${table}`);
    expect(rows[0]!.n).toBe(0);
  });
});

describe('heartbeats in a guard', () => {
  // Every probe fails: only heartbeats can keep an op alive.
  function failingProbeGuard() {
    const guard = new EngineGuard(
      pgGuardOptions(
        { config: clientConfig() },
        {
          probe: async () => {
            throw new Error('probe always fails in this test');
          },
          liveness: { interval: 250, timeout: 250, failures: 2, idleCheckAfter: false },
        },
      ),
    );
    onTestFinished(() => guard.close());
    return guard;
  }

  it('a cursor read that fetches in batches stays alive without any passing probe', async () => {
    const guard = failingProbeGuard();
    let batches = 0;
    // The pattern from docs/recipes/postgresql.md.
    const total = await guard.read(async (pg, ctx) => {
      await pgQuery(pg, ctx, 'BEGIN READ ONLY');
      try {
        await pgQuery(
          pg,
          ctx,
          'DECLARE c NO SCROLL CURSOR FOR SELECT g, pg_sleep(0.05) FROM generate_series(1, 30) g',
        );
        let count = 0;
        for (;;) {
          const batch = await pgQuery<{ g: number }>(pg, ctx, 'FETCH 2 FROM c');
          if (batch.rows.length === 0) return count;
          count += batch.rows.length;
          batches++;
          ctx.heartbeat(); // pgQuery beats on completion already; explicit per batch is fine too
        }
      } finally {
        const rollback = pg.client.query('ROLLBACK').catch(() => {});
        if (!ctx.signal.aborted) await rollback;
      }
    });
    expect(total).toBe(30);
    expect(batches).toBe(15);
    const status = guard.status();
    expect(status.counters.stalls).toBe(0);
    expect(status.counters.probeFailures).toBe(0);
  });

  it('a large result streaming in keeps its op alive (heartbeat per chunk received)', async () => {
    const guard = failingProbeGuard();
    const rows = await guard.read((pg, ctx) =>
      pgQuery(
        pg,
        ctx,
        // Each row is larger than the server's 8 kB send buffer, so it is flushed at once.
        "SELECT g, pg_sleep(0.1), repeat('x', 20000) AS pad FROM generate_series(1, 12) g",
      ),
    );
    expect(rows.rowCount).toBe(12);
    expect(guard.status().counters.stalls).toBe(0);
  });

  it('control: the same silent query without batches is convicted', async () => {
    const guard = failingProbeGuard();
    const started = performance.now();
    const error = await guard
      .read((pg, ctx) => pgQuery(pg, ctx, 'SELECT pg_sleep(3)'))
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(EngineStalledError);
    expect(performance.now() - started).toBeLessThan(2_500);
  });
});
