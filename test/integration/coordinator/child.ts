/**
 * One process of the coordinator tests: its own guard (engine-guard/pg) and pgCoordinator.
 * Run as `node --import tsx child.ts` with its job in the COORD_CHILD environment variable (JSON).
 * It reports on stdout, one JSON object a line, and reads commands on stdin ("go").
 *
 * Jobs:
 * - `writers`: `writes` fenced writes with random reads between them; each write records
 *   [start, end, fence] (server clock) in coord_log and does an unguarded read-modify-write of
 *   coord_counter (a lost update shows two writers at once).
 * - `hold`: one write that reports `holding` and waits for "go" on stdin, then (lease lost or not)
 *   tries its fenced write as a holder that did not notice would, and reports what happened.
 * - `once`: one fenced write; reports `granted` (with Date.now()) as soon as fn starts.
 */
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  type PgHandle,
  pgCheckFence,
  pgCoordinator,
  pgGuardOptions,
  pgQuery,
} from '../../../src/adapters/pg.js';
import { EngineGuard, type OpContext } from '../../../src/index.js';

interface Job {
  kind: 'writers' | 'hold' | 'once';
  name: string;
  config: { host: string; port: number; user: string; database: string };
  /** Where the lock session connects (a FaultProxy in the blackhole test). */
  lockPort?: number;
  key: string;
  schema: string;
  writes?: number;
  leaseTimeout?: number;
  renewInterval?: number;
}

const job = JSON.parse(process.env.COORD_CHILD ?? '{}') as Job;
const say = (message: Record<string, unknown>): void => {
  process.stdout.write(`${JSON.stringify({ name: job.name, ...message })}\n`);
};

const lines = createInterface({ input: process.stdin });
const commands: string[] = [];
const waiters: (() => void)[] = [];
lines.on('line', (line) => {
  commands.push(line.trim());
  for (const wake of waiters.splice(0)) wake();
});
async function command(name: string): Promise<void> {
  while (!commands.includes(name)) await new Promise<void>((resolve) => waiters.push(resolve));
}

const coordinator = pgCoordinator(
  { ...job.config, port: job.lockPort ?? job.config.port },
  {
    key: job.key,
    schema: job.schema,
    leaseTimeout: job.leaseTimeout,
    renewInterval: job.renewInterval,
  },
);
const guard = new EngineGuard({
  ...pgGuardOptions({ config: job.config }, { pool: 2 }),
  coordinator,
});

/** The fenced part of a write: its own transaction, the fence checked first. */
async function fencedWrite(
  pg: PgHandle,
  ctx: Pick<OpContext, 'fence' | 'signal' | 'heartbeat'>,
  started: string,
): Promise<void> {
  await pgQuery(pg, ctx, 'BEGIN');
  try {
    await pgCheckFence(pg, ctx, coordinator);
    await pgQuery(
      pg,
      ctx,
      'INSERT INTO coord_log (proc, fence, started, ended) VALUES ($1, $2, $3, clock_timestamp())',
      [job.name, String(ctx.fence), started],
    );
    await pgQuery(pg, ctx, 'COMMIT');
  } catch (error) {
    await pg.client.query('ROLLBACK').catch(() => {});
    throw error;
  }
}

async function now(pg: PgHandle, ctx: OpContext): Promise<string> {
  const { rows } = await pgQuery<{ t: string }>(pg, ctx, 'SELECT clock_timestamp()::text AS t');
  return rows[0]!.t;
}

async function writers(): Promise<void> {
  const writes = job.writes ?? 10;
  for (let i = 0; i < writes; i++) {
    if (Math.random() < 0.5) {
      await guard.read((pg, ctx) => pgQuery(pg, ctx, 'SELECT count(*) FROM coord_log'));
    }
    await guard.write(async (pg, ctx) => {
      const started = await now(pg, ctx);
      // Read-modify-write without any database lock: only the lease keeps it whole.
      const { rows } = await pgQuery<{ v: number }>(pg, ctx, 'SELECT v FROM coord_counter');
      await pgQuery(pg, ctx, 'UPDATE coord_counter SET v = $1', [rows[0]!.v + 1]);
      await fencedWrite(pg, ctx, started);
    });
  }
  say({ event: 'done', writes });
}

async function hold(): Promise<void> {
  const outcome = await guard
    .write(async (pg, ctx) => {
      const started = await now(pg, ctx);
      say({ event: 'holding', fence: String(ctx.fence), pid: process.pid });
      await command('go');
      // Give a lost lease the time to be noticed and the guard's cancel the time to land, so the
      // write below meets the fence, not the cancel.
      const noticed = await Promise.race([
        new Promise<boolean>((resolve) =>
          ctx.signal.addEventListener('abort', () => resolve(true), { once: true }),
        ),
        sleep(3_000).then(() => ctx.signal.aborted),
      ]);
      await sleep(500);
      const reason = ctx.signal.reason as { name?: string } | undefined;
      say({ event: 'noticed', noticed, reason: reason?.name });
      // A holder that did not notice: the same write, with a signal that never aborted.
      const blind = { fence: ctx.fence, signal: new AbortController().signal, heartbeat() {} };
      try {
        await fencedWrite(pg, blind, started);
        say({ event: 'fenced-write', ok: true });
      } catch (error) {
        const e = error as { name?: string; code?: string; current?: unknown };
        say({
          event: 'fenced-write',
          ok: false,
          name: e.name,
          code: e.code,
          current: String(e.current),
        });
      }
    })
    .then(
      () => ({ ok: true }),
      (error: { name?: string; indeterminate?: boolean }) => ({
        ok: false,
        name: error.name,
        indeterminate: error.indeterminate,
      }),
    );
  say({ event: 'op', ...outcome });
}

async function once(): Promise<void> {
  say({ event: 'waiting' });
  await guard.write(async (pg, ctx) => {
    say({ event: 'granted', at: Date.now(), fence: String(ctx.fence) });
    await fencedWrite(pg, ctx, await now(pg, ctx));
  });
  say({ event: 'done' });
}

try {
  if (job.kind === 'writers') await writers();
  else if (job.kind === 'hold') await hold();
  else await once();
} catch (error) {
  say({ event: 'error', message: (error as Error).message, name: (error as Error).name });
} finally {
  await guard.close();
  lines.close();
}
