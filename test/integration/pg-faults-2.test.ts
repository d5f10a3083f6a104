/**
 * Fault scenarios (SPEC 7) against the real PostgreSQL through a FaultProxy, guarded with the
 * PostgreSQL adapter (engine-guard/pg, src/adapters/pg.ts). Part 2: slow links, caller aborts, server
 * restart, writes under random faults, a writer queued behind a wedged reader. Part 1 is
 * pg-faults.test.ts; the helpers of both are in test/support/pg-faults-kit.ts.
 *
 * Liveness is { interval: 250, timeout: 250, failures: 2 }: a silent op whose engine stopped
 * answering is convicted at most interval × failures + timeout = 750 ms after its last sign of
 * life. Assertions allow a generous margin on top for this noisy machine.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { isFatalPgError, type PgHandle, pgQuery } from '../../src/adapters/pg.js';
import { EngineStalledError } from '../../src/index.js';
import { adminQuery } from '../support/pg.js';
import {
  activity,
  BOUND,
  kit,
  LIVENESS,
  MARGIN,
  pgOptions,
  readOne,
  readTwice,
  STATUS_MAX_MS,
  sampleStatus,
  scratchTable,
  settle,
  TEST_TIMEOUT,
  viaProxy,
  waitFor,
  within,
} from '../support/pg-faults-kit.js';

describe('PostgreSQL through a FaultProxy, part 2', () => {
  it(
    'h. a slow but alive link causes no false conviction',
    async () => {
      const k = kit();
      const proxy = await k.proxy();
      proxy.latency(100, 50); // every chunk 50..150 ms late, each way: a round trip up to 300 ms
      // A busy-handle probe opens a side connection (startup round trip) and queries it (a second
      // round trip): up to 600 ms on this link, so the probe timeout must be above that.
      const liveness = { interval: 250, timeout: 900, failures: 2 };
      const guard = k.guard(pgOptions(viaProxy(proxy), { pool: 2, liveness }));
      const failures: unknown[] = [];
      guard.on('probeFailure', (event) => failures.push(String(event.error)));

      const [slept, quick] = await Promise.all([
        readOne(guard, 'SELECT 1 AS v FROM pg_sleep(2)'),
        (async () => {
          const values: unknown[] = [];
          for (let i = 0; i < 5; i++) values.push((await readOne(guard, `SELECT ${i} AS v`)).v);
          return values;
        })(),
      ]);
      expect(slept.v).toBe(1);
      expect(quick).toEqual([0, 1, 2, 3, 4]);
      const big = await guard.read((handle, ctx) =>
        pgQuery(handle, ctx, 'SELECT g FROM generate_series(1, 50000) g'),
      );
      expect(big.rows.length).toBe(50_000);
      await guard.write((handle, ctx) => pgQuery(handle, ctx, 'SELECT pg_sleep(1)'));

      const status = guard.status();
      expect(failures).toEqual([]);
      expect(status.counters.stalls).toBe(0);
      expect(status.counters.probeFailures).toBe(0);
      expect(status.counters.replacements).toBe(0);
      expect(status.lastProbe?.ok).toBe(true);
    },
    TEST_TIMEOUT,
  );

  it(
    'i. a caller abort cancels the query on the server and keeps the handle',
    async () => {
      const { guard } = await kit().proxiedGuard();
      const first = await readOne(guard);

      const controller = new AbortController();
      const reason = new Error('the caller gave up');
      const pending = guard.read((handle, ctx) => pgQuery(handle, ctx, 'SELECT pg_sleep(30)'), {
        signal: controller.signal,
      });
      const outcome = settle(pending);
      await waitFor(
        async () => (await activity(first.pid))?.state === 'active',
        5_000,
        'the query to run',
      );
      await sleep(300);
      const abortedAt = performance.now();
      controller.abort(reason);
      const settled = await outcome;
      expect(settled.ok).toBe(false);
      if (settled.ok) return;
      expect(settled.error).toBe(reason);
      expect(settled.at - abortedAt).toBeLessThan(100);

      // The server stops working on it: a real server-side cancel.
      await waitFor(
        async () => (await activity(first.pid))?.state !== 'active',
        5_000,
        'the backend to stop running the query',
      );
      const after = await activity(first.pid);
      expect(after?.state).toBe('idle');
      const status = guard.status();
      expect(status.counters.cancels).toBeGreaterThanOrEqual(1);
      expect(status.counters.aborts).toBe(1);

      // The handle was kept: same generation, same backend.
      const next = await readOne(guard, 'SELECT 11 AS v');
      expect(next).toEqual({ v: 11, generation: first.generation, pid: first.pid });
      expect(guard.status().counters.replacements).toBe(0);
    },
    TEST_TIMEOUT,
  );

  it(
    'j. aborts racing completion 1,000 times: everything settles, no double release, no collateral cancel',
    async () => {
      const { guard } = await kit().proxiedGuard({ pool: 2 });
      const inUse = new Set<PgHandle>();
      const overlaps: string[] = [];
      /** A read that checks that no other op holds its handle meanwhile. */
      const exclusiveRead = (sql: string, signal?: AbortSignal) =>
        guard.read(
          async (handle, ctx) => {
            if (inUse.has(handle)) overlaps.push(`handle of backend ${handle.pid} shared`);
            inUse.add(handle);
            try {
              return (await pgQuery<{ v: number }>(handle, ctx, sql)).rows[0]?.v;
            } finally {
              inUse.delete(handle);
            }
          },
          signal === undefined ? undefined : { signal },
        );

      const lanes = 4;
      const perLane = 250;
      let resolved = 0;
      let aborted = 0;
      const unexpected: unknown[] = [];
      const collateral: unknown[] = [];
      const lane = async (id: number) => {
        for (let i = 0; i < perLane; i++) {
          const controller = new AbortController();
          const reason = new Error(`abort ${id}/${i}`);
          const pending = exclusiveRead('SELECT 1 AS v', controller.signal);
          const abort = () => controller.abort(reason);
          switch (Math.floor(Math.random() * 6)) {
            case 0:
              abort(); // before it can run
              break;
            case 1:
              queueMicrotask(abort);
              break;
            case 2:
              setImmediate(abort);
              break;
            case 3:
              setTimeout(abort, Math.random() * 2);
              break;
            case 4:
              setTimeout(abort, Math.random() * 6);
              break;
            default:
              void pending.finally(abort).catch(() => {}); // after completion
          }
          const outcome = await settle(within(pending, 10_000, `op ${id}/${i}`));
          if (outcome.ok) {
            expect(outcome.value).toBe(1);
            resolved++;
          } else if (outcome.error === reason) {
            aborted++;
          } else {
            unexpected.push(outcome.error);
          }
          // A sentinel that nobody aborts must never be hit by a cancel meant for another op.
          const sentinel = await settle(
            within(exclusiveRead('SELECT 42 AS v'), 10_000, 'sentinel'),
          );
          if (!sentinel.ok) collateral.push(sentinel.error);
          else expect(sentinel.value).toBe(42);
        }
      };
      const started = performance.now();
      await Promise.all(Array.from({ length: lanes }, (_, id) => lane(id)));
      const elapsed = performance.now() - started;

      expect(unexpected).toEqual([]);
      expect(collateral).toEqual([]);
      expect(overlaps).toEqual([]);
      expect(resolved + aborted).toBe(lanes * perLane);
      expect(aborted).toBeGreaterThan(0);
      expect(resolved).toBeGreaterThan(0);
      expect(elapsed).toBeLessThan(20_000);

      // The last aborted ops may still be winding down (their callers were answered at once;
      // the guard holds the handle until the cancel call is done, then while its reset runs).
      // Then nothing is left.
      const quiet = performance.now() + 6_000;
      const windingDown = () => {
        const { running, handles } = guard.status();
        return running.length > 0 || handles.busy > 0;
      };
      while (windingDown() && performance.now() < quiet) await sleep(10);
      // Nothing leaked: no running op, no queue, no busy handle; the exclusive lock is free.
      const status = guard.status();
      expect(status.running).toEqual([]);
      expect(status.queue).toEqual({ readers: 0, writers: 0, forHandle: 0 });
      expect(status.handles.busy).toBe(0);
      expect(status.handles.total).toBeLessThanOrEqual(2);
      expect(status.counters.stalls).toBe(0);
      expect(status.counters.replacements).toBe(0);
      // Some aborts caught their query in flight: real cancels were sent, none hit a sentinel.
      expect(status.counters.cancels).toBeGreaterThan(0);
      const write = await within(
        guard.write((handle, ctx) => pgQuery(handle, ctx, 'SELECT 1')),
        2_000,
        'a write after the churn',
      );
      expect(write.rowCount).toBe(1);
    },
    TEST_TIMEOUT,
  );

  it(
    'k. server restart: reads recover on new handles',
    async () => {
      const { cluster, guard } = await kit().clusterGuard({ pool: 2 });
      const warm = await readTwice(guard, 'SELECT 1 AS v FROM pg_sleep(0.1)');
      expect(warm.map((r) => r.generation).sort()).toEqual([1, 2]);

      await cluster.restart();

      const failures: unknown[] = [];
      let successes = 0;
      for (let attempt = 0; attempt < 10 && successes < 4; attempt++) {
        const outcome = await settle(readOne(guard, 'SELECT 12 AS v'));
        if (outcome.ok) {
          expect(outcome.value.v).toBe(12);
          expect(outcome.value.generation).toBeGreaterThanOrEqual(3);
          successes++;
        } else {
          expect(successes, 'a read failed after one had succeeded').toBe(0);
          failures.push(outcome.error);
        }
      }
      expect(successes).toBe(4);
      // The handles that died with the old server saw their sockets close while idle: isAlive
      // retires them before use, so no caller pays for the restart with an error.
      expect(failures).toEqual([]);
      const both = await readTwice(guard, 'SELECT 13 AS v FROM pg_sleep(0.1)');
      expect(both.map((r) => r.v)).toEqual([13, 13]);
      const status = guard.status();
      expect(status.counters.replacements).toBeGreaterThanOrEqual(2);
      expect(status.generation).toBeGreaterThanOrEqual(4);
      expect(status.state).toBe('ready');
    },
    TEST_TIMEOUT,
  );

  it(
    'l. concurrent writes under random faults lose no acknowledged write',
    async () => {
      const k = kit();
      const table = await scratchTable('acks');
      const proxy = await k.proxy();
      const guard = k.guard(
        pgOptions(viaProxy(proxy), {
          pool: 2,
          cancelTimeout: 1_000,
          destroyTimeout: 1_000,
          reconnect: { initialDelay: 50, maxDelay: 300, failFastAfter: 1_000 },
        }),
      );
      await readOne(guard);

      const writes = 200;
      const window = 3_000;
      const faults = { resets: 0, blackholes: 0 };
      const injector = (async () => {
        const end = performance.now() + window;
        while (performance.now() < end) {
          await sleep(100 + Math.random() * 250);
          if (Math.random() < 0.5) {
            proxy.reset();
            faults.resets++;
          } else {
            proxy.blackhole();
            faults.blackholes++;
            await sleep(100 + Math.random() * 400);
            proxy.heal();
          }
        }
        proxy.heal();
      })();
      const outcomes = await Promise.all(
        Array.from({ length: writes }, async (_, id) => {
          await sleep(Math.random() * window);
          return settle(
            within(
              guard.write((handle, ctx) =>
                pgQuery(handle, ctx, `INSERT INTO ${table} (id) VALUES ($1)`, [id]),
              ),
              20_000,
              `write ${id}`,
            ).then(() => id),
          );
        }),
      );
      await injector;

      const acknowledged = outcomes.flatMap((o) => (o.ok ? [o.value] : []));
      const { rows } = await adminQuery<{ id: number }>(`SELECT id FROM ${table}`);
      const stored = new Set(rows.map((r) => r.id));
      expect(acknowledged.filter((id) => !stored.has(id))).toEqual([]);

      // Every failure is one the caller can act on: a fatal connection error, or a stall
      // reported as indeterminate.
      const odd = outcomes.flatMap((o) =>
        o.ok ||
        isFatalPgError(o.error) ||
        (o.error instanceof EngineStalledError && o.error.indeterminate)
          ? []
          : [o.error],
      );
      expect(odd).toEqual([]);
      expect(faults.resets + faults.blackholes).toBeGreaterThan(3);
      expect(acknowledged.length).toBeGreaterThan(writes / 2);
      // The guard is healthy afterwards. (A handle reset while idle is known dead to the recipe,
      // but the guard only asks, with the idle check, once a handle sat idle for
      // idleCheckAfter = interval: wait that long so no write is handed a dead handle.)
      await sleep(LIVENESS.interval + 50);
      await guard.write((handle, ctx) =>
        pgQuery(handle, ctx, `INSERT INTO ${table} (id) VALUES ($1)`, [writes]),
      );
    },
    TEST_TIMEOUT,
  );

  it(
    'm. a writer queued behind a wedged reader proceeds on a new handle after conviction',
    async () => {
      const k = kit();
      const table = await scratchTable('queued_writer');
      const { proxyA, guard } = await k.twoRouteGuard(1);
      expect((await readOne(guard)).generation).toBe(1);

      const reader = settle(
        guard.read((handle, ctx) => pgQuery(handle, ctx, 'SELECT pg_sleep(20)'), {
          label: 'wedged reader',
        }),
      );
      await sleep(2 * LIVENESS.interval);
      const sampler = sampleStatus(guard);
      const wedgedAt = performance.now();
      proxyA.blackhole();
      const writer = settle(
        guard.write(
          async (handle, ctx) => {
            await pgQuery(handle, ctx, `INSERT INTO ${table} (id) VALUES (1)`);
            return ctx.generation;
          },
          { label: 'queued writer' },
        ),
      );
      await sleep(50);
      const during = guard.status();
      expect(during.queue.writers).toBe(1);
      expect(during.running.map((op) => [op.kind, op.label, op.generation])).toEqual([
        ['read', 'wedged reader', 1],
      ]);

      const wrote = await writer;
      const { maxMs } = sampler.stop();
      expect(wrote.ok).toBe(true);
      if (!wrote.ok) return;
      expect(wrote.value).toBe(2);
      expect(wrote.at - wedgedAt).toBeLessThan(BOUND + MARGIN);
      const read = await reader;
      expect(read.ok).toBe(false);
      if (read.ok) return;
      expect(read.error).toBeInstanceOf(EngineStalledError);
      expect(read.at).toBeLessThanOrEqual(wrote.at);
      expect(maxMs).toBeLessThan(STATUS_MAX_MS);
      const { rows } = await adminQuery<{ id: number }>(`SELECT id FROM ${table}`);
      expect(rows).toEqual([{ id: 1 }]);
      const status = guard.status();
      expect(status.queue).toEqual({ readers: 0, writers: 0, forHandle: 0 });
      expect(status.counters.stalls).toBe(1);
    },
    TEST_TIMEOUT,
  );
});
