/**
 * Issue 15 on the example server, as its users meet it: one agent, the SDK's default client, the
 * calls a user would send. A client's session pins on state (SPEC 8.1): its short call answers
 * while its own long query runs, unless it holds connection state, and then the waiting call's
 * progress says which state and why. Clients that vanish without a `DELETE` hold nothing; a long
 * call outlives a client's request timeout through progress notifications.
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminQuery, pgConfig } from '../support/pg.js';
import {
  callTool,
  connectStdio,
  ENDLESS_QUERY,
  endSession,
  type HttpServer,
  okTool,
  type QueryResult,
  serverLog,
  sessionStatus,
  startHttpServer,
  TEST_TIMEOUT,
  text,
} from './support.js';

/** `--pg` URL of the test cluster, tagged so its connections can be counted. */
function pgUrl(applicationName: string): string {
  const { port, user, database } = pgConfig();
  return `postgresql://${user}@127.0.0.1:${port}/${database}?application_name=${applicationName}`;
}

/**
 * Starts `long` (a query that runs until aborted), waits until the server shows it running, then
 * times `short` from the same client: the client's own long call must not hold it back.
 */
async function shortDuringOwnLong(
  client: Client,
  long: string,
  short: string,
): Promise<{ ms: number; result: QueryResult }> {
  const controller = new AbortController();
  const running = callTool(client, 'query', { sql: long }, { signal: controller.signal }).catch(
    (error: unknown) => error,
  );
  try {
    const deadline = performance.now() + 20_000;
    for (;;) {
      const { guard } = await sessionStatus(client);
      if (guard.running.some((op) => op.label?.includes(long.slice(0, 20)))) break;
      if (performance.now() > deadline) throw new Error('the long query never started');
      await sleep(25);
    }
    const started = performance.now();
    const result = await okTool<QueryResult>(client, 'query', { sql: short });
    return { ms: performance.now() - started, result };
  } finally {
    controller.abort();
    await running;
  }
}

describe('one agent over stdio (DuckDB): its short query during its own long one', () => {
  const log = serverLog();
  let client: Client;

  beforeAll(async () => {
    client = await connectStdio('one-agent', [], log);
  }, TEST_TIMEOUT);

  afterAll(async () => {
    await client?.close();
  }, TEST_TIMEOUT);

  it(
    'answers within 1 s while the client holds no state',
    async () => {
      const { ms, result } = await shortDuringOwnLong(client, ENDLESS_QUERY, 'select 42 as answer');
      expect(result.rows).toEqual([{ answer: 42 }]);
      expect(ms).toBeLessThan(1_000);
      const { sessions } = await sessionStatus(client);
      expect(sessions.pinned).toBe(0);
    },
    TEST_TIMEOUT,
  );

  it(
    'waits once the client keeps state, and its progress says which state and how to run side by side',
    async () => {
      await okTool(client, 'execute', { sql: 'create temp table t(x int)' });
      const { sessions } = await sessionStatus(client);
      expect(sessions.list.find((s) => s.id === sessions.yours)).toMatchObject({
        pinned: true,
        heldState: [{ kind: 'temp table', name: 't' }],
      });
      const controller = new AbortController();
      const long = callTool(
        client,
        'query',
        { sql: ENDLESS_QUERY },
        { signal: controller.signal },
      ).catch((error: unknown) => error);
      const messages: string[] = [];
      const short = callTool(
        client,
        'query',
        { sql: 'select count(*) as n from t' },
        { onprogress: (p) => messages.push(p.message ?? '') },
      );
      const deadline = performance.now() + 20_000;
      while (!messages.some((m) => m.includes('your session holds'))) {
        if (performance.now() > deadline)
          throw new Error(`no such progress: ${messages.join(' | ')}`);
        await sleep(50);
      }
      const told = messages.find((m) => m.includes('your session holds')) ?? '';
      expect(told).toMatch(/^waiting .* for your other call query #\d+/);
      expect(told).toContain('temp table t');
      expect(told).toContain('Drop it');
      controller.abort();
      await long;
      expect((await short).isError).toBeFalsy();

      // Dropped: unpinned, and side by side again.
      await okTool(client, 'execute', { sql: 'drop table t' });
      const after = await sessionStatus(client);
      expect(after.sessions.pinned).toBe(0);
      const { ms } = await shortDuringOwnLong(client, ENDLESS_QUERY, 'select 1 as one');
      expect(ms).toBeLessThan(1_000);
    },
    TEST_TIMEOUT,
  );
});

describe('one agent over HTTP (DuckDB): clients that vanish without a DELETE hold nothing', () => {
  const log = serverLog();
  let server: HttpServer;

  beforeAll(async () => {
    // DuckDB's defaults: --max-sessions 3.
    server = await startHttpServer([], log);
  }, TEST_TIMEOUT);

  afterAll(async () => {
    await server?.stop();
  }, TEST_TIMEOUT);

  it(
    'its short query answers within 1 s during its own long one',
    async () => {
      const agent = await server.connect('agent');
      const { ms } = await shortDuringOwnLong(agent, ENDLESS_QUERY, 'select 42 as answer');
      expect(ms).toBeLessThan(1_000);
    },
    TEST_TIMEOUT,
  );

  it(
    'five clients that close without a DELETE, then three new clients: each answered within 5 s',
    async () => {
      for (let i = 0; i < 5; i++) {
        const gone = await server.connect(`gone ${i}`);
        await okTool(gone, 'query', { sql: 'select 1 as one' });
        // The SDK's plain close(): no DELETE, the server keeps the MCP session until it expires.
        await gone.close();
      }
      for (let i = 0; i < 3; i++) {
        const fresh = await server.connect(`fresh ${i}`);
        const started = performance.now();
        await okTool(fresh, 'query', { sql: 'select 2 as two' });
        expect(performance.now() - started).toBeLessThan(5_000);
        const { sessions } = await sessionStatus(fresh);
        expect(sessions.pinned).toBe(0);
        expect(sessions.list.length).toBeGreaterThanOrEqual(6);
      }
    },
    TEST_TIMEOUT,
  );
});

describe('the example server on PostgreSQL pins on state', () => {
  const applicationName = `mcp-pin-${randomBytes(4).toString('hex')}`;
  const log = serverLog();
  let server: HttpServer;

  /** Connections the server holds open on the cluster now. */
  const connections = async (): Promise<number> => {
    const { rows } = await adminQuery<{ n: number }>(
      'select count(*)::int as n from pg_stat_activity where application_name = $1',
      [applicationName],
    );
    return rows[0]?.n ?? 0;
  };

  beforeAll(async () => {
    server = await startHttpServer(['--pg', pgUrl(applicationName), '--pool', '2'], log);
  }, TEST_TIMEOUT);

  afterAll(async () => {
    await server?.stop();
  }, TEST_TIMEOUT);

  it(
    'a short query answers within 1 s during the same client pg_sleep',
    async () => {
      const agent = await server.connect('sleeper');
      const { ms, result } = await shortDuringOwnLong(
        agent,
        'select pg_sleep(60)',
        'select 42 as answer',
      );
      expect(result.rows).toEqual([{ answer: 42 }]);
      expect(ms).toBeLessThan(1_000);
    },
    TEST_TIMEOUT,
  );

  for (const [what, sql, kind] of [
    ['SET search_path', 'set search_path to pg_catalog', 'setting'],
    ['a prepared statement', 'prepare mine as select 1', 'prepared statement'],
    ['an advisory lock', 'select pg_advisory_lock(4711)', 'advisory lock'],
    ['LISTEN', 'listen news', 'listen'],
    ['a held cursor', 'declare c cursor with hold for select 1', 'cursor'],
  ] as const) {
    it(`${what} pins the client's session too, and nobody else's`, async () => {
      const owner = await server.connect(`owner of ${what}`);
      const other = await server.connect(`other than ${what}`);
      const tool = sql.startsWith('select') ? 'query' : 'execute';
      await okTool(owner, tool, { sql });
      const mine = await sessionStatus(owner);
      const row = mine.sessions.list.find((s) => s.id === mine.sessions.yours);
      expect(row?.pinned).toBe(true);
      expect(row?.heldState.map((entry) => entry.kind)).toContain(kind);
      await okTool(other, 'query', { sql: 'select 1 as one' });
      const theirs = await sessionStatus(other);
      expect(theirs.sessions.list.find((s) => s.id === theirs.sessions.yours)?.pinned).toBe(false);
      // Done with it: the MCP session's end closes the engine session and frees its connection.
      await endSession(owner);
      await endSession(other);
    });
  }

  it(
    'twenty idle unpinned sessions hold no server connection',
    async () => {
      const clients: Client[] = [];
      for (let i = 0; i < 20; i++) clients.push(await server.connect(`idle ${i}`));
      await Promise.all(clients.map((c) => okTool(c, 'query', { sql: 'select 1 as one' })));
      const { sessions } = await sessionStatus(clients[0]!);
      expect(sessions.list.length).toBeGreaterThanOrEqual(20);
      expect(sessions.pinned).toBe(0);
      // The shared pool (--pool 2) and the probes' side connection: none for the sessions.
      expect(await connections()).toBeLessThanOrEqual(3);
      await Promise.all(clients.map((c) => c.close()));
    },
    TEST_TIMEOUT,
  );

  it('a 20 s query through the SDK client with timeout 8000 and resetTimeoutOnProgress completes', async () => {
    const patient = await server.connect('patient');
    const started = performance.now();
    let progress = 0;
    const result = await patient.callTool(
      { name: 'query', arguments: { sql: 'select pg_sleep(20), 1 as done' } },
      undefined,
      {
        timeout: 8_000,
        resetTimeoutOnProgress: true,
        onprogress: () => {
          progress++;
        },
      },
    );
    expect(result.isError, text(result as never)).toBeFalsy();
    expect(performance.now() - started).toBeGreaterThan(19_000);
    expect(progress).toBeGreaterThan(4);
  }, 60_000);
});
