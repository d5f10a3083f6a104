/**
 * The reset pgReset puts off to the head of the next query's batch (issue 18): one round trip
 * for the reset and the query, nothing of the query run when the reset fails there, the reset then
 * sent alone, and a statement the batch refuses sent as it was.
 */
import type { ResetContext } from 'engine-guard';
import { EngineGuard } from 'engine-guard';
import { type PgHandle, pgGuardOptions, pgQuery, pgReadOnly, pgReset } from 'engine-guard/pg';
import type pg from 'pg';
import { describe, expect, it, onTestFinished } from 'vitest';
import { isClean, readyCount } from '../../src/adapters/pg-reset.js';
import { adminQuery, clientConfig } from '../support/pg.js';
import type { PgOptions } from '../support/pg-faults-kit.js';

const ctx = () => ({ signal: new AbortController().signal, heartbeat() {} });
const raw = (handle: PgHandle): pg.Client => handle.client as unknown as pg.Client;

function resetCtx(): ResetContext {
  return {
    signal: AbortSignal.timeout(5_000),
    ok: true,
    op: { id: 1, kind: 'read', label: undefined, generation: 1, startedAt: performance.now() },
  };
}

async function openHandle(overrides: Partial<PgOptions> = {}): Promise<PgHandle> {
  const options = pgGuardOptions({ config: clientConfig() }, overrides);
  const signal = AbortSignal.timeout(10_000);
  const handle = await options.create({ signal, generation: 1 });
  onTestFinished(() => options.destroy?.(handle, { reason: 'test' }));
  await options.setup?.(handle, { signal, generation: 1 });
  return handle;
}

const STATE_SQL =
  "SELECT current_setting('search_path') AS sp, to_regclass('pg_temp.scratch')::text AS tbl," +
  " (SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks";

describe('a reset put off to the next query', () => {
  it('travels in the same round trip as the next query, which sees the handle clean', async () => {
    const handle = await openHandle();
    const clean = (await pgQuery(handle, ctx(), STATE_SQL)).rows[0];
    await pgQuery(
      handle,
      ctx(),
      'SET search_path TO nowhere; CREATE TEMP TABLE scratch (x int); SELECT pg_advisory_lock(4811)',
    );
    expect(pgReset(handle, resetCtx())).toBeUndefined();
    // Owed, not sent: the handle counts as clean for whoever takes it next.
    expect(isClean(handle.client)).toBe(true);
    const before = readyCount(handle.client)!;
    const { rows } = await pgQuery(handle, ctx(), STATE_SQL);
    expect(rows[0]).toEqual(clean);
    // One ReadyForQuery: the reset and the query were one batch.
    expect(readyCount(handle.client)).toBe(before + 1);
  });

  it('with parameters, and with a setup baseline, in one round trip', async () => {
    const handle = await openHandle({
      setup: async (h, { signal }) => {
        await pgQuery(
          h,
          { signal, heartbeat() {} },
          "SET search_path TO pg_temp, public; SET app.tenant = 'acme'",
        );
      },
    });
    await pgQuery(handle, ctx(), "SET search_path TO nowhere; SET app.tenant = 'other'");
    expect(pgReset(handle, resetCtx())).toBeUndefined();
    const before = readyCount(handle.client)!;
    const { rows } = await pgQuery<{ sp: string; tenant: string; n: number }>(
      handle,
      ctx(),
      "SELECT current_setting('search_path') AS sp, current_setting('app.tenant') AS tenant, $1::int AS n",
      [7],
    );
    expect(rows[0]).toEqual({ sp: 'pg_temp, public', tenant: 'acme', n: 7 });
    expect(readyCount(handle.client)).toBe(before + 1);
  });

  it("a BEGIN ... ROLLBACK of the next op cannot roll the setup's baseline back", async () => {
    const handle = await openHandle({
      setup: async (h, { signal }) => {
        await pgQuery(h, { signal, heartbeat() {} }, "SET app.tenant = 'acme'");
      },
    });
    await pgQuery(handle, ctx(), "SET app.tenant = 'other'");
    pgReset(handle, resetCtx());
    await pgQuery(handle, ctx(), 'BEGIN');
    await pgQuery(handle, ctx(), 'ROLLBACK');
    const { rows } = await pgQuery<{ v: string }>(
      handle,
      ctx(),
      "SELECT current_setting('app.tenant') AS v",
    );
    expect(rows[0]!.v).toBe('acme');
  });

  it('fails at the head of the batch (the op set a statement_timeout), nothing after it runs; sent alone, it goes through', async () => {
    const table = `batch_reset_${process.pid}_${Date.now()}`;
    await adminQuery(`CREATE TABLE ${table} (n int)`);
    onTestFinished(async () => {
      await adminQuery(`DROP TABLE IF EXISTS ${table}`);
    });
    const handle = await openHandle();
    // Enough temporary tables that dropping them (DISCARD ALL) takes longer than 1 ms.
    await pgQuery(
      handle,
      ctx(),
      'DO $$ BEGIN FOR i IN 1..400 LOOP EXECUTE format($f$CREATE TEMP TABLE t%s (x int)$f$, i); END LOOP; END $$',
    );
    await pgQuery(handle, ctx(), "SET statement_timeout = '1ms'");
    pgReset(handle, resetCtx());
    const { rowCount } = await pgQuery(handle, ctx(), `INSERT INTO ${table} VALUES ($1)`, [1]);
    expect(rowCount).toBe(1);
    const { rows } = await pgQuery<{ st: string; temps: number }>(
      handle,
      ctx(),
      "SELECT current_setting('statement_timeout') AS st, (SELECT count(*)::int FROM pg_class WHERE relnamespace = pg_my_temp_schema()) AS temps",
    );
    expect(rows[0]).toEqual({ st: '0', temps: 0 });
    const inserted = await adminQuery<{ n: number }>(`SELECT count(*)::int AS n FROM ${table}`);
    expect(inserted.rows[0]!.n).toBe(1);
  });

  it('a statement that must run alone (VACUUM) is sent as it was once the reset went through', async () => {
    const handle = await openHandle();
    await pgQuery(handle, ctx(), 'SET search_path TO nowhere');
    pgReset(handle, resetCtx());
    const result = await pgQuery(handle, ctx(), 'VACUUM pg_catalog.pg_am');
    expect(result.command).toBe('VACUUM');
    const { rows } = await pgQuery<{ v: string }>(
      handle,
      ctx(),
      "SELECT current_setting('search_path') AS v",
    );
    expect(rows[0]!.v).not.toContain('nowhere');
  });

  it('several statements in one text go as they were, after the reset sent alone', async () => {
    const handle = await openHandle();
    await pgQuery(handle, ctx(), 'SET search_path TO nowhere');
    pgReset(handle, resetCtx());
    const results = (await pgQuery(
      handle,
      ctx(),
      'SELECT 1 AS a; SHOW search_path',
    )) as unknown as {
      rows: Record<string, unknown>[];
    }[];
    expect(results).toHaveLength(2);
    expect(String(results[1]!.rows[0]!.search_path)).not.toContain('nowhere');
  });

  it('a cancel during a batch that carries the reset: the op rejects, the next op runs clean', async () => {
    // A text of its own: other test files, running at the same time on the cluster, sleep too.
    const SLEEP = 'SELECT pg_sleep(5) AS batch_reset_cancel';
    const guard = new EngineGuard(pgGuardOptions({ config: clientConfig() }, { pool: 1 }));
    onTestFinished(() => guard.close());
    await guard.read((pg, c) => pgQuery(pg, c, 'SET search_path TO nowhere'));
    const controller = new AbortController();
    const op = guard.read(
      (pg, c) => {
        setTimeout(() => controller.abort(new Error('enough')), 150);
        return pgQuery(pg, c, SLEEP);
      },
      { signal: controller.signal },
    );
    const started = performance.now();
    await expect(op).rejects.toThrow('enough');
    const { rows } = await guard.read((pg, c) =>
      pgQuery<{ v: string }>(pg, c, "SELECT current_setting('search_path') AS v"),
    );
    expect(rows[0]!.v).not.toContain('nowhere');
    expect(performance.now() - started).toBeLessThan(4_000);
    const activity = await adminQuery<{ n: number }>(
      "SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
      [SLEEP],
    );
    expect(activity.rows[0]!.n).toBe(0);
  });
});

describe('pgReadOnly in one batch', () => {
  it('BEGIN READ ONLY, the statement, the ROLLBACK and the clean-up: one round trip, the handle clean after', async () => {
    const handle = await openHandle();
    const before = readyCount(handle.client)!;
    const { rows } = await pgReadOnly<{ n: number }>(handle, ctx(), 'SELECT $1::int AS n', [3]);
    expect(rows).toEqual([{ n: 3 }]);
    expect(readyCount(handle.client)).toBe(before + 1);
    expect(isClean(handle.client)).toBe(true);
    expect(raw(handle).getTransactionStatus()).toBe('I');
  });

  it('a statement that fails mid-batch: nothing after it ran, the ROLLBACK follows, the handle serves the next call', async () => {
    const handle = await openHandle();
    await expect(
      pgReadOnly(handle, ctx(), 'CREATE TABLE never_made_here (x int)'),
    ).rejects.toMatchObject({ code: '25006' });
    expect(raw(handle).getTransactionStatus()).toBe('I');
    await expect(pgReadOnly(handle, ctx(), 'SELECT 1/0')).rejects.toMatchObject({ code: '22012' });
    expect(raw(handle).getTransactionStatus()).toBe('I');
    const { rows } = await pgReadOnly<{ n: number }>(handle, ctx(), 'SELECT 2 AS n');
    expect(rows[0]!.n).toBe(2);
    const made = await adminQuery<{ t: string | null }>(
      "SELECT to_regclass('never_made_here')::text AS t",
    );
    expect(made.rows[0]!.t).toBeNull();
  });

  it('a prepared statement it left goes in the same round trip; the handle is clean after', async () => {
    const handle = await openHandle();
    const before = readyCount(handle.client)!;
    await pgReadOnly(handle, ctx(), 'PREPARE left_behind AS SELECT 1');
    expect(readyCount(handle.client)).toBe(before + 1);
    expect(isClean(handle.client)).toBe(true);
    const { rows } = await pgQuery<{ n: number }>(
      handle,
      ctx(),
      'SELECT count(*)::int AS n FROM pg_prepared_statements',
    );
    expect(rows[0]!.n).toBe(0);
  });

  it("pg's own named statements, dropped by the batch, are parsed again on their next use", async () => {
    const handle = await openHandle();
    const named = { name: 'eg_named_probe', text: 'SELECT $1::int + 1 AS n', values: [1] };
    expect((await raw(handle).query(named)).rows).toEqual([{ n: 2 }]);
    await pgReadOnly(handle, ctx(), 'SELECT 1');
    // pg would Bind the name it believes parsed: "prepared statement ... does not exist".
    expect((await raw(handle).query({ ...named, values: [41] })).rows).toEqual([{ n: 42 }]);
  });

  it('carries a reset put off on the handle at the head of its batch', async () => {
    const handle = await openHandle();
    await pgQuery(handle, ctx(), 'SET search_path TO nowhere; SELECT pg_advisory_lock(4812)');
    pgReset(handle, resetCtx());
    const before = readyCount(handle.client)!;
    const { rows } = await pgReadOnly<{ sp: string; locks: number }>(
      handle,
      ctx(),
      "SELECT current_setting('search_path') AS sp, (SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks",
    );
    expect(rows[0]!.sp).not.toContain('nowhere');
    expect(rows[0]!.locks).toBe(0);
    expect(readyCount(handle.client)).toBe(before + 1);
  });

  it('a cancel during its batch: the op rejects, the transaction is rolled back before the handle serves again', async () => {
    const guard = new EngineGuard(pgGuardOptions({ config: clientConfig() }, { pool: 1 }));
    onTestFinished(() => guard.close());
    const controller = new AbortController();
    const op = guard.read(
      (pg, c) => {
        setTimeout(() => controller.abort(new Error('enough')), 150);
        return pgReadOnly(pg, c, 'SELECT pg_sleep(5)');
      },
      { signal: controller.signal },
    );
    const started = performance.now();
    await expect(op).rejects.toThrow('enough');
    const status = await guard.read(async (pg, c) => {
      const { rows } = await pgQuery<{ n: number }>(pg, c, 'SELECT 1 AS n');
      return { n: rows[0]!.n, tx: pg.client.getTransactionStatus?.() };
    });
    expect(status).toEqual({ n: 1, tx: 'I' });
    expect(performance.now() - started).toBeLessThan(4_000);
  });
});
