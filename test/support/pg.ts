/**
 * Helpers for tests that talk to the shared PostgreSQL cluster started by `global-setup.ts`.
 *
 *   const { rows } = await adminQuery<{ n: number }>('select $1::int as n', [1]);
 *   await withClient(async (client) => { ... });
 */
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { inject } from 'vitest';
import type { PgProvided } from './global-setup.js';

export type { PgProvided };

/** Connection data of the shared cluster (host, port, user, database, connectionString, ...). */
export function pgConfig(): PgProvided {
  const config = inject('pg');
  if (!config) {
    throw new Error("inject('pg') is empty: is test/support/global-setup.ts the globalSetup?");
  }
  return config;
}

/** `pg.Client` options for the shared cluster, with `overrides` on top. */
export function clientConfig(overrides: pg.ClientConfig = {}): pg.ClientConfig {
  const { host, port, user, database } = pgConfig();
  return {
    host,
    port,
    user,
    database,
    connectionTimeoutMillis: 10_000,
    application_name: 'engine-guard-test',
    ...overrides,
  };
}

/** A connected client; close it with `closeClient` (or `client.end()`). */
export async function connectClient(overrides: pg.ClientConfig = {}): Promise<pg.Client> {
  const client = new pg.Client(clientConfig(overrides));
  // A backend that dies while the client is idle emits 'error'; without a listener that would
  // crash the worker. Pending and later queries still reject with the error.
  client.on('error', () => {});
  await client.connect();
  return client;
}

/**
 * Ends a client without hanging: `end()` waits for the server to close the socket, which a
 * SIGSTOPped or killed backend never does, so after `timeoutMs` the socket is destroyed.
 */
export async function closeClient(client: pg.Client, timeoutMs = 2_000): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), timeoutMs);
  });
  try {
    const outcome = await Promise.race([client.end().catch(() => 'error' as const), timedOut]);
    if (outcome === 'timeout') {
      (
        client as unknown as { connection?: { stream?: { destroy(): void } } }
      ).connection?.stream?.destroy();
    }
  } finally {
    clearTimeout(timer);
  }
}

/** Runs `fn` with a fresh connected client and always closes it afterwards. */
export async function withClient<T>(
  fn: (client: pg.Client) => Promise<T> | T,
  overrides: pg.ClientConfig = {},
): Promise<T> {
  const client = await connectClient(overrides);
  try {
    return await fn(client);
  } finally {
    await closeClient(client);
  }
}

/** One query as the superuser on its own short-lived connection. */
export async function adminQuery<R extends pg.QueryResultRow = pg.QueryResultRow>(
  sql: string,
  params?: unknown[],
): Promise<pg.QueryResult<R>> {
  return withClient((client) => client.query<R>(sql, params));
}

/** The pid of the server process (backend) serving `client`. */
export async function backendPid(client: pg.Client): Promise<number> {
  const { rows } = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
  const pid = rows[0]?.pid;
  if (typeof pid !== 'number') throw new Error('pg_backend_pid() returned no pid');
  return pid;
}

/**
 * SIGSTOPs a backend, so that its client sees a server that accepted the connection but no
 * longer answers. Always pair it with `resumeBackend` (e.g. in `finally`/`onTestFinished`);
 * cluster shutdown also resumes stopped backends.
 */
export function suspendBackend(pid: number): void {
  assertBackend(pid);
  process.kill(pid, 'SIGSTOP');
}

/** SIGCONTs a backend stopped by `suspendBackend`; a backend that is gone is ignored. */
export function resumeBackend(pid: number): void {
  try {
    process.kill(pid, 'SIGCONT');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

/** `pg_terminate_backend(pid)` through an admin connection; true when the backend existed. */
export async function terminateBackend(pid: number): Promise<boolean> {
  const { rows } = await adminQuery<{ ok: boolean }>('SELECT pg_terminate_backend($1) AS ok', [
    pid,
  ]);
  return rows[0]?.ok === true;
}

/** Refuses to signal anything that is not a PostgreSQL server process (we may be root). */
function assertBackend(pid: number): void {
  if (!Number.isInteger(pid) || pid <= 1 || pid === process.pid) {
    throw new Error(`refusing to signal pid ${pid}`);
  }
  let comm: string;
  try {
    comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return; // no /proc (not Linux) or the process is gone: process.kill reports the latter
  }
  if (comm !== 'postgres') {
    throw new Error(`refusing to signal pid ${pid}: it is "${comm}", not a postgres backend`);
  }
}
