/**
 * engine-guard/duckdb (src/adapters/duckdb.ts) against a real in-process DuckDB instance.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { DuckDBConnection, DuckDBInstance } from '@duckdb/node-api';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  duckdbGuardOptions,
  duckdbHoldsNoStatement,
  duckdbQuery,
  isFatalDuckDBError,
} from '../../src/adapters/duckdb.js';
import {
  EngineGuard,
  type EngineGuardOptions,
  type GuardEvents,
  type OpContext,
} from '../../src/index.js';

/** Hashing `rows` rows: an aggregate, silent until done. */
const aggregate = (rows: number): string =>
  `select sum(hash(i)) as s, count(*) as n from range(${rows}) t(i)`;

/** Rows this machine hashes per millisecond, measured once in beforeAll. */
let rowsPerMs = 0;

/**
 * An aggregate sized to run for about `ms` on this machine: fixed row counts ran 5× longer than
 * needed on a slow machine (CPU every run pays for) and could end too soon on a fast one.
 */
function aggregateFor(ms: number): { sql: string; rows: bigint } {
  const rows = Math.max(1_000_000, Math.round((rowsPerMs * ms) / 1_000_000) * 1_000_000);
  return { sql: aggregate(rows), rows: BigInt(rows) };
}
/** A 1e10-row nested-loop join: tens of seconds, only ever stopped by an interrupt. */
const ENDLESS =
  'select count(*) as n from range(100000) a, range(100000) b where a.range + b.range < 0';

let instance: DuckDBInstance;

beforeAll(async () => {
  instance = await DuckDBInstance.create(':memory:');
  const conn = await instance.connect();
  try {
    await conn.run(aggregate(5_000_000)); // warm-up
    const rows = 50_000_000;
    const t0 = performance.now();
    await conn.run(aggregate(rows));
    rowsPerMs = rows / Math.max(1, performance.now() - t0);
  } finally {
    conn.closeSync();
  }
});

afterAll(() => {
  instance?.closeSync();
});

type Options = EngineGuardOptions<DuckDBConnection>;

/** A guard on the shared instance, counting creates and destroys. */
function makeGuard(overrides: Partial<Options> = {}) {
  const base = duckdbGuardOptions(instance, overrides);
  const stats = { created: 0, destroyed: 0, sideProbes: 0, idleProbes: 0, probeFailures: 0 };
  const guard = new EngineGuard<DuckDBConnection>({
    ...base,
    create: async (ctx) => {
      const conn = await base.create(ctx);
      stats.created++;
      return conn;
    },
    destroy: async (conn, ctx) => {
      stats.destroyed++;
      await base.destroy?.(conn, ctx);
    },
    probe: async (conn, ctx) => {
      if (ctx.op === undefined) stats.idleProbes++;
      else stats.sideProbes++;
      try {
        return await base.probe?.(conn, ctx);
      } catch (error) {
        stats.probeFailures++;
        throw error;
      }
    },
  });
  return { guard, stats };
}

async function waitFor(cond: () => boolean, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

function record<K extends keyof GuardEvents>(
  guard: EngineGuard<DuckDBConnection>,
  type: K,
): GuardEvents[K][] {
  const seen: GuardEvents[K][] = [];
  guard.on(type, (event) => seen.push(event));
  return seen;
}

describe('DuckDB recipe: isFatalDuckDBError', () => {
  it('classifies what DuckDB and its Node binding throw', () => {
    const fatal = [
      'Failed to query: connection disconnected',
      'Failed to prepare: connection disconnected',
      'Failed to connect: instance closed',
      'Connection Error: Connection has already been closed',
      'FATAL Error: Failed: database has been invalidated because of a previous fatal error. The database must be restarted prior to being used again.',
      'INTERNAL Error: Attempted to access index 3 within vector of size 3',
    ];
    const benign = [
      'INTERRUPT Error: Interrupted!',
      'Parser Error: syntax error at or near "selec"',
      'Catalog Error: Table with name nope does not exist!',
      'Constraint Error: Duplicate key "id: 1" violates primary key constraint.',
      'Binder Error: Referenced column "x" not found in FROM clause!',
    ];
    for (const message of fatal) expect(isFatalDuckDBError(new Error(message)), message).toBe(true);
    for (const message of benign) {
      expect(isFatalDuckDBError(new Error(message)), message).toBe(false);
    }
    expect(isFatalDuckDBError('connection disconnected')).toBe(false);
    expect(isFatalDuckDBError(undefined)).toBe(false);
  });

  it('matches the real errors of a closed connection and a bad query', async () => {
    const conn = await instance.connect();
    const syntax = await conn.run('selec 1').catch((e: unknown) => e);
    expect(isFatalDuckDBError(syntax)).toBe(false);
    conn.closeSync();
    const closed = await conn.run('select 1').catch((e: unknown) => e);
    expect(closed).toBeInstanceOf(Error);
    expect(isFatalDuckDBError(closed)).toBe(true);
    const ac = new AbortController();
    const conn2 = await instance.connect();
    try {
      const running = duckdbQuery(conn2, { signal: ac.signal, heartbeat() {} }, ENDLESS);
      await sleep(200);
      const reason = new Error('stop');
      ac.abort(reason);
      await expect(running).rejects.toBe(reason);
    } finally {
      conn2.closeSync();
    }
  }, 30_000);
});

describe('DuckDB recipe under an EngineGuard', () => {
  it('runs reads concurrently, each on its own connection of the pool', async () => {
    const { guard, stats } = makeGuard({ pool: 2 });
    try {
      let active = 0;
      let maxActive = 0;
      const generations = new Set<number>();
      const windows: Array<[number, number]> = [];
      const concurrent = aggregateFor(500);
      const read = () =>
        guard.read(async (conn, ctx) => {
          active++;
          maxActive = Math.max(maxActive, active);
          generations.add(ctx.generation);
          const start = performance.now();
          try {
            return await duckdbQuery(conn, ctx, concurrent.sql);
          } finally {
            windows.push([start, performance.now()]);
            active--;
          }
        });
      const results = await Promise.all([read(), read(), read(), read()]);
      for (const rows of results)
        expect(rows).toEqual([{ s: expect.any(BigInt), n: concurrent.rows }]);
      expect(maxActive).toBe(2);
      expect(stats.created).toBe(2);
      expect(generations.size).toBe(2);
      // The first two overlapped in time.
      const [a, b] = windows.sort((x, y) => x[0] - y[0]);
      expect(b![0]).toBeLessThan(a![1]);
      // The last op's handle is back once its reset (the adapter's default) has run.
      await waitFor(() => guard.status().handles.busy === 0, 5_000, 'the last reset');
      expect(guard.status().handles).toMatchObject({ total: 2, busy: 0, idle: 2 });
    } finally {
      await guard.close();
    }
    expect(stats.destroyed).toBe(stats.created);
  }, 60_000);

  it('interrupts a long query on caller abort, keeps the connection and reuses it', async () => {
    const interrupt = vi.spyOn(DuckDBConnection.prototype, 'interrupt');
    const { guard, stats } = makeGuard({ pool: 1, cancelTimeout: 10_000 });
    const abandoned = record(guard, 'abandon');
    const replaced = record(guard, 'replace');
    try {
      const first = await guard.read((conn, ctx) => duckdbQuery(conn, ctx, 'select 1 as one'));
      expect(first).toEqual([{ one: 1 }]);
      const generation = guard.status().generation;

      const ac = new AbortController();
      let innerError: unknown;
      const long = guard.read(
        (conn, ctx) =>
          duckdbQuery(conn, ctx, ENDLESS).catch((error: unknown) => {
            innerError = error;
            throw error;
          }),
        { signal: ac.signal, label: 'endless' },
      );
      await waitFor(() => guard.status().running.length === 1, 10_000, 'the query to run');
      await sleep(500);
      const reason = new Error('caller gave up');
      const t0 = performance.now();
      ac.abort(reason);
      await expect(long).rejects.toBe(reason);
      expect(performance.now() - t0).toBeLessThan(1_000);

      // DuckDB winds the query down; the guard then keeps the handle.
      await waitFor(() => guard.status().running.length === 0, 10_000, 'the query to wind down');
      expect(innerError).toBe(reason);
      expect(interrupt).toHaveBeenCalled();
      const status = guard.status();
      expect(status.counters.cancels).toBe(1);
      expect(status.counters.aborts).toBe(1);
      expect(status.counters.replacements).toBe(0);
      expect(abandoned).toEqual([]);
      expect(replaced).toEqual([]);

      const next = await guard.read(async (conn, ctx) => ({
        rows: await duckdbQuery(conn, ctx, 'select 42 as answer'),
        generation: ctx.generation,
      }));
      expect(next).toEqual({ rows: [{ answer: 42 }], generation });
      expect(stats.created).toBe(1);
      expect(stats.destroyed).toBe(0);
    } finally {
      interrupt.mockRestore();
      await guard.close();
    }
  }, 60_000);

  it('lets a silent long aggregate run while side probes pass (interval 200 ms)', async () => {
    const { guard, stats } = makeGuard({
      pool: 2,
      liveness: { interval: 200, timeout: 1_000, failures: 3 },
    });
    const stalls = record(guard, 'stall');
    try {
      const long = aggregateFor(3_000);
      const t0 = performance.now();
      const rows = await guard.read((conn, ctx) => duckdbQuery(conn, ctx, long.sql));
      const elapsed = performance.now() - t0;
      expect(rows).toEqual([{ s: expect.any(BigInt), n: long.rows }]);
      // It ran silent for many intervals: probed from the side, never convicted.
      expect(elapsed).toBeGreaterThan(1_000);
      expect(stats.sideProbes).toBeGreaterThanOrEqual(3);
      expect(stalls).toEqual([]);
      const status = guard.status();
      expect(status.counters.stalls).toBe(0);
      expect(status.counters.replacements).toBe(0);
      expect(status.lastProbe?.ok).toBe(true);
    } finally {
      await guard.close();
    }
  }, 60_000);

  it('heartbeats once per streamed chunk', async () => {
    const { guard } = makeGuard({
      pool: 2,
      liveness: { interval: 200, timeout: 1_000, failures: 3 },
    });
    try {
      let beats = 0;
      const rows = await guard.read((conn, ctx: OpContext) =>
        duckdbQuery(
          conn,
          {
            signal: ctx.signal,
            heartbeat() {
              beats++;
              ctx.heartbeat();
            },
          },
          'select i, i % 7 as m from range(1000000) t(i)',
        ),
      );
      expect(rows).toHaveLength(1_000_000);
      expect(rows[5]).toEqual({ i: 5n, m: 5n });
      // 1e6 rows / 2,048 per chunk = 489 chunks, plus the call and the stream opening.
      expect(beats).toBeGreaterThanOrEqual(400);
      expect(guard.status().counters.stalls).toBe(0);
    } finally {
      await guard.close();
    }
  }, 60_000);

  it('runs writes exclusively; later reads see them', async () => {
    const { guard } = makeGuard({ pool: 2 });
    try {
      await guard.write((conn, ctx) =>
        duckdbQuery(conn, ctx, 'create or replace table writes_t (id integer, v varchar)'),
      );
      const events: string[] = [];
      let runningDuringWrite: number | undefined;
      const longRead = guard.read(async (conn, ctx) => {
        events.push('read:start');
        const rows = await duckdbQuery(conn, ctx, aggregateFor(1_500).sql);
        events.push('read:end');
        return rows;
      });
      await waitFor(() => guard.status().running.length === 1, 10_000, 'the long read');
      const write = guard.write(async (conn, ctx) => {
        events.push('write:start');
        runningDuringWrite = guard.status().running.length;
        const rows = await duckdbQuery(
          conn,
          ctx,
          "insert into writes_t values (1, 'a'), (2, 'b'), (3, 'c')",
        );
        events.push('write:end');
        return rows;
      });
      // Queued behind the running read; a read arriving now queues behind the write for the
      // lock's bypassAfter (100 ms), then passes it: the write waits for a long read (no convoy).
      await waitFor(() => guard.status().queue.writers === 1, 5_000, 'the queued write');
      const select = "select count(*) as n, string_agg(v, '' order by id) as s from writes_t";
      const laterRead = guard.read(async (conn, ctx) => {
        events.push('later:start');
        const rows = await duckdbQuery(conn, ctx, select);
        events.push('later:end');
        return rows;
      });
      await sleep(50);
      expect(guard.status().queue).toMatchObject({ writers: 1, readers: 1 });

      const [, inserted, passed] = await Promise.all([longRead, write, laterRead]);
      expect(inserted).toEqual([{ Count: 3n }]);
      expect(passed).toEqual([{ n: 0n, s: null }]);
      expect(events).toEqual([
        'read:start',
        'later:start',
        'later:end',
        'read:end',
        'write:start',
        'write:end',
      ]);
      expect(runningDuringWrite).toBe(1);
      // Reads after the write see it.
      await expect(guard.read((conn, ctx) => duckdbQuery(conn, ctx, select))).resolves.toEqual([
        { n: 3n, s: 'abc' },
      ]);
    } finally {
      await guard.close();
    }
  }, 60_000);

  it('answers status() within a few ms while a long query runs', async () => {
    const { guard } = makeGuard({
      pool: 1,
      liveness: { interval: 200, timeout: 1_000, failures: 3 },
    });
    try {
      const long = guard.read((conn, ctx) => duckdbQuery(conn, ctx, aggregateFor(3_000).sql), {
        label: 'long',
      });
      await waitFor(() => guard.status().running.length === 1, 10_000, 'the long query');
      await sleep(200);
      let worst = 0;
      for (let i = 0; i < 20; i++) {
        const t0 = performance.now();
        const status = guard.status();
        worst = Math.max(worst, performance.now() - t0);
        expect(status.running[0]).toMatchObject({ kind: 'read', label: 'long' });
        expect(status.handles.busy).toBe(1);
        // The event loop is free too: a timer fires on time.
        const t1 = performance.now();
        await sleep(10);
        expect(performance.now() - t1).toBeLessThan(250);
      }
      expect(worst).toBeLessThan(5);
      expect(guard.status().running.length).toBe(1);
      await long;
    } finally {
      await guard.close();
    }
  }, 60_000);

  it('retires a connection on a fatal error and answers with the original error', async () => {
    const { guard, stats } = makeGuard({ pool: 1 });
    const replaced = record(guard, 'replace');
    try {
      const generation = await guard.read((_conn, ctx) => ctx.generation);
      const error = await guard
        .read(async (conn, ctx) => {
          conn.closeSync(); // the connection is gone under the op
          return duckdbQuery(conn, ctx, 'select 1');
        })
        .catch((e: unknown) => e);
      expect(error).toBeInstanceOf(Error);
      expect((error as Error).message).toMatch(/connection disconnected/);
      expect(replaced).toEqual([{ generation, reason: 'fatal', cause: error }]);
      const next = await guard.read(async (conn, ctx) => ({
        rows: await duckdbQuery(conn, ctx, 'select 2 as two'),
        generation: ctx.generation,
      }));
      expect(next.rows).toEqual([{ two: 2 }]);
      expect(next.generation).toBeGreaterThan(generation);
      expect(stats.created).toBe(2);
      // A plain SQL error keeps the handle.
      await expect(guard.read((conn, ctx) => duckdbQuery(conn, ctx, 'selec 1'))).rejects.toThrow(
        /Parser Error/,
      );
      expect(guard.status().counters.replacements).toBe(1);
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('close() interrupts a running query and closes its connection without hanging', async () => {
    const { guard, stats } = makeGuard({ pool: 1, closeTimeout: 5_000, destroyTimeout: 5_000 });
    try {
      const long = guard.read((conn, ctx) => duckdbQuery(conn, ctx, ENDLESS));
      const outcome = long.catch((e: unknown) => e);
      await waitFor(() => guard.status().running.length === 1, 10_000, 'the query to run');
      await sleep(200);
      const t0 = performance.now();
      await guard.close();
      expect(performance.now() - t0).toBeLessThan(5_000);
      expect(((await outcome) as Error).name).toBe('GuardClosedError');
      expect(stats.destroyed).toBe(1);
      // The instance is fine.
      const conn = await instance.connect();
      try {
        expect((await conn.runAndReadAll('select 3 as three')).getRowObjectsJS()).toEqual([
          { three: 3 },
        ]);
      } finally {
        conn.closeSync();
      }
    } finally {
      await guard.close();
    }
  }, 30_000);
});

describe('DuckDB adapter: options and edge cases', () => {
  it('an override that is undefined leaves the default in place (as in engine-guard/pg)', () => {
    const defaults = duckdbGuardOptions(instance);
    const options = duckdbGuardOptions(instance, {
      probe: undefined,
      cancel: undefined,
      destroy: undefined,
      pool: undefined,
      name: undefined,
    });
    expect(typeof options.probe).toBe('function');
    expect(typeof options.cancel).toBe('function');
    expect(typeof options.destroy).toBe('function');
    expect(options.pool).toBe(defaults.pool);
    expect(options.name).toBe('duckdb');
    // A defined override still replaces the default.
    const probe = () => undefined;
    expect(duckdbGuardOptions(instance, { probe, pool: 1 })).toMatchObject({ probe, pool: 1 });
  });

  it('rejects bad input with a TypeError', () => {
    expect(() => duckdbGuardOptions(null as never)).toThrow(TypeError);
    expect(() => duckdbGuardOptions({} as never)).toThrow(/instance/);
    expect(() => duckdbGuardOptions(instance, null as never)).toThrow(/overrides/);
  });

  it('SQL that holds no statement returns no rows, as PostgreSQL does', async () => {
    const { guard } = makeGuard();
    try {
      for (const sql of ['', '   ', '-- c', ';', ' ; ; ', '/* c */']) {
        expect(await guard.read((conn, ctx) => duckdbQuery(conn, ctx, sql))).toEqual([]);
      }
      // A real error is still reported as it is.
      await expect(guard.read((conn, ctx) => duckdbQuery(conn, ctx, 'selec 1'))).rejects.toThrow(
        /Parser Error/,
      );
      await expect(guard.read((conn, ctx) => duckdbQuery(conn, ctx, '/* c'))).rejects.toThrow();
      const conn = await instance.connect();
      try {
        for (const sql of ['', ' ; ', '-- c', '/* c */']) {
          expect(await duckdbHoldsNoStatement(conn, sql), sql).toBe(true);
        }
        for (const sql of ['select 1', 'selec 1', '/* c', "select ';'"]) {
          expect(await duckdbHoldsNoStatement(conn, sql), sql).toBe(false);
        }
        await expect(duckdbHoldsNoStatement(conn, 42 as never)).rejects.toThrow(TypeError);
      } finally {
        conn.closeSync();
      }
    } finally {
      await guard.close();
    }
  });
});
