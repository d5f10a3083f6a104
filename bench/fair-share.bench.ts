/**
 * Fair share (SPEC §8, issue 9): how long a light caller waits beside a heavy one that keeps a
 * backlog queued, through the guard with per-caller keys, the guard without keys, and p-queue
 * (which has no keys). Real time, real timers, a fake engine whose calls take about 1 ms.
 * Run through `npm run bench -- fair`; see bench/run.ts.
 */
import PQueue from 'p-queue';
import { EngineGuard } from '../src/index.js';
import { FakeEngine, FakeEngineFactory } from '../src/testing/index.js';
import { type Check, fmtInt, fmtMs, median, percentile, type Section } from './harness.js';

const POOL = 2;
/** Reads the heavy caller keeps queued beyond the ones running. */
const BACKLOG = 500;
/** Duration asked of each fake engine call, ms. */
const OP_MS = 1;
/** How long the light caller loops, per contender, ms. */
const RUN_MS = 2_000;
/** Runs per contender, in rotated order; figures are medians over them. */
const ROUNDS = 3;
/** Sequential calls timed to learn what one op really costs (timers have ~1 ms granularity). */
const OP_SAMPLES = 200;

type Caller = 'heavy' | 'light';
/** Runs one op for `caller`; `started` is called when the op gets its turn. */
type RunOp = (caller: Caller, started: () => void) => Promise<unknown>;

interface Limiter {
  run: RunOp;
  close(): Promise<void>;
}

interface Contender {
  name: string;
  open(): Limiter;
}

function guardContender(keyed: boolean): Contender {
  return {
    name: keyed ? `guard, pool ${POOL}, \`key\` per caller` : `guard, pool ${POOL}, no keys`,
    open() {
      const factory = new FakeEngineFactory();
      const guard = new EngineGuard<FakeEngine>(
        factory.guardOptions({ pool: POOL, liveness: { interval: 5_000 } }),
      );
      return {
        run: (caller, started) =>
          guard.read(
            (engine) => {
              started();
              return engine.call(caller, { duration: OP_MS });
            },
            keyed ? { key: caller } : undefined,
          ),
        close: () => guard.close(),
      };
    },
  };
}

const CONTENDERS: Contender[] = [
  guardContender(true),
  guardContender(false),
  {
    name: `p-queue, concurrency ${POOL} (no keys)`,
    open() {
      const queue = new PQueue({ concurrency: POOL });
      const engines = Array.from({ length: POOL }, () => new FakeEngine());
      let next = 0;
      return {
        run: (caller, started) =>
          queue.add(() => {
            started();
            return engines[next++ % POOL]!.call(caller, { duration: OP_MS });
          }),
        close: async () => {
          await queue.onIdle();
          await Promise.all(engines.map((engine) => engine.close()));
        },
      };
    },
  },
];

interface Outcome {
  /** The light caller's wait per op, from request to start, ms. */
  lightWaits: number[];
  /** The heavy caller's ops completed per second during the light caller's loop. */
  heavyRate: number;
  /** Both callers' ops completed per second in that window. */
  totalRate: number;
  /** Most heavy ops queued or running at once. */
  heavyOutstanding: number;
}

/** What the table shows of one run. */
interface Figures {
  reads: number;
  p50: number;
  p99: number;
  max: number;
  heavyRate: number;
  totalRate: number;
  outstanding: number;
}

function figures(outcome: Outcome): Figures {
  const sorted = [...outcome.lightWaits].sort((a, b) => a - b);
  return {
    reads: sorted.length,
    p50: percentile(sorted, 0.5),
    p99: percentile(sorted, 0.99),
    max: sorted[sorted.length - 1]!,
    heavyRate: outcome.heavyRate,
    totalRate: outcome.totalRate,
    outstanding: outcome.heavyOutstanding,
  };
}

/** Each figure's median over the rounds. */
function medianFigures(runs: Figures[]): Figures {
  const of = (pick: (f: Figures) => number) => median(runs.map(pick));
  return {
    reads: of((f) => f.reads),
    p50: of((f) => f.p50),
    p99: of((f) => f.p99),
    max: of((f) => f.max),
    heavyRate: of((f) => f.heavyRate),
    totalRate: of((f) => f.totalRate),
    outstanding: of((f) => f.outstanding),
  };
}

async function scenario(contender: Contender): Promise<Outcome> {
  const { run, close } = contender.open();
  try {
    // Open the handles first, so no wait below includes a connect.
    await Promise.all(Array.from({ length: POOL }, () => run('heavy', () => {})));
    let stop = false;
    let outstanding = 0;
    let most = 0;
    let done = 0;
    let drained: () => void = () => {};
    const allDone = new Promise<void>((resolve) => {
      drained = resolve;
    });
    const heavy = (): void => {
      outstanding++;
      most = Math.max(most, outstanding);
      run('heavy', () => {}).then(
        () => {
          outstanding--;
          done++;
          if (!stop) heavy();
          else if (outstanding === 0) drained();
        },
        (error: unknown) => {
          throw error;
        },
      );
    };
    for (let i = 0; i < BACKLOG + POOL; i++) heavy();
    const t0 = performance.now();
    const doneAtStart = done;
    const lightWaits: number[] = [];
    while (performance.now() - t0 < RUN_MS) {
      const requested = performance.now();
      let startedAt = 0;
      await run('light', () => {
        startedAt = performance.now();
      });
      lightWaits.push(startedAt - requested);
    }
    const seconds = (performance.now() - t0) / 1_000;
    const heavyRate = (done - doneAtStart) / seconds;
    stop = true;
    await allDone;
    return {
      lightWaits,
      heavyRate,
      totalRate: heavyRate + lightWaits.length / seconds,
      heavyOutstanding: most,
    };
  } finally {
    await close();
  }
}

/** Mean ms of one sequential fake engine call of OP_MS. */
async function opCost(): Promise<number> {
  const engine = new FakeEngine();
  const t0 = performance.now();
  for (let i = 0; i < OP_SAMPLES; i++) await engine.call(i, { duration: OP_MS });
  await engine.close();
  return (performance.now() - t0) / OP_SAMPLES;
}

const fairShareSection: Section = {
  title: 'Fair share: a light caller beside a heavy one',
  description:
    `A heavy caller keeps ${fmtInt(BACKLOG)} reads queued (each completion submits another) ` +
    `while a light caller loops on one read at a time for ${fmtInt(RUN_MS)} ms; every read is ` +
    `one fake engine call of ${OP_MS} ms. Limiters: the guard (pool ${POOL}) with \`key\` set ` +
    `to the caller, the same guard without keys, and p-queue with concurrency ${POOL} over ` +
    `${POOL} fake engines. Figures: the light caller's wait from request to start (p50, p99, ` +
    'max), and the throughput of the heavy caller and of both in the same window. Per ' +
    `contender, ${ROUNDS} rounds in rotated order, each figure the median of its rounds; an ` +
    "op's real cost (timers have about 1 ms granularity) is measured first.",
  async run() {
    const op = await opCost();
    const table: string[][] = [
      [
        'Contender',
        'light: reads',
        'light: p50 wait',
        'p99 wait',
        'max wait',
        'heavy: reads/s',
        'both: reads/s',
        'heavy: most outstanding',
      ],
    ];
    const rounds: Figures[][] = CONTENDERS.map(() => []);
    for (let round = 0; round < ROUNDS; round++) {
      // Rotated, so that no contender always runs first (or last) on a noisy machine.
      for (let i = 0; i < CONTENDERS.length; i++) {
        const index = (i + round) % CONTENDERS.length;
        rounds[index]!.push(figures(await scenario(CONTENDERS[index]!)));
      }
    }
    const medians = rounds.map(medianFigures);
    for (const [index, contender] of CONTENDERS.entries()) {
      const m = medians[index]!;
      table.push([
        contender.name,
        fmtInt(m.reads),
        fmtMs(m.p50),
        fmtMs(m.p99),
        fmtMs(m.max),
        fmtInt(m.heavyRate),
        fmtInt(m.totalRate),
        fmtInt(m.outstanding),
      ]);
    }
    const [keyed, unkeyed, pQueue] = medians as [Figures, Figures, Figures];
    const bound = 4 * op;
    const checks: Check[] = [
      {
        name: `guard with keys: light caller's p99 wait (one op = ${fmtMs(op)})`,
        target: `<= 4 ops (${fmtMs(bound)})`,
        actual: fmtMs(keyed.p99),
        pass: keyed.p99 <= bound,
      },
      {
        name: "guard with keys vs p-queue: light caller's p99 wait",
        target: '>= 10x lower',
        actual: `${(pQueue.p99 / keyed.p99).toFixed(0)}x lower`,
        pass: pQueue.p99 >= 10 * keyed.p99,
      },
      {
        name: 'guard with keys vs without: reads/s of both callers together',
        target: '>= 0.9x',
        actual: `${(keyed.totalRate / unkeyed.totalRate).toFixed(2)}x`,
        pass: keyed.totalRate >= 0.9 * unkeyed.totalRate,
      },
    ];
    return {
      table,
      checks,
      notes: [
        `One op (a sequential ${OP_MS} ms fake call) took ${fmtMs(op)} on average in this run. ` +
          `With keys, the light read waits for at most one heavy read per handle to end (the ` +
          `heavy key's turn may come first), so about one op; without keys, and with p-queue, ` +
          `it waits behind the whole backlog: about ${fmtInt(BACKLOG)} ÷ ${POOL} ops.`,
        'Fair share reorders the queue and never idles a handle, so the two callers together ' +
          "keep the throughput; the heavy caller's own share drops by what the light one now " +
          'gets (one read at a time: up to one handle in two).',
      ],
    };
  },
};

export const sections: Section[] = [fairShareSection];
