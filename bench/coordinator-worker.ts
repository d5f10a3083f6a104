/**
 * One contending process of bench/coordinator.bench.ts: takes and gives back the cluster write
 * lock in a loop until its deadline, then prints how many times it held it. Run as
 * `node --import ./bench/built.mjs bench/coordinator-worker.ts` with its job in COORD_BENCH (JSON).
 */
import { pgCoordinator } from '../src/adapters/pg.js';
import { advisoryMutex } from './advisory-lock-peer.js';

interface Job {
  contender: 'pgCoordinator' | 'advisory-lock';
  config: { host: string; port: number; user: string; database: string };
  key: string;
  /** Epoch ms at which to start, the same for every worker, and how long to run. */
  startAt: number;
  durationMs: number;
}

const job = JSON.parse(process.env.COORD_BENCH ?? '{}') as Job;
const alive = { isAlive: () => true };

async function loop(cycle: () => Promise<void>): Promise<number> {
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, job.startAt - Date.now())));
  const end = Date.now() + job.durationMs;
  let held = 0;
  while (Date.now() < end) {
    await cycle();
    held++;
  }
  return held;
}

let held: number;
if (job.contender === 'pgCoordinator') {
  const coordinator = pgCoordinator(job.config, { key: job.key, schema: 'engine_guard_bench' });
  // Opens the lock session (and creates the fence objects) before the clock starts.
  await (await coordinator.acquire('write', alive)).release();
  held = await loop(async () => {
    await (await coordinator.acquire('write', alive)).release();
  });
  await coordinator.close();
} else {
  const { host, port, user, database } = job.config;
  const mutex = advisoryMutex(`postgres://${user}@${host}:${port}/${database}`, job.key);
  held = await loop(async () => {
    const unlock = await mutex.lock();
    await unlock();
  });
}
process.stdout.write(`${JSON.stringify({ held })}\n`);
