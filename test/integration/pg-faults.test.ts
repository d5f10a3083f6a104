/**
 * Fault scenarios (SPEC 7) against the real PostgreSQL through a FaultProxy, guarded with the
 * PostgreSQL adapter (engine-guard/pg, src/adapters/pg.ts). Part 1: half-open links, wedged servers,
 * resets, slow closes and cut results. Part 2 is pg-faults-2.test.ts; the helpers of both are in
 * test/support/pg-faults-kit.ts.
 *
 * Liveness is { interval: 250, timeout: 250, failures: 2 }: a silent op whose engine stopped
 * answering is convicted at most interval × failures + timeout = 750 ms after its last sign of
 * life. Assertions allow a generous margin on top for this noisy machine.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { isFatalPgError, type PgHandle, pgQuery } from '../../src/adapters/pg.js';
import {
  type EngineGuard,
  EngineStalledError,
  EngineUnavailableError,
  LockTimeoutError,
} from '../../src/index.js';
import { resumeBackend } from '../support/pg.js';
import {
  BOUND,
  kit,
  LIVENESS,
  MARGIN,
  type PgOptions,
  pgOptions,
  readOne,
  readTwice,
  STATUS_MAX_MS,
  sampleStatus,
  settle,
  TEST_TIMEOUT,
  viaProxy,
  waitFor,
} from '../support/pg-faults-kit.js';

/** A guard with one handle, used once, now idle behind a half-open (blackholed) link. */
/** Resolves once every handle is back in the pool: the last op's reset (the adapter's default) ran. */
function handlesIdle(guard: EngineGuard<PgHandle>): Promise<void> {
  return waitFor(() => guard.status().handles.busy === 0, 5_000, 'the reset after the last op');
}

async function halfOpenIdle(overrides: Partial<PgOptions> = {}) {
  const { proxy, guard } = await kit().proxiedGuard(overrides);
  const first = await readOne(guard);
  // The link dies while the handle is idle, not while its reset is on the wire.
  await handlesIdle(guard);
  proxy.blackhole();
  return { proxy, guard, first };
}

/** A read of `SELECT 1` with a caller timeout: what it failed with, and after how long. */
async function readWithTimeout(guard: EngineGuard<PgHandle>, timeout: number) {
  const started = performance.now();
  const error = await guard
    .read((handle, ctx) => pgQuery(handle, ctx, 'SELECT 1'), { timeout })
    .catch((e: unknown) => e);
  return { error, elapsed: performance.now() - started };
}

/** A busy op convicted `convictedIn` ms after its engine fell silent: not too early, in bound. */
function expectConvictedInBound(convictedIn: number) {
  expect(convictedIn).toBeGreaterThanOrEqual((LIVENESS.failures - 1) * LIVENESS.interval - 50);
  expect(convictedIn).toBeLessThan(BOUND + MARGIN);
}

describe('PostgreSQL through a FaultProxy, part 1', () => {
  it(
    'a. half-open idle handle: a read with a timeout fails within it, status stays instant',
    async () => {
      const { guard, first } = await halfOpenIdle();
      expect(first.generation).toBe(1);

      const sampler = sampleStatus(guard);
      await sleep(LIVENESS.interval + 100); // idle long enough to be checked before reuse
      const timeout = 1_500;
      const { error, elapsed } = await readWithTimeout(guard, timeout);
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
      const { proxy, guard, first } = await halfOpenIdle();
      expect(first.generation).toBe(1);

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
      const { guard } = await halfOpenIdle({ liveness: slowIdleCheck });
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
      const { guard } = await halfOpenIdle({ liveness: slowIdleCheck });
      await sleep(slowIdleCheck.interval + 100);
      const timeout = 300;
      const { error, elapsed } = await readWithTimeout(guard, timeout);
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
      const { proxyA, guard } = await kit().twoRouteGuard(2);
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
      expectConvictedInBound(outcome.at - blackholedAt);
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
      const { guard } = await kit().proxiedGuard();
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
      // No idle check: the read must go to the wedged handle and be convicted there.
      const { guard } = await k.proxiedGuard({ liveness: { ...LIVENESS, idleCheckAfter: false } });
      const { pid, generation } = await readOne(guard);
      expect(generation).toBe(1);
      // Wedged while idle: once the reset after the read is done.
      await handlesIdle(guard);
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
      const { cluster, guard } = await k.clusterGuard({ cancelTimeout: 1_000 });
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
      expectConvictedInBound(outcome.at - frozenAt);

      const next = await readOne(guard, 'SELECT 7 AS v');
      expect(next.v).toBe(7);
      expect(next.generation).toBe(2);
    },
    TEST_TIMEOUT,
  );

  it(
    'e. reset mid-result: the caller gets an error, the handle is replaced, the next read works',
    async () => {
      const { proxy, guard } = await kit().proxiedGuard();
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
      await waitFor(
        () => proxy.stats.bytesToClient - before > 256 * 1024,
        10_000,
        'the result to start streaming',
        1,
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
      const warm = await readTwice(guard, 'SELECT 1 AS v FROM pg_sleep(0.1)');
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
      await waitFor(() => destroys.length === 1, 5_000, 'the destroy to finish', 1);
      expect(destroys[0]!.ms).toBeGreaterThanOrEqual(400);
      expect(destroys[0]!.ms).toBeLessThan(1_500);
    },
    TEST_TIMEOUT,
  );

  it(
    'g. a result cut mid-stream is an error, never a short success',
    async () => {
      const { proxy, guard } = await kit().proxiedGuard();
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
