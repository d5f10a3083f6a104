/**
 * engine-guard/pg's `state` check (pgState, SPEC 8.1) on the real PostgreSQL, called directly on
 * handles the adapter made: each kind of connection state a session op can leave is reported,
 * nothing is reported once it is gone (clean means what pgReset would leave), the settings setup
 * established are not state, and a provably clean handle is answered at once.
 */

import { setTimeout as sleep } from 'node:timers/promises';
import type { HeldState } from 'engine-guard';
import {
  type PgHandle,
  pgGuardOptions,
  pgQuery,
  pgReadOnly,
  pgReset,
  pgState,
} from 'engine-guard/pg';
import pg from 'pg';
import { beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { isClean } from '../../src/adapters/pg-reset.js';
import { resetCtx, stateCtx } from '../support/hook-context.js';
import { adminQuery, clientConfig } from '../support/pg.js';
import type { PgOptions } from '../support/pg-faults-kit.js';

const ROLE = 'engine_guard_state_role';

beforeAll(async () => {
  await adminQuery(
    `DO $$ BEGIN CREATE ROLE ${ROLE}; EXCEPTION WHEN duplicate_object THEN NULL; END $$`,
  );
});

const ctx = (sessionId?: number) => ({
  signal: new AbortController().signal,
  heartbeat() {},
  sessionId,
});

/** A handle made and set up by the adapter (with `overrides`), destroyed at the end. */
async function openHandle(
  overrides: Partial<PgOptions> = {},
  customSettings?: string[],
): Promise<PgHandle> {
  const options = pgGuardOptions({ config: clientConfig(), customSettings }, overrides);
  const signal = AbortSignal.timeout(10_000);
  const handle = await options.create({ signal, generation: 1 });
  onTestFinished(() => options.destroy?.(handle, { reason: 'test' }));
  await options.setup?.(handle, { signal, generation: 1 });
  return handle;
}

/** pgState's answer, and whether it came synchronously (no round trip). */
async function check(
  handle: PgHandle,
): Promise<{ sync: boolean; held: readonly HeldState[] | undefined }> {
  const answer = pgState(handle, stateCtx());
  if (answer === undefined || Array.isArray(answer)) {
    return { sync: true, held: answer as readonly HeldState[] | undefined };
  }
  return { sync: false, held: await answer };
}

/** What pgState reports (an empty list for none, synchronous or not). */
async function held(handle: PgHandle): Promise<readonly HeldState[]> {
  return (await check(handle)).held ?? [];
}

const run = (handle: PgHandle, sql: string, values?: unknown[]) =>
  pgQuery(handle, ctx(), sql, values);

const raw = (handle: PgHandle): pg.Client => handle.client as unknown as pg.Client;

describe('pgState reports each kind of state an op leaves, and none once it is gone', () => {
  it.each<[string, string, HeldState[], string]>([
    [
      'a temporary table',
      'CREATE TEMP TABLE scratch (x int)',
      [{ kind: 'temp table', name: 'scratch' }],
      'DROP TABLE scratch',
    ],
    [
      'other temporary objects',
      "CREATE TEMP VIEW v AS SELECT 1 AS x; CREATE TEMP SEQUENCE s; CREATE FUNCTION pg_temp.f(int) RETURNS int LANGUAGE sql AS 'SELECT 1'; CREATE TYPE pg_temp.mood AS ENUM ('ok')",
      [
        { kind: 'temp function', name: 'f(integer)' },
        { kind: 'temp type', name: 'mood' },
        { kind: 'temp sequence', name: 's' },
        { kind: 'temp view', name: 'v' },
      ],
      'DISCARD TEMP',
    ],
    [
      'SET search_path',
      'SET search_path TO nowhere, public',
      [{ kind: 'setting', name: 'search_path' }],
      'RESET ALL',
    ],
    [
      'set_config of a custom setting',
      "SELECT set_config('app.tenant', 'acme', false)",
      [{ kind: 'setting', name: 'app.tenant' }],
      'RESET ALL',
    ],
    [
      'a SQL prepared statement',
      'PREPARE p1 AS SELECT 1',
      [{ kind: 'prepared statement', name: 'p1' }],
      'DEALLOCATE p1',
    ],
    [
      'advisory locks',
      'SELECT pg_advisory_lock(4301), pg_advisory_lock_shared(-4302), pg_advisory_lock(1, 2)',
      [
        { kind: 'advisory lock', name: '-4302 (shared)' },
        { kind: 'advisory lock', name: '1,2' },
        { kind: 'advisory lock', name: '4301' },
      ],
      'SELECT pg_advisory_unlock_all()',
    ],
    [
      'LISTEN',
      'LISTEN engine_guard_chan',
      [{ kind: 'listen', name: 'engine_guard_chan' }],
      'UNLISTEN *',
    ],
    [
      'a WITH HOLD cursor',
      'BEGIN; DECLARE held_cursor CURSOR WITH HOLD FOR SELECT 1; COMMIT',
      [{ kind: 'cursor', name: 'held_cursor' }],
      'CLOSE held_cursor',
    ],
    ['SET ROLE', `SET ROLE ${ROLE}`, [{ kind: 'role', name: ROLE }], 'RESET ROLE'],
    [
      'SET SESSION AUTHORIZATION',
      `SET SESSION AUTHORIZATION ${ROLE}`,
      [{ kind: 'session authorization', name: ROLE }],
      'RESET SESSION AUTHORIZATION',
    ],
  ])('%s', async (_, make, expected, undo) => {
    const handle = await openHandle();
    await run(handle, make);
    const first = await check(handle);
    expect(first).toEqual({ sync: false, held: expected });
    // Still there on the next check: the check itself keeps the state.
    expect(await held(handle)).toEqual(expected);
    await run(handle, undo);
    expect(await check(handle)).toEqual({ sync: false, held: [] });
    // Found clean, the handle is recorded clean: the next check and the reset skip their trip.
    expect(await check(handle)).toEqual({ sync: true, held: undefined });
    expect(pgReset(handle, resetCtx())).toBeUndefined();
  });

  it("a pg named query (protocol-level prepared statement) is state; pg's cache stays right", async () => {
    const handle = await openHandle();
    const named = { name: 'engine_guard_state_named', text: 'SELECT $1::int AS v', values: [1] };
    await raw(handle).query(named);
    expect(await held(handle)).toEqual([
      { kind: 'prepared statement', name: 'engine_guard_state_named' },
    ]);
    // The check dropped nothing: pg still Binds its parsed statement.
    expect((await raw(handle).query({ ...named, values: [2] })).rows).toEqual([{ v: 2 }]);
  });

  it('an open transaction is state, answered with no round trip; a failed one too', async () => {
    const handle = await openHandle();
    await run(handle, 'BEGIN; CREATE TEMP TABLE inside (x int)');
    expect(await check(handle)).toEqual({
      sync: true,
      held: [{ kind: 'transaction', name: 'open' }],
    });
    await run(handle, 'SELECT 1/0').catch(() => undefined);
    expect(await held(handle)).toEqual([{ kind: 'transaction', name: 'failed' }]);
    await run(handle, 'ROLLBACK');
    expect(await held(handle)).toEqual([]);
    await run(handle, 'BEGIN; CREATE TEMP TABLE kept (x int); COMMIT');
    expect(await held(handle)).toEqual([{ kind: 'temp table', name: 'kept' }]);
  });

  it('several kinds at once, in a stable order', async () => {
    const handle = await openHandle();
    await run(
      handle,
      'CREATE TEMP TABLE a (x int); SET work_mem = 12345; PREPARE q AS SELECT 1; LISTEN c; SELECT pg_advisory_lock(4303)',
    );
    expect(await held(handle)).toEqual([
      { kind: 'temp table', name: 'a' },
      { kind: 'setting', name: 'work_mem' },
      { kind: 'prepared statement', name: 'q' },
      { kind: 'listen', name: 'c' },
      { kind: 'advisory lock', name: '4303' },
    ]);
  });

  it('a setting set back to its value is no state; one set to a new value is', async () => {
    const handle = await openHandle();
    const { rows } = await run(handle, "SELECT current_setting('work_mem') AS v");
    await run(handle, `SET work_mem = '${rows[0]?.v}'`);
    expect(await held(handle)).toEqual([]);
    await run(handle, "SET work_mem = '7MB'");
    expect(await held(handle)).toEqual([{ kind: 'setting', name: 'work_mem' }]);
  });

  it("the op's own statement_timeout and lock_timeout do not fail the check", async () => {
    // The check is made to outlast the op's timeouts for sure, whatever the machine's load: in
    // a database of its own, another session holds a lock on a catalog the check reads.
    const database = `engine_guard_state_timeouts_${process.pid}`;
    await adminQuery(`DROP DATABASE IF EXISTS ${database}`);
    await adminQuery(`CREATE DATABASE ${database}`);
    onTestFinished(async () => {
      await adminQuery(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
    });
    const options = pgGuardOptions({ config: clientConfig({ database }) });
    const signal = AbortSignal.timeout(10_000);
    const handle = await options.create({ signal, generation: 1 });
    onTestFinished(() => options.destroy?.(handle, { reason: 'test' }));
    await options.setup?.(handle, { signal, generation: 1 });
    const blocker = new pg.Client(clientConfig({ database }));
    await blocker.connect();
    onTestFinished(() => blocker.end());

    // statement_timeout last: the SET after it would run under it.
    await run(handle, "SET lock_timeout = '100ms'; SET statement_timeout = '100ms'");
    await blocker.query('BEGIN; LOCK TABLE pg_catalog.pg_depend IN ACCESS EXCLUSIVE MODE');
    const t0 = performance.now();
    const checked = held(handle);
    await sleep(600);
    await blocker.query('COMMIT');
    expect(await checked).toEqual([
      { kind: 'setting', name: 'lock_timeout' },
      { kind: 'setting', name: 'statement_timeout' },
    ]);
    // It waited for the lock well past both timeouts, and was not cancelled by either.
    expect(performance.now() - t0).toBeGreaterThan(500);
    // And the op's settings are as it left them.
    const { rows } = await run(
      handle,
      "SELECT current_setting('statement_timeout') AS s, current_setting('lock_timeout') AS l",
    );
    expect(rows[0]).toEqual({ s: '100ms', l: '100ms' });
  });

  it('a custom setting hidden behind more dotted names than it keeps is never called clean', async () => {
    const handle = await openHandle();
    // 300 quoted dotted strings first, then the setting: its name is beyond what is kept.
    const flood = Array.from({ length: 300 }, (_, i) => `'flood.n${i}'`).join(', ');
    await run(handle, `SELECT ${flood}, set_config('app.hidden_tenant', 'evil', false)`);
    const found = await held(handle);
    expect(found).toEqual([
      {
        kind: 'setting',
        name: '(custom settings: more than 256 names seen, not all checked)',
      },
    ]);
    // Until the handle is reset, it is not clean, whatever the op undoes.
    await run(handle, 'RESET ALL');
    expect(await held(handle)).toEqual(found);
  });

  it('currval and the random seed do not outlive the call (no catalog shows them)', async () => {
    const handle = await openHandle();
    await adminQuery('CREATE SEQUENCE IF NOT EXISTS engine_guard_state_seq');
    await run(handle, "SELECT nextval('engine_guard_state_seq'), setseed(0.5)");
    expect(await held(handle)).toEqual([]);
    await expect(run(handle, "SELECT currval('engine_guard_state_seq')")).rejects.toMatchObject({
      code: '55000',
    });
  });
});

describe('"no state" means what pgReset leaves', () => {
  /** What pgReset restores, as one comparable value. */
  const SNAPSHOT_SQL = `SELECT json_build_object(
    'settings', (SELECT json_agg(json_build_array(name, setting) ORDER BY name) FROM pg_settings),
    'users', json_build_array(session_user, current_user, current_setting('role')),
    'custom', current_setting('app.tenant', true),
    'temporary', (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()),
    'prepared', (SELECT json_agg(name ORDER BY name) FROM pg_prepared_statements),
    -- not the snapshot's own unnamed portal, listed when it is sent by the extended protocol
    'cursors', (SELECT count(*) FROM pg_cursors WHERE name <> ''),
    'listening', (SELECT json_agg(c) FROM pg_listening_channels() c),
    'locks', (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())
  )::text AS v`;

  it.each([
    [['SELECT 1']],
    [['CREATE TEMP TABLE t (x int)', 'DROP TABLE t']],
    [['CREATE TEMP TABLE t (x int)']],
    [["SET work_mem = '7MB'"]],
    [["SET work_mem = '7MB'", 'RESET work_mem']],
    [["SET app.tenant = 'x'"]],
    [["SET app.tenant = 'x'", 'RESET app.tenant']],
    [['PREPARE p AS SELECT 1']],
    [['LISTEN c']],
    [['SELECT pg_advisory_lock(4305)']],
    [[`SET ROLE ${ROLE}`]],
    [[`SET ROLE ${ROLE}`, 'RESET ROLE']],
  ])('%j', async (sqls) => {
    const handle = await openHandle();
    for (const sql of sqls) await run(handle, sql);
    const clean = (await held(handle)).length === 0;
    const before = (await run(handle, SNAPSHOT_SQL)).rows[0]?.v;
    // The snapshot ran a query: the reset is not skipped (it may be put off to the next query,
    // which the snapshot below then carries).
    expect(isClean(handle.client)).toBe(false);
    await pgReset(handle, resetCtx());
    const after = (await run(handle, SNAPSHOT_SQL)).rows[0]?.v;
    expect(clean).toBe(after === before);
  });
});

describe("what setup established is pgState's baseline, not state", () => {
  const setup: PgOptions['setup'] = async (handle, { signal }) => {
    await pgQuery(
      handle,
      { signal, heartbeat() {} },
      `SET search_path TO pg_temp, public; SET app.tenant = 'acme'; SET SESSION AUTHORIZATION ${ROLE}`,
    );
  };

  it('right after setup, and after an op that left it as it was', async () => {
    const handle = await openHandle({ setup });
    expect(await check(handle)).toEqual({ sync: true, held: undefined });
    await run(handle, 'SELECT 1');
    expect(await held(handle)).toEqual([]);
  });

  it('an op that changes what setup set leaves state; setting it back cleans it', async () => {
    const handle = await openHandle({ setup });
    await run(
      handle,
      "SET search_path TO public; SET app.tenant = 'other'; RESET SESSION AUTHORIZATION",
    );
    expect(await held(handle)).toEqual([
      { kind: 'setting', name: 'app.tenant' },
      { kind: 'setting', name: 'search_path' },
      { kind: 'session authorization', name: 'postgres' },
    ]);
    await run(
      handle,
      `SET SESSION AUTHORIZATION ${ROLE}; SET search_path TO pg_temp, public; SET app.tenant = 'acme'`,
    );
    expect(await held(handle)).toEqual([]);
  });

  it('a custom setting named only in customSettings: its value after setup is the baseline', async () => {
    const fn = `engine_guard_state_login_${process.pid}`;
    await adminQuery(
      `CREATE OR REPLACE FUNCTION ${fn}(t text) RETURNS text LANGUAGE sql AS $$ SELECT set_config('app.' || 'hidden', t, false) $$`,
    );
    onTestFinished(async () => {
      await adminQuery(`DROP FUNCTION IF EXISTS ${fn}(text)`);
    });
    const handle = await openHandle(
      {
        setup: async (h, { signal }) => {
          await pgQuery(h, { signal, heartbeat() {} }, `SELECT ${fn}('acme')`);
        },
      },
      ['app.hidden'],
    );
    await run(handle, 'SELECT 1');
    expect(await held(handle)).toEqual([]);
    await run(handle, `SELECT ${fn}('other')`);
    expect(await held(handle)).toEqual([{ kind: 'setting', name: 'app.hidden' }]);
  });
});

describe('pgReadOnly in a session: no check when it provably left nothing', () => {
  it('a clean read leaves the handle clean (pgState answers at once); a lock it took is kept and reported', async () => {
    const handle = await openHandle();
    await pgReadOnly(handle, ctx(1), 'SELECT 1');
    expect(await check(handle)).toEqual({ sync: true, held: undefined });
    await pgReadOnly(handle, ctx(1), 'SELECT pg_advisory_lock(4304)');
    expect(await check(handle)).toEqual({
      sync: false,
      held: [{ kind: 'advisory lock', name: '4304' }],
    });
    // The session keeps what it took: a read later does not drop it.
    await pgReadOnly(handle, ctx(1), 'SELECT 1');
    expect(await held(handle)).toEqual([{ kind: 'advisory lock', name: '4304' }]);
  });

  it('only when the guard checks state with pgState', async () => {
    const handle = await openHandle({ state: undefined });
    await pgReadOnly(handle, ctx(1), 'SELECT 1');
    expect((await check(handle)).sync).toBe(false);
  });
});

describe('pgGuardOptions: state', () => {
  it('is pgState by default; an override replaces it; state: undefined turns it off', () => {
    const config = clientConfig();
    expect(pgGuardOptions({ config }).state).toBe(pgState);
    const mine = () => undefined;
    expect(pgGuardOptions({ config }, { state: mine }).state).toBe(mine);
    const off = pgGuardOptions({ config }, { state: undefined });
    expect('state' in off).toBe(false);
    // The reset stays.
    expect(off.reset).toBe(pgReset);
  });
});
