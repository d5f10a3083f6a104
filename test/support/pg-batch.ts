/**
 * A write's batch of queries for the tests of issue 16, item 3: `BATCH` INSERTs sent at once
 * (`Promise.all` of `pgQuery` calls), each sleeping `STATEMENT_MS` first; `at` is when a row
 * ran (server clock). The next write records when it started; no row of an aborted batch may
 * have `at` after it.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { PgHandle } from 'engine-guard/pg';
import { pgQuery } from 'engine-guard/pg';
import { onTestFinished } from 'vitest';
import type { EngineGuard, OpContext } from '../../src/index.js';
import { adminQuery } from './pg.js';

/** Statements in one batch. */
export const BATCH = 30;
const STATEMENT_MS = 50;

/** A fresh table for one test's batches, dropped after the test. */
export async function batchTable(): Promise<string> {
  const table = `batch_${process.pid}_${Math.random().toString(36).slice(2)}`;
  await adminQuery(
    `CREATE TABLE ${table} (op text NOT NULL, n int, at timestamptz NOT NULL DEFAULT clock_timestamp())`,
  );
  onTestFinished(() => adminQuery(`DROP TABLE IF EXISTS ${table}`).then(() => undefined));
  return table;
}

/** `BATCH` inserts of `op` sent at once; `onDone(count)` after each one that landed. */
export function batch(
  pg: PgHandle,
  ctx: Pick<OpContext, 'signal' | 'heartbeat'>,
  table: string,
  op: string,
  onDone: (count: number) => void = () => {},
): Promise<unknown[]> {
  let done = 0;
  return Promise.all(
    Array.from({ length: BATCH }, (_, n) =>
      pgQuery(
        pg,
        ctx,
        `INSERT INTO ${table} (op, n) SELECT $1, $2 FROM pg_sleep(${STATEMENT_MS / 1000})`,
        [op, n],
      ).then(() => onDone(++done)),
    ),
  );
}

/** The next write: records when it started, by the server clock. */
export function nextWrite(guard: EngineGuard<PgHandle>, table: string): Promise<string> {
  return guard.write(async (pg, ctx) => {
    const { rows } = await pgQuery<{ t: string }>(
      pg,
      ctx,
      `INSERT INTO ${table} (op) VALUES ('next') RETURNING at::text AS t`,
    );
    return rows[0]!.t;
  });
}

/** Rows of `op` that ran after `started` (text timestamps compared by the server). */
export async function landedAfter(table: string, op: string, started: string): Promise<number> {
  // Leftovers of a batch would keep landing for BATCH × STATEMENT_MS: let them.
  await sleep(BATCH * STATEMENT_MS + 1_000);
  const { rows } = await adminQuery<{ n: number }>(
    `SELECT count(*)::int AS n FROM ${table} WHERE op = $1 AND at > $2::timestamptz`,
    [op, started],
  );
  return rows[0]!.n;
}
