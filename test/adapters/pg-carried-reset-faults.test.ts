/**
 * Faults around the reset `pgReset` puts off to the head of the next query's batch, and around
 * `pgReadOnly`'s batch, on the real PostgreSQL (code review of the pg adapter): every promise
 * settles when the backend is terminated, nothing runs on a session whose reset failed, nothing is
 * sent after the op aborted, and a statement is never run twice or reported with rows missing.
 *
 * A reset that waits is made with a lock another connection holds on `pg_depend` (dropping the
 * op's temporary table reads it), in a database of this file's own, so that no other test waits.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { ResetContext } from 'engine-guard';
import {
  isFatalPgError,
  type PgHandle,
  PgResetError,
  pgGuardOptions,
  pgQuery,
  pgReadOnly,
  pgReset,
} from 'engine-guard/pg';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { clients, queryInFlight } from '../../src/adapters/pg-client.js';
import { isClean, readyCount } from '../../src/adapters/pg-reset.js';
import { adminQuery, clientConfig, terminateBackend } from '../support/pg.js';
import { settle, waitFor, within } from '../support/pg-faults-kit.js';

const database = `engine_guard_carried_${process.pid}`;

beforeAll(async () => {
  await adminQuery(`DROP DATABASE IF EXISTS ${database}`);
  await adminQuery(`CREATE DATABASE ${database}`);
});

afterAll(async () => {
  await adminQuery(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
});

const config = (): pg.ClientConfig => clientConfig({ database });

const ctx = (signal: AbortSignal = new AbortController().signal) => ({
  signal,
  heartbeat() {},
});

function resetCtx(): ResetContext {
  return {
    signal: AbortSignal.timeout(5_000),
    ok: true,
    op: { id: 1, kind: 'read', label: undefined, generation: 1, startedAt: performance.now() },
  };
}

/** A handle as the guard makes it (no guard: no liveness to rescue a promise that hangs). */
async function openHandle(): Promise<PgHandle> {
  return (await openHandleWith()).handle;
}

/** {@link openHandle}, with the hooks it was made with (to call `cancel` as the guard does). */
async function openHandleWith(): Promise<{
  handle: PgHandle;
  options: ReturnType<typeof pgGuardOptions>;
}> {
  const options = pgGuardOptions({ config: config() });
  const signal = AbortSignal.timeout(10_000);
  const handle = await options.create({ signal, generation: 1 });
  onTestFinished(() => options.destroy?.(handle, { reason: 'test' }));
  await options.setup?.(handle, { signal, generation: 1 });
  return { handle, options };
}

/** A query as the superuser, in this file's database. */
async function dbQuery<R extends pg.QueryResultRow>(sql: string, values?: unknown[]) {
  const client = new pg.Client(config());
  await client.connect();
  try {
    return await client.query<R>(sql, values);
  } finally {
    await client.end();
  }
}

/** A table in this file's database, dropped when the test finishes. */
async function table(): Promise<string> {
  const name = `t_${Date.now()}_${Math.floor(Math.random() * 1e6)}`;
  await dbQuery(`CREATE TABLE public.${name} (n int)`);
  onTestFinished(async () => {
    await dbQuery(`DROP TABLE IF EXISTS public.${name}`);
  });
  return `public.${name}`;
}

/** Waits until nothing is queued or running on the handle's client. */
function idle(handle: PgHandle): Promise<void> {
  return waitFor(() => !queryInFlight(handle.client), 5_000, 'the handle idle');
}

/** Records the SQL of every query handed to the handle's `client.query` from now on. */
function recordSent(handle: PgHandle): string[] {
  const sent: string[] = [];
  const client = handle.client as unknown as { query: (...args: unknown[]) => unknown };
  const query = client.query;
  client.query = function (this: unknown, ...args: unknown[]): unknown {
    const first = args[0] as string | { text?: string };
    sent.push(typeof first === 'string' ? first : String(first?.text));
    return query.apply(this, args);
  };
  return sent;
}

/**
 * Another connection holding `pg_depend`: a reset that drops a temporary table waits on it until
 * `release()`.
 */
async function holdCatalog(): Promise<{ release(): Promise<void> }> {
  const blocker = new pg.Client(config());
  blocker.on('error', () => {});
  await blocker.connect();
  await blocker.query('BEGIN; LOCK TABLE pg_catalog.pg_depend IN ACCESS EXCLUSIVE MODE');
  let released = false;
  const release = async (): Promise<void> => {
    if (released) return;
    released = true;
    await blocker.query('COMMIT').catch(() => {});
    await blocker.end().catch(() => {});
  };
  onTestFinished(release);
  return { release };
}

/** Waits until the backend `pid` waits on a lock. */
function lockWaitOf(pid: number): Promise<void> {
  return waitFor(
    async () => {
      const { rows } = await adminQuery<{ n: number }>(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'",
        [pid],
      );
      return rows[0]!.n === 1;
    },
    5_000,
    `backend ${pid} waiting on a lock`,
  );
}

/** Waits until the backend `pid` runs a statement holding `marker`. */
function running(pid: number, marker: string): Promise<void> {
  return waitFor(
    async () => {
      const { rows } = await adminQuery<{ n: number }>(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1 AND state = 'active' AND query LIKE $2",
        [pid, `%${marker}%`],
      );
      return rows[0]!.n === 1;
    },
    5_000,
    `backend ${pid} running ${marker}`,
  );
}

/** The backend runs the reset sent alone (simple protocol), waiting on the catalog lock. */
function resetAloneWaits(pid: number): Promise<void> {
  return waitFor(
    async () => {
      const { rows } = await adminQuery<{ n: number }>(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock' AND query LIKE 'CLOSE ALL;%'",
        [pid],
      );
      return rows[0]!.n === 1;
    },
    5_000,
    'the reset sent alone waiting on the lock',
  );
}

/** Leaves state on the handle: a setting and a temporary table (dropping it reads pg_depend). */
async function dirty(handle: PgHandle): Promise<void> {
  await pgQuery(handle, ctx(), 'SET search_path TO nowhere; CREATE TEMP TABLE scratch (x int)');
}

/**
 * Puts the handle's reset off: call it in the same event-loop turn as the query that is to carry
 * it (a handle idle for a turn sends its reset alone).
 */
function owe(handle: PgHandle): void {
  expect(pgReset(handle, resetCtx())).toBeUndefined();
  expect(isClean(handle.client)).toBe(true);
}

describe('a backend terminated mid-batch (FATAL 57P01): every promise settles', () => {
  it('pgReadOnly, terminated during its statement, rejects', async () => {
    const handle = await openHandle();
    const marker = 'ro_terminated_mid_statement';
    const read = settle(pgReadOnly(handle, ctx(), `SELECT pg_sleep(10) AS ${marker}`));
    await running(handle.pid, marker);
    expect(await terminateBackend(handle.pid)).toBe(true);
    const outcome = await within(read, 5_000, 'pgReadOnly');
    expect(outcome.ok).toBe(false);
    // The handle is known dead: the guard replaces it.
    expect(isFatalPgError((outcome as { error: unknown }).error)).toBe(true);
  });

  it('pgQuery, terminated while the reset it carries waits on a lock, rejects', async () => {
    const handle = await openHandle();
    await dirty(handle);
    const catalog = await holdCatalog();
    owe(handle);
    const query = settle(pgQuery(handle, ctx(), 'SELECT 1 AS one'));
    await lockWaitOf(handle.pid);
    expect(await terminateBackend(handle.pid)).toBe(true);
    // The backend drops its temporary table on its way out: it closes the socket once it can.
    await catalog.release();
    const outcome = await within(query, 5_000, 'pgQuery');
    expect(outcome.ok).toBe(false);
    // The handle is known dead: the guard replaces it.
    expect(isFatalPgError((outcome as { error: unknown }).error)).toBe(true);
  });

  it('pgReadOnly, terminated while the reset it carries waits on a lock, rejects', async () => {
    const handle = await openHandle();
    await dirty(handle);
    const catalog = await holdCatalog();
    owe(handle);
    const read = settle(pgReadOnly(handle, ctx(), 'SELECT 1 AS one'));
    await lockWaitOf(handle.pid);
    expect(await terminateBackend(handle.pid)).toBe(true);
    await catalog.release();
    const outcome = await within(read, 5_000, 'pgReadOnly');
    expect(outcome.ok).toBe(false);
    // The handle is known dead: the guard replaces it.
    expect(isFatalPgError((outcome as { error: unknown }).error)).toBe(true);
  });
});

describe('a carried reset that fails: nothing runs on the state it was to clear', () => {
  it.each([
    ['pgQuery', (handle: PgHandle) => pgQuery(handle, ctx(), 'SELECT 1 AS one')],
    ['pgReadOnly', (handle: PgHandle) => pgReadOnly(handle, ctx(), 'SELECT 1 AS one')],
  ] as const)(
    "the op's own client.query, queued behind a %s batch, never runs on the previous caller's settings",
    async (_, run) => {
      const handle = await openHandle();
      await dirty(handle);
      const catalog = await holdCatalog();
      owe(handle);
      const query = settle(run(handle));
      await lockWaitOf(handle.pid);
      // Sent while the batch that carries the reset waits (not awaited): pg holds it behind it.
      const raw = settle(
        (handle.client as unknown as pg.Client).query<{ sp: string }>(
          "SELECT current_setting('search_path') AS sp",
        ),
      );
      // The reset fails at the head of the batch (as an op's cancel landing on it would).
      await adminQuery('SELECT pg_cancel_backend($1)', [handle.pid]);
      const rawOutcome = await within(raw, 5_000, 'the queued query');
      await catalog.release();
      if (rawOutcome.ok) expect(rawOutcome.value.rows[0]!.sp).not.toContain('nowhere');
      const outcome = await within(query, 5_000, 'the helper');
      if (outcome.ok) expect(rawOutcome.ok).toBe(true);
      else expect(outcome.error).toMatchObject({ code: 'ERR_PG_RESET' });
    },
  );

  it('a client.query made as the error of the reset arrives, before pgQuery sees it, runs after a reset', async () => {
    const handle = await openHandle();
    await dirty(handle);
    const catalog = await holdCatalog();
    owe(handle);
    const query = settle(pgQuery(handle, ctx(), 'SELECT 1 AS one'));
    await lockWaitOf(handle.pid);
    const client = handle.client as unknown as pg.Client & {
      connection: { once(event: string, listener: () => void): void };
    };
    let raw: Promise<{ ok: boolean; value?: { rows: { sp: string }[] } }> | undefined;
    // After pg's own listener (the batch is answered), before any promise continuation runs.
    client.connection.once('errorMessage', () => {
      raw = settle(client.query<{ sp: string }>("SELECT current_setting('search_path') AS sp"));
    });
    await adminQuery('SELECT pg_cancel_backend($1)', [handle.pid]);
    await waitFor(() => raw !== undefined, 5_000, 'the error message');
    // The reset sent alone first waits on the lock again: let it through.
    await sleep(100);
    await catalog.release();
    const rawOutcome = await within(raw!, 5_000, 'the query');
    if (rawOutcome.ok) expect(rawOutcome.value!.rows[0]!.sp).not.toContain('nowhere');
    await within(query, 5_000, 'pgQuery');
  });
});

describe('an op that aborted while its carried reset was retried alone: its statement is not sent', () => {
  it('pgQuery: an INSERT the caller was told was aborted never runs', async () => {
    const target = await table();
    const handle = await openHandle();
    await dirty(handle);
    const catalog = await holdCatalog();
    owe(handle);
    const controller = new AbortController();
    const query = settle(
      pgQuery(handle, ctx(controller.signal), `INSERT INTO ${target} VALUES (1)`),
    );
    await lockWaitOf(handle.pid);
    // The reset fails at the head of the batch; it is sent alone, and waits on the lock again.
    await adminQuery('SELECT pg_cancel_backend($1)', [handle.pid]);
    await resetAloneWaits(handle.pid);
    controller.abort(new Error('given up'));
    const outcome = await within(query, 5_000, 'pgQuery');
    expect(outcome).toMatchObject({ ok: false, error: { message: 'given up' } });
    await catalog.release();
    await idle(handle);
    const { rows } = await dbQuery<{ n: number }>(`SELECT count(*)::int AS n FROM ${target}`);
    expect(rows[0]!.n).toBe(0);
  });

  it('pgReadOnly: the statement is not sent again after the abort', async () => {
    const handle = await openHandle();
    await dirty(handle);
    const catalog = await holdCatalog();
    const sent = recordSent(handle);
    owe(handle);
    const controller = new AbortController();
    const marker = 'SELECT 1 AS not_after_abort';
    const read = settle(pgReadOnly(handle, ctx(controller.signal), marker));
    await lockWaitOf(handle.pid);
    // The op aborts; the guard's cancel lands on the reset at the head of the batch.
    controller.abort(new Error('given up'));
    expect(await within(read, 5_000, 'pgReadOnly')).toMatchObject({ ok: false });
    await adminQuery('SELECT pg_cancel_backend($1)', [handle.pid]);
    await sleep(100);
    await catalog.release();
    await idle(handle);
    await sleep(100);
    expect(sent.filter((text) => text === marker)).toHaveLength(1);
  });

  it('pgQuery: an abort in the microtask between its turn and its send stops the send', async () => {
    const target = await table();
    const handle = await openHandle();
    const controller = new AbortController();
    const first = pgQuery(handle, ctx(), 'SELECT 1');
    const second = settle(
      pgQuery(handle, ctx(controller.signal), `INSERT INTO ${target} VALUES (1)`),
    );
    // Runs as the first query settles, before the second one's continuation is sent.
    void first.then(() => controller.abort(new Error('given up')));
    expect(await within(second, 5_000, 'pgQuery')).toMatchObject({ ok: false });
    await idle(handle);
    const { rows } = await dbQuery<{ n: number }>(`SELECT count(*)::int AS n FROM ${target}`);
    expect(rows[0]!.n).toBe(0);
  });
});

describe('a query config with values, and a values argument', () => {
  it('binds the argument, as pg does, whether a reset is owed or not', async () => {
    const handle = await openHandle();
    const config = { text: 'SELECT $1::int AS v', values: [1] };
    const plain = await pgQuery<{ v: number }>(handle, ctx(), config, [2]);
    await pgQuery(handle, ctx(), 'SET search_path TO nowhere');
    owe(handle);
    const carried = await pgQuery<{ v: number }>(handle, ctx(), config, [2]);
    const direct = await (handle.client as unknown as pg.Client).query<{ v: number }>(config, [2]);
    expect([plain.rows[0]!.v, carried.rows[0]!.v]).toEqual([direct.rows[0]!.v, direct.rows[0]!.v]);
    expect(carried.rows[0]!.v).toBe(2);
  });
});

describe('a reset sent alone that failed: the handle is dead, never clean', () => {
  it('pgReset throws on the handle instead of calling it clean', async () => {
    const handle = await openHandle();
    await dirty(handle);
    const catalog = await holdCatalog();
    owe(handle);
    // Idle for an event-loop turn: the reset goes alone, and waits on the lock.
    await resetAloneWaits(handle.pid);
    // Looked at in the microtask after the socket is cut, before pg reports the end (a tick or
    // more later): the guard may ask for the reset of the handle's next release right then.
    const rightAfter: { gone: boolean; threw: boolean }[] = [];
    const stream = (handle.client as unknown as { connection: { stream: { destroy(): void } } })
      .connection.stream;
    const destroy = stream.destroy.bind(stream);
    stream.destroy = () => {
      destroy();
      queueMicrotask(() => {
        let threw = false;
        try {
          pgReset(handle, resetCtx());
        } catch {
          threw = true;
        }
        rightAfter.push({ gone: clients.get(handle.client)?.gone !== undefined, threw });
      });
    };
    await adminQuery('SELECT pg_cancel_backend($1)', [handle.pid]);
    await waitFor(() => clients.get(handle.client)?.gone !== undefined, 5_000, 'the handle gone');
    await catalog.release();
    expect(rightAfter[0]).toEqual({ gone: true, threw: true });
    expect(isClean(handle.client)).toBe(false);
    expect(() => pgReset(handle, resetCtx())).toThrow();
  });

  it('a carried reset failing twice (cancelled, then cancelled alone): PgResetError, fatal', async () => {
    const handle = await openHandle();
    await dirty(handle);
    const catalog = await holdCatalog();
    owe(handle);
    const query = settle(pgQuery(handle, ctx(), 'SELECT 1 AS one'));
    await lockWaitOf(handle.pid);
    await adminQuery('SELECT pg_cancel_backend($1)', [handle.pid]);
    await resetAloneWaits(handle.pid);
    await adminQuery('SELECT pg_cancel_backend($1)', [handle.pid]);
    const outcome = await within(query, 5_000, 'pgQuery');
    await catalog.release();
    expect(outcome.ok).toBe(false);
    const error = (outcome as { error: unknown }).error;
    expect(error).toBeInstanceOf(PgResetError);
    // Its cause is a cancel (57014), yet the connection is closed: the guard must replace it.
    expect(isFatalPgError(error)).toBe(true);
  });
});

describe('an op aborted before its query was sent: no cancel that could land on what goes next', () => {
  it('the reset the previous op owed, sent alone while the op waited for its turn, is not cancelled', async () => {
    const { handle, options } = await openHandleWith();
    await dirty(handle);
    const catalog = await holdCatalog();
    owe(handle);
    const controller = new AbortController();
    // It takes its turn now and would send a microtask later: the abort comes first.
    const query = settle(pgQuery(handle, ctx(controller.signal), 'SELECT 1 AS one'));
    controller.abort(new Error('the caller gave up'));
    // As the guard calls it when the op aborts, before the op's promise settled.
    const op = { id: 2, kind: 'write' as const, label: undefined, generation: 1, startedAt: 0 };
    const cancelled = settle(
      Promise.resolve(options.cancel?.(handle, { op, reason: controller.signal.reason })),
    );
    expect((await within(query, 5_000, 'pgQuery')).ok).toBe(false);
    // The owed reset went alone after an idle event-loop turn, and waits on the lock: a cancel
    // sent for the aborted op would land on it (the side connection takes a few ms to open).
    await resetAloneWaits(handle.pid);
    await sleep(200);
    await catalog.release();
    const outcome = await within(cancelled, 5_000, 'cancel');
    expect(outcome).toMatchObject({ ok: true, value: false });
    await idle(handle);
    expect(clients.get(handle.client)?.gone).toBeUndefined();
    const after = await pgQuery<{ v: number }>(handle, ctx(), 'SELECT 42 AS v');
    expect(after.rows).toEqual([{ v: 42 }]);
  });
});

describe('a parameter pg cannot send, in a batch that carries the reset', () => {
  const unsendable = {
    toPostgres(): string {
      throw new Error('cannot serialize');
    },
  };

  it('pgQuery rejects with it; the reset went through in the batch and is not sent again', async () => {
    const handle = await openHandle();
    await dirty(handle);
    const sent = recordSent(handle);
    owe(handle);
    const ready = readyCount(handle.client)!;
    await expect(pgQuery(handle, ctx(), 'SELECT $1::text AS v', [unsendable])).rejects.toThrow(
      'cannot serialize',
    );
    await idle(handle);
    // One round trip: the batch (no reset sent alone after it).
    expect(readyCount(handle.client)! - ready).toBe(1);
    expect(sent.filter((text) => text === 'SELECT $1::text AS v')).toHaveLength(1);
    const { rows } = await pgQuery<{ sp: string; tbl: string | null }>(
      handle,
      ctx(),
      "SELECT current_setting('search_path') AS sp, to_regclass('pg_temp.scratch')::text AS tbl",
    );
    expect(rows[0]!.sp).not.toContain('nowhere');
    expect(rows[0]!.tbl).toBeNull();
  });

  it('pgReadOnly rejects with it, rolls back, and the handle serves the next call clean', async () => {
    const handle = await openHandle();
    await dirty(handle);
    const sent = recordSent(handle);
    owe(handle);
    const ready = readyCount(handle.client)!;
    await expect(pgReadOnly(handle, ctx(), 'SELECT $1::text AS v', [unsendable])).rejects.toThrow(
      'cannot serialize',
    );
    await idle(handle);
    // The batch, then its ROLLBACK alone (no reset sent alone).
    expect(readyCount(handle.client)! - ready).toBe(2);
    expect(sent.filter((text) => text === 'SELECT $1::text AS v')).toHaveLength(1);
    expect(handle.client.getTransactionStatus?.()).toBe('I');
    const { rows } = await pgReadOnly<{ sp: string }>(
      handle,
      ctx(),
      "SELECT current_setting('search_path') AS sp",
    );
    expect(rows[0]!.sp).not.toContain('nowhere');
  });
});

describe('a type parser that throws on a row of the main statement', () => {
  it('pgReadOnly rejects with its error instead of returning the rows before it', async () => {
    const handle = await openHandle();
    const client = handle.client as unknown as pg.Client;
    client.setTypeParser(pg.types.builtins.INT4, (value: string) => {
      if (value === '3') throw new Error('unparsable row');
      return Number(value);
    });
    await expect(
      pgReadOnly(handle, ctx(), 'SELECT g FROM generate_series(1, 5) AS g'),
    ).rejects.toThrow('unparsable row');
    expect(handle.client.getTransactionStatus?.()).toBe('I');
    const { rows } = await pgReadOnly<{ g: number }>(handle, ctx(), 'SELECT 1::int AS g');
    expect(rows).toEqual([{ g: 1 }]);
  });

  it('the same when the batch carries a reset (pgReadOnly and pgQuery)', async () => {
    const handle = await openHandle();
    const client = handle.client as unknown as pg.Client;
    client.setTypeParser(pg.types.builtins.INT4, (value: string) => {
      if (value === '3') throw new Error('unparsable row');
      return Number(value);
    });
    await pgQuery(handle, ctx(), 'SET search_path TO nowhere');
    owe(handle);
    await expect(
      pgReadOnly(handle, ctx(), 'SELECT g FROM generate_series(1, 5) AS g'),
    ).rejects.toThrow('unparsable row');
    await pgQuery(handle, ctx(), 'SET search_path TO nowhere');
    owe(handle);
    await expect(
      pgQuery(handle, ctx(), 'SELECT g FROM generate_series(1, 5) AS g'),
    ).rejects.toThrow('unparsable row');
    const { rows } = await pgQuery<{ sp: string }>(
      handle,
      ctx(),
      "SELECT current_setting('search_path') AS sp",
    );
    expect(rows[0]!.sp).not.toContain('nowhere');
  });
});

describe('a statement refused in the batch is sent again only when it was refused, not run', () => {
  for (const [code, failing] of [
    ['25001', 'VACUUM'],
    ['42601', 'SELEC 1'],
  ] as const) {
    it(`a DO block raising ${code} after doing work runs once`, async () => {
      const seq = `s_${code}_${Date.now()}`;
      await dbQuery(`CREATE SEQUENCE public.${seq}`);
      onTestFinished(async () => {
        await dbQuery(`DROP SEQUENCE IF EXISTS public.${seq}`);
      });
      const handle = await openHandle();
      await pgQuery(handle, ctx(), 'SET search_path TO nowhere');
      owe(handle);
      await expect(
        pgQuery(
          handle,
          ctx(),
          `DO $$ BEGIN PERFORM nextval('public.${seq}'); EXECUTE '${failing}'; END $$`,
        ),
      ).rejects.toMatchObject({ code });
      const { rows } = await dbQuery<{ n: string }>(`SELECT last_value AS n FROM public.${seq}`);
      expect(Number(rows[0]!.n)).toBe(1);
    });
  }
});
