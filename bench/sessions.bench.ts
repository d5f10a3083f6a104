/**
 * Sessions (SPEC 8.1, issue 15): how long one session's short read waits while its own long
 * read runs, for a session that pins on state while unpinned and while pinned, for a
 * `pin: 'always'` session (the model of SPEC 8, one handle from the first op), and for stateless
 * reads as the baseline. Real time, a fake engine. Run through `npm run bench -- sessions`.
 */
import { EngineGuard, type Session } from '../src/index.js';
import { type FakeEngine, FakeEngineFactory } from '../src/testing/index.js';
import { type Check, fmtMs, median, percentile, type Section } from './harness.js';

/** How long the session's long read runs, ms. */
const LONG_MS = 200;
/** When, into the long read, the short read is sent, ms. */
const SHORT_AFTER_MS = 20;
/** Long read + short read pairs per contender, in rotated order. */
const PAIRS = 30;

type Mode = 'stateless' | 'on-state, unpinned' | 'on-state, pinned' | 'always (SPEC 8)';
const MODES: Mode[] = ['stateless', 'on-state, unpinned', 'on-state, pinned', 'always (SPEC 8)'];

interface Contender {
  /** Runs `fn` as the caller's read. */
  read<T>(fn: (engine: FakeEngine) => Promise<T> | T): Promise<T>;
  close(): Promise<void>;
}

/** Engines that hold session state, as a state hook would find it. */
const dirty = new WeakSet<FakeEngine>();

async function open(mode: Mode): Promise<Contender> {
  const factory = new FakeEngineFactory();
  const guard = new EngineGuard<FakeEngine>(
    factory.guardOptions({
      pool: 2,
      maxSessions: 2,
      liveness: { interval: 5_000 },
      reset: (engine) => {
        dirty.delete(engine);
      },
      state: (engine) => (dirty.has(engine) ? [{ kind: 'temp table', name: 'scratch' }] : []),
    }),
  );
  let session: Session<FakeEngine> | undefined;
  if (mode !== 'stateless') {
    session = guard.session({ pin: mode === 'always (SPEC 8)' ? 'always' : 'on-state' });
    if (mode === 'on-state, pinned') {
      await session.write((engine) => {
        dirty.add(engine);
      });
      if (!session.status().pinned) throw new Error('the session did not pin');
    }
  }
  // Both shared handles open before the first pair, so no wait below includes a connect.
  await Promise.all([guard.read(() => 1), guard.read(() => 1)]);
  await session?.read(() => 1);
  return {
    read: (fn) => (session === undefined ? guard.read(fn) : session.read(fn)),
    close: () => guard.close(),
  };
}

/** The short read's wait from call to answer, for one pair. */
async function pair(contender: Contender): Promise<number> {
  const long = contender.read((engine) => engine.call('long', { duration: LONG_MS }));
  await new Promise((resolve) => setTimeout(resolve, SHORT_AFTER_MS));
  const started = performance.now();
  await contender.read((engine) => engine.call('short'));
  const waited = performance.now() - started;
  await long;
  return waited;
}

const ownLongReadSection: Section = {
  title: "Sessions: one session's short read while its own long read runs",
  description:
    `One caller sends a long read (a fake engine call of ${LONG_MS} ms), then ` +
    `${SHORT_AFTER_MS} ms later a short one, and the short read's time from call to answer is ` +
    'recorded. The caller is: stateless reads (`guard.read`); a session that pins on state, ' +
    'unpinned (it made no state); the same session pinned (an earlier write left state on its ' +
    "handle); a `pin: 'always'` session (SPEC 8's model: a handle of its own from the first op, " +
    `ops one at a time). Guard: pool 2, maxSessions 2. ${PAIRS} pairs per caller, callers in ` +
    'rotated order.',
  async run() {
    const waits = new Map<Mode, number[]>(MODES.map((mode) => [mode, []]));
    const contenders = new Map<Mode, Contender>();
    for (const mode of MODES) contenders.set(mode, await open(mode));
    try {
      for (let round = 0; round < PAIRS; round++) {
        for (let i = 0; i < MODES.length; i++) {
          const mode = MODES[(i + round) % MODES.length]!;
          waits.get(mode)!.push(await pair(contenders.get(mode)!));
        }
      }
    } finally {
      await Promise.all([...contenders.values()].map((contender) => contender.close()));
    }
    const table: string[][] = [['Caller', 'short read: p50', 'p99', 'max']];
    const p99 = new Map<Mode, number>();
    for (const mode of MODES) {
      const sorted = [...waits.get(mode)!].sort((a, b) => a - b);
      p99.set(mode, percentile(sorted, 0.99));
      table.push([
        mode,
        fmtMs(median(sorted)),
        fmtMs(percentile(sorted, 0.99)),
        fmtMs(sorted[sorted.length - 1]!),
      ]);
    }
    const unpinned = p99.get('on-state, unpinned')!;
    const always = p99.get('always (SPEC 8)')!;
    const pinned = p99.get('on-state, pinned')!;
    const checks: Check[] = [
      {
        name: "unpinned session: short read's p99 during its own long read",
        target: `< 10% of the long read (${fmtMs(LONG_MS / 10)})`,
        actual: fmtMs(unpinned),
        pass: unpinned < LONG_MS / 10,
      },
      {
        name: "pin: 'always' session: short read's p99 (waits for its own long read)",
        target: `>= the rest of the long read (${fmtMs(LONG_MS - SHORT_AFTER_MS)})`,
        actual: fmtMs(always),
        pass: always >= LONG_MS - SHORT_AFTER_MS - 5,
      },
      {
        name: "pinned session: short read's p99 (waits, as it must: its state is on one handle)",
        target: `>= the rest of the long read (${fmtMs(LONG_MS - SHORT_AFTER_MS)})`,
        actual: fmtMs(pinned),
        pass: pinned >= LONG_MS - SHORT_AFTER_MS - 5,
      },
    ];
    return {
      table,
      checks,
      notes: [
        'An unpinned session runs its calls side by side like stateless reads: its short read ' +
          'runs on the other shared handle at once. A pinned session, like every session of ' +
          "SPEC 8's model, runs its calls one at a time on the handle that holds its state, so " +
          'its short read waits for the rest of its own long read: the price of keeping state, ' +
          'paid only while the state is held.',
      ],
    };
  },
};

export const sections: Section[] = [ownLongReadSection];
