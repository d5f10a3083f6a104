/**
 * The example's DuckDB engine keeps every connection's settings as its setup left them: a pragma
 * reached through its table function (`SELECT * FROM enable_profiling()`, which DuckDB runs even
 * under `lock_configuration` and whose statement type is SELECT or CALL) fails the call, and the
 * connection it changed is retired, so the change reaches no later call. Real DuckDB, no MCP.
 */
import type { DuckDBConnection } from '@duckdb/node-api';
import { EngineGuard } from 'engine-guard';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Engine, newProgress } from '../../examples/mcp-server/engine.js';
import {
  createDuckDbEngine,
  SettingsChangedError,
} from '../../examples/mcp-server/engines/duckdb.js';

let engine: Engine<DuckDBConnection>;
let guard: EngineGuard<DuckDBConnection>;

beforeAll(async () => {
  engine = await createDuckDbEngine({ sampleData: false });
  guard = new EngineGuard(engine.guardOptions({ pool: 1, maxSessions: 0 }));
});

afterAll(async () => {
  await guard.close();
  await engine.close();
});

const query = (sql: string) =>
  guard.read((conn, ctx) => engine.query(conn, ctx, sql, { maxRows: 10, progress: newProgress() }));

const profiling = () =>
  guard.read(async (conn) => {
    const reader = await conn.runAndReadAll(
      "SELECT value FROM duckdb_settings() WHERE name = 'enable_profiling'",
    );
    return reader.getRowObjectsJS()[0]?.value ?? null;
  });

describe('the DuckDB example engine refuses statements that change the connection settings', () => {
  it.each([
    ['SELECT * FROM enable_profiling()'],
    ['CALL enable_profiling()'],
    ['SELECT 1 AS x FROM range(1), enable_profiling()'],
    ['EXPLAIN ANALYZE SELECT * FROM enable_profiling()'],
  ])('query: %s', async (sql) => {
    const before = await profiling();
    const error = await query(sql).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(SettingsChangedError);
    expect((error as SettingsChangedError).settings).toContain('enable_profiling');
    expect((error as Error).message).toContain('The query tool does not run statements');
    // The next call runs on a connection whose profiling is as setup left it.
    expect(await profiling()).toBe(before);
    expect((await query('SELECT 42 AS answer')).rows).toEqual([{ answer: 42 }]);
  });

  it('execute: nothing of the call is committed', async () => {
    const error = await guard
      .write((conn, ctx) =>
        engine.execute(
          conn,
          ctx,
          'CREATE TABLE written (x INTEGER); CREATE TABLE leaked AS SELECT * FROM enable_profiling()',
        ),
      )
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(SettingsChangedError);
    const tables = await query(
      "SELECT count(*)::int AS n FROM duckdb_tables() WHERE table_name IN ('written', 'leaked')",
    );
    expect(tables.rows).toEqual([{ n: 0 }]);
  });

  it('plain reads, informational pragmas and EXPLAIN still run', async () => {
    await guard.write((conn, ctx) => engine.execute(conn, ctx, 'CREATE TABLE t (x INTEGER)'));
    for (const sql of [
      'SELECT 1 AS one',
      "PRAGMA table_info('t')",
      'SHOW TABLES',
      'DESCRIBE t',
      'EXPLAIN SELECT * FROM t',
      'SELECT * FROM range(3)',
      "SELECT current_setting('TimeZone') AS tz",
    ]) {
      await expect(query(sql), sql).resolves.toMatchObject({ truncated: false });
    }
  });
});
