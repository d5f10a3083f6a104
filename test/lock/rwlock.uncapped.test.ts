/**
 * Uncapped readers: readers that bring their own resource (an engine guard's session reads, on
 * the session's own handle) wait for their phase, never for `maxReaders`.
 */
import { describe, expect, it } from 'vitest';
import { QueueFullError, RWLock } from '../../src/index.js';

async function settled(promise: Promise<unknown>): Promise<boolean> {
  let done = false;
  promise.then(
    () => {
      done = true;
    },
    () => {
      done = true;
    },
  );
  for (let i = 0; i < 5; i++) await new Promise<void>((resolve) => setImmediate(resolve));
  return done;
}

describe('an uncapped reader', () => {
  it('enters past readers that wait for the cap, and does not count toward it', async () => {
    const lock = new RWLock({ maxReaders: 1 });
    const held = lock.tryAcquireRead();
    expect(held).not.toBeNull();
    const capped = lock.acquireRead();
    expect(lock.state.queuedReaders).toBe(1);
    const own = lock.tryAcquireReadUncapped();
    expect(own).not.toBeNull();
    expect(lock.state.readers).toBe(2);
    // Its release frees no capped slot: the queued reader still waits for the first.
    own?.release();
    expect(await settled(capped)).toBe(false);
    held?.release();
    (await capped).release();
    expect(lock.state).toMatchObject({ readers: 0, queuedReaders: 0 });
  });

  it('waits for a writer that queued before it, and enters before one that queued after it', async () => {
    const lock = new RWLock({ maxReaders: 1, fairness: 'fifo' });
    const writing = lock.tryAcquireWrite();
    const first = lock.acquireWrite();
    const reader = lock.acquireReadUncapped(undefined, undefined);
    expect(lock.tryAcquireReadUncapped()).toBeNull();
    writing?.release();
    const firstLease = await first;
    expect(await settled(reader)).toBe(false);
    const late = lock.acquireWrite();
    firstLease.release();
    const readLease = await reader;
    expect(readLease.mode).toBe('read');
    expect(await settled(late)).toBe(false);
    readLease.release();
    (await late).release();
  });

  it('enters before a writer queued after it even while the lock is at its reader cap', async () => {
    const lock = new RWLock({ maxReaders: 1, fairness: 'fifo' });
    const writing = lock.tryAcquireWrite();
    const own = lock.acquireReadUncapped(undefined, undefined);
    const writer = lock.acquireWrite();
    writing?.release();
    const lease = await own;
    expect(lock.state.writing).toBe(false);
    expect(await settled(writer)).toBe(false);
    lease.release();
    (await writer).release();
  });

  it('leaves the queue on abort and timeout, and counts toward maxQueue', async () => {
    const lock = new RWLock({ maxQueue: 1 });
    const writing = lock.tryAcquireWrite();
    const controller = new AbortController();
    const aborted = lock.acquireReadUncapped(controller.signal, undefined);
    await expect(lock.acquireWrite()).rejects.toBeInstanceOf(QueueFullError);
    controller.abort(new Error('gone'));
    await expect(aborted).rejects.toThrow('gone');
    expect(lock.state.queuedReaders).toBe(0);
    await expect(lock.acquireReadUncapped(undefined, 10)).rejects.toMatchObject({
      code: 'ERR_LOCK_TIMEOUT',
    });
    writing?.release();
    expect(lock.state).toMatchObject({ readers: 0, writing: false, queuedReaders: 0 });
  });
});
