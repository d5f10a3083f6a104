/**
 * Found in review (failed before the fix): `COPY ... FROM STDIN` sent through the extended protocol (pgTransaction, pgReadOnly)
 * wedges the handle: `pg` answers the CopyInResponse with a CopyFail, but in the extended
 * protocol the server then skips input until a Sync that never comes. The op never settles,
 * and the watchdog never convicts it.
 */
import { EngineGuard } from 'engine-guard';
import { type PgHandle, pgGuardOptions, pgReadOnly, pgTransaction } from 'engine-guard/pg';
import { describe, expect, it, onTestFinished } from 'vitest';
import { adminQuery, clientConfig } from '../support/pg.js';

function guard(): EngineGuard<PgHandle> {
  const g = new EngineGuard(pgGuardOptions({ config: clientConfig() }, { pool: 1 }));
  onTestFinished(() => g.close());
  return g;
}

/** `promise`'s outcome, or 'still pending' after `ms`. */
function within<T>(promise: Promise<T>, ms: number): Promise<string> {
  return Promise.race([
    promise.then(
      () => 'resolved',
      (error: Error) => `rejected: ${error.message}`,
    ),
    new Promise<string>((resolve) => setTimeout(() => resolve('still pending'), ms).unref()),
  ]);
}

async function table(): Promise<string> {
  const name = `rv_copy_${process.pid}_${Date.now()}`;
  await adminQuery(`CREATE TABLE ${name} (x int)`);
  onTestFinished(async () => {
    await adminQuery(`DROP TABLE IF EXISTS ${name}`);
  });
  return name;
}

describe('COPY FROM STDIN through the extended-protocol helpers', () => {
  it('pgTransaction rejects COPY ... FROM STDIN with an error within seconds instead of hanging the handle for ever', async () => {
    const g = guard();
    const t = await table();
    const outcome = await within(
      g.write((pg, ctx) => pgTransaction(pg, ctx, [`COPY ${t} FROM STDIN`])),
      10_000,
    );
    expect(outcome).toMatch(/^rejected/);
    // And the guard is usable afterwards (the handle was not left wedged).
    expect(
      await within(
        g.read((pg, ctx) => pgReadOnly(pg, ctx, 'SELECT 1')),
        10_000,
      ),
    ).toBe('resolved');
  }, 30_000);

  it('pgReadOnly rejects COPY into a TEMP table FROM STDIN (allowed read-only) within seconds instead of hanging', async () => {
    const g = guard();
    // Any earlier pgTransaction on the handle leaves its TEMP fence table, which a read-only
    // transaction may write to.
    await g.write((pg, ctx) => pgTransaction(pg, ctx, ['SELECT 1']));
    const outcome = await within(
      g.read((pg, ctx) => pgReadOnly(pg, ctx, 'COPY pg_temp.engine_guard_tx_fence FROM STDIN')),
      10_000,
    );
    expect(outcome).toMatch(/^rejected/);
  }, 30_000);
});
