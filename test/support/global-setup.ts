/**
 * Vitest global setup: one real PostgreSQL cluster for the whole run.
 *
 * Tests get its connection data with `inject('pg')` (or `pgConfig()` from `./pg.js`). If the
 * cluster cannot be started, this throws and the whole run fails: tests are never skipped.
 */
import pg from 'pg';
import type { TestProject } from 'vitest/node';
import { type PgCluster, type PgConnectionInfo, startPgCluster } from './pg-cluster.js';

/** What `inject('pg')` returns. Do not `restart()` or stop this shared cluster from a test. */
export type PgProvided = PgConnectionInfo;

declare module 'vitest' {
  export interface ProvidedContext {
    pg: PgProvided;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const t0 = performance.now();
  let cluster: PgCluster;
  try {
    cluster = await startPgCluster();
  } catch (err) {
    throw new Error(
      'Could not start the PostgreSQL test cluster. The tests need a real server and are not ' +
        `skipped without one.\n${(err as Error).message}`,
      { cause: err },
    );
  }
  const startMs = Math.round(performance.now() - t0);
  let version: string;
  try {
    version = await serverVersion(cluster.connectionString);
  } catch (err) {
    await cluster.stop();
    throw new Error(`PostgreSQL started but is not reachable over TCP: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const { host, port, user, database, connectionString, binDir, dataDir, pid } = cluster;
  project.provide('pg', { host, port, user, database, connectionString, binDir, dataDir, pid });
  process.stderr.write(
    `[pg] PostgreSQL ${version} for tests on ${host}:${port} ` +
      `(pid ${pid}, started in ${startMs} ms, data ${dataDir})\n`,
  );
  return async () => {
    await cluster.stop();
  };
}

async function serverVersion(connectionString: string): Promise<string> {
  const client = new pg.Client({ connectionString, connectionTimeoutMillis: 10_000 });
  await client.connect();
  try {
    const { rows } = await client.query<{ server_version: string }>('SHOW server_version');
    return rows[0]?.server_version ?? 'unknown';
  } finally {
    await client.end();
  }
}
