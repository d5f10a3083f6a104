/**
 * End-to-end: the example MCP server (embedded DuckDB) as a real subprocess over stdio, driven
 * by the SDK's Client and StdioClientTransport. Without client sessions (`--max-sessions 0`):
 * the calls of its one client run concurrently on the shared pool, which is what these tests
 * exercise (one client's calls in a session run one at a time: see mcp-sessions.test.ts).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  connectStdio,
  ENDLESS_QUERY,
  expectNoStatementHandling,
  livenessFlags,
  type QueryResult,
  type Status,
  serverLog,
  TEST_TIMEOUT,
  text,
  tools,
} from './support.js';

const LIVENESS = { interval: 300, timeout: 2_000, failures: 3 };
const MAX_ROWS = 100;

describe('example MCP server over stdio (DuckDB)', () => {
  let client: Client;
  const log = serverLog();
  const { call, ok, status, query } = tools(() => client);

  /** Polls status until `predicate` holds; fails after `ms`. */
  const waitForStatus = async (predicate: (s: Status) => boolean, ms = 20_000): Promise<Status> => {
    const deadline = performance.now() + ms;
    for (;;) {
      const { status: s } = await status();
      if (predicate(s)) return s;
      if (performance.now() > deadline) {
        throw new Error(`status never matched; last: ${JSON.stringify(s.guard)}`);
      }
      await sleep(50);
    }
  };

  beforeAll(async () => {
    client = await connectStdio(
      'mcp-stdio-test',
      [
        ...livenessFlags(LIVENESS),
        '--max-sessions',
        '0',
        '--max-rows',
        String(MAX_ROWS),
        '--progress-interval',
        '100',
      ],
      log,
    );
    // Facts are loaded in the background at start-up.
    await waitForStatus((s) => s.engine.tables !== null);
  }, TEST_TIMEOUT);

  afterAll(async () => {
    await client?.close();
  }, TEST_TIMEOUT);

  it('lists the tools with their input and output schemas', async () => {
    const { tools } = await client.listTools();
    const byName = new Map(tools.map((t) => [t.name, t]));
    expect([...byName.keys()].sort()).toEqual([
      'describe_table',
      'execute',
      'list_tables',
      'query',
      'status',
    ]);
    for (const tool of tools) {
      expect(tool.description, tool.name).toBeTruthy();
      expect(tool.inputSchema.type, tool.name).toBe('object');
      expect(tool.outputSchema?.type, tool.name).toBe('object');
    }
    const q = byName.get('query')!;
    expect(q.inputSchema.required).toEqual(['sql']);
    expect(Object.keys(q.inputSchema.properties ?? {}).sort()).toEqual(['max_rows', 'sql']);
    expect(q.annotations?.readOnlyHint).toBe(true);
    expect(Object.keys(q.outputSchema?.properties ?? {})).toEqual(
      expect.arrayContaining(['columns', 'rows', 'rowCount', 'truncated']),
    );
    expect(byName.get('execute')!.inputSchema.required).toEqual(['sql']);
    expect(byName.get('execute')!.annotations?.readOnlyHint).toBe(false);
    expect(byName.get('describe_table')!.inputSchema.required).toEqual(['table']);
    // The demo-only tool exists only with --demo-faults.
    expect(byName.has('demo_wedge')).toBe(false);
  });

  it('status reports the guard and cached engine facts', async () => {
    const { status: s, ms } = await status();
    expect(s.engine.kind).toBe('duckdb');
    expect(s.engine.version).toMatch(/^v\d+\.\d+/);
    expect(s.engine.tables).toBe(3);
    expect(s.engine.views).toBe(1);
    expect(['ready', 'idle']).toContain(s.guard.state);
    expect(s.guard.counters.stalls).toBe(0);
    expect(s.answeredInMs).toBeLessThan(50);
    expect(ms).toBeLessThan(1_000);
    // Every tool has a one-line summary first, the status tool included.
    const raw = await call('status', {});
    const firstLine = text(raw).split('\n')[0] ?? '';
    expect(firstLine).toMatch(
      /^(ready|idle): \d+ shared connections? \(\d+ busy\) \+ \d+ held by sessions, \d+ running, \d+ queued, \d+ stalls?, 0 sessions \(0 pinned, max \d+\), 3 tables; answered in/,
    );
  });

  it('a large query result is not repeated in the text block (summary and a bounded preview)', async () => {
    const big = await call('query', {
      sql: "SELECT i, repeat('x', 100) AS pad FROM range(5000) t(i)",
    });
    expect(big.isError).toBeFalsy();
    const structured = JSON.stringify(big.structuredContent);
    expect(structured.length).toBeGreaterThan(10_000);
    const shown = text(big);
    expect(shown.split('\n')[0]).toMatch(/^\d+ rows in \d+ ms/);
    expect(shown.length).toBeLessThan(3_000);
    expect(shown).toContain('more characters in structuredContent');
  });

  it('lists and describes the sample tables', async () => {
    const { tables } = await ok<{ tables: { schema: string; name: string; type: string }[] }>(
      'list_tables',
    );
    expect(tables).toEqual(
      expect.arrayContaining([
        { schema: 'main', name: 'customers', type: 'BASE TABLE' },
        { schema: 'main', name: 'orders', type: 'BASE TABLE' },
        { schema: 'main', name: 'products', type: 'BASE TABLE' },
        { schema: 'main', name: 'sales', type: 'VIEW' },
      ]),
    );
    const orders = await ok<{ schema: string; table: string; columns: { name: string }[] }>(
      'describe_table',
      { table: 'ORDERS' },
    );
    expect(orders.schema).toBe('main');
    expect(orders.table).toBe('orders');
    expect(orders.columns.map((c) => c.name)).toEqual([
      'id',
      'customer_id',
      'product_id',
      'quantity',
      'ordered_at',
    ]);
    const qualified = await ok<{ table: string }>('describe_table', { table: 'main.customers' });
    expect(qualified.table).toBe('customers');
  });

  it('describe_table of an unknown table is a clear tool error', async () => {
    const result = await call('describe_table', { table: 'no_such_table' });
    expect(result.isError).toBe(true);
    expect(text(result)).toContain('Unknown table "no_such_table"');
    expect(text(result)).toContain('main.orders');
  });

  it('query returns rows and caps them with a truncated flag', async () => {
    const count = await query('SELECT count(*) AS n FROM orders');
    expect(count.rows).toEqual([{ n: 200_000 }]);
    expect(count.columns).toEqual([{ name: 'n', type: 'BIGINT' }]);
    expect(count.truncated).toBe(false);

    const exact = await query(`SELECT i FROM range(${MAX_ROWS}) t(i)`);
    expect(exact.rowCount).toBe(MAX_ROWS);
    expect(exact.truncated).toBe(false);

    const over = await query(`SELECT i FROM range(${MAX_ROWS + 1}) t(i)`);
    expect(over.rowCount).toBe(MAX_ROWS);
    expect(over.rows.at(-1)).toEqual({ i: MAX_ROWS - 1 });
    expect(over.truncated).toBe(true);
    expect(over.truncatedBy).toBe('max_rows');

    const huge = await call('query', { sql: 'SELECT i FROM range(100000000) t(i)', max_rows: 3 });
    expect(huge.isError).toBeFalsy();
    expect((huge.structuredContent as unknown as QueryResult).rows).toEqual([
      { i: 0 },
      { i: 1 },
      { i: 2 },
    ]);
    expect(text(huge)).toContain('TRUNCATED');
  });

  it('SQL that holds no statement: query gives no rows, execute says so (as on every engine)', async () => {
    await expectNoStatementHandling(tools(() => client));
  });

  it('query refuses writes: the engine itself refuses them', async () => {
    const insert = await call('query', {
      sql: "INSERT INTO customers VALUES (9999, 'Mallory', 'North', DATE '2024-01-01')",
    });
    expect(insert.isError).toBe(true);
    expect(text(insert)).toMatch(/read-only/);
    expect(text(insert)).toContain('execute tool');

    const create = await call('query', { sql: 'CREATE TABLE sneaky AS SELECT 1 AS x' });
    expect(create.isError).toBe(true);
    expect(text(create)).toMatch(/read-only/);

    // A second statement cannot escape the read-only transaction.
    const escaped = await call('query', { sql: 'COMMIT; DELETE FROM customers' });
    expect(escaped.isError).toBe(true);
    expect(text(escaped)).toContain('exactly one statement');

    // No file access either.
    const copy = await call('query', { sql: "COPY customers TO '/tmp/engine-guard-leak.csv'" });
    expect(copy.isError).toBe(true);

    expect((await query('SELECT count(*) AS n FROM customers')).rows).toEqual([{ n: 1_000 }]);
    const sneaky = await call('describe_table', { table: 'sneaky' });
    expect(sneaky.isError).toBe(true);
  });

  it('neither tool changes the session or the engine setup', async () => {
    for (const sql of [
      'SET threads = 1',
      "SET memory_limit = '1MB'",
      'PRAGMA enable_print_progress_bar', // would print on stdout, the protocol channel
      'PRAGMA enable_profiling',
      "ATTACH ':memory:' AS other",
      'LOAD json',
    ]) {
      for (const tool of ['query', 'execute']) {
        const result = await call(tool, { sql });
        expect(result.isError, `${tool}: ${sql}`).toBe(true);
        expect(text(result), `${tool}: ${sql}`).toContain(`The ${tool} tool does not run`);
      }
    }
    const begin = await call('execute', { sql: 'BEGIN; CREATE TABLE t_tx (a INTEGER); COMMIT' });
    expect(begin.isError).toBe(true);
    expect(text(begin)).toContain('manages the transaction itself');
    // Informational PRAGMAs are plain reads.
    const info = await query("PRAGMA table_info('products')");
    expect(info.rows.map((r) => r.name)).toEqual(['id', 'category', 'name', 'price']);
  });

  it('SQL errors are tool errors, and the server keeps serving', async () => {
    const syntax = await call('query', { sql: 'SELEC 1' });
    expect(syntax.isError).toBe(true);
    expect(text(syntax)).toMatch(/^SQL error: .*syntax error/);

    const missing = await call('query', { sql: 'SELECT * FROM no_such_table' });
    expect(missing.isError).toBe(true);
    expect(text(missing)).toMatch(/no_such_table/);

    const tooBig = await call('query', { sql: 'SELECT 1', max_rows: MAX_ROWS + 1 });
    expect(tooBig.isError).toBe(true);
    expect(text(tooBig)).toMatch(/max_rows/);

    expect((await query('SELECT 42 AS answer')).rows).toEqual([{ answer: 42 }]);
  });

  it('execute runs DDL/DML as one transaction', async () => {
    const created = await ok<{ statements: number; rowsAffected: number | null }>('execute', {
      sql: 'CREATE TABLE notes (id INTEGER PRIMARY KEY, body VARCHAR); INSERT INTO notes VALUES (1, $$a$$), (2, $$b$$)',
    });
    expect(created).toMatchObject({ statements: 2, rowsAffected: 2 });
    expect((await query('SELECT id, body FROM notes ORDER BY id')).rows).toEqual([
      { id: 1, body: 'a' },
      { id: 2, body: 'b' },
    ]);

    // All or nothing: the second statement fails, so the first is rolled back.
    const failed = await call('execute', {
      sql: "INSERT INTO notes VALUES (3, 'c'); INSERT INTO notes VALUES (1, 'duplicate')",
    });
    expect(failed.isError).toBe(true);
    expect(text(failed)).toMatch(/^SQL error: .*(Constraint|Duplicate|PRIMARY KEY)/i);
    expect((await query('SELECT count(*) AS n FROM notes')).rows).toEqual([{ n: 2 }]);

    const updated = await ok<{ rowsAffected: number | null }>('execute', {
      sql: 'UPDATE notes SET body = upper(body); DELETE FROM notes WHERE id = 2',
    });
    expect(updated.rowsAffected).toBe(3);
    expect((await query('SELECT id, body FROM notes')).rows).toEqual([{ id: 1, body: 'A' }]);
    await ok('execute', { sql: 'DROP TABLE notes' });
  });

  it('serves concurrent calls', async () => {
    const results = await Promise.all([
      query('SELECT count(*) AS n FROM customers'),
      query('SELECT count(*) AS n FROM products'),
      query('SELECT region, count(*) AS n FROM customers GROUP BY region ORDER BY region'),
      query('SELECT max(quantity) AS q FROM orders'),
      ok<{ tables: unknown[] }>('list_tables'),
      ok<{ table: string }>('describe_table', { table: 'products' }),
      status(),
      query('SELECT sum(quantity) AS q FROM orders WHERE customer_id = 7'),
    ]);
    expect(results[0].rows).toEqual([{ n: 1_000 }]);
    expect(results[1].rows).toEqual([{ n: 50 }]);
    expect(results[2].rowCount).toBe(5);
    expect(results[3].rows).toEqual([{ q: 5 }]);
    expect(results[4].tables.length).toBeGreaterThanOrEqual(4);
    expect(results[5].table).toBe('products');
    expect(results[6].status.engine.kind).toBe('duckdb');
    expect(results[7].rowCount).toBe(1);
  });

  it(
    'status answers at once during a long query, which reports progress and survives liveness checks; cancelling it from the client interrupts it on the engine',
    async () => {
      const before = (await status()).status;
      const controller = new AbortController();
      const progress: number[] = [];
      const long = call(
        'query',
        { sql: ENDLESS_QUERY },
        { signal: controller.signal, onprogress: (p) => progress.push(p.progress) },
      );
      const outcome = long.then(
        (result) => ({ result }),
        (error: unknown) => ({ error }),
      );

      // It runs for many liveness intervals: probed, never convicted.
      const running = await waitForStatus((s) =>
        s.guard.running.some(
          (op) => op.label?.startsWith('query:') && op.ageMs > 8 * LIVENESS.interval,
        ),
      );
      const op = running.guard.running.find((o) => o.label?.startsWith('query:'))!;
      expect(op.kind).toBe('read');
      expect(running.guard.lastProbe?.ok).toBe(true);

      // Meanwhile status answers from memory, fast, every time.
      for (let i = 0; i < 5; i++) {
        const { status: s, ms } = await status();
        expect(ms).toBeLessThan(1_000);
        expect(s.guard.running.some((o) => o.id === op.id)).toBe(true);
      }
      // ...and so does other work on the other handles.
      expect((await query('SELECT count(*) AS n FROM products')).rows).toEqual([{ n: 50 }]);

      expect(progress.length).toBeGreaterThanOrEqual(3);
      for (let i = 1; i < progress.length; i++) {
        expect(progress[i]!).toBeGreaterThan(progress[i - 1]!);
      }

      // Cancel from the client: the engine stops the query, and keeps the connection.
      const abortedAt = performance.now();
      controller.abort();
      const settled = await outcome;
      expect('error' in settled).toBe(true);
      // Logged as a cancel, not as a failure (the first cancel of this server).
      const endless = 'label="query: SELECT count\\(\\*\\) AS n FROM range';
      await expect
        .poll(() => log.text(), { timeout: 10_000 })
        .toMatch(new RegExp(`info  query cancelled ms=\\d+ ${endless}`));
      expect(log.text()).not.toMatch(new RegExp(`query failed .*${endless}`));
      const after = await waitForStatus((s) => !s.guard.running.some((o) => o.id === op.id));
      expect(performance.now() - abortedAt).toBeLessThan(4_000); // < the 5 s cancel grace
      expect(after.guard.counters.aborts).toBeGreaterThan(before.guard.counters.aborts);
      expect(after.guard.counters.cancels).toBeGreaterThan(before.guard.counters.cancels);
      expect(after.guard.counters.stalls).toBe(0);
      expect(after.guard.counters.replacements).toBe(before.guard.counters.replacements);
      expect((await query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    },
    TEST_TIMEOUT,
  );

  it(
    'cancelled queries leave their connections clean for the next calls',
    async () => {
      for (let round = 0; round < 6; round++) {
        const controller = new AbortController();
        const long = call('query', { sql: ENDLESS_QUERY }, { signal: controller.signal }).then(
          () => 'answered',
          () => 'rejected',
        );
        await waitForStatus((s) => s.guard.running.some((op) => op.label?.startsWith('query:')));
        await sleep(round * 40);
        controller.abort();
        expect(await long).toBe('rejected');
        await waitForStatus((s) => s.guard.running.length === 0);
        // As many calls at once as there are connections: every one of them is used.
        const results = await Promise.all(
          [1, 2, 3].map((n) => call('query', { sql: `SELECT ${n} AS n` })),
        );
        for (const result of results) expect(result.isError, text(result)).toBeFalsy();
      }
      const { status: s } = await status();
      expect(s.guard.counters.stalls).toBe(0);
    },
    TEST_TIMEOUT,
  );
});
