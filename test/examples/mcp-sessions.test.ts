/**
 * The example server's client sessions on DuckDB (one server over Streamable HTTP, several MCP
 * clients): a client's temporary table is its own; `status` lists the sessions; a lost session
 * is said so once and the client continues on a fresh connection; `--max-sessions` and
 * `--session-idle-timeout` bound the connections sessions hold, and an ended MCP session frees
 * its slot.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  callTool,
  connectStdio,
  ENDLESS_QUERY,
  endSession,
  expectOwnTempTable,
  type HttpServer,
  livenessFlags,
  okTool,
  type QueryResult,
  type SessionsView,
  serverLog,
  sessionStatus,
  startHttpServer,
  TEST_TIMEOUT,
  text,
} from './support.js';

const status = sessionStatus;

/** Polls `client`'s status until `predicate` holds; fails after 15 s. */
async function waitForSessions(
  client: Client,
  predicate: (s: SessionsView['sessions']) => boolean,
): Promise<SessionsView['sessions']> {
  const deadline = performance.now() + 15_000;
  for (;;) {
    const { sessions } = await status(client);
    if (predicate(sessions)) return sessions;
    if (performance.now() > deadline) {
      throw new Error(`sessions never matched: ${JSON.stringify(sessions)}`);
    }
    await sleep(50);
  }
}

describe('example server on DuckDB: one engine session per MCP client', () => {
  const log = serverLog();
  let server: HttpServer;
  let alice: Client;
  let bob: Client;

  beforeAll(async () => {
    server = await startHttpServer(
      ['--demo-faults', ...livenessFlags({ interval: 300, timeout: 500, failures: 2 })],
      log,
    );
    [alice, bob] = await Promise.all([server.connect('alice'), server.connect('bob')]);
  }, TEST_TIMEOUT);

  afterAll(async () => {
    await server?.stop();
  }, TEST_TIMEOUT);

  it('a temporary table is seen by every read of its client and by no other client; status lists the sessions', async () => {
    await expectOwnTempTable(
      alice,
      bob,
      'select count(*) as n from scratch',
      /scratch does not exist/,
    );

    const seenByBob = await status(bob);
    const aliceId = (await status(alice)).sessions.yours;
    expect(aliceId).not.toBeNull();
    expect(seenByBob.sessions.yours).not.toBe(aliceId);
    expect(seenByBob.sessions.max).toBe(3);
    const aliceRow = seenByBob.sessions.list.find((s) => s.id === aliceId);
    expect(aliceRow).toMatchObject({ state: 'open', label: expect.stringContaining('alice') });
    expect(aliceRow?.ops).toBe(9);
    expect(aliceRow?.ageMs).toBeGreaterThan(0);
    const bobRow = seenByBob.sessions.list.find((s) => s.id === seenByBob.sessions.yours);
    expect(bobRow).toMatchObject({ ops: 8, label: expect.stringContaining('bob') });
  });

  it(
    'a session whose connection is lost says so once, then continues on a fresh connection; other sessions are untouched',
    async () => {
      await okTool(bob, 'execute', { sql: 'create temp table mine(x int)' });
      const wedged = await callTool(bob, 'demo_wedge');
      expect(wedged.isError).toBe(true);
      expect(text(wedged)).toMatch(/^Engine stalled: demo_wedge/);
      expect(text(wedged)).toContain("Your session's state is LOST");
      expect(text(wedged)).toContain('Your next call runs in a fresh session');

      // Told once: the next call runs, on a fresh connection without Bob's old temporary table.
      const after = await callTool(bob, 'query', { sql: 'select count(*) as n from mine' });
      expect(after.isError).toBe(true);
      expect(text(after)).toMatch(/mine does not exist/);
      expect(text(after)).not.toContain('LOST');
      expect((await okTool<QueryResult>(bob, 'query', { sql: 'select 1 as one' })).rows).toEqual([
        { one: 1 },
      ]);
      const { sessions } = await status(bob);
      expect(sessions.list.find((s) => s.id === sessions.yours)).toMatchObject({
        state: 'open',
        losses: 1,
      });

      // Alice's session kept its connection and its state.
      expect(
        (await okTool<QueryResult>(alice, 'query', { sql: 'select count(*) as n from scratch' }))
          .rows,
      ).toEqual([{ n: 2 }]);
    },
    TEST_TIMEOUT,
  );

  it(
    'a client whose call dies with its connection while its session holds no state is told of no loss',
    async () => {
      const dave = await server.connect('dave');
      try {
        const wedged = await callTool(dave, 'demo_wedge');
        expect(wedged.isError).toBe(true);
        expect(text(wedged)).toMatch(/^Engine stalled: demo_wedge/);
        // Unpinned: the call ran on a shared connection, and nothing of Dave's was on it.
        expect(text(wedged)).not.toContain('LOST');
        expect(text(wedged)).not.toContain('Your session');
        expect((await okTool<QueryResult>(dave, 'query', { sql: 'select 1 as one' })).rows).toEqual(
          [{ one: 1 }],
        );
      } finally {
        await endSession(dave);
      }
    },
    TEST_TIMEOUT,
  );

  it(
    'a client that ends its MCP session while its query runs frees its engine session at once',
    async () => {
      const stallsBefore = (await status(bob)).guard.counters.stalls;
      const carol = await server.connect('carol');
      const long = callTool(carol, 'query', { sql: ENDLESS_QUERY }).catch(
        (error: unknown) => error,
      );
      let carolId: number | null = null;
      const deadline = performance.now() + 15_000;
      while (carolId === null && performance.now() < deadline) {
        const { guard, sessions } = await status(bob);
        const running = guard.running.find((op) => op.label?.includes('range(1000000000000)'));
        if (running !== undefined) {
          carolId = sessions.list.find((row) => row.label?.includes('carol'))?.id ?? null;
        } else {
          await sleep(50);
        }
      }
      expect(carolId).not.toBeNull();
      await endSession(carol);
      // The MCP session's end aborts its call (the engine interrupts the query), then the
      // engine session closes.
      await waitForSessions(bob, (s) => !s.list.some((row) => row.id === carolId));
      let { guard } = await status(bob);
      while (
        guard.running.some((op) => op.label?.includes('range(1000000000000)')) &&
        performance.now() < deadline + 10_000
      ) {
        await sleep(50);
        ({ guard } = await status(bob));
      }
      expect(guard.running.some((op) => op.label?.includes('range(1000000000000)'))).toBe(false);
      expect(guard.counters.stalls).toBe(stallsBefore); // ended, not convicted
      await long;
    },
    TEST_TIMEOUT,
  );
});

describe('example server on DuckDB: --max-sessions and --session-idle-timeout', () => {
  const log = serverLog();
  const IDLE_TIMEOUT = 4_000;
  // Nothing here waits for a slot (a state call with none free is refused at once): the bound
  // only has to cover a first connect on a busy machine, which overran 1 s in CI.
  const ACQUIRE_TIMEOUT = 10_000;
  let server: HttpServer;

  beforeAll(async () => {
    server = await startHttpServer(
      [
        '--max-sessions',
        '1',
        '--session-idle-timeout',
        String(IDLE_TIMEOUT),
        '--acquire-timeout',
        String(ACQUIRE_TIMEOUT),
      ],
      log,
    );
  }, TEST_TIMEOUT);

  afterAll(async () => {
    await server?.stop();
  }, TEST_TIMEOUT);

  it(
    'a client that makes state when every slot is taken is told it was discarded; an idle session expires and frees its slot, an ended MCP session too',
    async () => {
      const [alice, bob] = await Promise.all([server.connect('alice'), server.connect('bob')]);
      await okTool(alice, 'execute', { sql: 'create temp table scratch(x int)' });
      expect((await status(alice)).sessions.pinned).toBe(1);

      // Bob holds no state: his calls run on the shared connections, slot or no slot.
      expect((await okTool<QueryResult>(bob, 'query', { sql: 'select 1 as one' })).rows).toEqual([
        { one: 1 },
      ]);
      // State he makes cannot be kept while Alice holds the one slot: he is told, at that call.
      const refused = await callTool(bob, 'execute', { sql: 'create temp table mine(x int)' });
      expect(refused.isError).toBe(true);
      expect(text(refused)).toMatch(/^execute ran, and what it committed stays committed/);
      expect(text(refused)).toContain('temp table mine');
      expect(text(refused)).toContain('--max-sessions');
      const gone = await callTool(bob, 'query', { sql: 'select count(*) as n from mine' });
      expect(text(gone)).toMatch(/mine does not exist/);

      // Alice goes quiet: her session expires and its slot is free for Bob's state.
      const aliceId = (await status(alice)).sessions.yours;
      await waitForSessions(bob, (s) => !s.list.some((row) => row.id === aliceId));
      await okTool(bob, 'execute', { sql: 'create temp table mine(x int)' });
      expect(
        (await okTool<QueryResult>(bob, 'query', { sql: 'select count(*) as n from mine' })).rows,
      ).toEqual([{ n: 0 }]);

      // Bob ends his MCP session: his engine session goes with its state. Alice's first call
      // says her old session (and its temporary table) is gone.
      await endSession(bob);
      await waitForSessions(alice, (s) => s.list.length === 0);
      const back = await callTool(alice, 'query', { sql: 'select count(*) as n from scratch' });
      expect(back.isError).toBe(true);
      expect(text(back)).toMatch(/^Note: your previous session \(#\d+\) expired after 4\.0 s/);
      expect(text(back)).toMatch(/scratch does not exist/);
      const ok = await callTool(alice, 'query', { sql: 'select 2 as two' });
      expect(ok.isError).toBeFalsy();
      expect(text(ok)).not.toContain('expired');
    },
    TEST_TIMEOUT,
  );
});

describe('example server on DuckDB over stdio: the one client has one session', () => {
  const log = serverLog();
  let client: Client;

  beforeAll(async () => {
    client = await connectStdio('stdio-client', [], log);
  }, TEST_TIMEOUT);

  afterAll(async () => {
    await client?.close();
  }, TEST_TIMEOUT);

  it('its concurrent calls all run in its session, in call order', async () => {
    await okTool(client, 'execute', {
      sql: 'create temp table scratch(x int); insert into scratch values (1),(2)',
    });
    const results = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        i === 4
          ? callTool(client, 'execute', { sql: 'insert into scratch values (3)' })
          : callTool(client, 'query', { sql: 'select count(*) as n from scratch' }),
      ),
    );
    // Reads before the insert see 2 rows, reads after it 3: one connection, in call order.
    const counts = results.map((r, i) =>
      r.isError || i === 4 ? text(r) : (r.structuredContent as unknown as QueryResult).rows[0]?.n,
    );
    expect(counts).toEqual([2, 2, 2, 2, expect.stringMatching(/^OK: 1 statement/), 3, 3, 3]);
    const { sessions } = await status(client);
    expect(sessions.list).toEqual([
      expect.objectContaining({ id: sessions.yours, label: 'stdio-client', ops: 9 }),
    ]);
  });
});
