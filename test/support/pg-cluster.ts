/**
 * Throwaway PostgreSQL clusters for the test suite.
 *
 * `startPgCluster()` runs `initdb` into a fresh directory under `os.tmpdir()`, starts a postmaster
 * with `pg_ctl` on a free loopback port and returns a handle to stop or restart it. Nothing is
 * skipped: if PostgreSQL cannot be started, the returned promise rejects with an error that
 * contains the command output and the tail of the server log.
 *
 * The server refuses to run as root, so when this process runs as root (CI does) every
 * PostgreSQL binary is run as the `postgres` system user through `runuser`, and the temp
 * directory is handed over to that user.
 *
 * Every external command is run with `execFile` (no shell) and a timeout. `pg_ctl -o` does pass
 * its argument through `/bin/sh`, so every path and setting that goes into it is checked
 * against a conservative character set first.
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { chown, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/** Serializable connection data for one cluster (this is what the global setup provides). */
export interface PgConnectionInfo {
  /** Always `127.0.0.1`: the server listens on the IPv4 loopback address only. */
  host: string;
  port: number;
  /** Superuser; authentication is `trust`, so no password. */
  user: string;
  database: string;
  /** `postgresql://postgres@127.0.0.1:<port>/postgres` */
  connectionString: string;
  /** Directory holding `initdb`, `pg_ctl`, `postgres`, ... */
  binDir: string;
  /** The cluster's data directory (`<baseDir>/data`). */
  dataDir: string;
  /** The postmaster pid (changes after `restart()`). */
  pid: number;
}

export interface PgCluster extends PgConnectionInfo {
  /** The mkdtemp directory that holds the data directory and the socket directory. */
  readonly baseDir: string;
  /** The server log, inside the data directory. */
  readonly logFile: string;
  /** Stops the server (immediate mode) and deletes `baseDir`. Idempotent. */
  stop(): Promise<void>;
  /** `pg_ctl restart -m fast` on the same port; updates `pid`. */
  restart(): Promise<void>;
}

export interface StartPgClusterOptions {
  /** Defaults to `pgBinDir()`. */
  binDir?: string;
  /** Use this port instead of a free one (no retries on EADDRINUSE then). */
  port?: number;
  /** Extra `-c name=value` server settings. Values must match `[A-Za-z0-9_.:/-]+`. */
  settings?: Record<string, string | number | boolean>;
  /** `pg_ctl -t` for start and restart. Default 60. */
  startTimeoutSeconds?: number;
  /** Start attempts with a new free port when the port is taken meanwhile. Default 3. */
  attempts?: number;
}

const HOST = '127.0.0.1';
const SUPERUSER = 'postgres';
const DATABASE = 'postgres';
const DIR_PREFIX = 'engine-guard-pg-';
/** Characters that survive `pg_ctl -o` (which goes through /bin/sh) and postmaster.opts quoting. */
const SHELL_SAFE = /^[A-Za-z0-9_.:/-]+$/;
/** sockaddr_un.sun_path is 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH = 107;
const LOG_TAIL_LINES = 60;

const BASE_SETTINGS: Record<string, string> = {
  listen_addresses: HOST,
  fsync: 'off',
  synchronous_commit: 'off',
  full_page_writes: 'off',
  max_connections: '200',
  shared_buffers: '32MB',
};

/**
 * The directory with the PostgreSQL server binaries. Order: `$PG_BIN_DIR`, the newest
 * `/usr/lib/postgresql/<version>/bin` (Debian/Ubuntu), then the first `PATH` entry with `initdb`.
 * Throws when none is found.
 */
export function pgBinDir(): string {
  const fromEnv = process.env.PG_BIN_DIR;
  if (fromEnv) {
    if (!existsSync(join(fromEnv, 'initdb'))) {
      throw new Error(`PG_BIN_DIR=${fromEnv} does not contain initdb`);
    }
    return fromEnv;
  }
  const debianRoot = '/usr/lib/postgresql';
  if (existsSync(debianRoot)) {
    const versions = readdirSync(debianRoot)
      .filter((v) => existsSync(join(debianRoot, v, 'bin', 'initdb')))
      .sort((a, b) => compareVersions(b, a));
    if (versions[0] !== undefined) return join(debianRoot, versions[0], 'bin');
  }
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir && existsSync(join(dir, 'initdb')) && existsSync(join(dir, 'pg_ctl'))) return dir;
  }
  throw new Error(
    'PostgreSQL server binaries not found: no /usr/lib/postgresql/*/bin/initdb and no initdb on ' +
      'PATH. Install PostgreSQL (Debian: apt-get install -y postgresql) or set PG_BIN_DIR.',
  );
}

function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0 && !Number.isNaN(d)) return d;
  }
  return a.localeCompare(b);
}

export async function startPgCluster(options: StartPgClusterOptions = {}): Promise<PgCluster> {
  const binDir = options.binDir ?? pgBinDir();
  for (const tool of ['initdb', 'pg_ctl', 'postgres']) {
    if (!existsSync(join(binDir, tool))) throw new Error(`${join(binDir, tool)} does not exist`);
  }
  const startTimeout = options.startTimeoutSeconds ?? 60;
  const attempts = options.port === undefined ? Math.max(1, options.attempts ?? 3) : 1;
  const settings = { ...BASE_SETTINGS, ...stringify(options.settings ?? {}) };
  for (const [name, value] of Object.entries(settings)) {
    if (!/^[a-z_.]+$/i.test(name) || !SHELL_SAFE.test(value)) {
      throw new Error(`unsupported server setting ${name}=${value}`);
    }
  }

  const runner = await commandRunner();
  const baseDir = await makeBaseDir(runner);
  const dataDir = join(baseDir, 'data');
  const socketDir = join(baseDir, 'sock');
  const logFile = join(dataDir, 'postgres.log');
  const pgCtl = join(binDir, 'pg_ctl');
  const serverOptions = (port: number) =>
    [
      ...Object.entries(settings).map(([k, v]) => `-c ${k}=${v}`),
      `-p ${port}`,
      `-k ${socketDir}`,
    ].join(' ');
  const ctlTimeoutMs = (startTimeout + 30) * 1000;

  let port = 0;
  let started = false;
  try {
    await mkdir(socketDir, { mode: 0o700 });
    if (runner.owner) await chown(socketDir, runner.owner.uid, runner.owner.gid);
    await runner.run(
      join(binDir, 'initdb'),
      ['-D', dataDir, '-A', 'trust', '-U', SUPERUSER, '--no-sync', '-E', 'UTF8', '--locale=C'],
      { cwd: baseDir, timeoutMs: 180_000 },
    );

    for (let attempt = 1; ; attempt++) {
      port = options.port ?? (await freeLoopbackPort());
      try {
        await runner.run(
          pgCtl,
          [
            'start',
            '-D',
            dataDir,
            '-w',
            '-t',
            String(startTimeout),
            '-l',
            logFile,
            '-o',
            serverOptions(port),
          ],
          { cwd: baseDir, timeoutMs: ctlTimeoutMs },
        );
        started = true;
        break;
      } catch (err) {
        const log = await logTail(logFile);
        // Not in use any more? Make sure a slow postmaster does not linger before retrying.
        await stopServer(runner, pgCtl, dataDir, baseDir);
        if (attempt < attempts && /address already in use|could not bind/i.test(log)) continue;
        throw new Error(
          `PostgreSQL failed to start on ${HOST}:${port} (attempt ${attempt}/${attempts}): ` +
            `${(err as Error).message}\n--- tail of ${logFile} ---\n${log}`,
          { cause: err },
        );
      }
    }
  } catch (err) {
    if (started) await stopServer(runner, pgCtl, dataDir, baseDir);
    await removeDir(baseDir);
    throw err;
  }

  const readPid = async () => {
    const text = await readFile(join(dataDir, 'postmaster.pid'), 'utf8');
    const pid = Number.parseInt(text.split('\n')[0] ?? '', 10);
    if (!Number.isInteger(pid) || pid <= 0) throw new Error(`bad postmaster.pid: ${text}`);
    return pid;
  };

  let stopping: Promise<void> | undefined;
  const cluster: PgCluster = {
    host: HOST,
    port,
    user: SUPERUSER,
    database: DATABASE,
    connectionString: `postgresql://${SUPERUSER}@${HOST}:${port}/${DATABASE}`,
    binDir,
    dataDir,
    pid: 0,
    baseDir,
    logFile,
    stop() {
      stopping ??= (async () => {
        live.delete(cluster);
        try {
          resumeChildren(cluster.pid);
          await stopServer(runner, pgCtl, dataDir, baseDir, cluster.pid);
        } finally {
          await removeDir(baseDir);
        }
      })();
      return stopping;
    },
    async restart() {
      if (stopping) throw new Error('cannot restart a stopped PostgreSQL cluster');
      // A SIGSTOPped backend would never finish a fast shutdown.
      resumeChildren(cluster.pid);
      try {
        await runner.run(
          pgCtl,
          [
            'restart',
            '-D',
            dataDir,
            '-m',
            'fast',
            '-w',
            '-t',
            String(startTimeout),
            '-l',
            logFile,
            '-o',
            serverOptions(port),
          ],
          { cwd: baseDir, timeoutMs: ctlTimeoutMs * 2 },
        );
      } catch (err) {
        throw new Error(
          `PostgreSQL failed to restart on ${HOST}:${port}: ${(err as Error).message}\n` +
            `--- tail of ${logFile} ---\n${await logTail(logFile)}`,
          { cause: err },
        );
      }
      cluster.pid = await readPid();
    },
  };
  try {
    cluster.pid = await readPid();
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  trackForExit(cluster);
  return cluster;
}

function stringify(settings: Record<string, string | number | boolean>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(settings)) {
    out[k] = typeof v === 'boolean' ? (v ? 'on' : 'off') : String(v);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Running commands (as the postgres user when we are root)

interface Owner {
  uid: number;
  gid: number;
}

interface CommandRunner {
  /** Set when running as root: the postgres user that must own the cluster files. */
  owner: Owner | undefined;
  run(
    file: string,
    args: string[],
    opts: { cwd: string; timeoutMs: number },
  ): Promise<{ stdout: string; stderr: string }>;
}

async function commandRunner(): Promise<CommandRunner> {
  const asRoot = process.getuid?.() === 0;
  const runuser = asRoot ? findRunuser() : undefined;
  const owner = asRoot ? await postgresOwner() : undefined;
  return {
    owner,
    async run(file, args, { cwd, timeoutMs }) {
      const [cmd, argv] = runuser
        ? [runuser, ['-u', SUPERUSER, '--', file, ...args]]
        : [file, args];
      try {
        return await execFileAsync(cmd, argv, {
          cwd,
          env: childEnv(),
          timeout: timeoutMs,
          killSignal: 'SIGKILL',
          maxBuffer: 16 * 1024 * 1024,
          encoding: 'utf8',
        });
      } catch (err) {
        const e = err as NodeJS.ErrnoException & {
          stdout?: string;
          stderr?: string;
          code?: number | string;
          signal?: string;
          killed?: boolean;
        };
        const how = e.killed
          ? `timed out after ${timeoutMs} ms`
          : e.signal
            ? `killed by ${e.signal}`
            : `exit code ${e.code}`;
        const output = [e.stdout, e.stderr]
          .filter((s) => s?.trim())
          .join('\n')
          .trim();
        throw new Error(`\`${[cmd, ...argv].join(' ')}\` failed (${how})\n${output}`, {
          cause: err,
        });
      }
    },
  };
}

function findRunuser(): string {
  for (const candidate of ['/usr/sbin/runuser', '/sbin/runuser', '/usr/bin/runuser']) {
    if (existsSync(candidate)) return candidate;
  }
  throw new Error(
    'running as root, but runuser(1) is missing; PostgreSQL must be started as the postgres user',
  );
}

async function postgresOwner(): Promise<Owner> {
  try {
    const [uid, gid] = await Promise.all([
      execFileAsync('id', ['-u', SUPERUSER], { timeout: 10_000 }),
      execFileAsync('id', ['-g', SUPERUSER], { timeout: 10_000 }),
    ]);
    return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
  } catch (err) {
    throw new Error(
      'running as root, but there is no `postgres` system user to run PostgreSQL as ' +
        '(the Debian postgresql package creates it)',
      { cause: err },
    );
  }
}

/** The caller's environment minus libpq/server variables that could redirect the commands. */
function childEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('PG')) env[k] = v;
  }
  env.LC_ALL = 'C';
  env.LANG = 'C';
  return env;
}

// ---------------------------------------------------------------------------------------------
// Directories, ports, logs, processes

async function makeBaseDir(runner: CommandRunner): Promise<string> {
  const problems: string[] = [];
  for (const parent of [...new Set([tmpdir(), '/tmp'])]) {
    let dir: string | undefined;
    try {
      dir = await mkdtemp(join(parent, DIR_PREFIX));
      if (!SHELL_SAFE.test(dir)) throw new Error('path has characters pg_ctl -o cannot take');
      if (join(dir, 'sock', '.s.PGSQL.65535').length > MAX_SOCKET_PATH) {
        throw new Error('path too long for a Unix socket');
      }
      if (runner.owner) {
        await chown(dir, runner.owner.uid, runner.owner.gid);
        // The postgres user must be able to reach the directory through its parents.
        await runner.run('/usr/bin/test', ['-w', dir, '-a', '-x', dir], {
          cwd: '/',
          timeoutMs: 10_000,
        });
      }
      return dir;
    } catch (err) {
      problems.push(`${dir ?? parent}: ${(err as Error).message}`);
      if (dir) await removeDir(dir);
    }
  }
  throw new Error(`no usable temp directory for PostgreSQL:\n${problems.join('\n')}`);
}

/** A port nothing listens on at the moment, on the IPv4 loopback address. */
export function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen({ host: HOST, port: 0, exclusive: true }, () => {
      const address = server.address();
      server.close(() => {
        if (address && typeof address === 'object') resolve(address.port);
        else reject(new Error(`unexpected server address ${String(address)}`));
      });
    });
  });
}

async function logTail(logFile: string): Promise<string> {
  try {
    const text = await readFile(logFile, 'utf8');
    return text.trimEnd().split('\n').slice(-LOG_TAIL_LINES).join('\n') || '(empty log)';
  } catch (err) {
    return `(no server log: ${(err as Error).message})`;
  }
}

/** Stops the server in `dataDir`, whatever it takes: immediate, then fast, then SIGKILL. */
async function stopServer(
  runner: CommandRunner,
  pgCtl: string,
  dataDir: string,
  cwd: string,
  knownPid?: number,
): Promise<void> {
  const pidFile = join(dataDir, 'postmaster.pid');
  const pid = knownPid ?? pidFromFile(pidFile);
  if (pid === undefined && !existsSync(pidFile)) return;
  for (const mode of ['immediate', 'fast']) {
    try {
      await runner.run(pgCtl, ['stop', '-D', dataDir, '-m', mode, '-w', '-t', '30'], {
        cwd,
        timeoutMs: 45_000,
      });
      return;
    } catch {
      if (pid !== undefined && !isProcessAlive(pid)) return;
    }
  }
  if (pid !== undefined) {
    for (const child of childPids(pid)) signal(child, 'SIGKILL');
    signal(pid, 'SIGKILL');
  }
}

function pidFromFile(pidFile: string): number | undefined {
  try {
    const pid = Number.parseInt(readFileSync(pidFile, 'utf8').split('\n')[0] ?? '', 10);
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** Whether `pid` is a running process; an exited but not yet reaped one (zombie) is not. */
export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return !existsSync('/proc/self'); // no /proc: trust kill(0); with /proc: it just exited
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  if (!Number.isInteger(pid) || pid <= 1) return;
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

/** Direct children of `pid` (Linux /proc; empty elsewhere). */
function childPids(pid: number): number[] {
  if (!(pid > 1)) return [];
  const out: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return out;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // "pid (comm) state ppid ..." where comm may contain spaces and parentheses.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(entry));
    } catch {
      // process exited meanwhile
    }
  }
  return out;
}

/** SIGCONT every child of the postmaster so that a test's SIGSTOPped backend cannot block a shutdown. */
function resumeChildren(postmasterPid: number): void {
  for (const child of childPids(postmasterPid)) signal(child, 'SIGCONT');
}

async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
}

// ---------------------------------------------------------------------------------------------
// Last-resort cleanup when the process exits without stopping its clusters

const live = new Set<PgCluster>();
let exitHookInstalled = false;

function trackForExit(cluster: PgCluster): void {
  live.add(cluster);
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const c of live) {
      for (const child of childPids(c.pid)) signal(child, 'SIGCONT');
      signal(c.pid, 'SIGQUIT'); // immediate shutdown
      try {
        rmSync(c.baseDir, { recursive: true, force: true });
      } catch {
        // best effort
      }
    }
    live.clear();
  });
}
