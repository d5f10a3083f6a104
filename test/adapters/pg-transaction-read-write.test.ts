/**
 * Found in review (failed before the fix): pgTransaction on a session whose default is read-only
 * transactions (a common safety default) failed even for `SELECT 1`, since its BEGIN inherited
 * the default and the fence could not be created. Its BEGIN asks for READ WRITE now.
 */
import { EngineGuard } from 'engine-guard';
import { type PgHandle, pgGuardOptions, pgTransaction } from 'engine-guard/pg';
import { describe, expect, it, onTestFinished } from 'vitest';
import { clientConfig } from '../support/pg.js';

function guard(config = clientConfig()): EngineGuard<PgHandle> {
  const g = new EngineGuard(pgGuardOptions({ config }, { pool: 1 }));
  onTestFinished(() => g.close());
  return g;
}

describe('pgTransaction on a read-only-by-default session', () => {
  it('works on a connection with default_transaction_read_only=on: its BEGIN asks for READ WRITE', async () => {
    const g = guard(clientConfig({ options: '-c default_transaction_read_only=on' }));
    const results = await g.write((pg, ctx) => pgTransaction(pg, ctx, ['SELECT 1 AS one']));
    expect(results[0]?.rows).toEqual([{ one: 1 }]);
  });
});
