/**
 * The reader/writer convoy (issue 11), side by side in one process: how long short reads wait
 * behind a write that itself waits for a long read, and how long a write waits under a steady
 * stream of short reads, for RWLock's default policy, RWLock with strict FIFO phases,
 * async-rwlock (reader-preferring) and async-mutex (everything serial). Real time, real timers.
 * Run through `npm run bench -- convoy`; see bench/run.ts.
 */
import { Mutex } from 'async-mutex';
import { RWLock as AsyncRWLock } from 'async-rwlock';
import { DEFAULT_BYPASS_AFTER, RWLock } from '../src/index.js';
import { type Check, fmtInt, fmtMs, type Section } from './harness.js';

/** What each contender offers: run `body` under a shared or an exclusive hold. */
type RunUnder = (mode: 'read' | 'write', body: () => Promise<void>) => Promise<void>;

/** The contenders, as data: a name and a factory for a fresh lock per trial. */
const CONTENDERS: { name: string; make: () => RunUnder }[] = [
  {
    name: `RWLock, default (\`no-convoy\`, bypassAfter ${DEFAULT_BYPASS_AFTER} ms)`,
    make: () => {
      const lock = new RWLock();
      return (mode, body) => (mode === 'read' ? lock.read(body) : lock.write(body));
    },
  },
  {
    name: "RWLock `fairness: 'fifo'` (strict FIFO phases)",
    make: () => {
      const lock = new RWLock({ fairness: 'fifo' });
      return (mode, body) => (mode === 'read' ? lock.read(body) : lock.write(body));
    },
  },
  {
    name: 'async-rwlock (reader-preferring)',
    make: () => {
      const lock = new AsyncRWLock();
      return async (mode, body) => {
        await (mode === 'read' ? lock.readLock() : lock.writeLock());
        try {
          await body();
        } finally {
          lock.unlock();
        }
      };
    },
  },
  {
    name: 'async-mutex `runExclusive` (everything serial)',
    make: () => {
      const mutex = new Mutex();
      return (_mode, body) => mutex.runExclusive(body);
    },
  },
];

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Nearest-rank percentile of a non-empty list. */
function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

/** Runs holds on one contender, timing each wait and counting exclusion violations. */
function tracker(runUnder: RunUnder) {
  let readers = 0;
  let writers = 0;
  let overlaps = 0;
  const hold = async (mode: 'read' | 'write', ms: number): Promise<number> => {
    const requested = performance.now();
    let waited = 0;
    await runUnder(mode, async () => {
      waited = performance.now() - requested;
      if (mode === 'write' ? readers + writers > 0 : writers > 0) overlaps++;
      if (mode === 'write') writers++;
      else readers++;
      await sleep(ms);
      if (mode === 'write') writers--;
      else readers--;
    });
    return waited;
  };
  return { hold, overlaps: () => overlaps };
}

// ---------------------------------------------------------------------------------------------
// A. Short reads behind a write that waits for a long read
// ---------------------------------------------------------------------------------------------

const LONG_READ_MS = 2_000;
const WRITE_AT_MS = 50;
const WRITE_MS = 10;
const SHORT_FROM_MS = 60;
const SHORT_EVERY_MS = 20;
const SHORT_MS = 10;

interface ConvoyResult {
  shortWaits: number[];
  writeWait: number;
  overlaps: number;
}

async function convoy(runUnder: RunUnder): Promise<ConvoyResult> {
  const { hold, overlaps } = tracker(runUnder);
  const long = hold('read', LONG_READ_MS);
  await sleep(WRITE_AT_MS);
  const write = hold('write', WRITE_MS);
  await sleep(SHORT_FROM_MS - WRITE_AT_MS);
  const shorts: Promise<number>[] = [];
  // Open loop: short reads keep arriving at a fixed rate, whatever happens to the earlier ones.
  for (let at = SHORT_FROM_MS; at < LONG_READ_MS; at += SHORT_EVERY_MS) {
    shorts.push(hold('read', SHORT_MS));
    await sleep(SHORT_EVERY_MS);
  }
  const [shortWaits, writeWait] = await Promise.all([Promise.all(shorts), write, long]);
  return { shortWaits, writeWait, overlaps: overlaps() };
}

// ---------------------------------------------------------------------------------------------
// B. A write under a steady stream of short reads
// ---------------------------------------------------------------------------------------------

const STREAM_READERS = 3;
const STREAM_READ_MS = 15;
const STREAM_WRITE_AT_MS = 200;
/** The readers stop this long after the write was requested, if it has not entered by then. */
const STARVATION_CAP_MS = 2_000;
const STREAM_TRIALS = 3;

async function writerUnderStream(runUnder: RunUnder): Promise<{ wait: number; overlaps: number }> {
  const { hold, overlaps } = tracker(runUnder);
  let stop = false;
  const loops = Array.from({ length: STREAM_READERS }, async (_, i) => {
    await sleep(i * Math.ceil(STREAM_READ_MS / STREAM_READERS));
    while (!stop) await hold('read', STREAM_READ_MS);
  });
  await sleep(STREAM_WRITE_AT_MS);
  const cap = setTimeout(() => {
    stop = true;
  }, STARVATION_CAP_MS);
  const wait = await hold('write', 1);
  clearTimeout(cap);
  stop = true;
  await Promise.all(loops);
  return { wait, overlaps: overlaps() };
}

// ---------------------------------------------------------------------------------------------

const convoySection: Section = {
  title: 'Convoy: short reads behind a write that waits for a long read',
  description:
    `A read of ${fmtInt(LONG_READ_MS)} ms starts at 0; a write (${WRITE_MS} ms) is requested at ` +
    `${WRITE_AT_MS} ms; from ${SHORT_FROM_MS} ms on, a short read (${SHORT_MS} ms) arrives every ` +
    `${SHORT_EVERY_MS} ms until the long read ends (open loop: arrivals do not wait for earlier ` +
    'reads). Figures: wait from request to grant, per short read (p50, p99, max) and for the ' +
    `write. Then, separately, ${STREAM_READERS} readers loop on ${STREAM_READ_MS} ms reads and a ` +
    `write (1 ms) is requested at ${STREAM_WRITE_AT_MS} ms: its wait, over ${STREAM_TRIALS} ` +
    `trials; the readers stop ${fmtInt(STARVATION_CAP_MS)} ms after it was requested if it has ` +
    'not entered by then (a starved writer). Real time; every entry is checked for exclusion.',
  async run() {
    const table: string[][] = [
      [
        'Contender',
        'short reads: p50 wait',
        'p99 wait',
        'max wait',
        'the write: wait',
        'write under a read stream: median wait',
        'max wait',
        'overlaps seen',
      ],
    ];
    const checks: Check[] = [];
    let defaultConvoy: ConvoyResult | undefined;
    let defaultStreamMax = 0;
    let overlapsSeen = 0;
    for (const [index, contender] of CONTENDERS.entries()) {
      const a = await convoy(contender.make());
      const streamWaits: number[] = [];
      let overlaps = a.overlaps;
      for (let trial = 0; trial < STREAM_TRIALS; trial++) {
        const b = await writerUnderStream(contender.make());
        streamWaits.push(b.wait);
        overlaps += b.overlaps;
      }
      overlapsSeen += overlaps;
      const streamMax = Math.max(...streamWaits);
      const starved = (ms: number) =>
        ms >= STARVATION_CAP_MS ? `${fmtMs(ms)} (starved until the readers stopped)` : fmtMs(ms);
      table.push([
        contender.name,
        fmtMs(percentile(a.shortWaits, 50)),
        fmtMs(percentile(a.shortWaits, 99)),
        fmtMs(Math.max(...a.shortWaits)),
        fmtMs(a.writeWait),
        starved(percentile(streamWaits, 50)),
        starved(streamMax),
        fmtInt(overlaps),
      ]);
      if (index === 0) {
        defaultConvoy = a;
        defaultStreamMax = streamMax;
      }
    }
    const p99 = percentile(defaultConvoy!.shortWaits, 99);
    checks.push(
      {
        name: 'default policy: p99 wait of a short read behind a write waiting for a long read',
        target: '<= 500 ms',
        actual: fmtMs(p99),
        pass: p99 <= 500,
      },
      {
        name: 'default policy: a write under 3 readers looping 15 ms reads (max of the trials)',
        target: '<= 500 ms',
        actual: fmtMs(defaultStreamMax),
        pass: defaultStreamMax <= 500,
      },
      {
        name: 'no writer overlapped anyone, no reader met a writer (all contenders)',
        target: '0 overlaps',
        actual: `${fmtInt(overlapsSeen)} overlaps`,
        pass: overlapsSeen === 0,
      },
    );
    return {
      table,
      checks,
      notes: [
        `Default policy: the short reads that arrive during the writer's patience (the first ` +
          `${DEFAULT_BYPASS_AFTER} ms of its wait) wait for the rest of it; later ones pass the ` +
          'writer at once, and the writer enters when the long read and the reads that passed ' +
          'it have ended.',
        "`fairness: 'fifo'` and async-mutex make every short read wait for the long read (the " +
          'convoy); async-rwlock never holds a reader back, and so starves the writer under a ' +
          'steady stream of reads.',
      ],
    };
  },
};

export const sections: Section[] = [convoySection];
