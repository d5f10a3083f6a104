/**
 * Helpers for tests of engine-guard/duckdb's hooks on a real in-process DuckDB.
 *
 *   const db = instancePerTest();          // a fresh in-memory instance for each test
 *   const conn = await openConn(db(), {}); // made and set up as the guard would
 */
import type { DuckDBConnection } from '@duckdb/node-api';
import { DuckDBInstance } from '@duckdb/node-api';
import { duckdbGuardOptions } from 'engine-guard/duckdb';
import { afterEach, beforeEach, onTestFinished } from 'vitest';

export type DuckDBOptions = ReturnType<typeof duckdbGuardOptions>;

/**
 * A new in-memory instance before each test of the calling file, closed after it (GLOBAL
 * settings and attached databases are the instance's, so tests must not share one). Returns the
 * current test's instance.
 */
export function instancePerTest(): () => DuckDBInstance {
  let instance: DuckDBInstance | undefined;
  beforeEach(async () => {
    instance = await DuckDBInstance.create(':memory:');
  });
  afterEach(() => {
    instance?.closeSync();
    instance = undefined;
  });
  return () => {
    if (instance === undefined) throw new Error('no DuckDB instance outside a test');
    return instance;
  };
}

/** A connection made and set up as the guard would with `overrides`, closed at the end. */
export async function openConn(
  instance: DuckDBInstance,
  overrides: Partial<DuckDBOptions> = {},
): Promise<DuckDBConnection> {
  const options = duckdbGuardOptions(instance, overrides);
  const signal = AbortSignal.timeout(10_000);
  const conn = await options.create({ signal, generation: 1 });
  onTestFinished(() => options.destroy?.(conn, { reason: 'test' }));
  await options.setup?.(conn, { signal, generation: 1 });
  return conn;
}
