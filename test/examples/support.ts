/**
 * Shared by the end-to-end tests of the example MCP server (mcp-*.test.ts): its status and query
 * results as the tests read them, the server's stderr kept for failure messages, starting it over
 * stdio, and calling its tools.
 *
 *   const log = serverLog(); // in the describe: printed when a test fails
 *   let client: Client;
 *   const { call, ok, status, query } = tools(() => client);
 *   beforeAll(async () => {
 *     client = await connectStdio('my-test', [...livenessFlags(LIVENESS)], log);
 *   });
 */
import type { ChildProcess } from 'node:child_process';
import { PassThrough, type Stream } from 'node:stream';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { beforeEach, expect } from 'vitest';
import { serverProcess, spawnHttpServer } from '../../examples/mcp-server/spawn.js';

export const TEST_TIMEOUT = 60_000;
/** Keeps DuckDB busy for hours (no progress to report: only the side probes vouch for it). */
export const ENDLESS_QUERY =
  'SELECT count(*) AS n FROM range(1000000000000) t(i) WHERE hash(i) % 7 = 3';

export interface Counters {
  ops: number;
  stalls: number;
  replacements: number;
  cancels: number;
  aborts: number;
}

/** The structured result of the status tool (the parts the tests read). */
export interface Status {
  engine: {
    kind: string;
    version: string | null;
    database: string | null;
    tables: number | null;
    views: number | null;
  };
  guard: {
    state: string;
    generation: number;
    handles: { total: number; busy: number; idle: number; retiring: number };
    running: {
      id: number;
      kind: string;
      label: string | null;
      ageMs: number;
      probeFailures: number;
      phase: string;
    }[];
    queued: {
      id: number;
      kind: string;
      label: string | null;
      waitingMs: number;
      waitingFor: { id: number; kind: string; label: string | null; ageMs: number }[];
    }[];
    lastProbe: { ok: boolean } | null;
    counters: Counters;
  };
  /** The liveness settings the server runs with. */
  liveness: { interval: number; timeout: number; failures: number };
  answeredInMs: number;
}

/** The structured result of the query tool. */
export interface QueryResult {
  columns: { name: string; type: string }[];
  rows: Record<string, unknown>[];
  rowCount: number;
  truncated: boolean;
  truncatedBy: string | null;
}

/** The text content of a tool result. */
export function text(result: CallToolResult): string {
  return result.content.map((c) => (c.type === 'text' ? c.text : '')).join('\n');
}

/** The server's `--liveness-*` flags for `liveness`. */
export function livenessFlags(liveness: {
  interval: number;
  timeout: number;
  failures?: number;
}): string[] {
  return [
    '--liveness-interval',
    String(liveness.interval),
    '--liveness-timeout',
    String(liveness.timeout),
    ...(liveness.failures === undefined ? [] : ['--liveness-failures', String(liveness.failures)]),
  ];
}

/** The last output of a server, printed when a test fails. */
export interface ServerLog {
  /** Keeps what `stream` writes; it is drained, so a chatty server never blocks on a full pipe. */
  follow(stream: Stream | null | undefined): void;
  /** What was kept (the last 500 chunks). */
  text(): string;
}

/** A log for the server of the current describe block: call it in the describe, not in a test. */
export function serverLog(): ServerLog {
  const chunks: string[] = [];
  beforeEach(({ onTestFailed }) => {
    onTestFailed(() => {
      console.error(
        `server log (last lines):\n${chunks.join('').split('\n').slice(-60).join('\n')}`,
      );
    });
  });
  return {
    follow(stream) {
      stream?.on('data', (chunk: Buffer) => {
        chunks.push(chunk.toString());
        if (chunks.length > 500) chunks.shift();
      });
    },
    text: () => chunks.join(''),
  };
}

/** Starts the server with `flags` as a subprocess and connects an SDK client to it over stdio. */
export async function connectStdio(name: string, flags: string[], log: ServerLog): Promise<Client> {
  const transport = new StdioClientTransport({ ...serverProcess(flags), stderr: 'pipe' });
  log.follow(transport.stderr);
  const client = new Client({ name, version: '0.0.0' });
  await client.connect(transport);
  return client;
}

/** The server started with `--http 0` as a subprocess (see {@link startHttpServer}). */
export interface HttpServer {
  /** `http://127.0.0.1:<port>/mcp` */
  url: URL;
  child: ChildProcess;
  /** Settles with the exit code. */
  exited: Promise<number | null>;
  /** What the server wrote on stdout (nothing, ever: logs go to stderr). */
  stdout: string[];
  /** A new MCP client (its own MCP session), sending `headers` with every request. */
  connect(name: string, headers?: Record<string, string>): Promise<Client>;
  /** Closes the clients made by `connect`, then stops the server (SIGTERM, then SIGKILL). */
  stop(): Promise<void>;
}

/** Starts the server with `--http 0` and `flags`; resolves once it listens. */
export async function startHttpServer(flags: string[], log: ServerLog): Promise<HttpServer> {
  const stdout: string[] = [];
  const stderr = new PassThrough();
  log.follow(stderr);
  const { url, child, exited } = await spawnHttpServer(
    flags,
    (chunk) => stderr.write(chunk),
    (chunk) => stdout.push(chunk),
  );
  const clients: Client[] = [];
  return {
    url,
    child,
    exited,
    stdout,
    async connect(name, headers = {}) {
      const transport = new StreamableHTTPClientTransport(url, { requestInit: { headers } });
      const client = new Client({ name, version: '0.0.0' });
      await client.connect(transport);
      clients.push(client);
      return client;
    },
    async stop() {
      await Promise.all(clients.splice(0).map((c) => c.close().catch(() => {})));
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/**
 * Ends `client`'s MCP session on the server (HTTP `DELETE`), as a client that is done does,
 * then closes it.
 */
export async function endSession(client: Client): Promise<void> {
  const transport = client.transport;
  if (transport instanceof StreamableHTTPClientTransport) await transport.terminateSession();
  await client.close();
}

export interface CallOptions {
  signal?: AbortSignal;
  onprogress?: (p: { progress: number; message?: string }) => void;
}

/** Calls a tool; a tool error is a result (isError), not a rejection. */
export async function callTool(
  client: Client,
  name: string,
  args: Record<string, unknown> = {},
  options: CallOptions = {},
): Promise<CallToolResult> {
  return (await client.callTool({ name, arguments: args }, undefined, {
    timeout: TEST_TIMEOUT,
    ...options,
  })) as CallToolResult;
}

/** Calls a tool that must succeed; returns its structured content. */
export async function okTool<T>(
  client: Client,
  name: string,
  args: Record<string, unknown> = {},
): Promise<T> {
  const result = await callTool(client, name, args);
  if (result.isError) throw new Error(`${name} failed: ${text(result)}`);
  return result.structuredContent as T;
}

/** The tools of the server `client()` is connected to (read at each call). */
export function tools(client: () => Client) {
  const call = (name: string, args: Record<string, unknown> = {}, options: CallOptions = {}) =>
    callTool(client(), name, args, options);
  const ok = <T>(name: string, args: Record<string, unknown> = {}) =>
    okTool<T>(client(), name, args);
  /** The status and how long the call took, round trip. */
  const status = async (): Promise<{ status: Status; ms: number }> => {
    const started = performance.now();
    const s = await ok<Status>('status');
    return { status: s, ms: performance.now() - started };
  };
  const query = (sql: string, extra: Record<string, unknown> = {}) =>
    ok<QueryResult>('query', { sql, ...extra });
  return { call, ok, status, query };
}

/** The sessions part of the status tool's result. */
export interface SessionsView {
  sessions: {
    max: number;
    /** Sessions pinned now (keeping connection state). */
    pinned: number;
    idleTimeoutMs: number;
    yours: number | null;
    list: {
      id: number;
      label: string | null;
      state: string;
      ageMs: number;
      idleMs: number;
      ops: number;
      queued: number;
      running: boolean;
      losses: number;
      pinned: boolean;
      heldState: { kind: string; name: string }[];
    }[];
  };
}

/** The status tool's result, sessions included. */
export function sessionStatus(client: Client): Promise<Status & SessionsView> {
  return okTool<Status & SessionsView>(client, 'status');
}

/** `query` of `sql` by `client`, `times` calls at once. */
export function burst(client: Client, sql: string, times = 8): Promise<CallToolResult[]> {
  return Promise.all(Array.from({ length: times }, () => callTool(client, 'query', { sql })));
}

/**
 * Issue 9's first measurement, reversed: after `owner` creates a temporary table `scratch` with
 * 2 rows, 8 concurrent reads of `countSql` by `owner` all count 2, and 8 by `other` (at the same
 * time) all fail with `notFound`.
 */
export async function expectOwnTempTable(
  owner: Client,
  other: Client,
  countSql: string,
  notFound: RegExp,
): Promise<void> {
  await okTool(owner, 'execute', {
    sql: 'create temp table scratch(x int); insert into scratch values (1),(2)',
  });
  const [mine, theirs] = await Promise.all([burst(owner, countSql), burst(other, countSql)]);
  for (const result of mine) {
    expect(result.isError, text(result)).toBeFalsy();
    expect((result.structuredContent as unknown as QueryResult).rows).toEqual([{ n: 2 }]);
  }
  for (const result of theirs) {
    expect(result.isError).toBe(true);
    expect(text(result)).toMatch(notFound);
  }
}

/**
 * SQL that holds no statement, the same on every engine: `query` gives no rows, `execute` says
 * there is nothing to run.
 */
export async function expectNoStatementHandling(t: ReturnType<typeof tools>): Promise<void> {
  for (const sql of ['   ', '-- c', ';']) {
    const empty = await t.ok<{ rowCount: number; rows: unknown[] }>('query', { sql });
    expect(empty, sql).toMatchObject({ rowCount: 0, rows: [] });
    const nothing = await t.call('execute', { sql });
    expect(nothing.isError, sql).toBe(true);
    expect(text(nothing), sql).toBe('No SQL statement given.');
  }
}
