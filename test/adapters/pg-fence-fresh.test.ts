/**
 * Found in review (failed before the fix): pgTransaction's fence (a TEMP table with a deferred unique constraint) lives for the
 * whole session, and `CREATE TEMPORARY TABLE IF NOT EXISTS` takes whatever table of that name is
 * already there. One committed pgTransaction on a pooled handle can defuse it (drop its
 * constraint), and from then on a LATER, innocent call on the same handle
 * that runs `...; COMMIT; <failing statement>` commits its first half although it is reported as
 * failed. The documented limit covers a statement that removes the fence and then commits in the
 * same call; here the victim call never touches the fence.
 */
import { EngineGuard } from 'engine-guard';
import { type PgHandle, pgGuardOptions, pgTransaction } from 'engine-guard/pg';
import { describe, expect, it, onTestFinished } from 'vitest';
import { adminQuery, clientConfig } from '../support/pg.js';

function guard(): EngineGuard<PgHandle> {
  // One handle: every call below runs on the same session.
  const g = new EngineGuard(pgGuardOptions({ config: clientConfig() }, { pool: 1 }));
  onTestFinished(() => g.close());
  return g;
}

function tableName(prefix: string): string {
  const name = `${prefix}_${process.pid}_${Date.now()}_${Math.floor(Math.random() * 1e6)}`;
  onTestFinished(async () => {
    await adminQuery(`DROP TABLE IF EXISTS ${name}`);
  });
  return name;
}

async function exists(table: string): Promise<boolean> {
  const { rows } = await adminQuery<{ t: string | null }>('SELECT to_regclass($1)::text AS t', [
    table,
  ]);
  return rows[0]?.t !== null && rows[0]?.t !== undefined;
}

describe('pgTransaction fence left defused by an earlier call on the same handle', () => {
  it.each([
    [
      [
        'DELETE FROM pg_temp.engine_guard_tx_fence',
        'SET CONSTRAINTS ALL IMMEDIATE',
        'ALTER TABLE pg_temp.engine_guard_tx_fence DROP CONSTRAINT engine_guard_tx_fence_k',
      ],
    ],
  ])(
    'after a call ran %j, a later call with COMMIT in the middle still leaves nothing behind',
    async (defuse) => {
      const g = guard();
      // An earlier caller defuses the fence of its own transaction and commits. The fence is
      // fresh per transaction (dropped at commit), so the next caller's fence is whole again.
      await g.write((pg, ctx) => pgTransaction(pg, ctx, defuse)).catch(() => undefined);
      // A later caller: all or nothing, it says.
      const t = tableName('rv_fence');
      await expect(
        g.write((pg, ctx) =>
          pgTransaction(pg, ctx, `CREATE TABLE ${t} (x int); COMMIT; SELECT 1/0`),
        ),
      ).rejects.toThrow();
      expect(await exists(t)).toBe(false);
    },
  );
});
