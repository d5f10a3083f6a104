/**
 * What the peers named in the product's design do at the edges the guard depends on, measured so
 * that `docs/design.md` ("Dependencies") can say why each is or is not used. Behaviour, not speed:
 * - p-queue's `timeout` frees a concurrency slot while the timed-out task still runs, so an
 *   "exclusive" queue (concurrency 1) runs two tasks at once;
 * - async-mutex's `withTimeout` rejects a waiter on time but leaves it queued until its turn comes,
 *   so waiters that gave up still hold memory and are granted and released one by one later;
 * - the same two situations on `RWLock` for comparison.
 */
import { Mutex, withTimeout } from 'async-mutex';
import PQueue from 'p-queue';
import { RWLock } from '../src/index.js';
import { heapUsedAfterGc, type Section } from './harness.js';

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Most tasks seen running at once on an exclusive resource whose first holder overran a timeout. */
async function overlapAfterTimeout(
  run: (task: () => Promise<void>) => Promise<unknown>,
): Promise<number> {
  let running = 0;
  let most = 0;
  const task = async (): Promise<void> => {
    running++;
    most = Math.max(most, running);
    await sleep(150);
    running--;
  };
  await Promise.allSettled([run(task), run(task)]);
  return most;
}

/** Heap kept by `n` waiters that timed out while the lock was held, and the cost of draining it. */
async function timedOutWaiters(
  n: number,
  hold: () => Promise<() => void>,
  waitWithTimeout: () => Promise<unknown>,
): Promise<{ heapMb: number; drainMs: number }> {
  const release = await hold();
  const before = heapUsedAfterGc();
  const waiters: Promise<unknown>[] = [];
  for (let i = 0; i < n; i++) waiters.push(waitWithTimeout().catch(() => undefined));
  await Promise.all(waiters); // every one of them has been told "timed out"
  const heapMb = (heapUsedAfterGc() - before) / 1e6;
  const started = performance.now();
  release();
  const next = await hold(); // the next real caller
  const drainMs = performance.now() - started;
  next();
  return { heapMb, drainMs };
}

const WAITERS = 50_000;

export const sections: Section[] = [
  {
    title: "Peers' edge behaviour (why the guard writes its own primitives)",
    description:
      'Two situations the guard must get right. (1) A task overruns the timeout of an exclusive ' +
      'resource (concurrency 1 / a mutex): how many tasks then run at once? p-queue `timeout: 50`; ' +
      'RWLock write with `timeout: 50` (bounds the wait only). (2) ' +
      `${WAITERS.toLocaleString('en-US')} waiters time out while the lock is held: heap they keep after ` +
      'being rejected, and how long the next real caller waits once the holder releases. ' +
      'async-mutex `withTimeout(new Mutex(), 10)` vs RWLock `acquireWrite({ timeout: 10 })`.',
    async run() {
      const queue = new PQueue({ concurrency: 1, timeout: 50 });
      const pQueueOverlap = await overlapAfterTimeout((task) => queue.add(task));
      const lock = new RWLock();
      const lockOverlap = await overlapAfterTimeout((task) => lock.write(task, { timeout: 50 }));

      const shared = withTimeout(new Mutex(), 10);
      const asyncMutex = await timedOutWaiters(
        WAITERS,
        () => shared.acquire(),
        () => shared.acquire(),
      );
      const rw = new RWLock();
      const rwLock = await timedOutWaiters(
        WAITERS,
        async () => {
          const lease = await rw.acquireWrite();
          return () => lease.release();
        },
        () => rw.acquireWrite({ timeout: 10 }),
      );
      return {
        table: [
          ['situation', 'p-queue / async-mutex', 'RWLock'],
          [
            'tasks running at once on an exclusive resource after a timeout',
            `${pQueueOverlap} (p-queue)`,
            `${lockOverlap}`,
          ],
          [
            `heap kept by ${WAITERS.toLocaleString('en-US')} timed-out waiters`,
            `${asyncMutex.heapMb.toFixed(1)} MB (async-mutex)`,
            `${rwLock.heapMb.toFixed(1)} MB`,
          ],
          [
            'next caller waits after release',
            `${asyncMutex.drainMs.toFixed(0)} ms (async-mutex)`,
            `${rwLock.drainMs.toFixed(1)} ms`,
          ],
        ],
        checks: [
          {
            name: 'RWLock: a timeout never lets a second holder in',
            target: '1 at once',
            actual: `${lockOverlap} at once`,
            pass: lockOverlap === 1,
          },
          {
            name: 'RWLock: timed-out waiters leave the queue',
            target: '< 2 MB kept',
            actual: `${rwLock.heapMb.toFixed(1)} MB`,
            pass: rwLock.heapMb < 2,
          },
        ],
      };
    },
  },
];
