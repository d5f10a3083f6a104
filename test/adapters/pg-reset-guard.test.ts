/**
 * The measurements of issue 9, reversed, through a real EngineGuard with `pool: 4` on the real
 * PostgreSQL: with engine-guard/pg's default reset, the session state one stateless op leaves
 * (temporary tables, SET, advisory locks, PREPARE) never reaches a later op, whichever handle it
 * lands on. Each case also runs with `reset: undefined`, where the state does leak: the check
 * is one that can fail.
 */
import { once } from 'node:events';
import { EngineGuard, type GuardEvents, type OpContext } from 'engine-guard';
import { type PgHandle, pgGuardOptions, pgQuery, pgReadOnly } from 'engine-guard/pg';
import { FaultProxy } from 'engine-guard/testing';
import { describe, expect, it, onTestFinished } from 'vitest';
import { adminQuery, clientConfig, pgConfig, terminateBackend, withClient } from '../support/pg.js';
import { type PgOptions, scratchTable, settle, waitFor } from '../support/pg-faults-kit.js';

const POOL = 4;
/** Concurrent reads after the op that left state: twice the pool, so every handle serves some. */
const READS = 2 * POOL;

function guardOf(overrides: Partial<PgOptions> = {}): EngineGuard<PgHandle> {
  const guard = new EngineGuard(
    pgGuardOptions({ config: clientConfig() }, { pool: POOL, ...overrides }),
  );
  onTestFinished(() => guard.close());
  return guard;
}

/**
 * `READS` concurrent reads of `sql`, each holding its handle a little so that they spread over
 * every handle; resolves to each one's outcome and the backends they ran on.
 */
async function readsOnEveryHandle(guard: EngineGuard<PgHandle>, sql: string) {
  const outcomes = await Promise.all(
    Array.from({ length: READS }, () =>
      settle(
        guard.read(async (pg, ctx) => {
          await pgQuery(pg, ctx, 'SELECT pg_sleep(0.05)');
          const { rows } = await pgQuery<{ v: unknown }>(pg, ctx, sql);
          return { v: rows[0]?.v, pid: pg.pid };
        }),
      ),
    ),
  );
  const pids = new Set(outcomes.flatMap((o) => (o.ok ? [o.value.pid] : [])));
  const failures = outcomes.flatMap((o) => (o.ok ? [] : [(o.error as Error).message]));
  return { values: outcomes.flatMap((o) => (o.ok ? [o.value.v] : [])), failures, pids };
}

/** Runs `fn` on each of the guard's `POOL` handles at once (each op holds its handle a while first). */
async function onEachHandle(
  guard: EngineGuard<PgHandle>,
  fn: (pg: PgHandle, ctx: OpContext) => Promise<unknown>,
): Promise<Set<number>> {
  const pids = await Promise.all(
    Array.from({ length: POOL }, () =>
      guard.read(async (pg, ctx) => {
        await pgQuery(pg, ctx, 'SELECT pg_sleep(0.1)');
        await fn(pg, ctx);
        return pg.pid;
      }),
    ),
  );
  return new Set(pids);
}

/**
 * Runs `check` on a guard with the default reset (where nothing may leak) and on one with
 * `reset: undefined` (where the state does leak, so the check is one that can fail).
 */
async function withAndWithoutReset(
  check: (guard: EngineGuard<PgHandle>, reset: 'default' | 'off', leaks: boolean) => Promise<void>,
): Promise<void> {
  await check(guardOf(), 'default', false);
  await check(guardOf({ reset: undefined }), 'off', true);
}

/** Advisory locks on `key` held by any backend. */
async function advisoryHolders(key: number): Promise<number> {
  const { rows } = await adminQuery<{ n: number }>(
    "SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND objid = $1",
    [key],
  );
  return rows[0]?.n ?? -1;
}

/** Resolves once nothing is queued or running on the handle's client. */
async function idle(pg: PgHandle): Promise<void> {
  const client = pg.client as unknown as { readyForQuery?: boolean } & NodeJS.EventEmitter;
  if (client.readyForQuery === false) await once(client, 'drain');
}

/** Resolves once no handle of the guard is being reset (they are all back in the pool). */
function resetsDone(guard: EngineGuard<PgHandle>): Promise<void> {
  return waitFor(
    () => {
      const { handles } = guard.status();
      return handles.busy === 0 && handles.total === handles.idle;
    },
    5_000,
    'the resets to finish',
  );
}

describe('stateless ops with the default reset, pool 4 (issue 9 reversed)', () => {
  it('a temporary table one op created is seen by no later op', async () => {
    await withAndWithoutReset(async (guard, reset, leaks) => {
      await onEachHandle(guard, (pg, ctx) =>
        pgQuery(
          pg,
          ctx,
          'CREATE TEMPORARY TABLE scratch (x int); INSERT INTO scratch VALUES (1), (2)',
        ),
      );
      const { values, pids } = await readsOnEveryHandle(
        guard,
        "SELECT to_regclass('pg_temp.scratch')::text AS v",
      );
      expect(pids.size).toBe(POOL);
      expect([reset, values.some((v) => v !== null)]).toEqual([reset, leaks]);
    });
  });

  it('SET search_path and statement_timeout of one op never affect a later op', async () => {
    const table = await scratchTable('reset_sp');
    await withAndWithoutReset(async (guard, reset, leaks) => {
      await onEachHandle(guard, (pg, ctx) => pgQuery(pg, ctx, 'SET search_path TO nowhere'));
      const afterPath = await readsOnEveryHandle(guard, `SELECT count(*)::int AS v FROM ${table}`);
      expect([reset, afterPath.failures.length > 0]).toEqual([reset, leaks]);
      if (!leaks) {
        expect(afterPath.pids.size).toBe(POOL);
        expect(afterPath.values).toEqual(Array(READS).fill(0));
      }

      await guard.write((pg, ctx) => pgQuery(pg, ctx, 'RESET search_path'));
      await onEachHandle(guard, (pg, ctx) => pgQuery(pg, ctx, "SET statement_timeout = '1ms'"));
      const afterTimeout = await readsOnEveryHandle(guard, 'SELECT 1 AS v');
      expect([reset, afterTimeout.failures.some((m) => /statement timeout/.test(m))]).toEqual([
        reset,
        leaks,
      ]);
    });
  });

  it('keeps the search_path setup made, on every handle, across ops that change it', async () => {
    const table = await scratchTable('reset_setup');
    const guard = guardOf({
      setup: async (pg, { signal }) => {
        await pgQuery(pg, { signal, heartbeat() {} }, "SET search_path TO pg_temp, 'public'");
      },
    });
    await onEachHandle(guard, (pg, ctx) => pgQuery(pg, ctx, 'SET search_path TO nowhere'));
    const { values, failures } = await readsOnEveryHandle(
      guard,
      "SELECT current_setting('search_path') AS v",
    );
    expect(failures).toEqual([]);
    expect(new Set(values)).toEqual(new Set(['pg_temp, public']));
    expect(
      (await readsOnEveryHandle(guard, `SELECT count(*)::int AS v FROM ${table}`)).failures,
    ).toEqual([]);
  });

  it('a pg_advisory_lock taken in a read is not held after it (pg_locks)', async () => {
    await withAndWithoutReset(async (guard, reset, leaks) => {
      const key = reset === 'off' ? 9_042 : 9_043;
      // The case: a read runs the lock in a rolled-back read-only transaction.
      await guard.read((pg, ctx) => pgReadOnly(pg, ctx, `SELECT pg_advisory_lock(${key})`));
      await guard.read((pg, ctx) => pgQuery(pg, ctx, `SELECT pg_advisory_lock_shared(${key})`));
      await resetsDone(guard);
      expect([reset, (await advisoryHolders(key)) > 0]).toEqual([reset, leaks]);
    });
  });

  it('PREPARE in one op does not leak to a later op', async () => {
    await withAndWithoutReset(async (guard, reset, leaks) => {
      await onEachHandle(guard, (pg, ctx) => pgQuery(pg, ctx, 'PREPARE p1 AS SELECT 42 AS v'));
      const { values, pids } = await readsOnEveryHandle(
        guard,
        'SELECT count(*)::int AS v FROM pg_prepared_statements',
      );
      expect(pids.size).toBe(POOL);
      expect([reset, values.some((v) => v !== 0)]).toEqual([reset, leaks]);
    });
  });
});

describe('the default reset through the guard', () => {
  it('skips after pgReadOnly reads that left nothing, runs after those that did', async () => {
    // Every statement that goes on the wire, recorded at pg's connection from setup on: the
    // reset goes there whether it is put off to the next query's batch or sent alone.
    const sent: string[] = [];
    const guard = guardOf({
      pool: 1,
      setup: (pg) => {
        const connection = (
          pg.client as unknown as {
            connection: {
              query: (text: string) => void;
              parse: (query: { text: string }) => void;
            };
          }
        ).connection;
        const query = connection.query.bind(connection);
        const parse = connection.parse.bind(connection);
        connection.query = (text) => {
          sent.push(text);
          query(text);
        };
        connection.parse = (config) => {
          sent.push(config.text);
          parse(config);
        };
      },
    });
    const resetAfter = async (fn: (pg: PgHandle, ctx: OpContext) => Promise<unknown>) => {
      await guard.read(fn);
      await resetsDone(guard);
      // A reset put off is sent alone once the handle sat idle for an event-loop turn.
      await new Promise((resolve) => setImmediate(resolve));
      await guard.read((pg) => idle(pg));
      const discards = sent.filter((sql) => /DISCARD/.test(sql)).length;
      sent.length = 0;
      return discards === 1 ? 'ran' : discards === 0 ? 'skipped' : `${discards} resets`;
    };
    const outcomes: string[] = [];
    for (let i = 0; i < 5; i++) {
      outcomes.push(await resetAfter((pg, ctx) => pgReadOnly(pg, ctx, 'SELECT 1')));
    }
    outcomes.push(
      await resetAfter((pg, ctx) => pgReadOnly(pg, ctx, 'SELECT pg_advisory_lock(9044)')),
      await resetAfter((pg, ctx) => pgReadOnly(pg, ctx, 'SELECT 1')),
      await resetAfter((pg, ctx) => pgQuery(pg, ctx, 'SELECT 1')),
    );
    // The lock taken in pgReadOnly is released by its own ROLLBACK round trip.
    expect(outcomes).toEqual([...Array(7).fill('skipped'), 'ran']);
    expect(await advisoryHolders(9044)).toBe(0);
  });

  it('a session is never reset: the lock its pgReadOnly took stays its own', async () => {
    const guard = guardOf({ pool: 1, maxSessions: 1 });
    const session = guard.session({ label: 'holder' });
    await session.read((pg, ctx) => pgReadOnly(pg, ctx, 'SELECT pg_advisory_lock(9045)'));
    await guard.read((pg, ctx) => pgQuery(pg, ctx, 'SELECT 1'));
    await resetsDone(guard);
    expect(await advisoryHolders(9045)).toBe(1);
    await session.close();
    await waitFor(async () => (await advisoryHolders(9045)) === 0, 5_000, 'the session to let go');
  });

  it('a reset lost on a half-open link is bounded by resetTimeout and retires the handle', async () => {
    const { host, port } = pgConfig();
    const proxy = await FaultProxy.start({ target: { host, port } });
    onTestFinished(() => proxy.close());
    const guard = new EngineGuard(
      pgGuardOptions(
        { config: clientConfig({ host: proxy.host, port: proxy.port }) },
        { pool: 1, resetTimeout: 500, reconnect: { initialDelay: 20, maxDelay: 200 } },
      ),
    );
    onTestFinished(() => guard.close());
    const replaced: GuardEvents['replace'][] = [];
    guard.on('replace', (event) => replaced.push(event));
    let firstClient: unknown;
    const first = await guard.read(async (pg, ctx) => {
      await pgQuery(pg, ctx, 'SET search_path TO nowhere');
      firstClient = pg.client;
      // The link dies between the op and its reset.
      proxy.blackhole();
      return ctx.generation;
    });
    // The reset was put off; the handle sits idle, so it goes alone, into the black hole, and its
    // bound (the guard's resetTimeout) cuts the connection.
    const started = performance.now();
    await waitFor(
      () =>
        (firstClient as { connection: { stream: { destroyed: boolean } } }).connection.stream
          .destroyed,
      5_000,
      'the reset to be given up',
    );
    expect(performance.now() - started).toBeGreaterThanOrEqual(500 - 50);
    proxy.heal();
    const next = await guard.read(async (pg, ctx) => ({
      generation: ctx.generation,
      searchPath: (
        await pgQuery<{ v: string }>(pg, ctx, "SELECT current_setting('search_path') AS v")
      ).rows[0]?.v,
    }));
    expect(next.generation).toBeGreaterThan(first);
    expect(next.searchPath).not.toContain('nowhere');
    expect(replaced.map((e) => e.generation)).toEqual([first]);
  });

  it('a reset that fails (the server killed the backend) retires the handle; the next op gets a fresh one', async () => {
    const guard = guardOf({ pool: 1, reconnect: { initialDelay: 20, maxDelay: 200 } });
    const resetErrors: GuardEvents['resetError'][] = [];
    const replaced: GuardEvents['replace'][] = [];
    guard.on('resetError', (event) => resetErrors.push(event));
    guard.on('replace', (event) => replaced.push(event));
    const first = await guard.write(async (pg, ctx) => {
      await pgQuery(pg, ctx, 'SET search_path TO nowhere');
      // The op itself succeeds; its backend dies before the reset.
      expect(await terminateBackend(pg.pid)).toBe(true);
      return { pid: pg.pid, generation: ctx.generation };
    });
    const next = await guard.read(async (pg, ctx) => {
      const { rows } = await pgQuery<{ v: string }>(
        pg,
        ctx,
        "SELECT current_setting('search_path') AS v",
      );
      return { pid: pg.pid, generation: ctx.generation, searchPath: rows[0]?.v };
    });
    expect(next.pid).not.toBe(first.pid);
    expect(next.generation).toBeGreaterThan(first.generation);
    expect(next.searchPath).not.toContain('nowhere');
    expect(resetErrors.map((e) => e.generation)).toEqual([first.generation]);
    expect(replaced.map((e) => [e.generation, e.reason])).toEqual([[first.generation, 'reset']]);
  });
});

// Issue 16: each failed before its fix.
describe('what setup establishes is what every stateless op runs under', () => {
  const ROLE = 'engine_guard_tenant_role';
  const OPS = 100;

  /**
   * A table under row-level security: the unprivileged role reads the rows of the tenant that
   * `app.tenant` names, and may not write.
   */
  async function tenantTable(): Promise<string> {
    await adminQuery(
      `DO $$ BEGIN CREATE ROLE ${ROLE}; EXCEPTION WHEN duplicate_object THEN NULL; END $$`,
    );
    const table = await scratchTable('reset_tenant');
    await adminQuery(
      `ALTER TABLE ${table} ADD COLUMN tenant text; INSERT INTO ${table} VALUES (1, 'acme'), (2, 'other');` +
        ` ALTER TABLE ${table} ENABLE ROW LEVEL SECURITY;` +
        ` CREATE POLICY tenant_only ON ${table} USING (tenant = current_setting('app.tenant', true));` +
        ` GRANT SELECT ON ${table} TO ${ROLE}`,
    );
    return table;
  }

  it(`SET SESSION AUTHORIZATION and a custom setting made in setup hold on every op, the first and the ${OPS}th`, async () => {
    const table = await tenantTable();
    const guard = guardOf({
      pool: 2,
      setup: async (pg, { signal }) => {
        await pgQuery(
          pg,
          { signal, heartbeat() {} },
          `SET SESSION AUTHORIZATION ${ROLE}; SET app.tenant = 'acme'`,
        );
      },
    });
    const writes: string[] = [];
    const reads: unknown[] = [];
    for (let i = 0; i < OPS; i++) {
      // Every op changes what it can: the next one must not see it.
      const outcome = await settle(
        guard.write(async (pg, ctx) => {
          const { rows } = await pgQuery(
            pg,
            ctx,
            `SELECT session_user::text AS who, current_setting('app.tenant', true) AS tenant, count(*)::int AS n FROM ${table}`,
          );
          reads.push(rows[0]);
          await pgQuery(pg, ctx, "SET app.tenant = 'other'");
          await pgQuery(pg, ctx, `INSERT INTO ${table} VALUES (${1_000 + i}, 'acme')`);
        }),
      );
      writes.push(outcome.ok ? 'written' : String((outcome.error as { code?: string }).code));
    }
    expect(new Set(writes)).toEqual(new Set(['42501'])); // permission denied, every time
    expect(new Set(reads.map((row) => JSON.stringify(row)))).toEqual(
      new Set([JSON.stringify({ who: ROLE, tenant: 'acme', n: 1 })]),
    );
    const { rows } = await adminQuery<{ n: number }>(`SELECT count(*)::int AS n FROM ${table}`);
    expect(rows[0]?.n).toBe(2);
  });

  it('a custom setting set with set_config and parameters in setup is kept too', async () => {
    const guard = guardOf({
      pool: 1,
      setup: async (pg, { signal }) => {
        await pgQuery(pg, { signal, heartbeat() {} }, 'SELECT set_config($1, $2, false)', [
          'app.region',
          'eu-west',
        ]);
      },
    });
    for (let i = 0; i < 3; i++) {
      const region = await guard.read(async (pg, ctx) => {
        const { rows } = await pgQuery<{ v: string }>(
          pg,
          ctx,
          "SELECT current_setting('app.region', true) AS v",
        );
        await pgQuery(pg, ctx, "SELECT set_config('app.region', 'us-east', false)");
        return rows[0]?.v;
      });
      expect(region).toBe('eu-west');
    }
  });

  it("a custom setting made inside a function is kept when the adapter's customSettings names it", async () => {
    const fn = `engine_guard_login_${process.pid}`;
    await adminQuery(
      `CREATE OR REPLACE FUNCTION ${fn}(t text) RETURNS text LANGUAGE sql AS $$ SELECT set_config('app.' || 'fn_tenant', t, false) $$`,
    );
    onTestFinished(async () => {
      await adminQuery(`DROP FUNCTION IF EXISTS ${fn}(text)`);
    });
    const tenantAfterReset = async (customSettings?: string[]) => {
      const guard = new EngineGuard(
        pgGuardOptions(
          { config: clientConfig(), customSettings },
          {
            pool: 1,
            setup: async (pg, { signal }) => {
              await pgQuery(pg, { signal, heartbeat() {} }, `SELECT ${fn}('acme')`);
            },
          },
        ),
      );
      onTestFinished(() => guard.close());
      const read = (pg: PgHandle, ctx: OpContext) =>
        pgQuery<{ v: string }>(pg, ctx, "SELECT current_setting('app.fn_tenant', true) AS v");
      await guard.read(read);
      return (await guard.read(read)).rows[0]?.v;
    };
    // Its name appears nowhere in the setup's SQL: only the option names it.
    expect(await tenantAfterReset()).toBe('');
    expect(await tenantAfterReset(['app.fn_tenant'])).toBe('acme');
  });

  it('rejects a customSettings entry that is no custom setting name', () => {
    for (const bad of ['tenant', 'app.', '1.x', 7]) {
      expect(() =>
        pgGuardOptions({ config: clientConfig(), customSettings: [bad as string] }),
      ).toThrow(/customSettings\[0\]/);
    }
    expect(() =>
      pgGuardOptions({ config: clientConfig(), customSettings: 'app.x' as never }),
    ).toThrow(TypeError);
  });
});

describe("one caller's setseed() does not decide the next caller's random()", () => {
  /** The first values of random() after setseed(0.5), from a connection of its own. */
  async function seeded(): Promise<number[]> {
    return withClient(async (client) => {
      await client.query('SELECT setseed(0.5)');
      const { rows } = await client.query<{ v: number }>(
        'SELECT random() AS v FROM generate_series(1, 3)',
      );
      return rows.map((row) => row.v);
    });
  }

  const randoms = (pg: PgHandle, ctx: OpContext) =>
    pgQuery<{ v: number }>(pg, ctx, 'SELECT random() AS v FROM generate_series(1, 3)').then(
      (result) => result.rows.map((row) => row.v),
    );

  it.each([
    ['pgQuery', (pg: PgHandle, ctx: OpContext) => pgQuery(pg, ctx, 'SELECT setseed(0.5)')],
    ['pgReadOnly', (pg: PgHandle, ctx: OpContext) => pgReadOnly(pg, ctx, 'SELECT setseed(0.5)')],
  ])('after a setseed in %s', async (_, setSeed) => {
    const expected = await seeded();
    // The check can fail: without the reset, the next caller gets exactly those values.
    const off = guardOf({ pool: 1, reset: undefined });
    await off.read(setSeed);
    expect(await off.read(randoms)).toEqual(expected);

    const guard = guardOf({ pool: 1 });
    await guard.read(setSeed);
    expect(await guard.read(randoms)).not.toEqual(expected);
  });
});
