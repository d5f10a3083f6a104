/**
 * Issue 16, item 3, in one process: a write that sends several queries on its handle at once
 * (`Promise.all` of `pgQuery` calls) and ends mid-batch must not leave statements queued in `pg`
 * to run after the next write started (pool 2: the next write runs on the other handle as soon as
 * the first one gives up the local lock). Invariant: the op's lease and handle are given back
 * only once nothing of it is queued or running on the handle.
 * See test/support/pg-batch.ts for the batch and what is measured.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { type PgHandle, pgGuardOptions, pgQuery } from 'engine-guard/pg';
import { describe, expect, it, onTestFinished } from 'vitest';
import { EngineGuard } from '../../src/index.js';
import { adminQuery, clientConfig } from '../support/pg.js';
import { batch, batchTable, landedAfter, nextWrite } from '../support/pg-batch.js';

function pool2(): EngineGuard<PgHandle> {
  const guard = new EngineGuard(pgGuardOptions({ config: clientConfig() }, { pool: 2 }));
  onTestFinished(() => guard.close());
  return guard;
}

describe('a write whose batch of queries ends mid-way (pool 2, one process)', () => {
  it('aborted mid-batch: none of its statements run after the next write started', async () => {
    const table = await batchTable();
    const guard = pool2();
    const controller = new AbortController();
    const aborted = guard
      .write((pg, ctx) => batch(pg, ctx, table, 'aborted', (n) => n === 3 && controller.abort()), {
        signal: controller.signal,
      })
      .catch((error: unknown) => error);
    // Queued behind the aborted write (local lock): starts as soon as that one lets go.
    const started = await nextWrite(guard, table);
    expect(await aborted).toBeInstanceOf(Error);
    expect(await landedAfter(table, 'aborted', started)).toBe(0);
    const { rows } = await adminQuery<{ n: number }>(
      `SELECT count(*)::int AS n FROM ${table} WHERE op = 'aborted'`,
    );
    // The three that completed, and at most the one running when the abort came.
    expect(rows[0]!.n).toBeGreaterThanOrEqual(3);
    expect(rows[0]!.n).toBeLessThanOrEqual(4);
  });

  it('one statement of the batch fails: the write ends only after the statements queued behind it ran', async () => {
    const table = await batchTable();
    const guard = pool2();
    const failed = guard
      .write(async (pg, ctx) => {
        await Promise.all([
          pgQuery(pg, ctx, 'SELECT 1/0'),
          batch(pg, ctx, table, 'behind-a-failure'),
        ]);
      })
      .catch((error: unknown) => error);
    const started = await nextWrite(guard, table);
    expect(await failed).toMatchObject({ code: '22012' });
    expect(await landedAfter(table, 'behind-a-failure', started)).toBe(0);
  });

  it('what the op queued on the client itself runs before the handle and the lock are given back', async () => {
    const table = await batchTable();
    const guard = pool2();
    const controller = new AbortController();
    let pid = 0;
    const aborted = guard
      .write(
        async (pg, ctx) => {
          pid = pg.pid;
          const raw = Array.from({ length: 5 }, (_, n) =>
            pg.client.query(`INSERT INTO ${table} (op, n) SELECT 'raw', $1 FROM pg_sleep(0.3)`, [
              n,
            ]),
          );
          await new Promise((resolve, reject) => {
            ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason), { once: true });
            Promise.all(raw).then(resolve, reject);
          });
        },
        { signal: controller.signal },
      )
      .catch((error: unknown) => error);
    await until(
      async () =>
        pid !== 0 &&
        (
          await adminQuery(
            "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'PgSleep'",
            [pid],
          )
        ).rows.length === 1,
      'a raw query to run',
    );
    controller.abort(new Error('caller gave up'));
    const started = await nextWrite(guard, table);
    expect(await aborted).toMatchObject({ message: 'caller gave up' });
    expect(await landedAfter(table, 'raw', started)).toBe(0);
    // Those queued behind the cancelled one ran (before, as checked above), none was cut off.
    const { rows } = await adminQuery<{ n: number }>(
      `SELECT count(*)::int AS n FROM ${table} WHERE op = 'raw'`,
    );
    expect(rows[0]!.n).toBeGreaterThanOrEqual(4);
  });
});

async function until(cond: () => Promise<boolean>, what: string): Promise<void> {
  const end = performance.now() + 10_000;
  while (!(await cond())) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

describe('pgQuery calls on one handle settle in call order', () => {
  it('in a transaction, Promise.all reports the statement that failed, not those it aborted after it', async () => {
    const guard = pool2();
    const error = await guard
      .write(async (pg, ctx) => {
        await pgQuery(pg, ctx, 'BEGIN');
        try {
          await Promise.all([
            pgQuery(pg, ctx, 'SELECT 1'),
            pgQuery(pg, ctx, 'SELECT 1/0'),
            pgQuery(pg, ctx, 'SELECT 2'),
            pgQuery(pg, ctx, 'SELECT 3'),
          ]);
        } finally {
          await pgQuery(pg, ctx, 'ROLLBACK');
        }
      })
      .catch((e: unknown) => e);
    // 22012 division_by_zero; the ones behind it fail with 25P02 (transaction aborted).
    expect(error).toMatchObject({ code: '22012' });
  });
});
