/**
 * The example server's `--metrics`: the guard's metrics (engine-guard/otel through
 * `@opentelemetry/exporter-prometheus`) at `/metrics` on its HTTP server, under the same
 * loopback-Host and bearer-token checks as `/mcp`. A real server process, real HTTP.
 */
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseCli, USAGE, UsageError } from '../../examples/mcp-server/cli.js';
import {
  type HttpServer,
  okTool,
  serverLog,
  startHttpServer,
  TEST_TIMEOUT,
} from '../examples/support.js';

const TOKEN = 'metrics-token-0123456789';

/** A raw request to `path` on the server at `url`, with exactly `headers`. */
function fetchRaw(
  url: URL,
  path: string,
  headers: Record<string, string>,
  method = 'GET',
): Promise<{ status: number; type: string | undefined; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: url.hostname, port: url.port, path, method, headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        body += chunk;
      });
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, type: res.headers['content-type'], body }),
      );
    });
    req.on('error', reject);
    req.end();
  });
}

/** The value of the first sample line of `text` that starts with `prefix`. */
function sample(text: string, prefix: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(prefix));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

describe('example server flag --metrics', () => {
  it('applies to --http only, and is in the usage', () => {
    expect(parseCli(['--http', '0', '--metrics'], {}).metrics).toBe(true);
    expect(parseCli(['--http', '0'], {}).metrics).toBe(false);
    expect(() => parseCli(['--metrics'], {})).toThrow(UsageError);
    expect(() => parseCli(['--metrics'], {})).toThrow('--metrics only applies to --http');
    expect(USAGE).toContain('--metrics');
  });
});

describe('example server /metrics', () => {
  let server: HttpServer;
  const log = serverLog();
  const auth = { authorization: `Bearer ${TOKEN}` };

  beforeAll(async () => {
    server = await startHttpServer(['--metrics', '--token', TOKEN, '--max-sessions', '0'], log);
  }, TEST_TIMEOUT);

  afterAll(async () => {
    await server?.stop();
  });

  it(
    'serves the pool metrics as Prometheus text, counting the calls made',
    async () => {
      const client = await server.connect('metrics-test', auth);
      await okTool(client, 'query', { sql: 'SELECT 42 AS answer' });
      const res = await fetchRaw(server.url, '/metrics', auth);
      expect(res.status).toBe(200);
      expect(res.type).toMatch(/^text\/plain/);
      const pool = 'db_client_connection_pool_name="duckdb"';
      expect(res.body).toContain(
        `db_client_connection_count{${pool},db_client_connection_state="idle"`,
      );
      expect(res.body).toContain(`db_client_connection_limit{${pool}`);
      expect(res.body).toContain('service_name="engine-guard-mcp-example"');
      const ok = `engine_guard_ops_total{${pool},engine_guard_op_kind="read",engine_guard_op_outcome="ok"`;
      expect(sample(res.body, ok)).toBeGreaterThanOrEqual(1);
      expect(
        sample(res.body, `db_client_connection_wait_time_count{${pool}`),
      ).toBeGreaterThanOrEqual(1);
    },
    TEST_TIMEOUT,
  );

  it('under the same rules as /mcp: token, loopback Host, GET only', async () => {
    expect((await fetchRaw(server.url, '/metrics', {})).status).toBe(401);
    expect((await fetchRaw(server.url, '/metrics', { authorization: 'Bearer wrong' })).status).toBe(
      401,
    );
    const foreign = await fetchRaw(server.url, '/metrics', { ...auth, host: 'evil.example:80' });
    expect(foreign.status).toBe(403);
    expect((await fetchRaw(server.url, '/metrics', auth, 'POST')).status).toBe(405);
  });

  it(
    'is not served without --metrics',
    async () => {
      const plain = await startHttpServer(['--max-sessions', '0'], log);
      try {
        expect((await fetchRaw(plain.url, '/metrics', {})).status).toBe(404);
      } finally {
        await plain.stop();
      }
    },
    TEST_TIMEOUT,
  );
});
