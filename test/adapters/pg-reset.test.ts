/**
 * engine-guard/pg's `reset` (pgReset) on the real PostgreSQL, one handle at a time: every kind of
 * session state an op can leave is gone after it, the settings `setup` made come back, and the
 * round trip is skipped exactly when the op provably left nothing.
 */

import { once } from 'node:events';
import type { ResetContext } from 'engine-guard';
import { type PgHandle, pgGuardOptions, pgQuery, pgReadOnly, pgReset } from 'engine-guard/pg';
import type pg from 'pg';
import { beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { isClean, readyCount } from '../../src/adapters/pg-reset.js';
import { adminQuery, backendPid, clientConfig, closeClient, connectClient } from '../support/pg.js';
import type { PgOptions } from '../support/pg-faults-kit.js';

const ROLE = 'engine_guard_reset_role';

beforeAll(async () => {
  await adminQuery(
    `DO $$ BEGIN CREATE ROLE ${ROLE}; EXCEPTION WHEN duplicate_object THEN NULL; END $$`,
  );
});

const ctx = (signal: AbortSignal = new AbortController().signal) => ({ signal, heartbeat() {} });

function resetCtx(signal: AbortSignal = AbortSignal.timeout(5_000)): ResetContext {
  return {
    signal,
    ok: true,
    op: { id: 1, kind: 'read', label: undefined, generation: 1, startedAt: performance.now() },
  };
}

/** A handle made by the adapter (with `overrides`), set up as the guard would, destroyed at the end. */
async function openHandle(overrides: Partial<PgOptions> = {}): Promise<{
  handle: PgHandle;
  options: PgOptions;
}> {
  const options = pgGuardOptions({ config: clientConfig() }, overrides);
  const signal = AbortSignal.timeout(10_000);
  const handle = await options.create({ signal, generation: 1 });
  onTestFinished(() => options.destroy?.(handle, { reason: 'test' }));
  await options.setup?.(handle, { signal, generation: 1 });
  return { handle, options };
}

const raw = (handle: PgHandle): pg.Client => handle.client as unknown as pg.Client;

async function one<T>(handle: PgHandle, sql: string, values?: unknown[]): Promise<T> {
  const { rows } = await pgQuery<{ v: T }>(handle, ctx(), sql, values);
  return rows[0]?.v as T;
}

/** Resolves once nothing is queued or running on the handle's client. */
async function idle(handle: PgHandle): Promise<void> {
  const client = raw(handle) as pg.Client & { readyForQuery?: boolean };
  if (client.readyForQuery === false) await once(client, 'drain');
}

/** Advisory locks held by a backend, seen from another connection. */
async function advisoryLocks(pid: number): Promise<number> {
  const { rows } = await adminQuery<{ n: number }>(
    "SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND pid = $1",
    [pid],
  );
  return rows[0]?.n ?? -1;
}

/**
 * Runs pgReset and reports whether it skipped (the handle was provably clean) or reset. A reset
 * put off to the next query (pgReset answers synchronously then too) is waited for as the idle
 * handle sends it alone: one event-loop turn, then its round trip.
 */
async function reset(handle: PgHandle, signal?: AbortSignal): Promise<'skipped' | 'ran'> {
  const clean = isClean(handle.client);
  const result = pgReset(handle, resetCtx(signal));
  if (clean) {
    expect(result).toBeUndefined();
    return 'skipped';
  }
  if (result !== undefined) {
    await result;
  } else {
    await new Promise((resolve) => setImmediate(resolve));
    await idle(handle);
  }
  // A handle the adapter did not create is never known clean.
  expect(isClean(handle.client)).toBe(readyCount(handle.client) !== undefined);
  return 'ran';
}

describe('pgReset clears the session state an op leaves', () => {
  it('temporary tables, SET, set_config, SET ROLE, PREPARE, LISTEN, WITH HOLD cursors, advisory locks, currval', async () => {
    const { handle } = await openHandle();
    const defaults = await pgQuery(
      handle,
      ctx(),
      "SELECT current_setting('search_path') AS sp, current_setting('statement_timeout') AS st," +
        " current_setting('work_mem') AS wm, current_user AS who",
    );
    await pgQuery(
      handle,
      ctx(),
      'CREATE TEMPORARY TABLE scratch (x int); INSERT INTO scratch VALUES (1), (2);' +
        ' CREATE TEMPORARY SEQUENCE tseq; SELECT nextval($$tseq$$);' +
        " SET search_path TO nowhere, public; SET statement_timeout = '1ms';" +
        " SELECT set_config('work_mem', '77MB', false);" +
        ' PREPARE p1 AS SELECT 1; LISTEN chan;' +
        ' BEGIN; DECLARE cur CURSOR WITH HOLD FOR SELECT 1; COMMIT;' +
        ' SELECT pg_advisory_lock(4201), pg_advisory_lock_shared(4202);' +
        ` SET ROLE ${ROLE}`,
    );
    expect(await advisoryLocks(handle.pid)).toBe(2);
    expect(await one(handle, 'SELECT current_user::text AS v')).toBe(ROLE);

    expect(await reset(handle)).toBe('ran');

    const { rows } = await pgQuery(
      handle,
      ctx(),
      "SELECT to_regclass('pg_temp.scratch') AS tbl, to_regclass('pg_temp.tseq') AS seq," +
        " current_setting('search_path') AS sp, current_setting('statement_timeout') AS st," +
        " current_setting('work_mem') AS wm, current_user AS who," +
        ' (SELECT count(*)::int FROM pg_prepared_statements) AS prepared,' +
        ' (SELECT count(*)::int FROM pg_listening_channels()) AS listening,' +
        ' (SELECT count(*)::int FROM pg_cursors) AS cursors',
    );
    expect(rows[0]).toEqual({
      tbl: null,
      seq: null,
      ...defaults.rows[0],
      prepared: 0,
      listening: 0,
      cursors: 0,
    });
    expect(await advisoryLocks(handle.pid)).toBe(0);
    // DISCARD SEQUENCES: currval of a sequence used before has no value in this session any more.
    await adminQuery('CREATE SEQUENCE IF NOT EXISTS engine_guard_reset_seq');
    await pgQuery(handle, ctx(), "SELECT nextval('engine_guard_reset_seq')");
    await reset(handle);
    await expect(
      pgQuery(handle, ctx(), "SELECT currval('engine_guard_reset_seq')"),
    ).rejects.toMatchObject({ code: '55000' });
  });

  it.each([
    ['left open', 'BEGIN; CREATE TEMPORARY TABLE inside (x int)', 'T'],
    ['failed', 'BEGIN; CREATE TEMPORARY TABLE inside (x int); SELECT 1/0', 'E'],
  ])('rolls back a transaction the op %s, then clears the rest', async (_, sql, status) => {
    const { handle } = await openHandle();
    await pgQuery(handle, ctx(), 'SELECT pg_advisory_lock(4203)');
    await pgQuery(handle, ctx(), sql).catch(() => undefined);
    // `pg` rejects a failed query before the server's ReadyForQuery (which carries the status).
    await idle(handle);
    expect(raw(handle).getTransactionStatus()).toBe(status);

    await reset(handle);

    expect(raw(handle).getTransactionStatus()).toBe('I');
    expect(await one(handle, "SELECT to_regclass('pg_temp.inside') AS v")).toBeNull();
    expect(await advisoryLocks(handle.pid)).toBe(0);
  });

  it('a named query (protocol-level prepared statement) still works after the reset', async () => {
    const { handle } = await openHandle();
    const named = { name: 'engine_guard_named', text: 'SELECT $1::int + 1 AS v', values: [1] };
    expect((await raw(handle).query(named)).rows).toEqual([{ v: 2 }]);
    expect(await one(handle, 'SELECT count(*)::int AS v FROM pg_prepared_statements')).toBe(1);

    await reset(handle);

    expect(await one(handle, 'SELECT count(*)::int AS v FROM pg_prepared_statements')).toBe(0);
    // `pg` would Bind the statement it believes parsed; the server no longer has it.
    expect((await raw(handle).query({ ...named, values: [41] })).rows).toEqual([{ v: 42 }]);
  });

  it('waits for a query an aborted op left running before it resets', async () => {
    const { handle } = await openHandle();
    const left = raw(handle).query('SELECT pg_sleep(0.3); SET search_path TO nowhere');
    await reset(handle);
    await left;
    expect(await one(handle, "SELECT current_setting('search_path') AS v")).not.toContain(
      'nowhere',
    );
  });

  it('rejects with the signal reason when its signal aborts (the guard retires the handle)', async () => {
    const { handle } = await openHandle();
    await pgQuery(handle, ctx(), 'SET search_path TO nowhere');
    const left = raw(handle).query('SELECT pg_sleep(1)');
    onTestFinished(async () => {
      await left.catch(() => undefined);
    });
    const reason = new Error('reset timed out');
    await expect(reset(handle, AbortSignal.abort(reason))).rejects.toBe(reason);
  });
});

describe('pgReset puts back the settings setup made', () => {
  it('search_path, statement_timeout and role as setup left them, whatever the op changed', async () => {
    const { handle } = await openHandle({
      setup: async (h) => {
        await pgQuery(
          h,
          ctx(),
          `SET search_path TO "it's", "back\\slash", public; SET statement_timeout = '7s'; SET ROLE ${ROLE}`,
        );
      },
    });
    const after =
      "SELECT current_setting('search_path') || ' ' || current_setting('statement_timeout') || ' ' || current_user AS v";
    const baseline = await one<string>(handle, after);
    expect(baseline).toBe(`"it's", "back\\slash", public 7s ${ROLE}`);
    // The op changes them, and turns off standard strings (which the restore must not depend on).
    await pgQuery(
      handle,
      ctx(),
      "RESET ROLE; SET search_path TO nowhere; SET statement_timeout = '1ms'; SET standard_conforming_strings = off",
    );
    expect(await reset(handle)).toBe('ran');
    expect(await one(handle, after)).toBe(baseline);
    expect(await one(handle, "SELECT current_setting('standard_conforming_strings') AS v")).toBe(
      'on',
    );
  });

  it('settings given at connect time survive the reset', async () => {
    const options = pgGuardOptions({ config: clientConfig({ statement_timeout: 4_000 }) });
    const handle = await options.create({ signal: AbortSignal.timeout(10_000), generation: 1 });
    onTestFinished(() => options.destroy?.(handle, { reason: 'test' }));
    await pgQuery(handle, ctx(), "SET statement_timeout = '1ms'");
    await reset(handle);
    expect(await one(handle, "SELECT current_setting('statement_timeout') AS v")).toBe('4s');
  });
});

describe('pgReset skips its round trip only when the op provably left nothing', () => {
  it('skips on a fresh handle, after its own reset, and after an idle probe', async () => {
    const { handle, options } = await openHandle();
    expect(await reset(handle)).toBe('skipped');
    await pgQuery(handle, ctx(), 'SELECT 1');
    expect(await reset(handle)).toBe('ran');
    expect(await reset(handle)).toBe('skipped');
    await options.probe?.(handle, { signal: AbortSignal.timeout(5_000), op: undefined });
    expect(await reset(handle)).toBe('skipped');
  });

  it('skips after pgReadOnly statements whose state the ROLLBACK undoes', async () => {
    const { handle } = await openHandle();
    for (const sql of [
      'SELECT 1',
      "SELECT set_config('search_path', 'nowhere', false)",
      'SELECT 1/0',
      'CREATE TEMPORARY TABLE t (x int)',
      'LISTEN chan',
      'DECLARE c CURSOR WITH HOLD FOR SELECT 1',
    ]) {
      await pgReadOnly(handle, ctx(), sql).catch(() => undefined);
      expect([sql, await reset(handle)]).toEqual([sql, 'skipped']);
    }
    expect(await one(handle, "SELECT current_setting('search_path') AS v")).not.toContain(
      'nowhere',
    );
    expect(await one(handle, 'SELECT count(*)::int AS v FROM pg_cursors')).toBe(0);
    expect(await one(handle, 'SELECT count(*)::int AS v FROM pg_listening_channels()')).toBe(0);
  });

  it.each([
    ['an advisory lock', 'SELECT pg_advisory_lock(4204)'],
    ['a shared advisory lock', 'SELECT pg_try_advisory_lock_shared(4205)'],
    ['a prepared statement', 'PREPARE p2 AS SELECT 1'],
  ])(
    'pgReadOnly drops %s it left in its ROLLBACK round trip; the reset then skips',
    async (_, sql) => {
      const { handle } = await openHandle();
      await pgReadOnly(handle, ctx(), sql);
      expect(await advisoryLocks(handle.pid)).toBe(0);
      expect(await one(handle, 'SELECT count(*)::int AS v FROM pg_prepared_statements')).toBe(0);
      // The two queries above ran on the handle: it is no longer known clean.
      expect(await reset(handle)).toBe('ran');
      await pgReadOnly(handle, ctx(), sql);
      expect(await reset(handle)).toBe('skipped');
    },
  );

  it('in a session (ctx.sessionId), pgReadOnly keeps what it took and leaves the handle dirty', async () => {
    const { handle } = await openHandle();
    await pgReadOnly(handle, { ...ctx(), sessionId: 1 }, 'SELECT pg_advisory_lock(4206)');
    expect(await advisoryLocks(handle.pid)).toBe(1);
    expect(await reset(handle)).toBe('ran');
    expect(await advisoryLocks(handle.pid)).toBe(0);
  });

  it('a named query parsed during pgReadOnly still works after its ROLLBACK dropped it', async () => {
    const { handle } = await openHandle();
    const named = { name: 'engine_guard_during', text: 'SELECT $1::int AS v', values: [1] };
    const readOnly = pgReadOnly(handle, ctx(), 'SELECT 1');
    const during = raw(handle).query(named);
    await Promise.all([readOnly, during]);
    expect((await raw(handle).query({ ...named, values: [2] })).rows).toEqual([{ v: 2 }]);
  });

  it('does not skip after pgQuery, a raw client.query, or pgReadOnly on a handle already dirty', async () => {
    const { handle } = await openHandle();
    await pgQuery(handle, ctx(), 'SELECT 1');
    expect(await reset(handle)).toBe('ran');

    await raw(handle).query('SELECT 1');
    expect(await reset(handle)).toBe('ran');

    await pgReadOnly(handle, ctx(), 'SELECT 1');
    await raw(handle).query('SET search_path TO nowhere');
    expect(await reset(handle)).toBe('ran');

    await pgQuery(handle, ctx(), 'SET search_path TO nowhere');
    await pgReadOnly(handle, ctx(), 'SELECT 1');
    expect(await reset(handle)).toBe('ran');
    expect(await one(handle, "SELECT current_setting('search_path') AS v")).not.toContain(
      'nowhere',
    );
  });

  it('does not skip when the op sent its own query during pgReadOnly', async () => {
    const { handle } = await openHandle();
    const readOnly = pgReadOnly(handle, ctx(), 'SELECT 1');
    // Queued by `pg` behind the BEGIN, inside the read-only transaction... or after it.
    const own = raw(handle).query("SELECT set_config('search_path', 'nowhere', false)");
    await Promise.all([readOnly, own]);
    expect(await reset(handle)).toBe('ran');
  });

  it("pgReadOnly drops what it left only when the guard's reset is pgReset itself", async () => {
    const ends = async (overrides: Partial<PgOptions>): Promise<string[]> => {
      const { handle } = await openHandle(overrides);
      const parsed: string[] = [];
      const connection = (
        handle.client as unknown as { connection: { parse: (q: { text: string }) => void } }
      ).connection;
      const parse = connection.parse.bind(connection);
      // Records the statements of the helper's batch, as they go on the wire.
      connection.parse = (query) => {
        parsed.push(query.text);
        parse(query);
      };
      await pgReadOnly(handle, ctx(), 'SELECT 1');
      return parsed.slice(parsed.indexOf('SELECT 1') + 1);
    };
    const cleaned = await ends({});
    expect(cleaned).toHaveLength(3);
    expect(cleaned[0]).toBe('ROLLBACK');
    expect(cleaned[1]).toBe('DEALLOCATE ALL');
    expect(cleaned[2]).toMatch(
      /^SELECT pg_catalog\.pg_advisory_unlock_all\(\), pg_catalog\.setseed\(\$1\)/,
    );
    expect(await ends({ reset: undefined })).toEqual(['ROLLBACK']);
    expect(await ends({ reset: (h, c) => pgReset(h, c) })).toEqual(['ROLLBACK']);
  });

  it('never skips on a handle the adapter did not create', async () => {
    const client = await connectClient();
    onTestFinished(() => closeClient(client));
    const stranger: PgHandle = { client, pid: await backendPid(client) };
    expect(await reset(stranger)).toBe('ran');
    await client.query('SET search_path TO nowhere');
    expect(await reset(stranger)).toBe('ran');
    expect(await one(stranger, "SELECT current_setting('search_path') AS v")).not.toContain(
      'nowhere',
    );
  });
});

describe('pgGuardOptions: reset', () => {
  it('is pgReset by default; an override replaces it; reset: undefined turns it off', () => {
    const config = clientConfig();
    expect(pgGuardOptions({ config }).reset).toBe(pgReset);
    const mine = () => undefined;
    expect(pgGuardOptions({ config }, { reset: mine }).reset).toBe(mine);
    const off = pgGuardOptions({ config }, { reset: undefined });
    expect(off.reset).toBeUndefined();
    expect('reset' in off).toBe(false);
    // Other undefined overrides still leave their default in place.
    expect(pgGuardOptions({ config }, { isFatal: undefined }).isFatal).toBeTypeOf('function');
  });
});
