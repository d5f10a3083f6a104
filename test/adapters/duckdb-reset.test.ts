/**
 * engine-guard/duckdb's `reset` (duckdbReset) on a real in-process DuckDB: the state an op leaves
 * on a connection (temporary objects, prepared statements, variables, settings, USE, an open
 * transaction) is gone before the next caller, and what `setup` made comes back.
 */
import type { DuckDBConnection } from '@duckdb/node-api';
import { DuckDBInstance } from '@duckdb/node-api';
import { EngineGuard, type ResetContext } from 'engine-guard';
import { duckdbGuardOptions, duckdbReset, LockedSettingsError } from 'engine-guard/duckdb';
import { describe, expect, it, onTestFinished } from 'vitest';
import {
  type DuckDBOptions,
  instancePerTest,
  openConn as openDuckDBConn,
} from '../support/duckdb.js';

const db = instancePerTest();

function resetCtx(signal: AbortSignal = AbortSignal.timeout(5_000)): ResetContext {
  return {
    signal,
    ok: true,
    op: { id: 1, kind: 'read', label: undefined, generation: 1, startedAt: performance.now() },
  };
}

const openConn = (overrides: Partial<DuckDBOptions> = {}) => openDuckDBConn(db(), overrides);

async function rows(conn: DuckDBConnection, sql: string): Promise<Record<string, unknown>[]> {
  return (await conn.runAndReadAll(sql)).getRowObjectsJS() as Record<string, unknown>[];
}

async function value(conn: DuckDBConnection, sql: string): Promise<unknown> {
  return Object.values((await rows(conn, sql))[0] ?? {})[0];
}

/** Everything the reset is about, as one comparable snapshot. */
async function snapshot(conn: DuckDBConnection) {
  return {
    tables: await rows(conn, 'SELECT table_name FROM duckdb_tables() WHERE temporary ORDER BY 1'),
    views: await rows(
      conn,
      'SELECT view_name FROM duckdb_views() WHERE temporary AND NOT internal ORDER BY 1',
    ),
    macros: await rows(
      conn,
      "SELECT function_name FROM duckdb_functions() WHERE database_name = 'temp' AND NOT internal ORDER BY 1",
    ),
    sequences: await rows(conn, 'SELECT sequence_name FROM duckdb_sequences() WHERE temporary'),
    types: await rows(
      conn,
      "SELECT type_name FROM duckdb_types() WHERE database_name = 'temp' AND NOT internal",
    ),
    prepared: await rows(
      conn,
      'SELECT name, statement FROM duckdb_prepared_statements() ORDER BY 1',
    ),
    variables: await rows(conn, 'SELECT name, value, type FROM duckdb_variables() ORDER BY 1'),
    settings: await rows(conn, 'SELECT name, value FROM duckdb_settings() ORDER BY 1'),
    use: await rows(conn, 'SELECT current_database() AS db, current_schema() AS s'),
  };
}

const LEAVE_EVERYTHING = [
  'CREATE TEMP TABLE scratch AS SELECT 1 AS x',
  // Names that need quoting, a dot and a quote inside.
  'CREATE TEMP TABLE "odd ""name"".x" (y int)',
  'SET VARIABLE "it\'s" = [1, 2]',
  'CREATE TEMP VIEW v AS SELECT * FROM scratch',
  'CREATE TEMP MACRO plus1(x) AS x + 1',
  'CREATE TEMP MACRO rows3() AS TABLE SELECT * FROM range(3)',
  'CREATE TEMP SEQUENCE seq',
  "CREATE TEMP TYPE mood AS ENUM ('happy', 'sad')",
  'PREPARE p1 AS SELECT 42',
  'SET VARIABLE answer = 42',
  'CREATE SCHEMA elsewhere',
  'USE memory.elsewhere',
  "SET search_path = 'memory.elsewhere'",
  "SET default_order = 'DESC'",
  'SET threads = 1',
  "SET TimeZone = 'America/New_York'",
  'SET enable_progress_bar = true',
];

describe('duckdbReset', () => {
  it('drops temporary objects and puts back prepared statements, variables, settings and USE', async () => {
    const conn = await openConn();
    const before = await snapshot(conn);
    for (const sql of LEAVE_EVERYTHING) await conn.run(sql);
    const dirty = await snapshot(conn);
    // Each statement changed what the snapshot sees (the test would catch a reset that misses one).
    for (const key of Object.keys(before) as (keyof typeof before)[]) {
      expect([key, dirty[key]]).not.toEqual([key, before[key]]);
    }
    await duckdbReset(conn, resetCtx());
    expect(await snapshot(conn)).toEqual(before);
    // The non-temporary schema is the caller's data, not handle state.
    await conn.run('DROP SCHEMA memory.elsewhere');
  });

  it('rolls back a transaction the op left open', async () => {
    const conn = await openConn();
    await conn.run('CREATE TABLE kept (x int)');
    await conn.run('BEGIN TRANSACTION');
    await conn.run('INSERT INTO kept VALUES (1)');
    await duckdbReset(conn, resetCtx());
    expect(await value(conn, 'SELECT count(*)::int FROM kept')).toBe(0);
    // No transaction open any more: a BEGIN works.
    await conn.run('BEGIN TRANSACTION');
    await conn.run('ROLLBACK');
  });

  it('returns to what setup made: its settings, variables, prepared statements and USE', async () => {
    const conn = await openConn({
      setup: async (c) => {
        await c.run('CREATE SCHEMA IF NOT EXISTS app');
        await c.run('USE memory.app');
        await c.run("SET default_order = 'DESC'");
        await c.run("SET VARIABLE tenant = 'acme'");
        await c.run('PREPARE q AS SELECT 1 AS one');
      },
    });
    const baseline = await snapshot(conn);
    expect(baseline.use).toEqual([{ db: 'memory', s: 'app' }]);
    await conn.run('USE memory.main');
    await conn.run("SET default_order = 'ASC'");
    await conn.run("SET VARIABLE tenant = 'other'");
    await conn.run('SET VARIABLE extra = 1');
    await conn.run('DEALLOCATE q');
    await conn.run('PREPARE q2 AS SELECT 2');
    await duckdbReset(conn, resetCtx());
    expect(await snapshot(conn)).toEqual(baseline);
    expect(await value(conn, 'EXECUTE q')).toBe(1);
  });

  it('does nothing to a connection the op left as it found it', async () => {
    const conn = await openConn();
    const before = await snapshot(conn);
    await conn.run('SELECT 42');
    await duckdbReset(conn, resetCtx());
    expect(await snapshot(conn)).toEqual(before);
  });

  it('under lock_configuration, drops temporary objects; the settings setup made are the baseline', async () => {
    const locked = await DuckDBInstance.create(':memory:', { lock_configuration: 'true' });
    onTestFinished(() => locked.closeSync());
    // As the example server does: PRAGMAs (SET is locked) in the setup given to the adapter.
    const options = duckdbGuardOptions(locked, {
      setup: async (c) => {
        await c.run('PRAGMA enable_progress_bar');
      },
    });
    const signal = AbortSignal.timeout(10_000);
    const conn = await options.create({ signal, generation: 1 });
    onTestFinished(() => options.destroy?.(conn, { reason: 'test' }));
    await options.setup?.(conn, { signal, generation: 1 });
    await conn.run('CREATE TEMP TABLE scratch (x int)');
    await duckdbReset(conn, resetCtx());
    expect(await value(conn, 'SELECT count(*)::int FROM duckdb_tables() WHERE temporary')).toBe(0);
    expect(await value(conn, "SELECT current_setting('enable_progress_bar')")).toBe(true);
  });

  it('an op that turns lock_configuration on: the reset fails (never "clean") and names what stays', async () => {
    const conn = await openConn();
    await conn.run("SET threads = 1; SET TimeZone = 'Asia/Tokyo'; SET lock_configuration = true");
    const error = await duckdbReset(conn, resetCtx()).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LockedSettingsError);
    expect(error).toMatchObject({ code: 'ERR_DUCKDB_LOCKED_SETTINGS' });
    const names = (error as LockedSettingsError).settings.map((setting) => setting.name);
    // Settings DuckDB derives from them (worker_threads from threads...) come along.
    expect(names).toEqual(expect.arrayContaining(['TimeZone', 'lock_configuration', 'threads']));
    expect((error as Error).message).toMatch(/threads.*instance's/);
  });

  it('a pragma that changes a setting under lock_configuration fails the reset too', async () => {
    const locked = await DuckDBInstance.create(':memory:', { lock_configuration: 'true' });
    onTestFinished(() => locked.closeSync());
    const options = duckdbGuardOptions(locked);
    const signal = AbortSignal.timeout(10_000);
    const conn = await options.create({ signal, generation: 1 });
    onTestFinished(() => options.destroy?.(conn, { reason: 'test' }));
    await options.setup?.(conn, { signal, generation: 1 });
    await conn.run('PRAGMA enable_profiling');
    await expect(duckdbReset(conn, resetCtx())).rejects.toMatchObject({
      name: 'LockedSettingsError',
      settings: expect.arrayContaining([expect.objectContaining({ name: 'enable_profiling' })]),
    });
  });

  it('rejects with the signal reason when its signal aborts', async () => {
    const conn = await openConn();
    await conn.run('CREATE TEMP TABLE scratch (x int)');
    const reason = new Error('reset timed out');
    await expect(duckdbReset(conn, resetCtx(AbortSignal.abort(reason)))).rejects.toBe(reason);
  });
});

describe('duckdbGuardOptions: reset', () => {
  it('is duckdbReset by default; an override replaces it; reset: undefined turns it off', () => {
    expect(duckdbGuardOptions(db()).reset).toBe(duckdbReset);
    const mine = () => undefined;
    expect(duckdbGuardOptions(db(), { reset: mine }).reset).toBe(mine);
    const off = duckdbGuardOptions(db(), { reset: undefined });
    expect('reset' in off).toBe(false);
    expect(duckdbGuardOptions(db(), { isFatal: undefined }).isFatal).toBeTypeOf('function');
  });

  it('through a guard with pool 3: a temporary table and a setting of one op reach no later op', async () => {
    const guard = new EngineGuard(duckdbGuardOptions(db(), { pool: 3 }));
    onTestFinished(() => guard.close());
    const hold = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
    // Three ops at once, one per connection, each leaving state behind.
    await Promise.all(
      Array.from({ length: 3 }, () =>
        guard.read(async (conn) => {
          await conn.run("CREATE TEMP TABLE scratch AS SELECT 1 AS x; SET search_path = 'temp'");
          await hold(50);
        }),
      ),
    );
    const seen = await Promise.all(
      Array.from({ length: 6 }, () =>
        guard.read(async (conn) => {
          await hold(20);
          return [
            await value(conn, 'SELECT count(*)::int FROM duckdb_tables() WHERE temporary'),
            await value(conn, "SELECT current_setting('search_path')"),
          ];
        }),
      ),
    );
    expect(seen).toEqual(Array(6).fill([0, '']));
  });

  it('through a guard: after an op locks the configuration, the next op runs on a fresh connection', async () => {
    const guard = new EngineGuard(duckdbGuardOptions(db(), { pool: 1 }));
    onTestFinished(() => guard.close());
    const resetErrors: unknown[] = [];
    guard.on('resetError', (event) => resetErrors.push(event.error));
    const timeZone = (conn: DuckDBConnection) => value(conn, "SELECT current_setting('TimeZone')");
    const before = await guard.read(timeZone);
    await guard.read((conn) =>
      conn.run("SET threads = 1; SET TimeZone = 'Asia/Tokyo'; SET lock_configuration = true"),
    );
    expect(await guard.read(timeZone)).toBe(before);
    expect(resetErrors).toEqual([expect.any(LockedSettingsError)]);
  });
});
