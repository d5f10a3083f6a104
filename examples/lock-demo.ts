/**
 * A short tour of RWLock in the terminal: readers sharing, a queued writer blocking later
 * readers, readers entering together, an abort that wakes whoever it blocked, and a timeout.
 *
 *   npx tsx examples/lock-demo.ts
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { LockTimeoutError, RWLock } from 'engine-guard';

const t0 = performance.now();
const log = (msg: string) =>
  console.log(`[+${((performance.now() - t0) / 1000).toFixed(2)}s] ${msg}`);
const state = (lock: RWLock) => {
  const s = lock.state;
  return `readers=${s.readers} writing=${s.writing} queued: ${s.queuedReaders}r/${s.queuedWriters}w`;
};

const lock = new RWLock({ name: 'catalog' });

log('1. Two readers share the lock.');
const r1 = await lock.acquireRead();
const r2 = await lock.acquireRead();
log(`   ${state(lock)}`);

log(
  '2. A writer arrives and queues; a reader arriving after it queues too (no writer starvation).',
);
const writer = lock.write(async () => {
  log('   writer: running alone');
  await sleep(150);
});
const late = lock.read(async () => log('   late reader: ran after the writer'));
log(`   ${state(lock)}`);

log('3. Both early readers leave; the writer enters, then the late reader.');
r1.release();
r2.release();
await Promise.all([writer, late]);
log(`   ${state(lock)}`);

log('4. A cancelled writer releases the readers queued behind it at once.');
const holder = await lock.acquireRead();
const ac = new AbortController();
const cancelled = lock.acquireWrite({ signal: ac.signal }).catch((e: Error) => e.name);
const behind = [lock.acquireRead(), lock.acquireRead()];
log(`   before abort: ${state(lock)}`);
ac.abort();
log(`   after abort:  ${state(lock)}   (writer rejected with ${await cancelled})`);
for (const lease of await Promise.all(behind)) lease.release();
holder.release();

log('5. A timeout bounds the wait, never the hold.');
const hold = await lock.acquireWrite();
const timedOut = await lock.acquireRead({ timeout: 200 }).catch((e: unknown) => e);
log(
  `   waiter gave up: ${timedOut instanceof LockTimeoutError ? timedOut.message : String(timedOut)}`,
);
hold.release();
log(`   done: ${state(lock)}`);
