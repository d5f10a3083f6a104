/**
 * Issue 9's measurements on the example server, reversed: over real PostgreSQL with `--pool 4`,
 * each MCP client (one Streamable HTTP session each, one server) has an engine session of its
 * own, so its temporary tables, settings, prepared statements and advisory locks are its own, the
 * same in all its calls, and never reach another client; closing its MCP session frees them.
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeLiveness } from '../../examples/mcp-server/cli.js';
import { PG_LIVENESS } from '../../src/adapters/pg.js';
import { adminQuery, pgConfig } from '../support/pg.js';
import {
  burst,
  callTool,
  endSession,
  expectOwnTempTable,
  type HttpServer,
  okTool,
  type QueryResult,
  serverLog,
  sessionStatus,
  startHttpServer,
  TEST_TIMEOUT,
  text,
} from './support.js';

describe('example MCP server on PostgreSQL: one engine session per MCP client', () => {
  const applicationName = `mcp-sessions-${randomBytes(4).toString('hex')}`;
  const log = serverLog();
  let server: HttpServer;
  let alice: Client;
  let bob: Client;

  const query = (client: Client, sql: string) => callTool(client, 'query', { sql });
  const rowsOf = async (client: Client, sql: string) =>
    (await okTool<QueryResult>(client, 'query', { sql })).rows;
  const status = sessionStatus;

  beforeAll(async () => {
    const { port, user, database } = pgConfig();
    const url = `postgresql://${user}@127.0.0.1:${port}/${database}?application_name=${applicationName}`;
    server = await startHttpServer(['--pg', url, '--pool', '4'], log);
    [alice, bob] = await Promise.all([server.connect('alice'), server.connect('bob')]);
  }, TEST_TIMEOUT);

  afterAll(async () => {
    await server?.stop();
  }, TEST_TIMEOUT);

  it("runs with the pg adapter's liveness defaults when no --liveness-* flag is given", async () => {
    expect((await status(alice)).liveness).toEqual({ ...PG_LIVENESS });
    expect(log.text()).toContain(`liveness=${describeLiveness(PG_LIVENESS)} `);
  });

  it('a temporary table is seen by every read of its client and by no other client', async () => {
    await expectOwnTempTable(
      alice,
      bob,
      'select count(*)::int as n from scratch',
      /relation "scratch" does not exist/,
    );
    // list_tables runs in the session too: the client sees its own temporary table.
    const { tables } = await okTool<{ tables: { name: string }[] }>(alice, 'list_tables');
    expect(tables.map((t) => t.name)).toContain('scratch');
    const bobs = await okTool<{ tables: { name: string }[] }>(bob, 'list_tables');
    expect(bobs.tables.map((t) => t.name)).not.toContain('scratch');
  });

  it("one client's SET never reaches another client's queries", async () => {
    await okTool(alice, 'execute', { sql: 'set search_path to nowhere' });
    expect(await rowsOf(alice, "select current_setting('search_path') as p")).toEqual([
      { p: 'nowhere' },
    ]);
    const theirs = await burst(bob, "select current_setting('search_path') as p");
    for (const result of theirs) {
      expect(result.isError, text(result)).toBeFalsy();
      expect((result.structuredContent as unknown as QueryResult).rows).not.toEqual([
        { p: 'nowhere' },
      ]);
    }

    // A client that sets a 1 ms statement timeout only slows itself down.
    const carol = await server.connect('carol');
    await okTool(carol, 'execute', { sql: 'set statement_timeout = 1' });
    const slow = await query(carol, 'select pg_sleep(0.05)');
    expect(slow.isError).toBe(true);
    expect(text(slow)).toContain('statement timeout');
    const others = await burst(bob, 'select pg_sleep(0.05), 1 as one');
    for (const result of others) expect(result.isError, text(result)).toBeFalsy();
    await endSession(carol);
  });

  it('a prepared statement stays with its client', async () => {
    await okTool(alice, 'execute', { sql: 'prepare p1 as select 41 + 1 as answer' });
    expect(await rowsOf(alice, 'execute p1')).toEqual([{ answer: 42 }]);
    const theirs = await burst(
      bob,
      "select count(*)::int as n from pg_prepared_statements where name = 'p1'",
    );
    for (const result of theirs) {
      expect((result.structuredContent as unknown as QueryResult).rows).toEqual([{ n: 0 }]);
    }
  });

  it(
    "an advisory lock is held by its client's session only until its MCP session ends, which frees its engine session",
    async () => {
      const heldBy42 = async (): Promise<number> => {
        const { rows } = await adminQuery<{ n: number }>(
          `select count(*)::int as n from pg_locks
           where locktype = 'advisory' and objid = 42 and granted`,
        );
        return rows[0]?.n ?? 0;
      };
      const dave = await server.connect('dave');
      await okTool(dave, 'query', { sql: 'select pg_advisory_lock(42)' });
      const daveSession = (await status(dave)).sessions.yours;
      expect(daveSession).not.toBeNull();
      // Held by Dave's session (a rolled-back read does not release a session lock)...
      expect(await heldBy42()).toBe(1);
      // ...so no one else gets it meanwhile.
      expect(await rowsOf(bob, 'select pg_try_advisory_lock(42) as got')).toEqual([{ got: false }]);
      const listed = (await status(bob)).sessions.list.find((s) => s.id === daveSession);
      expect(listed).toMatchObject({ label: expect.stringContaining('dave'), state: 'open' });
      expect(listed?.ops).toBeGreaterThanOrEqual(1);

      await endSession(dave);
      const deadline = performance.now() + 10_000;
      let after = await status(bob);
      while (
        after.sessions.list.some((s) => s.id === daveSession) &&
        performance.now() < deadline
      ) {
        await sleep(50);
        after = await status(bob);
      }
      expect(after.sessions.list.map((s) => s.id)).not.toContain(daveSession);
      while ((await heldBy42()) > 0 && performance.now() < deadline) await sleep(50);
      expect(await heldBy42()).toBe(0);
    },
    TEST_TIMEOUT,
  );
});
