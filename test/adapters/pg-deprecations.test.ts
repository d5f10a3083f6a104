/**
 * engine-guard/pg must not put pg's deprecation warnings in users' logs (pg 8 warns about what
 * pg 9 removes): reading `Client.activeQuery` (the COPY ... FROM STDIN fix did), and calling
 * `client.query()` while the client is executing a query (concurrent `pgQuery` calls did: pg
 * queued them). Each warns once per process, so this file checks them in a fresh worker.
 */
import { type PgHandle, pgGuardOptions, pgQuery } from 'engine-guard/pg';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { adminQuery, clientConfig } from '../support/pg.js';

const ctx = { signal: new AbortController().signal, heartbeat() {} };
const warnings: Error[] = [];
const onWarning = (warning: Error): void => {
  warnings.push(warning);
};
beforeAll(() => {
  process.on('warning', onWarning);
});
afterAll(() => {
  process.off('warning', onWarning);
});

async function handle(): Promise<PgHandle> {
  const options = pgGuardOptions({ config: clientConfig() });
  const opened = await options.create({ signal: new AbortController().signal, generation: 1 });
  onTestFinished(() => options.destroy?.(opened, { reason: 'test' }));
  return opened;
}

/** Deprecation warnings seen so far (emitted on the next tick). */
async function deprecations(): Promise<string[]> {
  await new Promise((resolve) => setImmediate(resolve));
  return warnings.filter((w) => w.name === 'DeprecationWarning').map((w) => w.message);
}

describe('engine-guard/pg and pg deprecations', () => {
  it('COPY ... FROM STDIN fails and leaves the client usable, with either protocol, without a DeprecationWarning', async () => {
    const table = `copy_${process.pid}_${Math.random().toString(36).slice(2)}`;
    await adminQuery(`CREATE TABLE ${table} (n int)`);
    onTestFinished(() => adminQuery(`DROP TABLE ${table}`).then(() => undefined));
    const pg = await handle();
    await expect(pgQuery(pg, ctx, `COPY ${table} FROM STDIN`)).rejects.toThrow();
    await expect(
      pgQuery(pg, ctx, { text: `COPY ${table} FROM STDIN`, values: [], queryMode: 'extended' }),
    ).rejects.toThrow();
    expect((await pgQuery(pg, ctx, 'SELECT 1 AS n')).rows).toEqual([{ n: 1 }]);
    expect(await deprecations()).toEqual([]);
  });

  it('concurrent pgQuery calls on one handle run in call order, without a DeprecationWarning', async () => {
    const pg = await handle();
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, n) =>
        pgQuery<{ n: number }>(pg, ctx, 'SELECT $1::int AS n', [n]),
      ),
    );
    expect(results.map((r) => r.rows[0]!.n)).toEqual(Array.from({ length: 20 }, (_, n) => n));
    expect(await deprecations()).toEqual([]);
  });
});
