/**
 * End-to-end: the example MCP server against the real PostgreSQL of the test harness, reached
 * through a FaultProxy, so the link can be blackholed (half-open) and healed.
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FaultProxy } from '../../src/testing/index.js';
import { adminQuery, pgConfig } from '../support/pg.js';
import {
  connectStdio,
  expectNoStatementHandling,
  livenessFlags,
  type QueryResult,
  serverLog,
  TEST_TIMEOUT,
  text,
  tools,
} from './support.js';

const LIVENESS = { interval: 300, timeout: 700, failures: 2 };
/** Worst case from the last sign of life to the verdict (see the watchdog's documentation). */
const LIVENESS_BOUND = LIVENESS.interval * LIVENESS.failures + LIVENESS.timeout;
/** Slack for a loaded machine: process scheduling, IPC, the probe's own timers. */
const SLACK = 5_000;

describe('example MCP server on PostgreSQL through a FaultProxy', () => {
  const suffix = randomBytes(4).toString('hex');
  const table = `mcp_pg_${suffix}`;
  /** Names this server's connections, so the test can clean up after itself. */
  const applicationName = `mcp-pg-test-${suffix}`;
  let proxy: FaultProxy;
  let client: Client;
  const log = serverLog();
  const { call, ok, status, query } = tools(() => client);

  beforeAll(async () => {
    const { port, user, database } = pgConfig();
    proxy = await FaultProxy.start({ target: { port } });
    const url = `postgresql://${user}@127.0.0.1:${proxy.port}/${database}?application_name=${applicationName}`;
    client = await connectStdio(
      'mcp-pg-test',
      ['--pg', url, '--pool', '2', ...livenessFlags(LIVENESS), '--connect-timeout', '3000'],
      log,
    );
  }, TEST_TIMEOUT);

  afterAll(async () => {
    proxy?.heal();
    await client?.close();
    await proxy?.close();
    // The backend of the stalled pg_sleep never got its cancel (it went into the blackhole).
    await adminQuery(
      'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1',
      [applicationName],
    );
    await adminQuery(`DROP TABLE IF EXISTS ${table}`);
  }, TEST_TIMEOUT);

  it('serves the tools on PostgreSQL', async () => {
    const { status: s } = await status();
    expect(s.engine.kind).toBe('postgres');
    const mine = await adminQuery(
      'SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1',
      [applicationName],
    );
    expect(mine.rows[0]?.n).toBeGreaterThan(0);

    const created = await ok<{ statements: number; rowsAffected: number | null }>('execute', {
      sql: `CREATE TABLE ${table} (id int PRIMARY KEY, body text); INSERT INTO ${table} VALUES (1, 'a'), (2, 'b')`,
    });
    expect(created).toMatchObject({ statements: 2, rowsAffected: 2 });

    const rows = await query(
      `SELECT id, body, count(*) OVER () AS total FROM ${table} ORDER BY id`,
    );
    expect(rows.rows).toEqual([
      { id: 1, body: 'a', total: 2 },
      { id: 2, body: 'b', total: 2 },
    ]);

    const { tables } = await ok<{ tables: { schema: string; name: string }[] }>('list_tables');
    expect(tables).toContainEqual(expect.objectContaining({ schema: 'public', name: table }));
    const described = await ok<{ columns: { name: string; type: string; nullable: boolean }[] }>(
      'describe_table',
      { table },
    );
    expect(described.columns).toEqual([
      { name: 'id', type: 'integer', nullable: false, default: null },
      { name: 'body', type: 'text', nullable: true, default: null },
    ]);

    const capped = await ok<QueryResult>('query', {
      sql: 'SELECT g FROM generate_series(1, 100000) g',
      max_rows: 10,
    });
    expect(capped.rowCount).toBe(10);
    expect(capped.truncated).toBe(true);
  });

  it('execute is all or nothing: a COMMIT inside is refused and leaves nothing behind', async () => {
    const stray = `${table}_stray`;
    const result = await call('execute', {
      sql: `CREATE TABLE ${stray} (x int); COMMIT; SELECT 1/0`,
    });
    expect(result.isError).toBe(true);
    expect(text(result)).toContain('ended the transaction');
    expect(text(result)).toContain('manages the transaction itself');
    const { rows } = await adminQuery('SELECT to_regclass($1)::text AS t', [stray]);
    expect(rows[0]?.t).toBeNull();
    for (const end of ['ROLLBACK', 'END', 'ABORT']) {
      const ended = await call('execute', { sql: `CREATE TABLE ${stray} (x int); ${end}` });
      expect(ended.isError, end).toBe(true);
      const after = await adminQuery('SELECT to_regclass($1)::text AS t', [stray]);
      expect(after.rows[0]?.t, end).toBeNull();
    }
  });

  it('SQL that holds no statement: query gives no rows, execute says so (as on every engine)', async () => {
    await expectNoStatementHandling(tools(() => client));
  });

  it('query refuses writes: PostgreSQL refuses them in a read-only transaction', async () => {
    const insert = await call('query', { sql: `INSERT INTO ${table} VALUES (3, 'c')` });
    expect(insert.isError).toBe(true);
    expect(text(insert)).toContain('read-only transaction');
    expect(text(insert)).toContain('25006');

    const escaped = await call('query', { sql: `COMMIT; DELETE FROM ${table}` });
    expect(escaped.isError).toBe(true);
    expect(text(escaped)).toContain('multiple commands');

    const writableCte = await call('query', {
      sql: `WITH gone AS (DELETE FROM ${table} RETURNING id) SELECT count(*) FROM gone`,
    });
    expect(writableCte.isError).toBe(true);

    const { rows } = await adminQuery<{ n: string }>(`SELECT count(*) AS n FROM ${table}`);
    expect(rows).toEqual([{ n: '2' }]);
  });

  it(
    'cancelling a query from the client cancels it on the server',
    async () => {
      const activeSleeps = async (): Promise<number> => {
        const { rows } = await adminQuery<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_stat_activity
           WHERE application_name = $1 AND state = 'active' AND query LIKE '%pg_sleep(30)%'`,
          [applicationName],
        );
        return rows[0]?.n ?? 0;
      };
      const controller = new AbortController();
      const pending = call(
        'query',
        { sql: 'SELECT pg_sleep(30)' },
        { signal: controller.signal },
      ).then(
        () => 'answered',
        () => 'rejected',
      );
      while ((await activeSleeps()) === 0) await sleep(50);
      const before = (await status()).status;

      controller.abort();
      expect(await pending).toBe('rejected');
      const deadline = performance.now() + 10_000;
      while ((await activeSleeps()) > 0 && performance.now() < deadline) await sleep(50);
      expect(await activeSleeps()).toBe(0);

      // The connection was kept (the server acknowledged the cancel) and works.
      let after = (await status()).status;
      while (after.guard.running.length > 0 && performance.now() < deadline) {
        await sleep(50);
        after = (await status()).status;
      }
      expect(after.guard.running).toEqual([]);
      expect(after.guard.counters.cancels).toBeGreaterThan(before.guard.counters.cancels);
      expect(after.guard.counters.replacements).toBe(before.guard.counters.replacements);
      expect((await query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    },
    TEST_TIMEOUT,
  );

  it(
    'a query stalled by a blackhole returns a tool error within the liveness bound while status keeps answering; after heal, queries work again',
    async () => {
      const before = (await status()).status;
      const pending = call('query', { sql: 'SELECT pg_sleep(20) AS slept' });
      const settled = { done: false };
      void pending.finally(() => {
        settled.done = true;
      });
      // The query is running on the server (probes see its backend active).
      for (;;) {
        const { status: s } = await status();
        if (s.guard.running.some((op) => op.label?.includes('pg_sleep') && op.ageMs > 500)) break;
        await sleep(50);
      }

      proxy.blackhole();
      const blackholedAt = performance.now();
      let statusCalls = 0;
      while (!settled.done) {
        const { status: s, ms } = await status();
        statusCalls++;
        expect(ms).toBeLessThan(1_000);
        expect(s.guard.state).not.toBe('closed');
        await sleep(100);
      }
      const result = await pending;
      const elapsed = performance.now() - blackholedAt;

      expect(result.isError).toBe(true);
      expect(text(result)).toMatch(/^Engine stalled: query got no answer from the engine/);
      expect(text(result)).toContain('the engine connection was replaced');
      expect(elapsed).toBeLessThan(LIVENESS_BOUND + SLACK);
      expect(statusCalls).toBeGreaterThan(0);

      const { status: after } = await status();
      expect(after.guard.counters.stalls).toBe(before.guard.counters.stalls + 1);
      expect(after.guard.counters.replacements).toBeGreaterThan(before.guard.counters.replacements);
      expect(after.guard.running.some((op) => op.label?.includes('pg_sleep'))).toBe(false);

      proxy.heal();
      const healed = await query(`SELECT count(*) AS n FROM ${table}`);
      expect(healed.rows).toEqual([{ n: 2 }]);
      // Two at once need both handles: the retired one is replaced by a new connection.
      const both = await Promise.all([
        query('SELECT 1 AS one, pg_sleep(0.2)'),
        query('SELECT 2 AS two, pg_sleep(0.2)'),
      ]);
      expect(both.map((r) => r.rowCount)).toEqual([1, 1]);
      const { status: now } = await status();
      expect(now.guard.generation).toBeGreaterThan(before.guard.generation);
      // 'degraded' until the lost connection is torn down (its cancel and close were sent into
      // the blackhole and are bounded by their timeouts), then 'ready'.
      const deadline = performance.now() + 20_000;
      let final = now;
      while (final.guard.state !== 'ready' && performance.now() < deadline) {
        await sleep(200);
        final = (await status()).status;
      }
      expect(final.guard.state).toBe('ready');
      expect(final.guard.handles.retiring).toBe(0);
    },
    TEST_TIMEOUT,
  );
});
