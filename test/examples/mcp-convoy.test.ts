/**
 * Issue 11 through the example server (DuckDB, three MCP clients over Streamable HTTP, each in
 * its own session): while one client's long query runs, another client's `execute` waits for it
 * without holding back a third client's queries, says in its progress notifications what it
 * waits for, and when its wait bound runs out its error names the query.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  callTool,
  ENDLESS_QUERY,
  type HttpServer,
  livenessFlags,
  type Status,
  serverLog,
  startHttpServer,
  TEST_TIMEOUT,
  text,
  tools,
} from './support.js';

const LIVENESS = { interval: 300, timeout: 1_000, failures: 3 };
const ACQUIRE_TIMEOUT = 2_500;

describe('example server: a write waiting behind a long query', () => {
  const log = serverLog();
  let server: HttpServer;
  /** Runs the long query. */
  let analyst: Client;
  /** Writes. */
  let writer: Client;
  /** Reads and watches status. */
  let reader: Client;
  const { status, query } = tools(() => reader);

  beforeAll(async () => {
    server = await startHttpServer(
      [
        ...livenessFlags(LIVENESS),
        '--acquire-timeout',
        String(ACQUIRE_TIMEOUT),
        '--progress-interval',
        '100',
      ],
      log,
    );
    [analyst, writer, reader] = await Promise.all([
      server.connect('analyst'),
      server.connect('writer'),
      server.connect('reader'),
    ]);
  }, TEST_TIMEOUT);

  afterAll(async () => {
    await server?.stop();
  }, TEST_TIMEOUT);

  it(
    'reports what it waits for, lets other queries pass, and names the query when it gives up',
    async () => {
      const controller = new AbortController();
      const long = callTool(
        analyst,
        'query',
        { sql: ENDLESS_QUERY },
        { signal: controller.signal },
      ).catch((error: unknown) => error);
      const deadline = performance.now() + 20_000;
      let longOp: { id: number; label: string | null } | undefined;
      while (longOp === undefined && performance.now() < deadline) {
        longOp = (await status()).status.guard.running.find((op) => op.label?.startsWith('query:'));
        if (longOp === undefined) await sleep(50);
      }
      expect(longOp).toBeDefined();

      const messages: string[] = [];
      const execute = callTool(
        writer,
        'execute',
        { sql: 'create table convoy_probe(x int)' },
        { onprogress: (p) => messages.push(p.message ?? '') },
      );
      // The write is queued (once its request reached the server: polled, not slept for), and
      // status says what it waits for.
      let queued: Status['guard']['queued'][number] | undefined;
      while (queued === undefined && performance.now() < deadline) {
        queued = (await status()).status.guard.queued.find((op) => op.kind === 'write');
        if (queued === undefined) await sleep(50);
      }
      expect(queued?.waitingFor.map((op) => op.id)).toContain(longOp!.id);

      // Queries arriving after the waiting write are not held back by it.
      const started = performance.now();
      expect((await query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
      expect(performance.now() - started).toBeLessThan(2_000);

      const result = await execute;
      expect(result.isError).toBe(true);
      expect(text(result)).toContain(`query #${longOp!.id}`);
      expect(text(result)).toContain(`waited ${ACQUIRE_TIMEOUT} ms`);
      const waiting = messages.filter((m) => m.startsWith('waiting'));
      expect(waiting.length).toBeGreaterThan(0);
      expect(waiting.at(-1)).toContain(`query #${longOp!.id}`);
      expect(waiting.at(-1)).toContain('running');

      controller.abort();
      await long;
      // Nothing was written: the write never started.
      const tables = await query(
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'convoy_probe'",
      );
      expect(tables.rows).toEqual([{ n: 0 }]);
    },
    TEST_TIMEOUT,
  );
});
