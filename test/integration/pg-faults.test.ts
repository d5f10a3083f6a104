/**
 * Fault scenarios (SPEC 7) against the real PostgreSQL through a FaultProxy, guarded with the
 * PostgreSQL recipe (examples/recipes/postgres.ts). Part 1: half-open links, wedged servers,
 * resets, slow closes and cut results. Part 2 is pg-faults-2.test.ts.
 *
 * Liveness is { interval: 250, timeout: 250, failures: 2 }: a silent op whose engine stopped
 * answering is convicted at most interval × failures + timeout = 750 ms after its last sign of
 * life. Assertions allow a generous margin on top for this noisy machine.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type pg from 'pg';
import { describe, expect, it, onTestFinished } from 'vitest';
import {
  isFatalPgError,
  type PgHandle,
  pgGuardOptions,
  pgQuery,
} from '../../examples/recipes/postgres.js';
import {
  EngineGuard,
  type EngineGuardOptions,
  EngineStalledError,
  EngineUnavailableError,
  LockTimeoutError,
  type OpOptions,
} from '../../src/index.js';
import { FaultProxy } from '../../src/testing/index.js';
import { clientConfig, pgConfig, resumeBackend, suspendBackend } from '../support/pg.js';
import { type PgCluster, startPgCluster } from '../support/pg-cluster.js';

type PgOptions = EngineGuardOptions<PgHandle>;

const LIVENESS = { interval: 250, timeout: 250, failures: 2 } as const;
/** interval × failures + timeout */
const BOUND = LIVENESS.interval * LIVENESS.failures + LIVENESS.timeout;
const MARGIN = 3_000;
/** A status() call must answer at once, whatever the engine does. */
const STATUS_MAX_MS = 5;
const TEST_TIMEOUT = 30_000;

/** Everything a test opens, closed when it finishes, whatever happens. */
interface Kit {
  proxy(target?: { host: string; port: number }): Promise<FaultProxy>;
  guard(options: PgOptions): EngineGuard<PgHandle>;
  suspend(pid: number): void;
  cluster(): Promise<PgCluster>;
}

function kit(): Kit {
  const proxies: FaultProxy[] = [];
  const guards: EngineGuard<PgHandle>[] = [];
  const suspended: number[] = [];
  const clusters: PgCluster[] = [];
  onTestFinished(async () => {
    for (const pid of suspended) resumeBackend(pid);
    // Proxies first: whatever still hangs on a blackholed link fails at once.
    await Promise.all(proxies.map((proxy) => proxy.close()));
    await Promise.all(guards.map((guard) => guard.close()));
    for (const cluster of clusters) await cluster.stop();
  });
  return {
    async proxy(target = pgConfig()) {
      const proxy = await FaultProxy.start({ target: { host: target.host, port: target.port } });
      proxies.push(proxy);
      return proxy;
    },
    guard(options) {
      const guard = new EngineGuard(options);
      guards.push(guard);
      return guard;
    },
    suspend(pid) {
      suspended.push(pid);
      suspendBackend(pid);
    },
    async cluster() {
      const cluster = await startPgCluster();
      clusters.push(cluster);
      return cluster;
    },
  };
}

const viaProxy = (proxy: FaultProxy): pg.ClientConfig =>
  clientConfig({ host: proxy.host, port: proxy.port });

/** The recipe with the test liveness settings and short connect/reconnect bounds. */
function pgOptions(config: pg.ClientConfig, overrides: Partial<PgOptions> = {}): PgOptions {
  return pgGuardOptions(
    { config },
    {
      liveness: LIVENESS,
      connectTimeout: 1_000,
      reconnect: { initialDelay: 50, maxDelay: 500 },
      ...overrides,
    },
  );
}

/** Generation 1 through proxy A, every later generation through proxy B. */
function twoRoutes(a: FaultProxy, b: FaultProxy, overrides: Partial<PgOptions> = {}): PgOptions {
  const viaA = pgOptions(viaProxy(a), overrides);
  const viaB = pgOptions(viaProxy(b));
  return {
    ...viaA,
    create: (ctx) => (ctx.generation === 1 ? viaA.create(ctx) : viaB.create(ctx)),
  };
}

/** A read of one value; returns it with the op's generation. */
async function readOne(
  guard: EngineGuard<PgHandle>,
  sql = 'SELECT 1 AS v',
  options?: OpOptions,
): Promise<{ v: unknown; generation: number; pid: number }> {
  return guard.read(async (handle, ctx) => {
    const { rows } = await pgQuery<{ v: unknown }>(handle, ctx, sql);
    return { v: rows[0]?.v, generation: ctx.generation, pid: handle.pid };
  }, options);
}

function settle<T>(
  promise: Promise<T>,
): Promise<{ ok: true; value: T; at: number } | { ok: false; error: unknown; at: number }> {
  return promise.then(
    (value) => ({ ok: true as const, value, at: performance.now() }),
    (error: unknown) => ({ ok: false as const, error, at: performance.now() }),
  );
}

/** Calls status() every few ms and records how long each call took. */
function sampleStatus(guard: EngineGuard<PgHandle>, everyMs = 5) {
  const durations: number[] = [];
  const timer = setInterval(() => {
    const started = performance.now();
    guard.status();
    durations.push(performance.now() - started);
  }, everyMs);
  return {
    stop() {
      clearInterval(timer);
      return { samples: durations.length, maxMs: Math.max(0, ...durations) };
    },
  };
}

async function waitUntil(condition: () => boolean, timeoutMs: number, what: string) {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(1);
  }
}

describe('PostgreSQL through a FaultProxy, part 1', () => {
  it(
    'a. half-open idle handle: a read with a timeout fails within it, status stays instant',
    async () => {
      const k = kit();
      const proxy = await k.proxy();
      const guard = k.guard(pgOptions(viaProxy(proxy)));
      expect((await readOne(guard)).generation).toBe(1);

      proxy.blackhole();
      const sampler = sampleStatus(guard);
      await sleep(LIVENESS.interval + 100); // idle long enough to be checked before reuse
      const timeout = 1_500;
      const started = performance.now();
      const error = await guard
        .read((handle, ctx) => pgQuery(handle, ctx, 'SELECT 1'), { timeout })
        .catch((e: unknown) => e);
      const elapsed = performance.now() - started;
      const { samples, maxMs } = sampler.stop();

      // The idle check found the dead handle; the replacement cannot connect while blackholed.
      expect(
        error instanceof LockTimeoutError || error instanceof EngineUnavailableError,
        String(error),
      ).toBe(true);
      expect(elapsed).toBeGreaterThanOrEqual(timeout - 50);
      expect(elapsed).toBeLessThan(timeout + MARGIN);
      const status = guard.status();
      expect(status.counters.replacements).toBeGreaterThanOrEqual(1);
      expect(status.counters.probeFailures).toBeGreaterThanOrEqual(1);
      expect(status.running).toEqual([]);
      expect(samples).toBeGreaterThan(50);
      expect(maxMs).toBeLessThan(STATUS_MAX_MS);
    },
    TEST_TIMEOUT,
  );

  it(
    'a. half-open idle handle: a waiting read gets a fresh handle once the link heals',
    async () => {
      const k = kit();
      const proxy = await k.proxy();
      const guard = k.guard(pgOptions(viaProxy(proxy)));
      expect((await readOne(guard)).generation).toBe(1);

      proxy.blackhole();
      const sampler = sampleStatus(guard);
      await sleep(LIVENESS.interval + 100);
      const pending = settle(readOne(guard, 'SELECT 2 AS v'));
      await sleep(800);
      const status = guard.status();
      expect(status.handles.busy).toBe(0); // nothing is wedged on the dead handle
      const healedAt = performance.now();
      proxy.heal();
      const outcome = await pending;
      const { samples, maxMs } = sampler.stop();

      expect(outcome.ok).toBe(true);
      if (!outcome.ok) return;
      expect(outcome.value.v).toBe(2);
      expect(outcome.value.generation).toBeGreaterThanOrEqual(2);
      // A connect attempt made while blackholed lost its startup packet: it gives up at
      // connectTimeout (1 s) and the retry, after a short backoff, succeeds.
      expect(outcome.at - healedAt).toBeLessThan(1_000 + 500 + MARGIN);
      expect(guard.status().counters.replacements).toBeGreaterThanOrEqual(1);
      expect(samples).toBeGreaterThan(50);
      expect(maxMs).toBeLessThan(STATUS_MAX_MS);
    },
    TEST_TIMEOUT,
  );

  // The idle check of a half-open handle takes up to liveness.timeout. A caller that gives up
  // meanwhile (abort or its own timeout) must be answered at once, as when it waits in a queue.
  const slowIdleCheck = { interval: 250, timeout: 2_000, failures: 2 };

  it(
    'a. half-open idle handle: a caller abort is honoured at once, even during the idle check',
    async () => {
      const k = kit();
      const proxy = await k.proxy();
      const guard = k.guard(pgOptions(viaProxy(proxy), { liveness: slowIdleCheck }));
      await readOne(guard);
      proxy.blackhole();
      await sleep(slowIdleCheck.interval + 100);
      const controller = new AbortController();
      const reason = new Error('the caller gave up');
      const pending = settle(readOne(guard, 'SELECT 1 AS v', { signal: controller.signal }));
      await sleep(100); // the idle check of the dead handle is under way
      const abortedAt = performance.now();
      controller.abort(reason);
      const outcome = await pending;
      expect(outcome.ok).toBe(false);
      if (outcome.ok) return;
      expect(outcome.error).toBe(reason);
      expect(outcome.at - abortedAt).toBeLessThan(250);
    },
    TEST_TIMEOUT,
  );

  it(
    'a. half-open idle handle: a caller timeout is honoured, even during the idle check',
    async () => {
      const k = kit();
      const proxy = await k.proxy();
      const guard = k.guard(pgOptions(viaProxy(proxy), { liveness: slowIdleCheck }));
      await readOne(guard);
      proxy.blackhole();
      await sleep(slowIdleCheck.interval + 100);
      const timeout = 300;
      const started = performance.now();
      const error = await guard
        .read((handle, ctx) => pgQuery(handle, ctx, 'SELECT 1'), { timeout })
        .catch((e: unknown) => e);
      const elapsed = performance.now() - started;
      expect(
        error instanceof LockTimeoutError || error instanceof EngineUnavailableError,
        String(error),
      ).toBe(true);
      expect(elapsed).toBeLessThan(timeout + 250);
    },
    TEST_TIMEOUT,
  );

  it(
    'b. half-open mid-call: the caller gets EngineStalledError in bound, other handles answer',
    async () => {
      const k = kit();
      const proxyA = await k.proxy();
      const proxyB = await k.proxy();
      const guard = k.guard({ ...twoRoutes(proxyA, proxyB), pool: 2 });
      expect((await readOne(guard)).generation).toBe(1); // generation 1, through A, now idle

      let longGeneration = 0;
      const long = settle(
        guard.read((handle, ctx) => {
          longGeneration = ctx.generation;
          return pgQuery(handle, ctx, 'SELECT pg_sleep(20)');
        }),
      );
      // A second handle (generation 2, through B) for the other reads.
      expect((await readOne(guard)).generation).toBe(2);
      expect(longGeneration).toBe(1);
      await sleep(3 * LIVENESS.interval); // the long op is probed, and passes
      expect(guard.status().counters.probeFailures).toBe(0);
      expect(guard.status().lastProbe?.ok).toBe(true);

      const sampler = sampleStatus(guard);
      const blackholedAt = performance.now();
      proxyA.blackhole();
      const others: number[] = [];
      let sawWedged = false;
      let settled = false;
      void long.then(() => {
        settled = true;
      });
      while (!settled) {
        const started = performance.now();
        const other = await readOne(guard, 'SELECT 3 AS v');
        others.push(performance.now() - started);
        expect(other.v).toBe(3);
        expect(other.generation).not.toBe(1);
        const running = guard.status().running;
        if (running.some((op) => op.generation === 1 && op.probeFailures > 0)) sawWedged = true;
        await sleep(25);
      }
      const outcome = await long;
      const { samples, maxMs } = sampler.stop();

      expect(outcome.ok).toBe(false);
      if (outcome.ok) return;
      expect(outcome.error).toBeInstanceOf(EngineStalledError);
      const stalled = outcome.error as EngineStalledError;
      expect(stalled.kind).toBe('read');
      expect(stalled.indeterminate).toBe(false);
      expect(stalled.generation).toBe(1);
      const convictedIn = outcome.at - blackholedAt;
      expect(convictedIn).toBeGreaterThanOrEqual((LIVENESS.failures - 1) * LIVENESS.interval - 50);
      expect(convictedIn).toBeLessThan(BOUND + MARGIN);
      expect(others.length).toBeGreaterThan(0);
      expect(Math.max(...others)).toBeLessThan(1_000);
      expect(sawWedged).toBe(true);
      expect(samples).toBeGreaterThan(20);
      expect(maxMs).toBeLessThan(STATUS_MAX_MS);

      const status = guard.status();
      expect(status.counters.stalls).toBe(1);
      expect(status.running).toEqual([]);
      // The guard goes on: reads land on a healthy handle.
      const after = await readOne(guard, 'SELECT 4 AS v');
      expect(after.v).toBe(4);
      expect(after.generation).toBeGreaterThanOrEqual(2);
    },
    TEST_TIMEOUT,
  );

  it(
    'c. a long query on a live peer survives: no stall, every probe passed',
    async () => {
      const k = kit();
      const proxy = await k.proxy();
      const guard = k.guard(pgOptions(viaProxy(proxy)));
      const failures: unknown[] = [];
      guard.on('probeFailure', (event) => failures.push(String(event.error)));
      const started = performance.now();
      const result = await guard.read((handle, ctx) =>
        pgQuery<{ v: number }>(handle, ctx, 'SELECT 5 AS v FROM pg_sleep(5)'),
      );
      const elapsed = performance.now() - started;
      expect(result.rows).toEqual([{ v: 5 }]);
      expect(elapsed).toBeGreaterThanOrEqual(5_000);
      const status = guard.status();
      expect(failures).toEqual([]);
      expect(status.counters.stalls).toBe(0);
      expect(status.counters.probeFailures).toBe(0);
      expect(status.counters.replacements).toBe(0);
      expect(status.lastProbe?.ok).toBe(true);
      // It was probed, from the side, until near its end.
      expect(Date.now() - (status.lastProbe?.at ?? 0)).toBeLessThan(
        LIVENESS.interval + LIVENESS.timeout + 500,
      );
    },
    TEST_TIMEOUT,
  );

  it(
    'd. wedged backend (SIGSTOP): convicted within the bound, then a new generation works',
    async () => {
      const k = kit();
      const proxy = await k.proxy();
      // No idle check: the read must go to the wedged handle and be convicted there.
      const guard = k.guard(
        pgOptions(viaProxy(proxy), { liveness: { ...LIVENESS, idleCheckAfter: false } }),
      );
      const { pid, generation } = await readOne(guard);
      expect(generation).toBe(1);
      k.suspend(pid);
      const sampler = sampleStatus(guard);
      const started = performance.now();
      const error = await readOne(guard).catch((e: unknown) => e);
      const elapsed = performance.now() - started;
      const { maxMs } = sampler.stop();
      resumeBackend(pid);

      expect(error).toBeInstanceOf(EngineStalledError);
      expect((error as EngineStalledError).generation).toBe(1);
      // The backend never read the query: probes see it idle, not working on the op.
      expect(elapsed).toBeGreaterThanOrEqual(LIVENESS.failures * LIVENESS.interval - 50);
      expect(elapsed).toBeLessThan(BOUND + MARGIN);
      expect(maxMs).toBeLessThan(STATUS_MAX_MS);

      const next = await readOne(guard, 'SELECT 6 AS v');
      expect(next.v).toBe(6);
      expect(next.generation).toBe(2);
      expect(next.pid).not.toBe(pid);
      expect(guard.status().counters.stalls).toBe(1);
    },
    TEST_TIMEOUT,
  );

  it(
    'd. wedged server (backend and postmaster SIGSTOPped) mid-statement: convicted in bound',
    async () => {
      const k = kit();
      const cluster = await k.cluster();
      const proxy = await k.proxy(cluster);
      const guard = k.guard(pgOptions(viaProxy(proxy), { cancelTimeout: 1_000 }));
      let pid = 0;
      const long = settle(
        guard.read((handle, ctx) => {
          pid = handle.pid;
          return pgQuery(handle, ctx, 'SELECT pg_sleep(30)');
        }),
      );
      await sleep(3 * LIVENESS.interval);
      expect(pid).toBeGreaterThan(0);
      expect(guard.status().counters.probeFailures).toBe(0);

      k.suspend(cluster.pid);
      k.suspend(pid);
      const frozenAt = performance.now();
      const outcome = await long;
      resumeBackend(pid);
      resumeBackend(cluster.pid);

      expect(outcome.ok).toBe(false);
      if (outcome.ok) return;
      expect(outcome.error).toBeInstanceOf(EngineStalledError);
      const convictedIn = outcome.at - frozenAt;
      expect(convictedIn).toBeGreaterThanOrEqual((LIVENESS.failures - 1) * LIVENESS.interval - 50);
      expect(convictedIn).toBeLessThan(BOUND + MARGIN);

      const next = await readOne(guard, 'SELECT 7 AS v');
      expect(next.v).toBe(7);
      expect(next.generation).toBe(2);
    },
    TEST_TIMEOUT,
  );

  it(
    'e. reset mid-result: the caller gets an error, the handle is replaced, the next read works',
    async () => {
      const k = kit();
      const proxy = await k.proxy();
      const guard = k.guard(pgOptions(viaProxy(proxy)));
      const replaced: string[] = [];
      guard.on('replace', (event) => replaced.push(event.reason));
      expect((await readOne(guard)).generation).toBe(1);

      const before = proxy.stats.bytesToClient;
      const pending = settle(
        guard.read((handle, ctx) =>
          pgQuery(
            handle,
            ctx,
            "SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 400000) g",
          ),
        ),
      );
      await waitUntil(
        () => proxy.stats.bytesToClient - before > 256 * 1024,
        10_000,
        'the result to start streaming',
      );
      const resetAt = performance.now();
      proxy.reset();
      const outcome = await pending;

      expect(outcome.ok).toBe(false); // never a (short) success
      if (outcome.ok) return;
      expect(isFatalPgError(outcome.error)).toBe(true);
      expect(outcome.at - resetAt).toBeLessThan(1_000);
      expect(replaced).toEqual(['fatal']);

      const next = await readOne(guard, 'SELECT 8 AS v');
      expect(next.v).toBe(8);
      expect(next.generation).toBe(2);
      const status = guard.status();
      expect(status.counters.replacements).toBe(1);
      expect(status.counters.stalls).toBe(0);
    },
    TEST_TIMEOUT,
  );

  it(
    'f. slow close: destroying a handle does not delay the other callers',
    async () => {
      const k = kit();
      const proxy = await k.proxy();
      const destroys: { started: number; ms: number }[] = [];
      const options = pgOptions(viaProxy(proxy), { pool: 2 });
      const destroy = options.destroy!;
      options.destroy = async (handle, ctx) => {
        const started = performance.now();
        await destroy(handle, ctx);
        destroys.push({ started, ms: performance.now() - started });
      };
      const guard = k.guard(options);
      let replacedAt = 0;
      guard.on('replace', () => {
        replacedAt = performance.now();
      });
      const warm = await Promise.all([
        readOne(guard, 'SELECT 1 AS v FROM pg_sleep(0.1)'),
        readOne(guard, 'SELECT 1 AS v FROM pg_sleep(0.1)'),
      ]);
      expect(warm.map((r) => r.generation).sort()).toEqual([1, 2]);

      proxy.slowClose(2_000);
      let fatalGeneration = 0;
      const fatal = await guard
        .read((handle, ctx) => {
          fatalGeneration = ctx.generation;
          return pgQuery(handle, ctx, 'SELECT pg_terminate_backend(pg_backend_pid())');
        })
        .catch((e: unknown) => e);
      expect(isFatalPgError(fatal)).toBe(true);
      expect(replacedAt).toBeGreaterThan(0);

      // The other handle, and a fresh one, both serve at once.
      const others = await Promise.all([
        settle(readOne(guard, 'SELECT 9 AS v FROM pg_sleep(0.2)')),
        settle(readOne(guard, 'SELECT 9 AS v FROM pg_sleep(0.2)')),
      ]);
      for (const other of others) {
        expect(other.ok).toBe(true);
        expect(other.at - replacedAt).toBeLessThan(1_000);
      }
      // One ran on the surviving handle, the other on a brand-new one (generation 3).
      const survivor = fatalGeneration === 1 ? 2 : 1;
      expect(others.map((o) => (o.ok ? o.value.generation : 0)).sort()).toEqual([survivor, 3]);

      // The destroy itself is bounded by the recipe's grace, not by the 2 s close.
      await waitUntil(() => destroys.length === 1, 5_000, 'the destroy to finish');
      expect(destroys[0]!.ms).toBeGreaterThanOrEqual(400);
      expect(destroys[0]!.ms).toBeLessThan(1_500);
    },
    TEST_TIMEOUT,
  );

  it(
    'g. a result cut mid-stream is an error, never a short success',
    async () => {
      const k = kit();
      const proxy = await k.proxy();
      const guard = k.guard(pgOptions(viaProxy(proxy)));
      await readOne(guard);
      const rows = 200_000; // about 3.4 MB on the wire
      const sql = `SELECT g FROM generate_series(1, ${rows}) g`;
      const budgets = [2_048, 16_384, 131_072, 1_000_000];
      for (const budget of budgets) {
        proxy.limit(budget);
        const outcome = await settle(guard.read((handle, ctx) => pgQuery(handle, ctx, sql)));
        expect(
          outcome.ok,
          `budget ${budget}: resolved with ${outcome.ok ? outcome.value.rowCount : 0} rows`,
        ).toBe(false);
        if (outcome.ok) continue;
        expect(isFatalPgError(outcome.error), String(outcome.error)).toBe(true);
      }
      // Control: a budget above the result size lets it through whole.
      proxy.limit(64 * 1024 * 1024);
      const whole = await guard.read((handle, ctx) => pgQuery(handle, ctx, sql));
      expect(whole.rows.length).toBe(rows);
      proxy.limit(null);
      expect(guard.status().counters.replacements).toBe(budgets.length);
    },
    TEST_TIMEOUT,
  );
});
