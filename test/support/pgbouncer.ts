/**
 * A throwaway PgBouncer (the Debian `pgbouncer` package) in front of a PostgreSQL server, for the
 * tests of what the pg adapter does behind a connection pooler.
 *
 *   const bouncer = await startPgBouncer({ target: pgConfig(), poolMode: 'transaction' });
 *   try { ... connect to bouncer.host:bouncer.port ... } finally { await bouncer.stop(); }
 *
 * It listens on a free loopback port, trusts every client (as the test cluster does) and logs to
 * a file in its own temporary directory, removed by `stop()`. As root it drops to the `postgres`
 * user (`-u`), since PgBouncer refuses to run as root. Nothing is skipped: without the binary,
 * `startPgBouncer` rejects and says what to install.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { freeLoopbackPort } from './pg-cluster.js';

const HOST = '127.0.0.1';
const START_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 5_000;

export interface PgBouncer {
  readonly host: string;
  readonly port: number;
  readonly poolMode: 'session' | 'transaction';
  /** Stops PgBouncer (SIGTERM, then SIGKILL) and removes its directory. Idempotent. */
  stop(): Promise<void>;
}

export interface StartPgBouncerOptions {
  /** The server it pools connections to. */
  target: { host: string; port: number };
  poolMode: 'session' | 'transaction';
  /** Server connections per user and database. Default 4. */
  poolSize?: number;
}

/** The pgbouncer binary: on PATH, or where the Debian package puts it. */
function pgBouncerBinary(): string {
  for (const candidate of ['/usr/sbin/pgbouncer', '/usr/bin/pgbouncer']) {
    if (existsSync(candidate)) return candidate;
  }
  try {
    return execFileSync('sh', ['-c', 'command -v pgbouncer'], { encoding: 'utf8' }).trim();
  } catch {
    throw new Error(
      'pgbouncer is not installed: the pooler tests need it (Debian: apt-get install pgbouncer; .ci/run installs it)',
    );
  }
}

/** Resolves once a query goes through PgBouncer, or rejects with the log after the timeout. */
async function waitUntilServing(port: number, child: ChildProcess, logFile: string): Promise<void> {
  const deadline = performance.now() + START_TIMEOUT_MS;
  let last: unknown;
  while (performance.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(
        `pgbouncer exited (${child.exitCode ?? child.signalCode}) before serving:\n${await readLog(logFile)}`,
      );
    }
    const client = new pg.Client({
      host: HOST,
      port,
      user: 'postgres',
      database: 'postgres',
      connectionTimeoutMillis: 2_000,
    });
    client.on('error', () => {});
    try {
      await client.connect();
      await client.query('SELECT 1');
      await client.end();
      return;
    } catch (error) {
      last = error;
      await client.end().catch(() => undefined);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  throw new Error(
    `pgbouncer did not serve within ${START_TIMEOUT_MS} ms (${(last as Error)?.message}):\n${await readLog(logFile)}`,
  );
}

async function readLog(logFile: string): Promise<string> {
  try {
    return (await readFile(logFile, 'utf8')).split('\n').slice(-30).join('\n');
  } catch {
    return '(no log)';
  }
}

/** Starts PgBouncer in front of `options.target`; see the module's comment. */
export async function startPgBouncer(options: StartPgBouncerOptions): Promise<PgBouncer> {
  const binary = pgBouncerBinary();
  const dir = await mkdtemp(join(tmpdir(), 'engine-guard-pgbouncer-'));
  // As root, PgBouncer runs as postgres and must read its files and write its log.
  await chmod(dir, 0o777);
  const port = await freeLoopbackPort();
  const logFile = join(dir, 'pgbouncer.log');
  const users = join(dir, 'users.txt');
  const ini = join(dir, 'pgbouncer.ini');
  await writeFile(users, '"postgres" ""\n', { mode: 0o644 });
  await writeFile(
    ini,
    [
      '[databases]',
      `* = host=${options.target.host} port=${options.target.port}`,
      '[pgbouncer]',
      `listen_addr = ${HOST}`,
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = trust',
      `auth_file = ${users}`,
      `pool_mode = ${options.poolMode}`,
      `default_pool_size = ${options.poolSize ?? 4}`,
      'max_client_conn = 200',
      'ignore_startup_parameters = extra_float_digits',
      `logfile = ${logFile}`,
      '',
    ].join('\n'),
    { mode: 0o644 },
  );
  const asRoot = process.getuid?.() === 0;
  const child = spawn(binary, [...(asRoot ? ['-u', 'postgres'] : []), ini], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => resolve());
  });
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
      await exited;
      clearTimeout(timer);
    }
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await waitUntilServing(port, child, logFile);
  } catch (error) {
    await stop();
    throw new Error(`${(error as Error).message}\n${stderr}`, { cause: error });
  }
  return { host: HOST, port, poolMode: options.poolMode, stop };
}
