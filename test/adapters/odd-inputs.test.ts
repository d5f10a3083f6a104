/**
 * Found in review (failed before the fix): SQL holding a NUL character cost the connection (the
 * server reports a protocol violation and hangs up), and isFatalPgError / isFatalDuckDBError threw
 * on odd values instead of answering false.
 */

import { DuckDBInstance } from '@duckdb/node-api';
import { EngineGuard } from 'engine-guard';
import { duckdbGuardOptions, duckdbQuery, isFatalDuckDBError } from 'engine-guard/duckdb';
import {
  isFatalPgError,
  type PgHandle,
  pgGuardOptions,
  pgReadOnly,
  pgTransaction,
} from 'engine-guard/pg';
import { describe, expect, it, onTestFinished } from 'vitest';
import { clientConfig } from '../support/pg.js';

function guard(): EngineGuard<PgHandle> {
  const g = new EngineGuard(pgGuardOptions({ config: clientConfig() }, { pool: 1 }));
  onTestFinished(() => g.close());
  return g;
}

describe('SQL holding a NUL character', () => {
  it('pgReadOnly refuses SQL with a NUL with an error that does not cost the connection', async () => {
    const g = guard();
    const error = await g
      .read((pg, ctx) => pgReadOnly(pg, ctx, 'SELECT 1\u0000'))
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(error).toBeInstanceOf(Error);
    expect(isFatalPgError(error)).toBe(false);
    expect(g.status().counters.replacements ?? 0).toBe(0);
  });

  it('pgTransaction refuses a statement with a NUL with an error that does not cost the connection', async () => {
    const g = guard();
    const error = await g
      .write((pg, ctx) => pgTransaction(pg, ctx, ['SELECT 1\u0000']))
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(error).toBeInstanceOf(Error);
    expect(isFatalPgError(error)).toBe(false);
  });
});

describe('isFatal* on odd inputs return false, never throw', () => {
  const { proxy: revoked, revoke } = Proxy.revocable({}, {});
  revoke();
  const throwingGetter = {
    get code(): string {
      throw new Error('getter');
    },
  };
  const badAggregate = Object.assign(new AggregateError([]), { errors: 'not an array' });
  it.each([
    ['a revoked Proxy', revoked],
    ['an object whose code getter throws', throwingGetter],
    ['an AggregateError whose errors is not an array', badAggregate],
  ])('isFatalPgError(%s) is false', (_label, value) => {
    expect(() => isFatalPgError(value)).not.toThrow();
    expect(isFatalPgError(value)).toBe(false);
  });

  it('isFatalDuckDBError(a revoked Proxy) is false', () => {
    expect(() => isFatalDuckDBError(revoked)).not.toThrow();
  });
});

describe('duckdbQuery and a NUL character', () => {
  it.each([['\u0000'], [';\u0000']])(
    'SQL %j gives a clear error (or a result), never the bare "Error in native callback"',
    async (sql) => {
      const instance = await DuckDBInstance.create(':memory:');
      const g = new EngineGuard(duckdbGuardOptions(instance, { pool: 1 }));
      onTestFinished(async () => {
        await g.close();
        instance.closeSync();
      });
      const outcome = await g
        .read((conn, ctx) => duckdbQuery(conn, ctx, sql))
        .then(
          () => 'result',
          (error: Error) => error.message,
        );
      expect(outcome).not.toBe('Error in native callback');
    },
  );
});
