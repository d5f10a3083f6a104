/**
 * engine-guard/duckdb's `state` check (duckdbState, SPEC 8.1) on a real in-process DuckDB: each
 * kind of state a session op can leave on a connection is reported, nothing once it is gone, the
 * baseline setup left is not state, and "nothing" means exactly what duckdbReset would leave.
 */
import type { DuckDBConnection } from '@duckdb/node-api';
import type { HeldState } from 'engine-guard';
import { duckdbGuardOptions, duckdbReset, duckdbState } from 'engine-guard/duckdb';
import { describe, expect, it } from 'vitest';
import {
  type DuckDBOptions,
  instancePerTest,
  openConn as openDuckDBConn,
} from '../support/duckdb.js';
import { resetCtx, stateCtx } from '../support/hook-context.js';

const db = instancePerTest();

const openConn = (overrides: Partial<DuckDBOptions> = {}) => openDuckDBConn(db(), overrides);

const held = (conn: DuckDBConnection): Promise<readonly HeldState[]> =>
  duckdbState(conn, stateCtx());

/** Everything the reset restores, as one comparable snapshot. */
async function snapshot(conn: DuckDBConnection): Promise<unknown> {
  const read = async (sql: string) => (await conn.runAndReadAll(sql)).getRowObjectsJS();
  return {
    temporary: await read(
      "SELECT table_name FROM duckdb_tables() WHERE temporary UNION ALL SELECT view_name FROM duckdb_views() WHERE temporary AND NOT internal UNION ALL SELECT function_name FROM duckdb_functions() WHERE database_name = 'temp' AND NOT internal ORDER BY 1",
    ),
    prepared: await read('SELECT name, statement FROM duckdb_prepared_statements() ORDER BY 1'),
    variables: await read('SELECT name, value FROM duckdb_variables() ORDER BY 1'),
    settings: await read('SELECT name, value FROM duckdb_settings() ORDER BY 1'),
    use: await read('SELECT current_database() AS db, current_schema() AS s'),
  };
}

describe('duckdbState reports each kind of state an op leaves, and none once it is gone', () => {
  it.each<[string, string[], HeldState[], string[]]>([
    [
      'temporary objects',
      [
        'CREATE TEMP TABLE scratch AS SELECT 1 AS x',
        'CREATE TEMP VIEW v AS SELECT * FROM scratch',
        'CREATE TEMP MACRO plus1(x) AS x + 1',
        'CREATE TEMP SEQUENCE seq',
        "CREATE TEMP TYPE mood AS ENUM ('happy')",
      ],
      [
        { kind: 'temp view', name: 'v' },
        { kind: 'temp macro', name: 'plus1' },
        { kind: 'temp table', name: 'scratch' },
        { kind: 'temp sequence', name: 'seq' },
        { kind: 'temp type', name: 'mood' },
      ],
      [
        'DROP VIEW v',
        'DROP MACRO plus1',
        'DROP TABLE scratch',
        'DROP SEQUENCE seq',
        'DROP TYPE mood',
      ],
    ],
    [
      'a prepared statement',
      ['PREPARE p1 AS SELECT 42'],
      [{ kind: 'prepared statement', name: 'p1' }],
      ['DEALLOCATE p1'],
    ],
    [
      'a variable',
      ['SET VARIABLE answer = 42'],
      [{ kind: 'variable', name: 'answer' }],
      ['RESET VARIABLE answer'],
    ],
    [
      'settings',
      ["SET TimeZone = 'Asia/Tokyo'", "SET default_order = 'DESC'"],
      [
        { kind: 'setting', name: 'TimeZone' },
        { kind: 'setting', name: 'default_order' },
      ],
      ['RESET TimeZone', 'RESET default_order'],
    ],
    [
      'USE',
      ['CREATE SCHEMA IF NOT EXISTS elsewhere', 'USE memory.elsewhere'],
      // USE changes the schema setting too.
      [
        { kind: 'setting', name: 'schema' },
        { kind: 'setting', name: 'search_path' },
        { kind: 'use', name: 'memory.elsewhere' },
      ],
      ['USE memory.main', 'RESET schema', 'RESET search_path'],
    ],
  ])('%s', async (_, make, expected, undo) => {
    const conn = await openConn();
    expect(await held(conn)).toEqual([]);
    for (const sql of make) await conn.run(sql);
    expect([...(await held(conn))].sort(byKindName)).toEqual([...expected].sort(byKindName));
    for (const sql of undo) await conn.run(sql);
    expect(await held(conn)).toEqual([]);
  });

  it('an open transaction (BEGIN in one call, COMMIT in a later one), and a failed one', async () => {
    const conn = await openConn();
    await conn.run('CREATE TABLE kept (x INTEGER PRIMARY KEY)');
    await conn.run('BEGIN TRANSACTION');
    await conn.run('INSERT INTO kept VALUES (1)');
    expect(await held(conn)).toEqual([{ kind: 'transaction', name: 'open' }]);
    // The check reads inside the transaction and leaves it as it was.
    await conn.run('COMMIT');
    expect(await held(conn)).toEqual([]);
    expect(
      (await conn.runAndReadAll('SELECT count(*)::INT AS n FROM kept')).getRowObjectsJS(),
    ).toEqual([{ n: 1 }]);
    await conn.run('BEGIN TRANSACTION');
    await conn.run('INSERT INTO kept VALUES (1)').catch(() => undefined);
    expect(await held(conn)).toEqual([{ kind: 'transaction', name: 'failed' }]);
    await conn.run('ROLLBACK');
    expect(await held(conn)).toEqual([]);
  });

  it("setup's baseline is not state; changing or dropping what setup made is", async () => {
    const conn = await openConn({
      setup: async (c) => {
        await c.run('CREATE SCHEMA IF NOT EXISTS app');
        await c.run('USE memory.app');
        await c.run("SET default_order = 'DESC'");
        await c.run("SET VARIABLE tenant = 'acme'");
        await c.run('PREPARE q AS SELECT 1 AS one');
      },
    });
    expect(await held(conn)).toEqual([]);
    await conn.run("SET VARIABLE tenant = 'other'");
    await conn.run('DEALLOCATE q');
    await conn.run('RESET default_order');
    expect([...(await held(conn))].sort(byKindName)).toEqual([
      { kind: 'prepared statement', name: 'q' },
      { kind: 'setting', name: 'default_order' },
      { kind: 'variable', name: 'tenant' },
    ]);
    await conn.run("SET VARIABLE tenant = 'acme'");
    await conn.run('PREPARE q AS SELECT 1 AS one');
    await conn.run("SET default_order = 'DESC'");
    expect(await held(conn)).toEqual([]);
  });

  it('"none" is what duckdbReset leaves: after a clean answer the reset changes nothing, after any other it does', async () => {
    for (const sqls of [
      ['SELECT 42'],
      ['CREATE TEMP TABLE t (x INT)', 'DROP TABLE t'],
      ['CREATE TEMP TABLE t (x INT)'],
      ["SET TimeZone = 'Asia/Tokyo'"],
      ['SET VARIABLE v = 1'],
      ['PREPARE p AS SELECT 1'],
      ["SET TimeZone = 'Asia/Tokyo'", 'RESET TimeZone'],
    ]) {
      const conn = await openConn();
      for (const sql of sqls) await conn.run(sql);
      const clean = (await held(conn)).length === 0;
      const before = await snapshot(conn);
      await duckdbReset(conn, resetCtx());
      const unchanged = JSON.stringify(await snapshot(conn)) === JSON.stringify(before);
      expect([sqls, clean]).toEqual([sqls, unchanged]);
    }
  });
});

describe('duckdbGuardOptions: state', () => {
  it('is duckdbState by default; an override replaces it; state: undefined turns it off', () => {
    expect(duckdbGuardOptions(db()).state).toBe(duckdbState);
    const mine = () => undefined;
    expect(duckdbGuardOptions(db(), { state: mine }).state).toBe(mine);
    const off = duckdbGuardOptions(db(), { state: undefined });
    expect('state' in off).toBe(false);
    expect(off.reset).toBe(duckdbReset);
  });

  it('with the reset off, the state check still records the baseline after setup', async () => {
    const conn = await openConn({
      reset: undefined,
      setup: async (c) => {
        await c.run("SET TimeZone = 'Asia/Tokyo'");
      },
    });
    expect(await held(conn)).toEqual([]);
    await conn.run('RESET TimeZone');
    expect(await held(conn)).toEqual([{ kind: 'setting', name: 'TimeZone' }]);
  });
});

function byKindName(a: HeldState, b: HeldState): number {
  return a.kind === b.kind ? a.name.localeCompare(b.name) : a.kind.localeCompare(b.kind);
}
