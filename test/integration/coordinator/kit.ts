/**
 * Helpers of the coordinator tests: child processes (each with its own guard and coordinator)
 * that are always killed by the test's cleanup, and what the tests read back from PostgreSQL.
 */
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterEach, onTestFinished, vi } from 'vitest';
import {
  type PgCoordinator,
  type PgHandle,
  pgCoordinator,
  pgGuardOptions,
} from '../../../src/adapters/pg.js';
import { lockKey } from '../../../src/adapters/pg-coordinator-settings.js';
import { EngineGuard } from '../../../src/index.js';
import { FaultProxy } from '../../../src/testing/index.js';
import {
  adminQuery,
  clientConfig,
  closeClient,
  connectClient,
  pgConfig,
} from '../../support/pg.js';

export const SCHEMA = 'engine_guard_test';
const CHILD = fileURLToPath(new URL('./child.ts', import.meta.url));

export type Message = Record<string, unknown> & { name: string; event: string };

export interface Child {
  readonly process: ChildProcessWithoutNullStreams;
  readonly messages: Message[];
  /** The first message of `event` (already seen or to come), within `timeoutMs`. */
  next(event: string, timeoutMs?: number): Promise<Message>;
  send(line: string): void;
  readonly exited: Promise<number | null>;
  stderr(): string;
}

/** A unique cluster key per test. */
export function uniqueKey(): string {
  return `coord-test-${process.pid}-${Math.random().toString(36).slice(2)}`;
}

/** Starts a child on `job`; the test's cleanup kills it (SIGCONT first, if it was stopped). */
export function spawnChild(job: Record<string, unknown>): Child {
  const { host, port, user, database } = pgConfig();
  const child = spawn(process.execPath, ['--import', 'tsx', CHILD], {
    env: {
      ...process.env,
      COORD_CHILD: JSON.stringify({
        config: { host, port, user, database },
        schema: SCHEMA,
        ...job,
      }),
    },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  onTestFinished(() => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGCONT');
      child.kill('SIGKILL');
    }
  });
  const messages: Message[] = [];
  const listeners = new Set<() => void>();
  let buffer = '';
  let errors = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    buffer += chunk;
    for (let i = buffer.indexOf('\n'); i >= 0; i = buffer.indexOf('\n')) {
      const line = buffer.slice(0, i);
      buffer = buffer.slice(i + 1);
      if (line.trim() === '') continue;
      messages.push(JSON.parse(line) as Message);
      for (const listener of listeners) listener();
    }
  });
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk: string) => {
    errors += chunk;
  });
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => resolve(code)),
  );
  return {
    process: child,
    messages,
    exited,
    stderr: () => errors,
    send: (line) => child.stdin.write(`${line}\n`),
    next: (event, timeoutMs = 30_000) =>
      new Promise<Message>((resolve, reject) => {
        const check = (): boolean => {
          const failed = messages.find((m) => m.event === 'error');
          if (failed !== undefined && event !== 'error') {
            cleanup();
            reject(new Error(`child ${String(job.name)} failed: ${JSON.stringify(failed)}`));
            return true;
          }
          const found = messages.find((m) => m.event === event);
          if (found === undefined) return false;
          cleanup();
          resolve(found);
          return true;
        };
        const timer = setTimeout(() => {
          cleanup();
          reject(
            new Error(
              `child ${String(job.name)}: no "${event}" within ${timeoutMs} ms; saw ${JSON.stringify(messages)}; stderr: ${errors.slice(-2000)}`,
            ),
          );
        }, timeoutMs);
        const onExit = (): void => {
          setImmediate(() => {
            if (check()) return;
            cleanup();
            reject(
              new Error(
                `child ${String(job.name)} exited before "${event}"; stderr: ${errors.slice(-2000)}`,
              ),
            );
          });
        };
        const cleanup = (): void => {
          clearTimeout(timer);
          listeners.delete(listener);
          child.off('exit', onExit);
        };
        const listener = (): void => {
          check();
        };
        if (check()) return;
        listeners.add(listener);
        child.once('exit', onExit);
      }),
  };
}

/** Fresh coord_log and coord_counter (only processes.test.ts uses them; its tests run one at a time). */
export async function freshTables(): Promise<void> {
  await adminQuery(`
    DROP TABLE IF EXISTS coord_log, coord_counter;
    CREATE TABLE coord_log (proc text, fence bigint, started timestamptz, ended timestamptz);
    CREATE TABLE coord_counter (v int NOT NULL);
    INSERT INTO coord_counter VALUES (0);
  `);
}

export interface Interval {
  proc: string;
  fence: string;
  started: string;
  ended: string;
}

/** The recorded writes in start order, with any two that overlap and any fence out of order. */
export async function writeLog(): Promise<{
  writes: Interval[];
  overlaps: [Interval, Interval][];
  fenceInversions: [Interval, Interval][];
}> {
  const { rows } = await adminQuery<Interval>(
    'SELECT proc, fence::text AS fence, started::text AS started, ended::text AS ended FROM coord_log ORDER BY started, ended',
  );
  const { rows: overlaps } = await adminQuery<{ a: Interval; b: Interval }>(`
    SELECT row_to_json(a) AS a, row_to_json(b) AS b FROM coord_log a JOIN coord_log b
      ON a.ctid < b.ctid AND a.started < b.ended AND b.started < a.ended`);
  const fenceInversions: [Interval, Interval][] = [];
  for (let i = 1; i < rows.length; i++) {
    if (BigInt(rows[i]!.fence) <= BigInt(rows[i - 1]!.fence)) {
      fenceInversions.push([rows[i - 1]!, rows[i]!]);
    }
  }
  return { writes: rows, overlaps: overlaps.map((r) => [r.a, r.b]), fenceInversions };
}

/** Sessions waiting (not granted) for the advisory lock of `key`. */
export function lockWaiters(key: string): Promise<number> {
  return advisoryLocks(key, false);
}

/** Sessions holding (`granted`) or waiting for the advisory lock of `key`. */
export async function advisoryLocks(key: string, granted: boolean): Promise<number> {
  return (await lockPids(key, granted)).length;
}

/** Backend pids holding (`granted`) or waiting for the advisory lock of `key`. */
export async function lockPids(key: string, granted: boolean): Promise<number[]> {
  const big = BigInt.asUintN(64, BigInt(lockKey(key)));
  const { rows } = await adminQuery<{ pid: number }>(
    `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted = $3
       AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 1`,
    [String(big >> 32n), String(big & 0xffffffffn), granted],
  );
  return rows.map((r) => r.pid);
}

/** Polls `cond` every 20 ms; throws naming `what` after `timeoutMs`. */
export async function until(
  cond: () => boolean | Promise<boolean>,
  timeoutMs: number,
  what: string,
): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!(await cond())) {
    if (performance.now() > end)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * Holds back every `nextval` of `schema`'s fence sequence (a grant's fence query): an open
 * transaction of its own that ran `ALTER SEQUENCE` on it. `release()` rolls it back.
 */
export async function holdFenceSequence(schema: string): Promise<{ release(): Promise<void> }> {
  const client = await connectClient();
  await client.query('BEGIN');
  await client.query(`ALTER SEQUENCE "${schema}".fence_seq INCREMENT BY 1`);
  let released: Promise<void> | undefined;
  onTestFinished(() => released ?? closeClient(client));
  return {
    release: () => {
      released ??= client.query('ROLLBACK').then(
        () => closeClient(client),
        () => closeClient(client),
      );
      return released;
    },
  };
}

/** Backend pids whose `nextval` of `schema`'s fence sequence waits for a lock. */
export async function fenceWaiters(schema: string): Promise<number[]> {
  const { rows } = await adminQuery<{ pid: number }>(
    `SELECT pid FROM pg_locks WHERE locktype = 'relation' AND NOT granted
       AND relation = to_regclass($1)`,
    [`"${schema}".fence_seq`],
  );
  return rows.map((r) => r.pid);
}

/**
 * Makers of coordinators and FaultProxies for one test file, closed after each test (proxies
 * first: whatever still hangs on a blackholed or slowed link then fails at once).
 */
export function coordinatorKit(schema = SCHEMA): {
  coordinator(
    key: string,
    extra?: Record<string, unknown>,
    config?: pg.ClientConfig,
  ): PgCoordinator;
  proxy(): Promise<FaultProxy>;
  /** A guard (engine-guard/pg, straight to the test cluster) on `coordinator`. */
  guard(coordinator: PgCoordinator): EngineGuard<PgHandle>;
  closeLater(closable: { close(): Promise<void> }): void;
} {
  const open: { close(): Promise<void> }[] = [];
  const proxies: FaultProxy[] = [];
  afterEach(async () => {
    await Promise.all(proxies.splice(0).map((proxy) => proxy.close()));
    await Promise.all(open.splice(0).map((c) => c.close()));
  });
  return {
    coordinator(key, extra = {}, config = clientConfig()) {
      const c = pgCoordinator(config, { key, schema, ...extra });
      open.push(c);
      return c;
    },
    async proxy() {
      const started = await FaultProxy.start({ target: { port: pgConfig().port } });
      proxies.push(started);
      return started;
    },
    guard(coordinator) {
      const guard = new EngineGuard({ ...pgGuardOptions({ config: clientConfig() }), coordinator });
      open.push(guard);
      return guard;
    },
    closeLater(closable) {
      open.push(closable);
    },
  };
}

/**
 * Calls `hook` once, just before the next query whose text starts with `prefix` is handed to
 * any `pg` client, with that call's arguments (which it may change): the exact moment a query of
 * the coordinator is sent. Undone by `vi.restoreAllMocks()`.
 */
export function onNextQuery(prefix: string, hook: (args: unknown[]) => void): void {
  const query = pg.Client.prototype.query;
  let armed = true;
  vi.spyOn(pg.Client.prototype, 'query').mockImplementation(function (
    this: pg.Client,
    ...args: unknown[]
  ) {
    if (armed && typeof args[0] === 'string' && args[0].startsWith(prefix)) {
      armed = false;
      hook(args);
    }
    return (query as (...a: unknown[]) => unknown).apply(this, args);
  } as typeof query);
}
