import { getEventListeners } from 'node:events';
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  DeadlockError,
  type Lease,
  LeaseRevokedError,
  LockTimeoutError,
  QueueFullError,
  RWLock,
} from '../../src/index.js';
import { flush, IDLE } from './support.js';

/** Tracks whether a promise has settled, without awaiting it. */
function track<T>(promise: Promise<T>) {
  const t = {
    settled: false,
    value: undefined as T | undefined,
    error: undefined as unknown,
    promise,
  };
  promise.then(
    (v) => {
      t.settled = true;
      t.value = v;
    },
    (e) => {
      t.settled = true;
      t.error = e;
    },
  );
  return t;
}

afterEach(() => {
  vi.useRealTimers();
});

describe('RWLock: sharing and exclusion', () => {
  it('lets readers share and gives a writer exclusive access', async () => {
    const lock = new RWLock();
    const r1 = await lock.acquireRead();
    const r2 = await lock.acquireRead();
    expect(lock.state).toEqual({
      readers: 2,
      writing: false,
      queuedReaders: 0,
      queuedWriters: 0,
      bypassing: false,
    });
    const w = track(lock.acquireWrite());
    await flush();
    expect(w.settled).toBe(false);
    expect(lock.state.queuedWriters).toBe(1);
    r1.release();
    await flush();
    expect(w.settled).toBe(false);
    r2.release();
    await flush();
    expect(w.settled).toBe(true);
    expect(lock.state).toEqual({
      readers: 0,
      writing: true,
      queuedReaders: 0,
      queuedWriters: 0,
      bypassing: false,
    });
    w.value?.release();
    expect(lock.state).toEqual(IDLE);
  });

  it('tryAcquire never waits and respects holders and the queue', async () => {
    const lock = new RWLock();
    const r = lock.tryAcquireRead();
    expect(r).not.toBeNull();
    expect(lock.tryAcquireWrite()).toBeNull();
    const queuedWriter = track(lock.acquireWrite());
    // A writer is queued: a new reader must not jump it.
    expect(lock.tryAcquireRead()).toBeNull();
    r?.release();
    await flush();
    expect(queuedWriter.settled).toBe(true);
    expect(lock.tryAcquireRead()).toBeNull();
    queuedWriter.value?.release();
    const w = lock.tryAcquireWrite();
    expect(w?.mode).toBe('write');
    w?.release();
  });
});

describe('RWLock: fairness (FIFO phases, and no-convoy before bypassAfter)', () => {
  it('a queued writer blocks readers that arrive after it', async () => {
    const lock = new RWLock();
    const r1 = await lock.acquireRead();
    const w = track(lock.acquireWrite());
    const r2 = track(lock.acquireRead());
    await flush();
    expect(r2.settled).toBe(false);
    expect(lock.state).toEqual({
      readers: 1,
      writing: false,
      queuedReaders: 1,
      queuedWriters: 1,
      bypassing: false,
    });
    r1.release();
    await flush();
    expect(w.settled).toBe(true);
    expect(r2.settled).toBe(false);
    w.value?.release();
    await flush();
    expect(r2.settled).toBe(true);
    r2.value?.release();
  });

  it('readers queued before a writer all enter together when the writer ahead leaves', async () => {
    const lock = new RWLock();
    const w1 = await lock.acquireWrite();
    const order: string[] = [];
    const grab = (name: string, mode: 'read' | 'write') =>
      (mode === 'read' ? lock.acquireRead() : lock.acquireWrite()).then((lease) => {
        order.push(name);
        return lease;
      });
    const ra = track(grab('ra', 'read'));
    const rb = track(grab('rb', 'read'));
    const rc = track(grab('rc', 'read'));
    const w2 = track(grab('w2', 'write'));
    const rd = track(grab('rd', 'read'));
    w1.release();
    await flush();
    expect(order).toEqual(['ra', 'rb', 'rc']);
    expect(lock.state).toEqual({
      readers: 3,
      writing: false,
      queuedReaders: 1,
      queuedWriters: 1,
      bypassing: false,
    });
    ra.value?.release();
    rb.value?.release();
    await flush();
    expect(w2.settled).toBe(false);
    rc.value?.release();
    await flush();
    expect(order).toEqual(['ra', 'rb', 'rc', 'w2']);
    w2.value?.release();
    await flush();
    expect(order).toEqual(['ra', 'rb', 'rc', 'w2', 'rd']);
    rd.value?.release();
    expect(lock.state).toEqual(IDLE);
  });

  it('honours arrival order across modes: writers in order, nobody starves', async () => {
    const lock = new RWLock();
    const order: string[] = [];
    const jobs: Promise<void>[] = [];
    const first = await lock.acquireWrite();
    const plan: Array<['read' | 'write', string]> = [
      ['write', 'w1'],
      ['read', 'r1'],
      ['read', 'r2'],
      ['write', 'w2'],
      ['write', 'w3'],
      ['read', 'r3'],
    ];
    for (const [mode, name] of plan) {
      const run = (lease: Lease) => {
        order.push(`${name}+`);
        return new Promise<void>((resolve) =>
          setImmediate(() => {
            order.push(`${name}-`);
            lease.release();
            resolve();
          }),
        );
      };
      jobs.push((mode === 'read' ? lock.acquireRead() : lock.acquireWrite()).then(run));
    }
    first.release();
    await Promise.all(jobs);
    expect(order).toEqual([
      'w1+',
      'w1-',
      'r1+',
      'r2+',
      'r1-',
      'r2-',
      'w2+',
      'w2-',
      'w3+',
      'w3-',
      'r3+',
      'r3-',
    ]);
  });
});

describe('RWLock: abort and timeout', () => {
  it('a signal already aborted rejects with its reason without queueing', async () => {
    const lock = new RWLock();
    const held = await lock.acquireWrite();
    const reason = new Error('gave up');
    await expect(lock.acquireRead({ signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
    await expect(lock.acquireWrite({ signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
    expect(lock.state.queuedReaders + lock.state.queuedWriters).toBe(0);
    held.release();
    // Even when the lock is free, an aborted signal means "do not start".
    await expect(lock.acquireRead({ signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
  });

  it('aborting a queued waiter rejects with signal.reason and removes it at once', async () => {
    const lock = new RWLock();
    const held = await lock.acquireWrite();
    const ac = new AbortController();
    const waiter = track(lock.acquireRead({ signal: ac.signal }));
    expect(lock.state.queuedReaders).toBe(1);
    const reason = new Error('caller left');
    ac.abort(reason);
    // Removal is synchronous with the abort.
    expect(lock.state.queuedReaders).toBe(0);
    await flush();
    expect(waiter.error).toBe(reason);
    expect(getEventListeners(ac.signal, 'abort')).toHaveLength(0);
    held.release();
  });

  it('a cancelled writer wakes the readers queued behind it in the same turn', async () => {
    const lock = new RWLock();
    const reader = await lock.acquireRead();
    const ac = new AbortController();
    const writer = track(lock.acquireWrite({ signal: ac.signal }));
    const r2 = track(lock.acquireRead());
    const r3 = track(lock.acquireRead());
    expect(lock.state).toEqual({
      readers: 1,
      writing: false,
      queuedReaders: 2,
      queuedWriters: 1,
      bypassing: false,
    });
    ac.abort();
    // Same turn: the readers are granted synchronously by the abort.
    expect(lock.state).toEqual({
      readers: 3,
      writing: false,
      queuedReaders: 0,
      queuedWriters: 0,
      bypassing: false,
    });
    await flush();
    expect(writer.error).toBeInstanceOf(DOMException);
    expect((writer.error as DOMException).name).toBe('AbortError');
    expect(r2.settled && r3.settled).toBe(true);
    for (const lease of [reader, r2.value, r3.value]) lease?.release();
    expect(lock.state.readers).toBe(0);
  });

  it('a cancelled reader at the head lets the writer behind it in', async () => {
    const lock = new RWLock();
    const w0 = await lock.acquireWrite();
    const ac = new AbortController();
    const reader = track(lock.acquireRead({ signal: ac.signal }));
    const writer = track(lock.acquireWrite());
    w0.release();
    await flush();
    // The reader got in first (arrival order); the writer waits for it.
    expect(reader.settled).toBe(true);
    expect(writer.settled).toBe(false);
    ac.abort(); // too late to matter: the reader holds a lease
    await flush();
    expect(writer.settled).toBe(false);
    reader.value?.release();
    await flush();
    expect(writer.settled).toBe(true);
    writer.value?.release();
  });

  it('timeout rejects with LockTimeoutError and wakes whom the waiter blocked', async () => {
    vi.useFakeTimers();
    const lock = new RWLock({ name: 'db' });
    const reader = await lock.acquireRead();
    const writer = track(lock.acquireWrite({ timeout: 100 }));
    const r2 = track(lock.acquireRead());
    await vi.advanceTimersByTimeAsync(99);
    expect(writer.settled).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(writer.error).toBeInstanceOf(LockTimeoutError);
    const err = writer.error as LockTimeoutError;
    expect(err.code).toBe('ERR_LOCK_TIMEOUT');
    expect(err.name).toBe('LockTimeoutError');
    expect(err.timeout).toBe(100);
    expect(err.message).toContain('"db"');
    expect(r2.settled).toBe(true);
    reader.release();
    r2.value?.release();
    expect(vi.getTimerCount()).toBe(0);
  });

  it('timeout bounds waiting only, never the time the lease is held', async () => {
    vi.useFakeTimers();
    const lock = new RWLock();
    const lease = await lock.acquireWrite({ timeout: 10 });
    await vi.advanceTimersByTimeAsync(10_000);
    expect(lease.released).toBe(false);
    expect(lock.state.writing).toBe(true);
    const result = lock.write(
      () => new Promise<string>((resolve) => setTimeout(() => resolve('done'), 5_000)),
      { timeout: 50 },
    );
    lease.release();
    await vi.advanceTimersByTimeAsync(5_000);
    await expect(result).resolves.toBe('done');
  });

  it('timeout 0 means "only if free right now"', async () => {
    const lock = new RWLock();
    const lease = await lock.acquireRead({ timeout: 0 });
    await expect(lock.acquireWrite({ timeout: 0 })).rejects.toBeInstanceOf(LockTimeoutError);
    expect(lock.state.queuedWriters).toBe(0);
    lease.release();
  });

  it('a granted waiter clears its timer and its abort listener', async () => {
    const lock = new RWLock();
    const held = await lock.acquireWrite();
    const ac = new AbortController();
    const waiter = track(lock.acquireRead({ signal: ac.signal, timeout: 60_000 }));
    expect(getEventListeners(ac.signal, 'abort')).toHaveLength(1);
    held.release();
    await flush();
    expect(waiter.settled).toBe(true);
    expect(getEventListeners(ac.signal, 'abort')).toHaveLength(0);
    waiter.value?.release();
  });

  it('one long-lived signal used for many acquisitions keeps no listeners', async () => {
    const lock = new RWLock();
    const ac = new AbortController();
    for (let i = 0; i < 2_000; i++) {
      const blocker = i % 2 === 0 ? await lock.acquireWrite() : null;
      const pending = lock.acquireRead({ signal: ac.signal, timeout: 60_000 });
      blocker?.release();
      (await pending).release();
      await lock.write(() => undefined, { signal: ac.signal });
    }
    expect(getEventListeners(ac.signal, 'abort')).toHaveLength(0);
  });
});

describe('RWLock: read(fn) / write(fn)', () => {
  it('runs fn under the lease and always releases it', async () => {
    const lock = new RWLock();
    await expect(lock.read((lease) => lease.mode)).resolves.toBe('read');
    await expect(lock.write(async (lease) => lease.mode)).resolves.toBe('write');
    await expect(
      lock.write(() => {
        throw new Error('sync boom');
      }),
    ).rejects.toThrow('sync boom');
    await expect(lock.read(async () => Promise.reject(new Error('async boom')))).rejects.toThrow(
      'async boom',
    );
    expect(lock.state).toEqual(IDLE);
  });

  it('does not start fn when the signal aborted while it was queued', async () => {
    const lock = new RWLock();
    const held = await lock.acquireWrite();
    const ac = new AbortController();
    const fn = vi.fn();
    const run = track(lock.read(fn, { signal: ac.signal }));
    ac.abort(new Error('stop'));
    held.release();
    await flush();
    expect(fn).not.toHaveBeenCalled();
    expect((run.error as Error).message).toBe('stop');
    expect(lock.state.readers).toBe(0);
  });
});

describe('RWLock: revocation', () => {
  it('revoke releases at once and aborts lease.signal with the reason', async () => {
    const lock = new RWLock();
    const lease = await lock.acquireWrite();
    const signal = lease.signal;
    const next = track(lock.acquireWrite());
    const reason = new Error('stalled');
    lease.revoke(reason);
    expect(signal.aborted).toBe(true);
    expect(signal.reason).toBe(reason);
    expect(lease.revoked && lease.released).toBe(true);
    await flush();
    expect(next.settled).toBe(true);
    next.value?.release();
  });

  it('a late release() by the revoked holder cannot release someone else', async () => {
    const lock = new RWLock();
    const first = await lock.acquireWrite();
    first.revoke();
    const second = await lock.acquireWrite();
    first.release();
    first.release();
    expect(lock.state.writing).toBe(true);
    expect(second.released).toBe(false);
    const third = track(lock.acquireRead());
    await flush();
    expect(third.settled).toBe(false);
    second.release();
    await flush();
    expect(third.settled).toBe(true);
    third.value?.release();
  });

  it('the default revoke reason is a LeaseRevokedError; a signal read afterwards is aborted', async () => {
    const lock = new RWLock();
    const lease = await lock.acquireRead();
    lease.revoke();
    expect(lease.signal.aborted).toBe(true);
    expect(lease.signal.reason).toBeInstanceOf(LeaseRevokedError);
    expect((lease.signal.reason as LeaseRevokedError).code).toBe('ERR_LEASE_REVOKED');
    expect(lock.state.readers).toBe(0);
  });

  it('a normally released lease never aborts its signal, and revoke after release is a no-op', async () => {
    const lock = new RWLock();
    const lease = await lock.acquireRead();
    const signal = lease.signal;
    lease.release();
    lease.revoke(new Error('late'));
    expect(signal.aborted).toBe(false);
    expect(lease.revoked).toBe(false);
    expect(lock.state.readers).toBe(0);
  });

  it('revoking the lease inside write(fn) frees the lock while fn still runs', async () => {
    const lock = new RWLock();
    let inner: Lease | undefined;
    let finish: () => void = () => {};
    const running = lock.write(
      (lease) =>
        new Promise<void>((resolve) => {
          inner = lease;
          finish = resolve;
        }),
    );
    await flush();
    inner?.revoke();
    const other = await lock.acquireWrite({ timeout: 1_000 });
    finish();
    await running;
    // The late release by write(fn)'s finally must not free the other holder.
    expect(lock.state.writing).toBe(true);
    other.release();
  });
});

describe('RWLock: explicit resource management', () => {
  it('`using` releases a lease at the end of the block', async () => {
    const lock = new RWLock();
    {
      using lease = await lock.acquireWrite();
      expect(lease.mode).toBe('write');
      expect(lock.state.writing).toBe(true);
    }
    expect(lock.state.writing).toBe(false);
    {
      await using lease = await lock.acquireRead();
      expect(lock.state.readers).toBe(1);
      expect(lease.released).toBe(false);
    }
    expect(lock.state.readers).toBe(0);
  });
});

describe('RWLock: re-entrancy', () => {
  it('joins read in read, read in write and write in write', async () => {
    const lock = new RWLock();
    const writer = track(
      lock.write(async (outer) => {
        const a = await lock.write(async (inner) => {
          expect(inner.joined).toBe(true);
          return lock.read(async (innermost) => innermost.mode);
        });
        expect(outer.released).toBe(false);
        return a;
      }),
    );
    await flush();
    await writer.promise;
    expect(writer.value).toBe('write');
    // read in read, with a writer queued in between: joining must not deadlock behind it.
    let openGate: () => void = () => {};
    const gate = new Promise<void>((resolve) => {
      openGate = resolve;
    });
    const readerRun = lock.read(async () => {
      await gate;
      return lock.read(async (lease) => lease.joined);
    });
    await flush();
    const queued = track(lock.acquireWrite());
    await flush();
    expect(queued.settled).toBe(false);
    openGate();
    const reader = await readerRun;
    await flush();
    expect(queued.settled).toBe(true);
    queued.value?.release();
    expect(reader).toBe(true);
    await flush();
    expect(lock.state).toEqual(IDLE);
  });

  it('rejects write inside read with DeadlockError at once', async () => {
    const lock = new RWLock({ name: 'catalog' });
    const err = await lock.read(async () => {
      const nested = lock.write(async () => 'never');
      return nested.then(
        () => null,
        (e: unknown) => e,
      );
    });
    expect(err).toBeInstanceOf(DeadlockError);
    expect((err as DeadlockError).code).toBe('ERR_DEADLOCK');
    expect((err as DeadlockError).message).toContain('"catalog"');
    await lock.read(async () => {
      await expect(lock.acquireWrite()).rejects.toBeInstanceOf(DeadlockError);
    });
  });

  it('releasing a joined lease does not release the outer hold', async () => {
    const lock = new RWLock();
    await lock.write(async () => {
      const joined = await lock.acquireRead();
      expect(joined.joined).toBe(true);
      joined.release();
      expect(lock.state.writing).toBe(true);
    });
    expect(lock.state.writing).toBe(false);
  });

  it('does not join a lease that is no longer held', async () => {
    const lock = new RWLock();
    let later: Promise<boolean> | undefined;
    await lock.read(async () => {
      // A continuation that outlives the read: it must acquire for itself.
      later = new Promise((resolve) =>
        setTimeout(() => resolve(lock.write(async (lease) => lease.joined)), 5),
      );
    });
    await expect(later).resolves.toBe(false);
  });

  it('different locks do not join each other', async () => {
    const a = new RWLock();
    const b = new RWLock();
    await a.read(async () => {
      await expect(b.write(async (lease) => lease.joined)).resolves.toBe(false);
    });
  });
});

describe('RWLock: back-pressure', () => {
  it('rejects with QueueFullError beyond maxQueue, counting only queued waiters', async () => {
    const lock = new RWLock({ maxQueue: 2 });
    const held = await lock.acquireWrite();
    const a = track(lock.acquireRead());
    const b = track(lock.acquireWrite());
    const err = await lock.acquireRead().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QueueFullError);
    expect((err as QueueFullError).code).toBe('ERR_QUEUE_FULL');
    expect((err as QueueFullError).maxQueue).toBe(2);
    held.release();
    await flush();
    a.value?.release();
    await flush();
    b.value?.release();
    expect(a.settled && b.settled).toBe(true);
  });

  it('maxQueue 0 allows only immediate grants', async () => {
    const lock = new RWLock({ maxQueue: 0 });
    const r = await lock.acquireRead();
    const r2 = await lock.acquireRead();
    await expect(lock.acquireWrite()).rejects.toBeInstanceOf(QueueFullError);
    r.release();
    r2.release();
  });
});

describe('RWLock: maxReaders', () => {
  it('caps shared leases and admits queued readers in order as slots free up', async () => {
    const lock = new RWLock({ maxReaders: 2 });
    const a = await lock.acquireRead();
    const b = await lock.acquireRead();
    expect(lock.tryAcquireRead()).toBeNull();
    const c = track(lock.acquireRead());
    const w = track(lock.acquireWrite());
    const d = track(lock.acquireRead());
    await flush();
    expect(lock.state).toEqual({
      readers: 2,
      writing: false,
      queuedReaders: 2,
      queuedWriters: 1,
      bypassing: false,
    });
    a.release();
    await flush();
    expect(c.settled).toBe(true);
    expect(w.settled).toBe(false);
    b.release();
    c.value?.release();
    await flush();
    expect(w.settled).toBe(true);
    expect(d.settled).toBe(false);
    w.value?.release();
    await flush();
    expect(d.settled).toBe(true);
    d.value?.release();
    expect(lock.state).toEqual(IDLE);
  });

  it('rejects a maxReaders below 1', () => {
    expect(() => new RWLock({ maxReaders: 0 })).toThrow(/maxReaders/);
  });
});

describe('RWLock: bad input', () => {
  it('throws TypeError/RangeError at the call, naming the option', () => {
    expect(() => new RWLock({ maxQueue: -1 })).toThrow(RangeError);
    expect(() => new RWLock({ maxQueue: 1.5 })).toThrow(/maxQueue/);
    expect(() => new RWLock({ maxQueue: '3' as unknown as number })).toThrow(TypeError);
    expect(() => new RWLock({ name: 3 as unknown as string })).toThrow(/name/);
    expect(() => new RWLock(null as unknown as undefined)).toThrow(TypeError);
    expect(() => new RWLock({ fairness: 'fair' as 'fifo' })).toThrow(/"fairness"/);
    expect(() => new RWLock({ fairness: 'fair' as 'fifo' })).toThrow(RangeError);
    expect(() => new RWLock({ fairness: 1 as unknown as 'fifo' })).toThrow(TypeError);
    expect(() => new RWLock({ bypassAfter: -1 })).toThrow(/"bypassAfter"/);
    expect(() => new RWLock({ bypassAfter: Number.POSITIVE_INFINITY })).toThrow(RangeError);
    expect(() => new RWLock({ bypassAfter: Number.NaN })).toThrow(TypeError);
    expect(() => new RWLock({ bypassAfter: '5' as unknown as number })).toThrow(/bypassAfter/);
    const lock = new RWLock();
    expect(() => lock.acquireRead({ timeout: -1 })).toThrow(RangeError);
    expect(() => lock.acquireRead({ timeout: Number.POSITIVE_INFINITY })).toThrow(/timeout/);
    expect(() => lock.acquireWrite({ timeout: Number.NaN })).toThrow(TypeError);
    expect(() => lock.acquireWrite({ timeout: 2 ** 31 })).toThrow(RangeError);
    expect(() => lock.acquireRead({ signal: {} as AbortSignal })).toThrow(/signal/);
    expect(() => lock.read(null as unknown as () => void)).toThrow(/fn/);
    expect(() => lock.write('x' as unknown as () => void)).toThrow(TypeError);
    expect(() => lock.read(() => 1, { timeout: -5 })).toThrow(RangeError);
    expect(lock.state).toEqual(IDLE);
  });
});

describe('RWLock: many waiters on one signal', () => {
  it('100,000 waiters sharing one aborted signal all reject, without deep recursion', async () => {
    const lock = new RWLock();
    const holder = await lock.acquireRead();
    const ac = new AbortController();
    const waiters: Promise<Lease>[] = [lock.acquireWrite({ signal: ac.signal })];
    for (let i = 0; i < 100_000; i++) waiters.push(lock.acquireRead({ signal: ac.signal }));
    ac.abort(new Error('all gone'));
    const results = await Promise.allSettled(waiters);
    expect(results.every((r) => r.status === 'rejected')).toBe(true);
    expect(lock.state).toEqual({
      readers: 1,
      writing: false,
      queuedReaders: 0,
      queuedWriters: 0,
      bypassing: false,
    });
    expect(getEventListeners(ac.signal, 'abort')).toHaveLength(0);
    holder.release();
  });
});
