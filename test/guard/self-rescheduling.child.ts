/**
 * Child process of self-rescheduling-memory.test.ts, started with `--expose-gc`: runs one job
 * that reschedules itself from inside its guarded op, in the shape named by argv[2], and prints
 * one JSON line: the heap growth between two points of the same chain, measured after `gc()`
 * while the chain still runs, and whether an early run's op was collected.
 */
import { fileURLToPath } from 'node:url';
import { EngineGuard, type Lease, type OpContext, RWLock } from '../../src/index.js';

export const SHAPES = [
  'guard read',
  'guard write',
  'guard read, queued behind the previous run',
  'guard read, cancelled by its caller',
  'guard read that rejects',
  'session read',
  'session write',
  'lock read',
  'lock write',
  'poller re-arming with setTimeout',
] as const;
export type Shape = (typeof SHAPES)[number];

/** What the child prints. */
export interface Measurement {
  shape: Shape;
  node: string;
  /** Runs between the two measurements. */
  runs: number;
  /** heapUsed growth between them, after gc(), in bytes. */
  growth: number;
  /** True when the ctx (or lease) of the first measured run was collected by the second. */
  firstRunCollected: boolean;
}

const gc = (globalThis as { gc?: () => void }).gc;

function heapAfterGc(): number {
  if (gc === undefined) throw new Error('start the child with --expose-gc');
  for (let i = 0; i < 3; i++) gc();
  return process.memoryUsage().heapUsed;
}

/** One run of the job: `next` schedules the next run from inside the op, `held` is its ctx. */
type Body = (next: () => void, held: object) => Promise<void>;

async function measure(shape: Shape): Promise<Measurement> {
  const guard = new EngineGuard<object>({
    create: () => ({}),
    probe: () => undefined,
    liveness: { interval: 1_000, timeout: 1_000, failures: 2 },
    maxSessions: 1,
  });
  const lock = new RWLock();
  const session = guard.session();
  // The poller waits a few ms per run: fewer runs, same bound per run.
  const timer = shape === 'poller re-arming with setTimeout';
  const from = timer ? 500 : 2_000;
  const to = timer ? 2_000 : 12_000;
  let count = 0;
  let base = 0;
  let first: WeakRef<object> | undefined;
  const guarded = (body: Body): void => {
    const fn = (_engine: unknown, ctx: OpContext | Lease): Promise<void> => body(tick, ctx);
    const lockFn = (lease: Lease): Promise<void> => body(tick, lease);
    const signal = shape === 'guard read, cancelled by its caller' ? new AbortController() : null;
    let result: Promise<unknown>;
    switch (shape) {
      case 'guard write':
        result = guard.write(fn);
        break;
      case 'session read':
        result = session.read(fn);
        break;
      case 'session write':
        result = session.write(fn);
        break;
      case 'lock read':
        result = lock.read(lockFn);
        break;
      case 'lock write':
        result = lock.write(lockFn);
        break;
      case 'guard read, cancelled by its caller':
        result = guard.read(
          (_engine, ctx) => {
            // Aborted by its caller while it runs; it winds down on its signal.
            setImmediate(() => signal?.abort(new Error('caller gave up')));
            return new Promise<void>((resolve) => {
              ctx.signal.addEventListener('abort', () => resolve(body(tick, ctx)), { once: true });
            });
          },
          { signal: signal?.signal },
        );
        break;
      default:
        result = guard.read(fn, { timeout: 60_000 });
    }
    result.catch((error: unknown) => {
      if (shape === 'guard read that rejects' || shape === 'guard read, cancelled by its caller') {
        return;
      }
      failed(error);
    });
  };
  let done!: () => void;
  let failed!: (error: unknown) => void;
  const finished = new Promise<void>((resolve, reject) => {
    done = resolve;
    failed = reject;
  });
  const schedule = (next: () => void): void => {
    if (timer) setTimeout(next, 1);
    else setImmediate(next);
  };
  const tick = (): void => {
    guarded(async (next, held) => {
      await null;
      count++;
      if (count === from) {
        first = new WeakRef(held);
        // Measured in a later turn, from inside the chain: the job is still running.
        schedule(() => {
          base = heapAfterGc();
          next();
        });
      } else if (count < to) {
        schedule(next);
      } else {
        done();
      }
      if (shape === 'guard read, queued behind the previous run') {
        // Still running when the next run asks: it queues for the lock (pool 1).
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
      if (shape === 'guard read that rejects') throw new Error('this run failed');
    });
  };
  tick();
  await finished;
  const end = heapAfterGc();
  const measurement: Measurement = {
    shape,
    node: process.version,
    runs: to - from,
    growth: end - base,
    firstRunCollected: first?.deref() === undefined,
  };
  await session.close();
  await guard.close();
  return measurement;
}

// Run as a script (the test imports SHAPES only).
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const shape = process.argv[2] as Shape;
  if (!SHAPES.includes(shape)) throw new Error(`unknown shape ${String(shape)}`);
  process.stdout.write(`${JSON.stringify(await measure(shape))}\n`);
}
