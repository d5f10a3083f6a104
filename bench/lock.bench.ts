/**
 * RWLock benchmarks, each side by side with its peers (async-mutex, p-queue, async-rwlock) in one
 * process. Run through `npm run bench`; see bench/run.ts.
 */
import { getEventListeners, setMaxListeners } from 'node:events';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Mutex } from 'async-mutex';
import { RWLock as AsyncRWLock } from 'async-rwlock';
import PQueue from 'p-queue';
import { type Lease, RWLock } from '../src/index.js';
import { runHolding } from '../src/internal/context.js';
import {
  BENCH_IMPORT,
  type Check,
  type Contender,
  compareAsync,
  createRng,
  deferred,
  fmtBytes,
  fmtInt,
  fmtMs,
  fmtNs,
  fmtRatio,
  fmtSpread,
  fullGc,
  heapUsedAfterGc,
  median,
  nextTurn,
  nowNs,
  runInFreshProcess,
  type Section,
  shuffleInPlace,
  TIMING_LOOP_SOURCE,
} from './harness.js';

const rootDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/**
 * async-mutex ships two builds: `import` loads `index.mjs` (ES2015 generators under tslib's
 * `__awaiter`), `require` loads `lib/` (ES5 state machines). They run at different speeds, so both
 * are measured.
 */
const { Mutex: MutexCjs } = createRequire(import.meta.url)(
  'async-mutex',
) as typeof import('async-mutex');

// ---------------------------------------------------------------------------------------------
// 1. Uncontended
// ---------------------------------------------------------------------------------------------

const UNCONTENDED_ITERATIONS = 50_000;
const UNCONTENDED_WARMUP = 100_000;
const UNCONTENDED_ROUNDS = 9;

/**
 * Bare await and runExclusive in a fresh process where no AsyncLocalStorage was ever entered.
 * On Node 20, the first `AsyncLocalStorage.run()` installs promise hooks for the whole process
 * (RWLock uses one for re-entrancy), which makes every later promise dearer, for everyone.
 */
async function measureWithoutAls(): Promise<{ bare: number; esm: number; cjs: number }> {
  const code = `
    import { createRequire } from 'node:module';
    import { Mutex } from 'async-mutex';
    const { Mutex: MutexCjs } = createRequire(process.cwd() + '/')('async-mutex');
    const fn = async () => {};
    const esm = new Mutex();
    const cjs = new MutexCjs();
    const contenders = [() => fn(), () => esm.runExclusive(fn), () => cjs.runExclusive(fn)];
    const makeLoop = () => new Function(${JSON.stringify(`return ${TIMING_LOOP_SOURCE};`)})();
    const loops = contenders.map(makeLoop);
    for (const [i, f] of contenders.entries()) await loops[i](f, ${UNCONTENDED_WARMUP});
    const samples = contenders.map(() => []);
    for (let r = 0; r < ${UNCONTENDED_ROUNDS}; r++) {
      const order = contenders.map((_, i) => (i + r) % contenders.length);
      for (const i of order) samples[i].push(await loops[i](contenders[i], ${UNCONTENDED_ITERATIONS}));
    }
    const med = (a) => [...a].sort((x, y) => x - y)[a.length >> 1];
    console.log(JSON.stringify(samples.map(med)));
  `;
  const [bare, esm, cjs] = await runInFreshProcess<[number, number, number]>(code, ['--expose-gc']);
  return { bare, esm, cjs };
}

/** A child's `{ "<locks used>": figure }` as a map keyed by the number of locks. */
function byLockCount(parsed: Record<string, number>): Map<number, number> {
  return new Map(Object.entries(parsed).map(([k, v]) => [Number(k), v]));
}

/** How many RWLocks have run `read(fn)` when section 1 times a bare await in a child. */
const PROMISE_TAX_LOCKS = [0, 1, 10, 100] as const;

/**
 * `await fn()` in a fresh process after exactly k RWLocks (then dropped) have run `read(fn)`, for
 * each k of {@link PROMISE_TAX_LOCKS}: what the per-lock AsyncLocalStorage costs every promise.
 */
async function awaitCostByLocksUsed(): Promise<Map<number, number>> {
  const srcUrl = pathToFileURL(path.join(rootDir, 'src', 'index.ts')).href;
  const code = `
    const { RWLock } = await import(${JSON.stringify(srcUrl)});
    const fn = async () => {};
    const result = {};
    let used = 0;
    for (const k of ${JSON.stringify(PROMISE_TAX_LOCKS)}) {
      for (; used < k; used++) await new RWLock().read(() => {});
      for (let i = 0; i < 20000; i++) await fn();
      const loop = ${TIMING_LOOP_SOURCE};
      const samples = [];
      for (let round = 0; round < 5; round++) samples.push(await loop(fn, 10000));
      result[k] = samples.sort((a, b) => a - b)[2];
    }
    console.log(JSON.stringify(result));
  `;
  return byLockCount(await runInFreshProcess(code, ['--import', BENCH_IMPORT]));
}

const ESM_MUTEX = 'async-mutex `Mutex.runExclusive(fn)` (ESM build: `import`)';
const CJS_MUTEX = 'async-mutex `Mutex.runExclusive(fn)` (CJS build: `require`)';
const BARE = 'bare `await fn()`';
const ENTER =
  'part: entering an async context, `runHolding(owner, value, fn)` (`AsyncLocalStorage#run`)';
const SETTLE =
  'part: `fn().then(onFulfilled, onRejected)` (how `read(fn)` learns that `fn` settled)';
const FLOOR = 'parts together: `runHolding(...).then(...)`, the floor of a re-entrant `read(fn)`';
const READ = 'RWLock `read(fn)`';
const TRY_READ = 'RWLock `tryAcquireRead()`, `await fn()`, `release()`';

const uncontended: Section = {
  title: '1. Uncontended acquire/release',
  description:
    'One caller, nothing queued: the cost of taking and releasing the lock around a trivial ' +
    '`fn = async () => {}`. Each contender runs ' +
    `${fmtInt(UNCONTENDED_ITERATIONS)} sequential awaited calls per round, ` +
    `${UNCONTENDED_ROUNDS} rounds after ${fmtInt(UNCONTENDED_WARMUP)} warm-up calls, contenders ` +
    'rotated each round, each with its own copy of the timing loop; figure = median round, in ' +
    'CPU time of the process (`process.cpuUsage`) per call, which other processes on a shared ' +
    'machine delay but do not inflate.',
  async run() {
    const fn = async () => {};
    const lock = new RWLock();
    const mutex = new Mutex();
    const mutexCjs = new MutexCjs();
    const queue = new PQueue({ concurrency: 1 });
    const arw = new AsyncRWLock();
    // The acquire / `await fn()` / release rows are written out one by one rather than made by a
    // shared wrapper: one function literal would collect the type feedback of every lock it
    // wraps and turn polymorphic, adding its own cost to the tens of ns measured here.
    // The parts of `read(fn)` that are not the lock's own: the package's one AsyncLocalStorage
    // (no new one: on Node 20/22 each would tax every promise from here on) and the reaction.
    const owner = {};
    const hold = { released: false };
    const settled = (value: unknown): unknown => value;
    const failed = (error: unknown): never => {
      throw error;
    };
    const contenders: Contender[] = [
      { name: BARE, fn: () => fn() },
      { name: ENTER, fn: () => runHolding(owner, hold, fn) },
      { name: SETTLE, fn: () => fn().then(settled, failed) },
      { name: FLOOR, fn: () => runHolding(owner, hold, fn).then(settled, failed) },
      { name: ESM_MUTEX, fn: () => mutex.runExclusive(fn) },
      { name: CJS_MUTEX, fn: () => mutexCjs.runExclusive(fn) },
      { name: 'p-queue (concurrency 1) `queue.add(fn)`', fn: () => queue.add(fn) },
      {
        name: 'async-rwlock `readLock()`, `await fn()`, `unlock()`',
        fn: async () => {
          await arw.readLock();
          try {
            await fn();
          } finally {
            arw.unlock();
          }
        },
      },
      {
        name: 'async-rwlock `writeLock()`, `await fn()`, `unlock()`',
        fn: async () => {
          await arw.writeLock();
          try {
            await fn();
          } finally {
            arw.unlock();
          }
        },
      },
      { name: READ, fn: () => lock.read(fn) },
      { name: 'RWLock `write(fn)`', fn: () => lock.write(fn) },
      {
        name: 'RWLock `acquireRead()`, `await fn()`, `release()`',
        fn: async () => {
          const lease = await lock.acquireRead();
          try {
            await fn();
          } finally {
            lease.release();
          }
        },
      },
      {
        name: TRY_READ,
        fn: async () => {
          const lease = lock.tryAcquireRead()!;
          try {
            await fn();
          } finally {
            lease.release();
          }
        },
      },
    ];
    const results = await compareAsync(contenders, {
      iterations: UNCONTENDED_ITERATIONS,
      warmup: UNCONTENDED_WARMUP,
      rounds: UNCONTENDED_ROUNDS,
    });
    const fresh = await measureWithoutAls();
    const tax = await awaitCostByLocksUsed();
    const byName = new Map(results.map((r) => [r.name, r.nsPerOp]));
    const base = byName.get(ESM_MUTEX)!;
    const baseCjs = byName.get(CJS_MUTEX)!;
    const read = byName.get(READ)!;
    const bare = byName.get(BARE)!;
    const enter = byName.get(ENTER)!;
    const settle = byName.get(SETTLE)!;
    const floor = byName.get(FLOOR)!;
    const freshRow = (name: string, ns: number) => [name, fmtNs(ns), '', fmtInt(1e9 / ns), ''];
    const table = [
      [
        'Contender',
        'CPU ns/op (median)',
        'rounds min–max',
        'ops per CPU s',
        'runExclusive (ESM) ÷ this',
      ],
      ...results.map((r) => [
        r.name,
        fmtNs(r.nsPerOp),
        fmtSpread(r.roundsNsPerOp),
        fmtInt(1e9 / r.nsPerOp),
        fmtRatio(base / r.nsPerOp),
      ]),
      freshRow('bare `await fn()`, fresh process without AsyncLocalStorage', fresh.bare),
      freshRow('`runExclusive(fn)` ESM build, fresh process without AsyncLocalStorage', fresh.esm),
      freshRow('`runExclusive(fn)` CJS build, fresh process without AsyncLocalStorage', fresh.cjs),
      ...[...tax].map(([k, ns]) =>
        freshRow(
          `bare \`await fn()\`, fresh process, after ${k} RWLock${k === 1 ? '' : 's'} ran \`read(fn)\``,
          ns,
        ),
      ),
    ];
    const checks: Check[] = [
      {
        name: 'RWLock `read(fn)` vs `Mutex.runExclusive(fn)`, async-mutex as `import` loads it',
        target: '>= 5x faster',
        actual: `${fmtRatio(base / read)} faster (${fmtNs(read)} vs ${fmtNs(base)})`,
        pass: base / read >= 5,
      },
      {
        name: 'RWLock `read(fn)` vs `Mutex.runExclusive(fn)`, async-mutex as `require` loads it',
        target: '>= 5x faster',
        actual: `${fmtRatio(baseCjs / read)} faster (${fmtNs(read)} vs ${fmtNs(baseCjs)})`,
        pass: baseCjs / read >= 5,
      },
      {
        name: 'RWLock `read(fn)` vs a bare `await fn()` (the aim on Node 24; see the notes)',
        target: '<= 4x',
        actual: `${fmtRatio(read / bare)} (${fmtNs(read)} vs ${fmtNs(bare)})`,
        pass: read / bare <= 4,
      },
      {
        name: "RWLock `read(fn)` vs the floor of a re-entrant `read(fn)` (what the lock's own code adds)",
        target: '<= 1.5x',
        actual: `${fmtRatio(read / floor)} (${fmtNs(read)} vs ${fmtNs(floor)})`,
        pass: read / floor <= 1.5,
      },
    ];
    return {
      table,
      checks,
      notes: [
        '"runExclusive (ESM) ÷ this" > 1 means faster than async-mutex `runExclusive` as an ' +
          'ES module `import` loads it (`index.mjs`, ES2015 generators under `__awaiter`). ' +
          '`require` loads its ES5 build (`lib/`), which is markedly faster here; both targets ' +
          'are listed.',
        'The rows above the "fresh process" ones run in one process in which RWLock has entered its ' +
          'AsyncLocalStorage (used for re-entrancy). On Node 20 that installs promise hooks ' +
          'process-wide, so every promise in the process gets dearer, for every contender. The ' +
          'next three rows come from a fresh process where that never happened: bare await ' +
          `${fmtNs(fresh.bare)} there vs ${fmtNs(byName.get('bare `await fn()`')!)} here; ` +
          `runExclusive ${fmtNs(fresh.esm)} vs ${fmtNs(base)} (ESM), ` +
          `${fmtNs(fresh.cjs)} vs ${fmtNs(baseCjs)} (CJS).`,
        `The last ${PROMISE_TAX_LOCKS.length} rows time a bare \`await fn()\` in a fresh process ` +
          'after that many RWLocks (dropped at once) have run `read(fn)`: each lock owns an ' +
          'AsyncLocalStorage that stays registered with async_hooks for the life of the process, ' +
          'and every promise created anywhere pays for each of them.',
        'async-rwlock lets a reader in whenever readers hold the lock, even past queued writers ' +
          '(see section 2); it has no abort and a global `unlock()` (no per-holder lease).',
        `Where the ${fmtNs(read)} of RWLock \`read(fn)\` go: ${fmtNs(bare)} are the bare ` +
          `\`await fn()\` itself; entering an async context in which \`fn\` holds the lease ` +
          `(re-entrancy: a nested call must find it, synchronously or after an \`await\`) adds ` +
          `${fmtNs(enter - bare)} (the "entering" row less the bare await); learning that ` +
          `\`fn\`'s promise settled, to release, adds ${fmtNs(settle - bare)} (one reaction and ` +
          `its promise); together ${fmtNs(floor)}, the floor of any lock that is re-entrant through ` +
          `AsyncLocalStorage. The remaining ${fmtNs(read - floor)} are the lock's own: checking ` +
          'the options and the context for a hold to join, granting (`tryRead`, the lease object), ' +
          'and the release (the reader count, the writer-patience epoch, a drain that finds nobody ' +
          'queued).',
        `Entering the context is ${fmtRatio(enter / bare)} a bare await on its own here. On Node ` +
          '24 (and 22 with `--experimental-async-context-frame`), `AsyncLocalStorage#run` makes a ' +
          'new context frame (a copy of the current one) to enter and another to restore the ' +
          "caller's, while promises carry the frame for free; on Node 20 and 22 `run` costs " +
          'little, but every promise in the process pays the promise hooks (the "fresh process" ' +
          'rows). The lock without the context (the `tryAcquireRead()` row, which a nested call ' +
          `cannot join) costs ${fmtRatio(byName.get(TRY_READ)! / bare)} a bare await. So on a ` +
          'release where entering a context alone costs more than about 3× a bare await, `read(fn)` ' +
          'within 4× of one is out of reach for a lock that stays re-entrant.',
      ],
    };
  },
};

// ---------------------------------------------------------------------------------------------
// 2. Contended: 1,000 readers with writers interleaved
// ---------------------------------------------------------------------------------------------

const READERS = 1_000;
const WRITER_EVERY = 10; // a writer after every 10th reader
const CONTENDED_ROUNDS = 31;

interface Request {
  index: number;
  writer: boolean;
}

const requests: Request[] = (() => {
  const list: Request[] = [];
  for (let r = 0; r < READERS; r++) {
    list.push({ index: list.length, writer: false });
    if ((r + 1) % WRITER_EVERY === 0) list.push({ index: list.length, writer: true });
  }
  return list;
})();

type Hold = () => Promise<void>;
type RunUnder = (writer: boolean, body: () => Promise<void>) => Promise<void>;

interface BatchStats {
  ns: number;
  /** A writer entered while anyone else held, or a reader while a writer held. */
  violations: number;
  /** Readers that entered while a writer that arrived earlier was still waiting. */
  readersOvertaking: number;
  /** Writers that entered while a reader that arrived earlier was still waiting. */
  writersOvertaking: number;
  /** Groups admitted one after another: each writer, and each group of readers holding together. */
  phases: number;
}

/** Issues every request at once, then waits for all; counts overlaps and overtakes as it goes. */
async function runBatch(runUnder: RunUnder, hold: Hold): Promise<BatchStats> {
  const writerIdx = requests.filter((r) => r.writer).map((r) => r.index);
  const readerIdx = requests.filter((r) => !r.writer).map((r) => r.index);
  const entered = new Uint8Array(requests.length);
  let nextWriter = 0; // position in writerIdx of the earliest writer not yet entered
  let nextReader = 0;
  let activeReaders = 0;
  let activeWriters = 0;
  const stats: BatchStats = {
    ns: 0,
    violations: 0,
    readersOvertaking: 0,
    writersOvertaking: 0,
    phases: 0,
  };
  const enter = (req: Request) => {
    entered[req.index] = 1;
    while (nextWriter < writerIdx.length && entered[writerIdx[nextWriter]!]) nextWriter++;
    while (nextReader < readerIdx.length && entered[readerIdx[nextReader]!]) nextReader++;
    if (req.writer) {
      if (activeReaders > 0 || activeWriters > 0) stats.violations++;
      if (nextReader < readerIdx.length && readerIdx[nextReader]! < req.index) {
        stats.writersOvertaking++;
      }
      activeWriters++;
      stats.phases++;
    } else {
      if (activeWriters > 0) stats.violations++;
      if (nextWriter < writerIdx.length && writerIdx[nextWriter]! < req.index) {
        stats.readersOvertaking++;
      }
      if (activeReaders === 0) stats.phases++;
      activeReaders++;
    }
  };
  const start = nowNs();
  await Promise.all(
    requests.map((req) =>
      runUnder(req.writer, async () => {
        enter(req);
        await hold();
        if (req.writer) activeWriters--;
        else activeReaders--;
      }),
    ),
  );
  stats.ns = nowNs() - start;
  return stats;
}

const contended: Section = {
  title: '2. 1,000 concurrent readers with writers interleaved',
  description:
    `${fmtInt(READERS)} readers and ${fmtInt(READERS / WRITER_EVERY)} writers (a writer after every ` +
    `${WRITER_EVERY}th reader, ${fmtInt(requests.length)} requests) are issued at once; each ` +
    'holder yields once (a microtask, or a macrotask via `setImmediate`) before leaving. Figure = ' +
    `median time for the whole batch over ${CONTENDED_ROUNDS} batches, contenders rotated; every ` +
    'entry is checked (a writer must be alone; a reader must not meet a writer).',
  async run() {
    const lock = new RWLock();
    const arw = new AsyncRWLock();
    const mutex = new Mutex();
    const rwlock = {
      name: 'RWLock `read(fn)` / `write(fn)`',
      runUnder: (writer: boolean, body: () => Promise<void>) =>
        writer ? lock.write(body) : lock.read(body),
    };
    const mutexOnly = {
      name: 'async-mutex `runExclusive` (readers exclusive too)',
      runUnder: (_writer: boolean, body: () => Promise<void>) => mutex.runExclusive(body),
    };
    const contenders: { name: string; runUnder: RunUnder }[] = [
      rwlock,
      {
        name: 'async-rwlock `readLock`/`writeLock` + `unlock`',
        runUnder: async (writer, body) => {
          await (writer ? arw.writeLock() : arw.readLock());
          try {
            await body();
          } finally {
            arw.unlock();
          }
        },
      },
      mutexOnly,
    ];
    const holds: { name: string; hold: Hold }[] = [
      { name: 'microtask', hold: () => Promise.resolve() },
      { name: 'setImmediate', hold: nextTurn },
    ];
    const table: string[][] = [
      [
        'Contender',
        'holder yields',
        'batch (median)',
        'ops/s',
        'vs async-mutex',
        'phases',
        'readers overtaking a queued writer',
        'writers overtaking a queued reader',
        'overlaps seen',
      ],
    ];
    const checks: Check[] = [];
    let totalViolations = 0;
    let rwlockOvertakes = 0;
    for (const { name: holdName, hold } of holds) {
      for (let w = 0; w < 3; w++) {
        for (const c of contenders) await runBatch(c.runUnder, hold); // warm-up
      }
      const samples = contenders.map(() => [] as BatchStats[]);
      for (let round = 0; round < CONTENDED_ROUNDS; round++) {
        const order = contenders.map((_, i) => (i + round) % contenders.length);
        if (round % 2 === 1) order.reverse();
        for (const i of order) {
          samples[i]!.push(await runBatch(contenders[i]!.runUnder, hold));
        }
      }
      const medians = samples.map((s) => median(s.map((x) => x.ns)));
      const mutexNs = medians[contenders.indexOf(mutexOnly)]!;
      contenders.forEach((c, i) => {
        const s = samples[i]!;
        const sum = (f: (x: BatchStats) => number) => s.reduce((acc, x) => acc + f(x), 0);
        const violations = sum((x) => x.violations);
        totalViolations += violations;
        if (c === rwlock) rwlockOvertakes += sum((x) => x.readersOvertaking + x.writersOvertaking);
        const ms = medians[i]! / 1e6;
        const distinct = (f: (x: BatchStats) => number) => {
          const values = [...new Set(s.map(f))].sort((a, b) => a - b);
          return values.length === 1
            ? fmtInt(values[0]!)
            : `${fmtInt(values[0]!)}–${fmtInt(values.at(-1)!)}`;
        };
        table.push([
          c.name,
          holdName,
          fmtMs(ms),
          fmtInt(requests.length / (ms / 1000)),
          fmtRatio(mutexNs / medians[i]!),
          distinct((x) => x.phases),
          distinct((x) => x.readersOvertaking),
          distinct((x) => x.writersOvertaking),
          fmtInt(violations),
        ]);
      });
    }
    checks.push({
      name: 'no writer overlapped anyone (all contenders, all batches)',
      target: '0 overlaps',
      actual: `${fmtInt(totalViolations)} overlaps`,
      pass: totalViolations === 0,
    });
    checks.push({
      name: 'RWLock served requests in FIFO phases',
      target: '0 overtakes',
      actual: `${fmtInt(rwlockOvertakes)} overtakes`,
      pass: rwlockOvertakes === 0,
    });
    return {
      table,
      checks,
      notes: [
        '"vs async-mutex" > 1 means more requests per second than async-mutex `runExclusive`.',
        '"phases": writers plus groups of readers holding together, admitted one after another. ' +
          'RWLock admits the readers queued between two writers together (FIFO phases, 100 + 100); ' +
          'async-mutex admits everyone alone (1,100); async-rwlock lets every reader pass queued ' +
          'writers while readers hold the lock, so it needs fewer phases but starves writers.',
        '"overtaking": a request admitted while one of the other mode that arrived earlier ' +
          'still waits. Counts are per batch (range over the batches).',
      ],
    };
  },
};

// ---------------------------------------------------------------------------------------------
// 3. Aborting queued waiters
// ---------------------------------------------------------------------------------------------

const ABORT_SIZES = [10_000, 50_000, 100_000];
const ABORT_ROUNDS = 3;
/** p-queue removes an aborted task with findIndex + splice (O(n)): keep it to sizes that end. */
const PQUEUE_MAX_SIZE = 50_000;
/** Above this size p-queue runs one round only (a round at 50,000 takes seconds). */
const PQUEUE_ONE_ROUND_ABOVE = 10_000;

interface AbortTiming {
  abortNs: number;
  settleNs: number;
  errors: number;
}

/** N waiters queued by one contender, ready to be aborted. */
interface QueuedWaiters {
  /** The timed part: every waiter is told to give up (one `abort()` each, or one call for all). */
  abortAll(): void;
  /** True for the rejection a waiter is expected to settle with. */
  isExpected(error: unknown): boolean;
  /** Gives back what a waiter that was wrongly granted got. */
  giveBack?(value: unknown): void;
  /** After every waiter settled: problems seen (still queued, listeners left...). */
  check?(): number;
  /** Lets go of the hold the waiters queued behind; returns problems seen. */
  finish?(): Promise<number> | number;
}

/** One way of queueing waiters and aborting them, as data run by {@link timeAborts}. */
interface AbortContender {
  name: string;
  /** Whether it runs at this size in this round (some contenders are O(N²) per batch). */
  runsAt?(size: number, round: number): boolean;
  /** The table cell when it never ran at a size. */
  notRun?: string;
  /** Waiters of its untimed warm-up round. Default: the smallest size. */
  warmupSize?: number;
  /**
   * Queues `size` waiters behind a held lock; `enqueue` is called with each waiter's promise
   * (none for the platform floor). `order` shuffles what the contender aborts, with the seed.
   */
  queue(
    size: number,
    reason: Error,
    enqueue: (waiter: Promise<unknown>) => void,
    order: <T>(items: T[]) => T[],
  ): Promise<QueuedWaiters> | QueuedWaiters;
}

/**
 * One round for one contender: queue `size` waiters, full GC, time the abort loop, then the
 * settling of every waiter, then check what is left.
 */
async function timeAborts(c: AbortContender, size: number, seed: number): Promise<AbortTiming> {
  const reason = new Error('bench abort');
  const done = deferred();
  let errors = 0;
  let pending = 0;
  let queued = false;
  const settled = () => {
    if (--pending === 0 && queued) done.resolve();
  };
  let waiters: QueuedWaiters | undefined;
  const enqueue = (waiter: Promise<unknown>) => {
    pending++;
    waiter.then(
      (value) => {
        errors++;
        waiters?.giveBack?.(value);
        settled();
      },
      (error) => {
        if (!waiters?.isExpected(error)) errors++;
        settled();
      },
    );
  };
  waiters = await c.queue(size, reason, enqueue, (items) => shuffleInPlace(items, createRng(seed)));
  queued = true;
  if (pending === 0) done.resolve();
  fullGc();
  const t0 = nowNs();
  waiters.abortAll();
  const t1 = nowNs();
  await done.promise;
  const t2 = nowNs();
  errors += (waiters.check?.() ?? 0) + ((await waiters.finish?.()) ?? 0);
  return { abortNs: t1 - t0, settleNs: t2 - t1, errors };
}

/** Problems left on an RWLock's queue and on signals after every waiter gave up. */
function leftovers(lock: RWLock, signals: readonly AbortSignal[]): number {
  const s = lock.state;
  let errors = s.queuedReaders + s.queuedWriters !== 0 || s.readers !== 0 ? 1 : 0;
  for (const signal of signals) if (getEventListeners(signal, 'abort').length !== 0) errors++;
  return errors;
}

/** RWLock waiters (every 10th a writer) behind a held write lease, on the given signals. */
function rwlockAborts(
  name: string,
  signals: (size: number) => { controllers: AbortController[]; signalOf(i: number): AbortSignal },
): AbortContender {
  return {
    name,
    queue(size, reason, enqueue, order) {
      const lock = new RWLock();
      const holder = lock.tryAcquireWrite()!;
      const { controllers, signalOf } = signals(size);
      for (let i = 0; i < size; i++) {
        const options = { signal: signalOf(i) };
        enqueue(i % 10 === 9 ? lock.acquireWrite(options) : lock.acquireRead(options));
      }
      const { queuedReaders, queuedWriters } = lock.state;
      const notQueued = queuedReaders + queuedWriters === size ? 0 : 1;
      order(controllers);
      return {
        abortAll() {
          for (const c of controllers) c.abort(reason);
        },
        isExpected: (error) => error === reason,
        giveBack: (lease) => (lease as Lease).release(),
        check: () =>
          notQueued +
          leftovers(
            lock,
            controllers.map((c) => c.signal),
          ),
        finish() {
          holder.release();
          return lock.state.writing ? 1 : 0;
        },
      };
    },
  };
}

const RWLOCK_PER_WAITER = rwlockAborts('RWLock, `signal` per waiter', (size) => {
  const controllers = Array.from({ length: size }, () => new AbortController());
  return { controllers, signalOf: (i) => controllers[i]!.signal };
});

/** N waiters share one signal: a single `abort()` must reject them all. */
const RWLOCK_SHARED = rwlockAborts('RWLock, one signal shared by all N (one `abort()`)', (size) => {
  const controller = new AbortController();
  setMaxListeners(size + 10, controller.signal);
  return { controllers: [controller], signalOf: () => controller.signal };
});

const abortContenders: AbortContender[] = [
  RWLOCK_PER_WAITER,
  RWLOCK_SHARED,
  {
    name: 'AbortController.abort() alone, no listener (floor)',
    queue(size, reason, _enqueue, order) {
      const controllers = order(Array.from({ length: size }, () => new AbortController()));
      return {
        abortAll() {
          for (const c of controllers) c.abort(reason);
        },
        isExpected: () => true,
      };
    },
  },
  {
    name: 'p-queue `add(fn, { signal })`',
    runsAt: (size, round) =>
      size <= PQUEUE_MAX_SIZE && (round === 0 || size <= PQUEUE_ONE_ROUND_ABOVE),
    notRun: `O(N) per abort, see ${fmtInt(PQUEUE_MAX_SIZE)}`,
    warmupSize: 1_000,
    queue(size, reason, enqueue, order) {
      const queue = new PQueue({ concurrency: 1 });
      const gate = deferred();
      const blocker = queue.add(() => gate.promise);
      const controllers = Array.from({ length: size }, () => new AbortController());
      let ran = 0;
      const task = async () => {
        ran++;
      };
      for (const c of controllers) enqueue(queue.add(task, { signal: c.signal }));
      order(controllers);
      return {
        abortAll() {
          for (const c of controllers) c.abort(reason);
        },
        isExpected: (error) => error === reason,
        check: () => (queue.size === 0 ? 0 : 1) + ran,
        async finish() {
          gate.resolve();
          await blocker;
          return 0;
        },
      };
    },
  },
  {
    name: 'async-mutex `cancel()` (all at once; no per-waiter abort)',
    async queue(size, _reason, enqueue) {
      const mutex = new Mutex();
      const release = await mutex.acquire();
      for (let i = 0; i < size; i++) enqueue(mutex.acquire());
      return {
        abortAll: () => mutex.cancel(),
        isExpected: () => true,
        giveBack: (r) => (r as () => void)(),
        finish() {
          release();
          return 0;
        },
      };
    },
  },
];

const aborts: Section = {
  title: '3. Aborting queued waiters in random order',
  description:
    'N waiters (every 10th a writer), each with its own AbortController, queue behind a held ' +
    'write lease; then all are aborted in a random order (Fisher-Yates, seeded PRNG, same order ' +
    'for every contender). "abort" = the synchronous loop of `abort()` calls; "settle" = from ' +
    'there until every promise has rejected. Median of ' +
    `${ABORT_ROUNDS} rounds per size. Each RWLock round also checks that every promise rejected ` +
    'with its reason, nothing stayed queued and no abort listener is left on any signal.',
  async run() {
    const table: string[][] = [
      [
        'N',
        'Contender',
        'abort',
        'settle',
        'abort + settle',
        'ns per abort (abort phase)',
        'ns per waiter (abort + settle)',
      ],
    ];
    const perWaiter = new Map<number, number>();
    let totalAt100k = Number.NaN;
    let errors = 0;
    // Untimed warm-up, so that the first size does not pay for the JIT.
    for (const c of abortContenders) await timeAborts(c, c.warmupSize ?? ABORT_SIZES[0]!, 1);
    for (const size of ABORT_SIZES) {
      const runs = abortContenders.map(() => [] as AbortTiming[]);
      for (let round = 0; round < ABORT_ROUNDS; round++) {
        const seed = 0x5eed + round;
        for (const [i, c] of abortContenders.entries()) {
          if (c.runsAt?.(size, round) === false) continue;
          runs[i]!.push(await timeAborts(c, size, seed));
        }
      }
      for (const [i, c] of abortContenders.entries()) {
        const timings = runs[i]!;
        if (timings.length === 0) {
          table.push([fmtInt(size), c.name, 'not run', '', '', '', c.notRun ?? '']);
          continue;
        }
        errors += timings.reduce((acc, r) => acc + r.errors, 0);
        const abortNs = median(timings.map((r) => r.abortNs));
        const settleNs = median(timings.map((r) => r.settleNs));
        const totalNs = median(timings.map((r) => r.abortNs + r.settleNs));
        table.push([
          fmtInt(size),
          c.name,
          fmtMs(abortNs / 1e6),
          fmtMs(settleNs / 1e6),
          fmtMs(totalNs / 1e6),
          fmtNs(abortNs / size),
          fmtNs(totalNs / size),
        ]);
        if (c === RWLOCK_PER_WAITER) {
          perWaiter.set(size, totalNs / size);
          if (size === 100_000) totalAt100k = totalNs;
        }
      }
    }
    const small = perWaiter.get(ABORT_SIZES[0]!)!;
    const large = perWaiter.get(100_000)!;
    const growth = large / small;
    const checks: Check[] = [
      {
        name: 'RWLock: abort + settle 100,000 waiters',
        target: '< 2 s',
        actual: fmtMs(totalAt100k / 1e6),
        pass: totalAt100k < 2e9,
      },
      {
        name: 'RWLock: cost per aborted waiter, 100,000 vs 10,000',
        target: '<= 3x',
        actual: `${fmtRatio(growth)} (${fmtNs(large)} vs ${fmtNs(small)})`,
        pass: growth <= 3,
      },
      {
        name: 'every waiter rejected with its own reason, none left queued, no listener left',
        target: '0 errors',
        actual: `${fmtInt(errors)} errors`,
        pass: errors === 0,
      },
    ];
    return {
      table,
      checks,
      notes: [
        'All signals abort with one preallocated reason, so no DOMException (and stack trace) is ' +
          'built per abort; the "floor" row is what the same `abort()` calls cost with no listener.',
        'p-queue removes an aborted task from an array with `findIndex` + `splice` (O(N) per abort, ' +
          `O(N²) in all), so it is run up to N = ${fmtInt(PQUEUE_MAX_SIZE)} only, and above ` +
          `${fmtInt(PQUEUE_ONE_ROUND_ABOVE)} for one round only.`,
        'async-mutex cannot abort one waiter; its `cancel()` rejects all of them in one call, ' +
          'shown for the settle cost of N rejections. The shared-signal RWLock row is the same ' +
          'shape: one call rejects all N.',
      ],
    };
  },
};

// ---------------------------------------------------------------------------------------------
// 4. Memory per queued waiter
// ---------------------------------------------------------------------------------------------

const MEMORY_WAITERS = 100_000;
/** Rounds of the checked case; the others are deterministic to the byte and run once. */
const MEMORY_ROUNDS = 3;

interface MemoryCase {
  name: string;
  n: number;
  /** Makes what the caller would own anyway (e.g. the AbortControllers): not counted. */
  prepare?(n: number): void | Promise<void>;
  /** Queues waiter `i`; must not allocate anything the waiter does not keep. */
  enqueue(i: number): Promise<unknown>;
  /** Lets every waiter through and cleans up; returns the number of problems seen. */
  finish(promises: Promise<unknown>[]): Promise<number>;
}

async function bytesPerWaiter(c: MemoryCase): Promise<{ bytes: number; errors: number }> {
  const promises: Promise<unknown>[] = new Array(c.n).fill(undefined);
  await c.prepare?.(c.n);
  const before = heapUsedAfterGc();
  for (let i = 0; i < c.n; i++) promises[i] = c.enqueue(i);
  const after = heapUsedAfterGc();
  const errors = await c.finish(promises);
  return { bytes: (after - before) / c.n, errors };
}

function rwlockCase(
  name: string,
  n: number,
  mode: 'read' | 'write',
  options: (i: number) => { signal?: AbortSignal; timeout?: number } | undefined,
  prepare?: (n: number) => void,
  signalsToCheck?: () => AbortSignal[],
): MemoryCase {
  let lock = new RWLock();
  let holder: Lease | null = null;
  return {
    name,
    n,
    prepare(count) {
      lock = new RWLock();
      holder = lock.tryAcquireWrite();
      prepare?.(count);
    },
    enqueue: (i) =>
      mode === 'read' ? lock.acquireRead(options(i)) : lock.acquireWrite(options(i)),
    async finish(promises) {
      let errors = 0;
      const { queuedReaders, queuedWriters } = lock.state;
      if (queuedReaders + queuedWriters !== n) errors++;
      holder?.release();
      // Readers are all granted at once; writers one after another as each releases.
      await Promise.all(promises.map((p) => p.then((lease) => (lease as Lease).release())));
      const s = lock.state;
      if (s.readers !== 0 || s.writing || s.queuedReaders + s.queuedWriters !== 0) errors++;
      for (const signal of signalsToCheck?.() ?? []) {
        if (getEventListeners(signal, 'abort').length !== 0) errors++;
      }
      return errors;
    },
  };
}

/** How many locks have run `read(fn)` in the child processes of section 4. */
const ALS_LOCKS = [0, 1, 10] as const;

/**
 * Bytes per queued `acquireRead()` in a fresh process, measured after exactly `k` RWLocks have
 * run `read(fn)` there, for each `k` of {@link ALS_LOCKS}: the process state matters (see the
 * notes), so it is set rather than inherited from whatever ran before.
 */
async function waiterBytesInFreshProcess(): Promise<Map<number, number>> {
  const srcUrl = pathToFileURL(path.join(rootDir, 'src', 'index.ts')).href;
  const code = `
    const { RWLock } = await import(${JSON.stringify(srcUrl)});
    const n = ${MEMORY_WAITERS};
    const heap = () => { gc(); gc(); return process.memoryUsage().heapUsed; };
    const result = {};
    let used = 0;
    for (const k of ${JSON.stringify(ALS_LOCKS)}) {
      for (; used < k; used++) await new RWLock().read(() => {});
      const samples = [];
      for (let round = 0; round < ${MEMORY_ROUNDS}; round++) {
        const lock = new RWLock();
        const holder = lock.tryAcquireWrite();
        const promises = new Array(n).fill(undefined);
        const before = heap();
        for (let i = 0; i < n; i++) promises[i] = lock.acquireRead();
        samples.push((heap() - before) / n);
        holder.release();
        for (const p of promises) (await p).release();
      }
      result[k] = [...samples].sort((a, b) => a - b)[samples.length >> 1];
    }
    console.log(JSON.stringify(result));
  `;
  return byLockCount(await runInFreshProcess(code, ['--expose-gc', '--import', BENCH_IMPORT]));
}

const memory: Section = {
  title: '4. Memory per queued waiter',
  description:
    `Heap used after a forced GC, before and after queueing ${fmtInt(MEMORY_WAITERS)} waiters ` +
    'behind a held exclusive hold, divided by the number of waiters. It counts everything a ' +
    "waiter keeps alive: the lock's node, the promise the caller holds, closures, listener " +
    "entries and timers; not the caller's own AbortControllers, made before the baseline. " +
    `Median of ${MEMORY_ROUNDS} rounds for the checked case, one round for the others (the ` +
    'figures repeat to the byte). Every waiter is then let through and released (or dropped).',
  async run() {
    let ownControllers: AbortController[] = [];
    let shared = new AbortController();
    const cases: MemoryCase[] = [
      rwlockCase(
        'RWLock `acquireRead()`, no signal, no timeout',
        MEMORY_WAITERS,
        'read',
        () => undefined,
      ),
      rwlockCase(
        'RWLock `acquireWrite()`, no signal, no timeout',
        MEMORY_WAITERS,
        'write',
        () => undefined,
      ),
      rwlockCase(
        'RWLock `acquireRead({ signal })`, one AbortController per waiter',
        MEMORY_WAITERS,
        'read',
        (i) => ({ signal: ownControllers[i]!.signal }),
        (n) => {
          ownControllers = Array.from({ length: n }, () => new AbortController());
        },
        () => ownControllers.map((c) => c.signal),
      ),
      rwlockCase(
        'RWLock `acquireRead({ signal })`, one signal shared by all',
        MEMORY_WAITERS,
        'read',
        () => ({ signal: shared.signal }),
        () => {
          shared = new AbortController();
          // Harmless with one listener per signal; keeps the output clean if that ever changes.
          setMaxListeners(MEMORY_WAITERS + 10, shared.signal);
        },
        () => [shared.signal],
      ),
      rwlockCase('RWLock `acquireRead({ timeout: 60_000 })`', MEMORY_WAITERS, 'read', () => ({
        timeout: 60_000,
      })),
      (() => {
        let controllers: AbortController[] = [];
        let listeners: { handleEvent(): void }[] = [];
        const resolved = Promise.resolve();
        return {
          name: 'platform: `signal.addEventListener(...)` alone, first listener on a signal',
          n: MEMORY_WAITERS,
          prepare(n) {
            controllers = Array.from({ length: n }, () => new AbortController());
            listeners = Array.from({ length: n }, () => ({ handleEvent: () => {} }));
          },
          enqueue(i) {
            controllers[i]!.signal.addEventListener('abort', listeners[i]!, { once: true });
            return resolved;
          },
          async finish() {
            controllers = [];
            listeners = [];
            return 0;
          },
        } satisfies MemoryCase;
      })(),
      (() => {
        let mutex = new Mutex();
        let release: (() => void) | undefined;
        return {
          name: 'async-mutex `acquire()`',
          n: MEMORY_WAITERS,
          async prepare() {
            mutex = new Mutex();
            release = await mutex.acquire();
          },
          enqueue: () => mutex.acquire(),
          async finish(promises) {
            // Releasing 100,000 waiters one by one is O(N²) in async-mutex (Array#shift on its
            // queue), so reject them all at once instead.
            mutex.cancel();
            await Promise.allSettled(promises);
            release?.();
            return mutex.isLocked() ? 1 : 0;
          },
        } satisfies MemoryCase;
      })(),
      (() => {
        let arw = new AsyncRWLock();
        return {
          name: 'async-rwlock `writeLock()`',
          n: MEMORY_WAITERS,
          async prepare() {
            arw = new AsyncRWLock();
            await arw.writeLock();
          },
          enqueue: () => arw.writeLock(),
          async finish() {
            // async-rwlock has no cancel, and granting 100,000 writers one by one is O(N²)
            // (Array#shift on its queue): drop the lock; its waiters are garbage with it.
            arw = new AsyncRWLock();
            return 0;
          },
        } satisfies MemoryCase;
      })(),
      (() => {
        let queue = new PQueue({ concurrency: 1 });
        let gate = deferred();
        const task = async () => {};
        return {
          name: 'p-queue (concurrency 1) `add(fn)`',
          n: MEMORY_WAITERS,
          prepare() {
            queue = new PQueue({ concurrency: 1 });
            gate = deferred();
            void queue.add(() => gate.promise);
          },
          enqueue: () => queue.add(task),
          async finish() {
            queue.clear(); // drops the queued tasks (their promises never settle)
            gate.resolve();
            await queue.onIdle();
            return queue.size + queue.pending === 0 ? 0 : 1;
          },
        } satisfies MemoryCase;
      })(),
    ];
    // Make the process state explicit whatever ran before: RWLock's AsyncLocalStorage entered.
    await new RWLock().read(() => {});
    const table: string[][] = [['Waiter', 'N', 'bytes per waiter', 'heap for N waiters']];
    let errors = 0;
    let noSignal = Number.NaN;
    let sharedSignalMs = Number.NaN;
    for (const c of cases) {
      const samples: number[] = [];
      const rounds = c === cases[0] ? MEMORY_ROUNDS : 1;
      for (let round = 0; round < rounds; round++) {
        const t0 = nowNs();
        const r = await bytesPerWaiter(c);
        if (c.name.includes('shared by all')) sharedSignalMs = (nowNs() - t0) / 1e6;
        samples.push(r.bytes);
        errors += r.errors;
      }
      const bytes = median(samples);
      if (c === cases[0]) noSignal = bytes;
      table.push([c.name, fmtInt(c.n), fmtInt(bytes), fmtBytes(bytes * c.n)]);
    }
    ownControllers = [];
    const fresh = await waiterBytesInFreshProcess();
    for (const [k, bytes] of fresh) {
      table.push([
        `RWLock \`acquireRead()\`, no signal, no timeout, fresh process, ${k} lock${k === 1 ? '' : 's'} ran \`read(fn)\``,
        fmtInt(MEMORY_WAITERS),
        fmtInt(bytes),
        fmtBytes(bytes * MEMORY_WAITERS),
      ]);
    }
    const freshCheck = (k: number): Check => ({
      name: `RWLock: heap per queued waiter, no signal, no timeout; ${k} lock${k === 1 ? '' : 's'} ran \`read(fn)\` in the process`,
      target: '<= 400 B',
      actual: `${fmtInt(fresh.get(k)!)} B`,
      pass: fresh.get(k)! <= 400,
    });
    return {
      table,
      checks: [
        freshCheck(0),
        freshCheck(1),
        {
          name: 'RWLock: heap per queued waiter, no signal, no timeout, in this process',
          target: '<= 400 B',
          actual: `${fmtInt(noSignal)} B`,
          pass: noSignal <= 400,
        },
        {
          name: 'RWLock: every waiter granted and released, no listener left on any signal',
          target: '0 errors',
          actual: `${fmtInt(errors)} errors`,
          pass: errors === 0,
        },
      ],
      notes: [
        'The first rows are measured in this process, after whatever ran before; the last ' +
          `${ALS_LOCKS.length} in a fresh process after exactly 0, 1 and 10 RWLocks have run ` +
          '`read(fn)` there. Each RWLock owns an AsyncLocalStorage; on Node 20 the first ' +
          '`run()` of one registers it with async_hooks for the life of the process, and from ' +
          'then on every promise created anywhere gets one more slot for it (8 B each here), ' +
          "the waiter's own promise included. See section 1 for the time this costs.",
        `Queueing and releasing ${fmtInt(MEMORY_WAITERS)} waiters on one shared signal took ` +
          `${fmtMs(sharedSignalMs)} (one round). Node's EventTarget scans its listener list on ` +
          'every `addEventListener`, so a listener per waiter would make that O(N²) (about 0.8 s ' +
          'for 20,000 listeners on one signal on this machine class); it stays linear only if the ' +
          'lock keeps one listener per signal.',
        'Sequential reuse of one signal is not affected: a settled waiter leaves no listener.',
        "A per-waiter signal costs what Node's EventTarget charges for the first listener on a " +
          'signal (the "platform" row: controllers and listener objects made before the baseline) ' +
          'on top of the waiter itself.',
      ],
    };
  },
};

export const sections: Section[] = [uncontended, contended, aborts, memory];

/** Runs before other modules, so that its baselines see as clean a process as possible. */
export const order = 0;
