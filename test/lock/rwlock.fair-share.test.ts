/**
 * RWLock fair share (SPEC §8): queued readers take turns by `key`, within the FIFO phases.
 * Everything here counts grants and releases, never time.
 */
import { getEventListeners } from 'node:events';
import { describe, expect, it, vi } from 'vitest';
import { type AcquireOptions, type Lease, LockTimeoutError, RWLock } from '../../src/index.js';
import { flush, IDLE } from './support.js';

interface Queued {
  name: string;
  lease: Lease | undefined;
  error: unknown;
}

/** Queues a read (or write) and records, in `order`, when it is granted. */
function queue(
  lock: RWLock,
  order: string[],
  name: string,
  options: AcquireOptions = {},
  mode: 'read' | 'write' = 'read',
): Queued {
  const entry: Queued = { name, lease: undefined, error: undefined };
  const promise = mode === 'read' ? lock.acquireRead(options) : lock.acquireWrite(options);
  promise.then(
    (lease) => {
      entry.lease = lease;
      order.push(name);
    },
    (error: unknown) => {
      entry.error = error;
    },
  );
  return entry;
}

/** Releases the holders one at a time, oldest first, and then whoever they let in, until none is left. */
async function serveAll(first: Lease[], entries: Queued[]): Promise<void> {
  const seen = new Set<Lease>(first);
  const holders = [...first];
  for (let next = holders.shift(); next !== undefined; next = holders.shift()) {
    next.release();
    await flush();
    for (const e of entries) {
      if (e.lease !== undefined && !seen.has(e.lease)) {
        seen.add(e.lease);
        holders.push(e.lease);
      }
    }
  }
}

/**
 * Holds the write lease of a lock admitting one reader at a time, lets `fill` queue behind it,
 * then serves everyone one release at a time. Returns the grant order; the lock ends idle.
 */
async function servedOrder(
  fill: (add: (name: string, options?: AcquireOptions, mode?: 'read' | 'write') => void) => void,
  fairness?: 'no-convoy' | 'fifo',
): Promise<string[]> {
  const lock = new RWLock({ maxReaders: 1, fairness });
  const holder = lock.tryAcquireWrite()!;
  const order: string[] = [];
  const entries: Queued[] = [];
  fill((name, options, mode) => entries.push(queue(lock, order, name, options, mode)));
  holder.release();
  await flush();
  await serveAll([entries.find((e) => e.lease !== undefined)!.lease!], entries);
  expect(lock.state).toEqual(IDLE);
  return order;
}

describe('RWLock fair share across keys', () => {
  it('a single read of key B enters within the next 2 releases although key A has 1,000 queued', async () => {
    const lock = new RWLock({ maxReaders: 2 });
    const holders = [lock.tryAcquireRead()!, lock.tryAcquireRead()!];
    const order: string[] = [];
    const heavy = Array.from({ length: 1_000 }, (_, i) =>
      queue(lock, order, `a${i}`, { key: 'A' }),
    );
    const light = queue(lock, order, 'b', { key: 'B' });
    await flush();
    expect(lock.state.queuedReaders).toBe(1_001);

    holders.shift()!.release();
    await flush();
    expect(order).toEqual(['a0']); // A's turn was first: it queued first
    holders.shift()!.release();
    await flush();
    expect(order).toEqual(['a0', 'b']);
    expect(light.lease).toBeDefined();

    // The rest of A goes on in its own order, and everything is served.
    await serveAll([heavy[0]!.lease!, light.lease!], heavy);
    expect(order.slice(2)).toEqual(heavy.slice(1).map((e) => e.name));
    expect(lock.state).toEqual(IDLE);
  });

  it('without keys the same single read waits behind all 1,000 (what the keys fix)', async () => {
    const lock = new RWLock({ maxReaders: 2 });
    const holders = [lock.tryAcquireRead()!, lock.tryAcquireRead()!];
    const order: string[] = [];
    const heavy = Array.from({ length: 1_000 }, (_, i) => queue(lock, order, `a${i}`));
    const light = queue(lock, order, 'b');
    holders.shift()!.release();
    holders.shift()!.release();
    await flush();
    expect(order).toEqual(['a0', 'a1']);
    await serveAll([heavy[0]!.lease!, heavy[1]!.lease!], [...heavy, light]);
    expect(order.indexOf('b')).toBe(1_000);
  });

  it('three keys interleave round-robin, each in its own FIFO order', async () => {
    const order = await servedOrder((add) => {
      for (const key of ['A', 'B', 'C']) {
        for (let i = 1; i <= 3; i++) add(`${key}${i}`, { key });
      }
      add('A4', { key: 'A' });
    });
    expect(order).toEqual(['A1', 'B1', 'C1', 'A2', 'B2', 'C2', 'A3', 'B3', 'C3', 'A4']);
  });

  it('readers without a key count as one group, taking turns with each key', async () => {
    const order = await servedOrder((add) => {
      for (let i = 0; i < 4; i++) add(`n${i}`);
      add('x1', { key: 'x' });
      add('x2', { key: 'x' });
      add('y1', { key: 'y' });
    });
    expect(order).toEqual(['n0', 'x1', 'y1', 'n1', 'x2', 'n2', 'n3']);
  });

  it('keys compare like Map keys: the same object, the same number, not the same string', async () => {
    const tenant = { id: 1 };
    const order = await servedOrder((add) => {
      add('o1', { key: tenant });
      add('o2', { key: tenant });
      add('n1', { key: 1 });
      add('s1', { key: '1' });
      add('nan', { key: Number.NaN });
      add('n2', { key: 1 });
    });
    expect(order).toEqual(['o1', 'n1', 's1', 'nan', 'o2', 'n2']);
  });

  it('a write still enters after exactly the reads queued before it, and before those after it', async () => {
    for (const fairness of ['no-convoy', 'fifo'] as const) {
      const order = await servedOrder((add) => {
        add('A1', { key: 'A' });
        add('A2', { key: 'A' });
        add('B1', { key: 'B' });
        add('W', {}, 'write');
        add('C1', { key: 'C' });
        add('A3', { key: 'A' });
        add('B2', { key: 'B' });
      }, fairness);
      // Before W: the three reads queued before it, round-robin. After W: the keys take turns
      // in the arrival order of their oldest readers.
      expect(order, fairness).toEqual(['A1', 'B1', 'A2', 'W', 'C1', 'A3', 'B2']);
    }
  });

  it('a write bypassed under no-convoy lets the readers behind it take turns by key', async () => {
    vi.useFakeTimers();
    try {
      const lock = new RWLock({ maxReaders: 2, bypassAfter: 10 });
      const longRead = lock.tryAcquireRead()!;
      const order: string[] = [];
      const entries = [
        queue(lock, order, 'W', {}, 'write'),
        ...Array.from({ length: 5 }, (_, i) => queue(lock, order, `A${i}`, { key: 'A' })),
        queue(lock, order, 'B0', { key: 'B' }),
      ];
      await flush();
      expect(order).toEqual([]);
      await vi.advanceTimersByTimeAsync(10); // patience over: one slot free, A's turn first
      expect(lock.state.bypassing).toBe(true);
      expect(order).toEqual(['A0']);
      entries[1]!.lease!.release();
      await flush();
      expect(order).toEqual(['A0', 'B0']); // B's turn before A's second
      longRead.release(); // the last pre-read ends: the bypass closes
      entries[6]!.lease!.release();
      await flush();
      expect(order).toEqual(['A0', 'B0', 'W']);
      expect(lock.state).toMatchObject({ writing: true, queuedReaders: 4, bypassing: false });
      entries[0]!.lease!.release();
      await flush();
      expect(order).toEqual(['A0', 'B0', 'W', 'A1', 'A2']);
    } finally {
      vi.useRealTimers();
    }
  });

  it('aborts and timeouts in the middle of a key leave nothing behind, and the turns go on', async () => {
    vi.useFakeTimers();
    try {
      const lock = new RWLock({ maxReaders: 1 });
      const holder = lock.tryAcquireWrite()!;
      const order: string[] = [];
      const controller = new AbortController();
      const entries = [
        queue(lock, order, 'A1', { key: 'A' }),
        queue(lock, order, 'A2', { key: 'A', signal: controller.signal }),
        queue(lock, order, 'A3', { key: 'A', timeout: 5 }),
        queue(lock, order, 'A4', { key: 'A' }),
        queue(lock, order, 'B1', { key: 'B', signal: controller.signal }),
        queue(lock, order, 'C1', { key: 'C', timeout: 5 }),
        queue(lock, order, 'C2', { key: 'C' }),
      ];
      await flush();
      expect(lock.state.queuedReaders).toBe(7);
      controller.abort(new Error('gone'));
      await vi.advanceTimersByTimeAsync(5);
      expect(entries[1]!.error).toBe(controller.signal.reason);
      expect(entries[4]!.error).toBe(controller.signal.reason);
      expect(entries[2]!.error).toBeInstanceOf(LockTimeoutError);
      expect(entries[5]!.error).toBeInstanceOf(LockTimeoutError);
      expect(lock.state).toMatchObject({ writing: true, queuedReaders: 3, queuedWriters: 0 });
      expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0);
      expect(vi.getTimerCount()).toBe(0);
      holder.release();
      await flush();
      await serveAll([entries[0]!.lease!], entries);
      // B left entirely; A and C keep the places they had.
      expect(order).toEqual(['A1', 'C2', 'A4']);
      expect(lock.state).toEqual(IDLE);
    } finally {
      vi.useRealTimers();
    }
  });

  it('a reader queued from inside a grant of its own key waits for its next turn', async () => {
    const lock = new RWLock({ maxReaders: 1 });
    const holder = lock.tryAcquireWrite()!;
    const order: string[] = [];
    const more: Queued[] = [];
    const a1 = lock.acquireRead({ key: 'A' }).then((lease) => {
      order.push('A1');
      more.push(queue(lock, order, 'A2', { key: 'A' })); // re-entrant, from the grant
      return lease;
    });
    const b = queue(lock, order, 'B1', { key: 'B' });
    holder.release();
    const lease = await a1;
    lease.release();
    await flush();
    expect(order).toEqual(['A1', 'B1']);
    b.lease!.release();
    await flush();
    expect(order).toEqual(['A1', 'B1', 'A2']);
    more[0]!.lease!.release();
    expect(lock.state).toEqual(IDLE);
  });

  it('reads key once, at the call, whether the lock is free or not', async () => {
    const lock = new RWLock();
    let reads = 0;
    const counting = {
      get key(): string {
        reads++;
        return 'k';
      },
    };
    await lock.read(() => 1, counting); // free: granted at once
    const holder = lock.tryAcquireWrite()!;
    const queued = lock.read(() => 2, counting); // busy: queued
    expect(reads).toBe(2);
    holder.release();
    await expect(queued).resolves.toBe(2);
    expect(reads).toBe(2);
    const throwing = {
      get key(): never {
        throw new Error('hostile getter');
      },
    };
    expect(() => lock.read(() => 3, throwing)).toThrow('hostile getter');
    expect(() => lock.acquireRead(throwing)).toThrow('hostile getter');
    expect(lock.state).toEqual(IDLE);
  });

  it('takes key as an acquire option of every entry point, and writers accept and ignore it', async () => {
    const lock = new RWLock();
    await expect(lock.read(() => 1, { key: 'k' })).resolves.toBe(1);
    await expect(lock.write(() => 2, { key: 'k' })).resolves.toBe(2);
    (await lock.acquireWrite({ key: null })).release();
    expect(() => lock.acquireRead({ keys: 'k' } as never)).toThrow(
      /Unknown option "keys"; did you mean "key"\?/,
    );
    expect(lock.state).toEqual(IDLE);
  });
});
