import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import pg from 'pg';
import { describe, expect, it, onTestFinished } from 'vitest';
import {
  adminQuery,
  backendPid,
  closeClient,
  connectClient,
  pgConfig,
  resumeBackend,
  suspendBackend,
  withClient,
} from '../support/pg.js';
import { isProcessAlive, type PgCluster, startPgCluster } from '../support/pg-cluster.js';

const CLUSTER_TEST_TIMEOUT = 180_000;

async function selectOne(connectionString: string): Promise<number> {
  const client = new pg.Client({ connectionString, connectionTimeoutMillis: 10_000 });
  await client.connect();
  try {
    const { rows } = await client.query<{ one: number }>('select 1 as one');
    return rows[0]!.one;
  } finally {
    await client.end();
  }
}

/** Starts a private cluster that is stopped when the test finishes, whatever happens. */
async function privateCluster(): Promise<PgCluster> {
  const cluster = await startPgCluster();
  onTestFinished(() => cluster.stop());
  return cluster;
}

describe('shared PostgreSQL cluster (global setup)', () => {
  it('provides its connection data', () => {
    const config = pgConfig();
    expect(config.host).toBe('127.0.0.1');
    expect(config.port).toBeGreaterThan(0);
    expect(config.connectionString).toBe(
      `postgresql://${config.user}@127.0.0.1:${config.port}/${config.database}`,
    );
    expect(isProcessAlive(config.pid)).toBe(true);
  });

  it('accepts connections and runs select 1', async () => {
    const one = await withClient(async (client) => {
      const { rows } = await client.query<{ one: number }>('select 1 as one');
      return rows[0]!.one;
    });
    expect(one).toBe(1);
    expect(await selectOne(pgConfig().connectionString)).toBe(1);
  });

  it('listens on 127.0.0.1 only', async () => {
    const { rows } = await adminQuery<{ listen_addresses: string }>('SHOW listen_addresses');
    expect(rows[0]!.listen_addresses).toBe('127.0.0.1');
    const { rows: addr } = await adminQuery<{ addr: string }>(
      'SELECT host(inet_server_addr()) AS addr',
    );
    expect(addr[0]!.addr).toBe('127.0.0.1');
  });

  it('runs with the harness settings', async () => {
    const { rows } = await adminQuery<{ name: string; setting: string }>(
      `SELECT name, setting FROM pg_settings
        WHERE name IN ('fsync', 'max_connections', 'server_encoding') ORDER BY name`,
    );
    expect(Object.fromEntries(rows.map((r) => [r.name, r.setting]))).toEqual({
      fsync: 'off',
      max_connections: '200',
      server_encoding: 'UTF8',
    });
  });

  it('adminQuery passes parameters', async () => {
    const { rows } = await adminQuery<{ n: number }>('SELECT $1::int + 1 AS n', [41]);
    expect(rows[0]!.n).toBe(42);
  });

  it('can SIGSTOP and resume a backend', async () => {
    const client = await connectClient({ query_timeout: 500 });
    onTestFinished(() => closeClient(client));
    const pid = await backendPid(client);
    expect(pid).not.toBe(pgConfig().pid);
    suspendBackend(pid);
    try {
      await expect(client.query('select 1')).rejects.toThrow(/timeout/i);
    } finally {
      resumeBackend(pid);
    }
    // The backend is alive again and serves other connections as usual.
    const { rows } = await adminQuery<{ n: number }>(
      'SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1',
      [pid],
    );
    expect(rows[0]!.n).toBe(1);
  });

  it('refuses to SIGSTOP a process that is not a backend', () => {
    expect(() => suspendBackend(process.pid)).toThrow(/refusing/);
    expect(() => suspendBackend(0)).toThrow(/refusing/);
  });
});

describe('startPgCluster', () => {
  it(
    'starts and stops a second cluster and removes its directory',
    async () => {
      const cluster = await privateCluster();
      expect(cluster.port).not.toBe(pgConfig().port);
      expect(cluster.dataDir.startsWith(cluster.baseDir)).toBe(true);
      expect(existsSync(cluster.dataDir)).toBe(true);
      expect(isProcessAlive(cluster.pid)).toBe(true);
      expect(await selectOne(cluster.connectionString)).toBe(1);

      await cluster.stop();
      expect(existsSync(cluster.dataDir)).toBe(false);
      expect(existsSync(cluster.baseDir)).toBe(false);
      expect(isProcessAlive(cluster.pid)).toBe(false);
      await expect(selectOne(cluster.connectionString)).rejects.toThrow();
      // Idempotent.
      await cluster.stop();
    },
    CLUSTER_TEST_TIMEOUT,
  );

  it(
    'restart() keeps the port and accepts new connections',
    async () => {
      const cluster = await privateCluster();
      const { port, pid } = cluster;
      const before = new pg.Client({ connectionString: cluster.connectionString });
      before.on('error', () => {});
      await before.connect();
      onTestFinished(() => closeClient(before));

      await cluster.restart();

      expect(cluster.port).toBe(port);
      expect(cluster.pid).not.toBe(pid);
      expect(isProcessAlive(pid)).toBe(false);
      expect(isProcessAlive(cluster.pid)).toBe(true);
      // Fast shutdown terminated the old session; new ones work on the same port.
      await expect(before.query('select 1')).rejects.toThrow();
      expect(await selectOne(`postgresql://postgres@127.0.0.1:${port}/postgres`)).toBe(1);
    },
    CLUSTER_TEST_TIMEOUT,
  );

  it(
    'fails loudly with the server log when the port is taken',
    async () => {
      const blocker: Server = createServer();
      await new Promise<void>((resolve) => blocker.listen({ host: '127.0.0.1', port: 0 }, resolve));
      onTestFinished(() => new Promise<void>((resolve) => blocker.close(() => resolve())));
      const address = blocker.address();
      if (!address || typeof address === 'string') throw new Error('no port');

      const error = await startPgCluster({ port: address.port }).then(
        () => undefined,
        (err: unknown) => err as Error,
      );
      expect(error).toBeInstanceOf(Error);
      expect(error!.message).toMatch(/failed to start/);
      expect(error!.message).toMatch(/tail of .*postgres\.log/);
      expect(error!.message).toMatch(/could not bind|Address already in use/i);
    },
    CLUSTER_TEST_TIMEOUT,
  );
});
