/**
 * End-to-end: the example MCP server over Streamable HTTP (`--http 0 --token ...`), with two SDK
 * clients sharing its one engine, and the bearer-token and DNS-rebinding checks.
 */
import { request } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_LIVENESS } from '../../src/index.js';
import {
  callTool as call,
  ENDLESS_QUERY,
  type HttpServer,
  livenessFlags,
  okTool as ok,
  type Status,
  serverLog,
  startHttpServer,
  TEST_TIMEOUT,
} from './support.js';

const TOKEN = 'test-token-0123456789';

const INITIALIZE = {
  jsonrpc: '2.0',
  id: 1,
  method: 'initialize',
  params: {
    protocolVersion: '2025-06-18',
    capabilities: {},
    clientInfo: { name: 'raw', version: '0' },
  },
};

/** A raw POST to the endpoint with exactly the given headers. */
function post(
  url: URL,
  headers: Record<string, string>,
): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: url.hostname,
        port: url.port,
        path: url.pathname,
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          accept: 'application/json, text/event-stream',
          ...headers,
        },
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          body += chunk;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      },
    );
    req.on('error', reject);
    req.end(JSON.stringify(INITIALIZE));
  });
}

describe('example MCP server over Streamable HTTP', () => {
  let server: HttpServer;
  let url: URL;
  const log = serverLog();

  /** An SDK client; `token` null sends no Authorization header at all. */
  function connect(token: string | null = TOKEN): Promise<Client> {
    return server.connect(
      'mcp-http-test',
      token === null ? {} : { authorization: `Bearer ${token}` },
    );
  }

  beforeAll(async () => {
    server = await startHttpServer(
      ['--token', TOKEN, ...livenessFlags({ interval: 300, timeout: 2_000 })],
      log,
    );
    url = server.url;
  }, TEST_TIMEOUT);

  afterAll(async () => {
    await server?.stop();
  }, TEST_TIMEOUT);

  it('a --liveness-* flag replaces its one setting; the others stay the defaults', async () => {
    const client = await connect();
    expect((await ok<Status>(client, 'status')).liveness).toEqual({
      interval: 300,
      timeout: 2_000,
      failures: DEFAULT_LIVENESS.failures,
    });
  });

  it(
    'serves two clients at once, sharing one engine',
    async () => {
      const [alice, bob] = await Promise.all([connect(), connect()]);

      // Alice starts a query that keeps the engine busy...
      const controller = new AbortController();
      const long = call(alice, 'query', { sql: ENDLESS_QUERY }, { signal: controller.signal }).then(
        (result) => ({ result }),
        (error: unknown) => ({ error }),
      );

      // ...Bob sees it in status (one guard for both sessions) and keeps working meanwhile.
      let seen: Status['guard']['running'][number] | undefined;
      for (let i = 0; i < 200 && seen === undefined; i++) {
        const s = await ok<Status>(bob, 'status');
        seen = s.guard.running.find((op) => op.label?.includes('range(1000000000000)'));
        if (seen === undefined) await sleep(50);
      }
      expect(seen).toBeDefined();

      const started = performance.now();
      const counted = await ok<{ rows: unknown[] }>(bob, 'query', {
        sql: 'SELECT count(*) AS n FROM customers',
      });
      expect(counted).toMatchObject({ rows: [{ n: 1_000 }] });
      expect(performance.now() - started).toBeLessThan(5_000);

      // A write waits for running reads, so Alice's query is stopped first; then Bob writes and
      // Alice, in her own session, sees Bob's table: the same engine.
      controller.abort();
      expect('error' in (await long)).toBe(true);
      await ok(bob, 'execute', { sql: 'CREATE TABLE shared_note AS SELECT 42 AS answer' });
      const { tables } = await ok<{ tables: { name: string }[] }>(alice, 'list_tables');
      expect(tables.map((t) => t.name)).toContain('shared_note');
      expect(
        await ok<{ rows: unknown[] }>(alice, 'query', { sql: 'SELECT answer FROM shared_note' }),
      ).toMatchObject({ rows: [{ answer: 42 }] });

      // Concurrent calls from both clients.
      const results = await Promise.all([
        ok<{ rows: unknown[] }>(alice, 'query', { sql: 'SELECT 1 AS a' }),
        ok<{ rows: unknown[] }>(bob, 'query', { sql: 'SELECT 2 AS b' }),
        ok<Status>(alice, 'status'),
        ok<Status>(bob, 'status'),
      ]);
      expect(results[0].rows).toEqual([{ a: 1 }]);
      expect(results[1].rows).toEqual([{ b: 2 }]);
      expect(results[2].guard.counters.ops).toBeGreaterThan(0);
    },
    TEST_TIMEOUT,
  );

  it('refuses requests without the right bearer token', async () => {
    const none = await post(url, {});
    expect(none.status).toBe(401);
    expect(none.headers['www-authenticate']).toMatch(/^Bearer/);
    expect(none.body).toContain('Unauthorized');

    const wrong = await post(url, { authorization: 'Bearer not-the-token' });
    expect(wrong.status).toBe(401);

    await expect(connect('not-the-token')).rejects.toThrow();
    await expect(connect(null)).rejects.toThrow();

    // The right token gets a session.
    const good = await post(url, { authorization: `Bearer ${TOKEN}` });
    expect(good.status).toBe(200);
    expect(good.headers['mcp-session-id']).toBeTruthy();
  });

  it('refuses a foreign Host or Origin header (DNS-rebinding protection)', async () => {
    const auth = { authorization: `Bearer ${TOKEN}` };
    const foreignHost = await post(url, { ...auth, host: `evil.example:${url.port}` });
    expect(foreignHost.status).toBe(403);
    expect(foreignHost.body).toContain('Host');

    const foreignOrigin = await post(url, { ...auth, origin: 'http://evil.example' });
    expect(foreignOrigin.status).toBe(403);
    expect(foreignOrigin.body).toContain('Origin');

    // Loopback names are fine.
    const localhost = await post(url, { ...auth, host: `localhost:${url.port}` });
    expect(localhost.status).toBe(200);
    const sameOrigin = await post(url, { ...auth, origin: `http://127.0.0.1:${url.port}` });
    expect(sameOrigin.status).toBe(200);
  });

  it(
    'shuts down cleanly on SIGTERM',
    async () => {
      await server.stop();
      expect(await server.exited).toBe(0);
      expect(log.text()).toContain('shutting down');
      expect(server.stdout.join('')).toBe(''); // logs go to stderr only
    },
    TEST_TIMEOUT,
  );
});
