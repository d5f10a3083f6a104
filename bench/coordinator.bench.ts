/**
 * The cluster write lock on a real PostgreSQL: pgCoordinator (engine-guard/pg) side by side with
 * the `advisory-lock` package (exclusive), in one run, on one throwaway cluster per section.
 * Run through `npm run bench` (`npm run bench -- coordinator` for these sections only).
 *
 * Both take a session advisory lock. pgCoordinator keeps one lock session per process and adds a
 * `nextval` for the fence to each grant; `advisory-lock` opens a connection per `lock()` and
 * closes it after `unlock()`.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { pgCoordinator } from '../src/adapters/pg.js';
import { advisoryMutex } from './advisory-lock-peer.js';
import {
  BENCH_IMPORT,
  fmtInt,
  fmtRatio,
  fmtUs,
  median,
  nowNs,
  percentile,
  type Section,
} from './harness.js';
import { withCluster } from './pg.bench.js';

const WORKER = fileURLToPath(new URL('./coordinator-worker.ts', import.meta.url));
const PROCESSES = 4;
const DURATION_MS = 5_000;
const ITERATIONS = 300;
const ROUNDS = 5;
const alive = { isAlive: () => true };

type Cycle = () => Promise<void>;

interface Contender {
  name: string;
  open(config: pg.ClientConfig, key: string): Promise<{ cycle: Cycle; close(): Promise<void> }>;
}

function connectionString(config: pg.ClientConfig): string {
  return `postgres://${config.user}@${config.host}:${config.port}/${config.database}`;
}

const contenders: Contender[] = [
  {
    name: 'pgCoordinator',
    async open(config, key) {
      const coordinator = pgCoordinator(config, { key, schema: 'engine_guard_bench' });
      return {
        cycle: async () => {
          await (await coordinator.acquire('write', alive)).release();
        },
        close: () => coordinator.close(),
      };
    },
  },
  {
    name: 'advisory-lock',
    async open(config, key) {
      const mutex = advisoryMutex(connectionString(config), key);
      return {
        cycle: async () => {
          const unlock = await mutex.lock();
          await unlock();
        },
        close: async () => {},
      };
    },
  },
];

const uncontended: Section = {
  title: 'Cluster write lock: uncontended acquire + release',
  description:
    `One process, nobody else on the lock: the time of one acquire + release of the exclusive ` +
    `cluster lock, ${ROUNDS} rounds of ${fmtInt(ITERATIONS)} cycles per contender, the contenders ` +
    'interleaved round by round after a warm-up; median and p99 over all cycles.',
  async run() {
    return withCluster(async (config) => {
      const opened = await Promise.all(
        contenders.map(async (c) => ({ c, ...(await c.open(config, `bench-${c.name}`)) })),
      );
      const samples = new Map<string, number[]>(contenders.map((c) => [c.name, []]));
      try {
        for (const { cycle } of opened) for (let i = 0; i < 30; i++) await cycle();
        for (let round = 0; round < ROUNDS; round++) {
          for (const { c, cycle } of opened) {
            const times = samples.get(c.name)!;
            for (let i = 0; i < ITERATIONS; i++) {
              const t0 = nowNs();
              await cycle();
              times.push(nowNs() - t0);
            }
          }
        }
      } finally {
        await Promise.all(opened.map((o) => o.close()));
      }
      const ours = median(samples.get('pgCoordinator')!);
      const table = [['contender', 'median', 'p99', 'median vs pgCoordinator']];
      for (const c of contenders) {
        const sorted = [...samples.get(c.name)!].sort((a, b) => a - b);
        const mid = median(sorted);
        table.push([c.name, fmtUs(mid), fmtUs(percentile(sorted, 0.99)), fmtRatio(mid / ours)]);
      }
      return {
        table,
        notes: [
          'pgCoordinator: lock, `nextval` (the fence) and unlock on its kept lock session: three round trips.',
          '`advisory-lock`: a new connection (TCP, authentication, backend start) per `lock()`, closed after `unlock()`.',
        ],
      };
    });
  },
};

/** Runs `PROCESSES` workers of `contender` at once; the total number of grants. */
async function contend(config: pg.ClientConfig, contender: string, key: string): Promise<number[]> {
  const startAt = Date.now() + 2_000;
  const job = { contender, config, key, startAt, durationMs: DURATION_MS };
  const runs = Array.from({ length: PROCESSES }, () => {
    const child = spawn(process.execPath, ['--import', BENCH_IMPORT, WORKER], {
      env: { ...process.env, COORD_BENCH: JSON.stringify(job) },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      out += chunk;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), DURATION_MS + 60_000);
    return new Promise<number>((resolve, reject) => {
      child.once('exit', (code) => {
        clearTimeout(timer);
        if (code !== 0) reject(new Error(`${contender} worker exited with ${code}`));
        else resolve((JSON.parse(out) as { held: number }).held);
      });
    });
  });
  return Promise.all(runs);
}

const contended: Section = {
  title: `Cluster write lock: throughput with ${PROCESSES} contending processes`,
  description:
    `${PROCESSES} processes, each with its own lock session (pgCoordinator) or its own ` +
    `\`advisory-lock\` mutex, take and give back the exclusive cluster lock in a loop for ` +
    `${DURATION_MS / 1000} s, started together; the grants per second of all of them, and the ` +
    'spread between the busiest and the idlest process (how fairly the server served them).',
  async run() {
    return withCluster(async (config) => {
      const table = [
        ['contender', 'grants/s (all processes)', 'per process min–max', 'rate vs pgCoordinator'],
      ];
      let ours = 0;
      for (const c of contenders) {
        const held = await contend(config, c.name, `bench-contended-${c.name}`);
        const total = held.reduce((a, b) => a + b, 0);
        const rate = total / (DURATION_MS / 1000);
        if (c.name === 'pgCoordinator') ours = rate;
        table.push([
          c.name,
          fmtInt(rate),
          `${fmtInt(Math.min(...held))}–${fmtInt(Math.max(...held))}`,
          fmtRatio(rate / ours),
        ]);
      }
      return {
        table,
        notes: [
          'The critical section is empty: this is the lock hand-over rate, the upper bound of cluster-serialised writes.',
          'The machine has 2 cores shared by the server and the 4 processes.',
        ],
      };
    });
  },
};

export const sections: Section[] = [uncontended, contended];
