/**
 * EngineGuard on the FakeEngine (no real server). `status().queued`: each queued op and the
 * running ops it waits for; a wait bound that runs out names them (issue 11, guard part).
 */
import { describe, expect, it, vi } from 'vitest';
import { EngineGuard, LockTimeoutError } from '../../src/index.js';
import { FakeEngineFactory } from '../../src/testing/index.js';
import { errorOf, fakeGuard, waitFor } from '../support/guard.js';

describe('status().queued', () => {
  it('lists a write waiting for every running op, and a read behind it waiting for no write', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { pool: 2, name: 'g' });
    try {
      const long = guard.read((e) => e.call('long', { duration: 400 }), { label: 'long read' });
      const other = guard.read((e) => e.call('other', { duration: 400 }), { label: 'other read' });
      await waitFor(() => guard.status().running.length === 2, 5_000, 'two reads');
      expect(guard.status().queued).toEqual([]);
      const write = guard.write((e) => e.call('ddl'), { label: 'ddl' });
      const read = guard.read((e) => e.call('short'), { label: 'short' });
      const { queued, running } = guard.status();
      expect(queued.map((q) => [q.kind, q.label])).toEqual([
        ['write', 'ddl'],
        ['read', 'short'],
      ]);
      const [w, r] = queued;
      expect(w!.waitingMs).toBeGreaterThanOrEqual(0);
      expect(w!.waitingFor.map((b) => [b.id, b.kind, b.label])).toEqual(
        running.map((op) => [op.id, 'read', op.label]),
      );
      expect(w!.waitingFor[0]!.ageMs).toBeGreaterThanOrEqual(w!.waitingFor[1]!.ageMs);
      // No write is running: the read waits behind the queued write, for no running op.
      expect(r!.waitingFor).toEqual([]);
      await expect(Promise.all([long, other, write, read])).resolves.toEqual([
        'long',
        'other',
        'ddl',
        'short',
      ]);
      expect(guard.status().queued).toEqual([]);
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('lists the running write for a queued read, and nothing for an op waiting for a handle', async () => {
    const factory = new FakeEngineFactory({ createDuration: 200 });
    const guard = fakeGuard(factory, { pool: 1 });
    try {
      const first = guard.read((e) => e.call('first'), { label: 'first' });
      // It holds its lease and waits for the handle being opened.
      expect(guard.status().queued).toMatchObject([{ label: 'first', waitingFor: [] }]);
      await first;
      const write = guard.write((e) => e.call('w', { duration: 300 }), { label: 'w' });
      await waitFor(() => guard.status().running.length === 1, 5_000, 'the write');
      const read = guard.read((e) => e.call('r'), { label: 'r' });
      const { queued, running } = guard.status();
      expect(queued).toHaveLength(1);
      expect(queued[0]!.waitingFor).toEqual([
        { id: running[0]!.id, kind: 'write', label: 'w', ageMs: expect.any(Number) },
      ]);
      await expect(Promise.all([write, read])).resolves.toEqual(['w', 'r']);
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('a write whose timeout runs out names the ops it waited for', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { pool: 2, name: 'catalog' });
    try {
      const long = guard.read((e) => e.call('long', { duration: 600 }), { label: 'count trips' });
      await waitFor(() => guard.status().running.length === 1, 5_000, 'the read');
      const error = await errorOf(
        guard.write((e) => e.call('ddl'), { timeout: 100, label: 'ddl' }),
      );
      expect(error).toBeInstanceOf(LockTimeoutError);
      const timeout = error as LockTimeoutError;
      expect(timeout.lockName).toBe('catalog');
      expect(timeout.timeout).toBe(100);
      expect(timeout.waitingFor).toMatchObject([{ id: 1, kind: 'read', label: 'count trips' }]);
      expect(timeout.waitingFor[0]!.ageMs).toBeGreaterThanOrEqual(90);
      expect(timeout.message).toMatch(/count trips/);
      expect(guard.status().counters.lockTimeouts).toBe(1);
      await expect(long).resolves.toBe('long');
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('an op aborted while queued for the lock is gone from status() in the turn of the abort', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { pool: 1 });
    try {
      const holder = guard.write((e) => e.call('holder', { duration: 300 }), { label: 'holder' });
      await waitFor(() => guard.status().running.length === 1, 5_000, 'the holder');
      const ac = new AbortController();
      const read = errorOf(guard.read((e) => e.call('r'), { signal: ac.signal, label: 'r' }));
      expect(guard.status().queued.map((q) => q.label)).toEqual(['r']);
      ac.abort(new Error('gave up'));
      // Same turn: no microtask has run since the abort.
      const { queued, queue, counters } = guard.status();
      expect(queued).toEqual([]);
      expect(queue).toEqual({ readers: 0, writers: 0, forHandle: 0 });
      expect(counters.aborts).toBe(1);
      expect(await read).toBe(ac.signal.reason);
      await expect(holder).resolves.toBe('holder');
    } finally {
      await guard.close();
    }
  }, 30_000);

  it("an op whose wait for the lock times out is gone from status() in the timer's turn", async () => {
    vi.useFakeTimers();
    const guard = new EngineGuard<object>({ create: () => ({}), liveness: false, name: 'g' });
    try {
      let release!: () => void;
      const holder = guard.write(
        () =>
          new Promise<void>((resolve) => {
            release = resolve;
          }),
        { label: 'holder' },
      );
      await vi.advanceTimersByTimeAsync(0);
      expect(guard.status().running).toHaveLength(1);
      const read = errorOf(guard.read(() => 'r', { timeout: 100, label: 'r' }));
      expect(guard.status().queued.map((q) => q.label)).toEqual(['r']);
      // Runs the lock's timer, and no microtask after it.
      vi.advanceTimersByTime(100);
      const { queued, queue, counters } = guard.status();
      expect(queued).toEqual([]);
      expect(queue.readers).toBe(0);
      expect(counters.lockTimeouts).toBe(1);
      expect(await read).toBeInstanceOf(LockTimeoutError);
      release();
      await holder;
    } finally {
      vi.useRealTimers();
      await guard.close();
    }
  }, 30_000);

  it('an op aborted while waiting for a handle is gone from status() in the turn of the abort', async () => {
    const factory = new FakeEngineFactory({ createDuration: 300 });
    const guard = fakeGuard(factory, { pool: 1 });
    try {
      const ac = new AbortController();
      const read = errorOf(guard.read((e) => e.call('r'), { signal: ac.signal, label: 'r' }));
      expect(guard.status().queued).toMatchObject([{ label: 'r', waitingFor: [] }]);
      expect(guard.status().queue.forHandle).toBe(1);
      ac.abort(new Error('gave up'));
      const { queued, queue, counters } = guard.status();
      expect(queued).toEqual([]);
      expect(queue.forHandle).toBe(0);
      expect(counters.aborts).toBe(1);
      expect(await read).toBe(ac.signal.reason);
      // Its lease went back at once: the next read is not held behind it.
      await expect(guard.read((e) => e.call('next'))).resolves.toBe('next');
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('a queued write waits for reads that hold their lease and wait for a handle, and says so', async () => {
    // The second handle takes long to open: the second read holds its lease meanwhile.
    const factory = new FakeEngineFactory({ createDuration: 5_000 });
    const guard = fakeGuard(factory, { pool: 2, name: 'g', connectTimeout: 10_000 });
    try {
      const opening = guard.read((e) => e.call('a'), { label: 'opening' });
      const { queued } = guard.status();
      expect(queued).toMatchObject([{ label: 'opening', waitingFor: [] }]);
      const write = errorOf(guard.write((e) => e.call('w'), { label: 'ddl', timeout: 100 }));
      const [, w] = guard.status().queued;
      expect(w).toMatchObject({ kind: 'write', label: 'ddl' });
      expect(w!.waitingFor).toEqual([
        {
          id: queued[0]!.id,
          kind: 'read',
          label: 'opening',
          ageMs: expect.any(Number),
          phase: 'waiting for a handle',
        },
      ]);
      const error = await write;
      expect(error).toBeInstanceOf(LockTimeoutError);
      expect((error as LockTimeoutError).waitingFor).toMatchObject([
        { label: 'opening', phase: 'waiting for a handle' },
      ]);
      expect((error as LockTimeoutError).message).toMatch(/"opening" \(waiting for a handle /);
      await guard.close();
      await errorOf(opening);
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('a queued read waits for a write that holds its lease and waits for a handle', async () => {
    const factory = new FakeEngineFactory({ createDuration: 300 });
    const guard = fakeGuard(factory, { pool: 1 });
    try {
      const write = guard.write((e) => e.call('w'), { label: 'ddl' });
      const read = guard.read((e) => e.call('r'), { label: 'r' });
      const [w, r] = guard.status().queued;
      expect(w).toMatchObject({ label: 'ddl', waitingFor: [] });
      expect(r!.waitingFor).toEqual([
        {
          id: w!.id,
          kind: 'write',
          label: 'ddl',
          ageMs: expect.any(Number),
          phase: 'waiting for a handle',
        },
      ]);
      await expect(Promise.all([write, read])).resolves.toEqual(['w', 'r']);
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('queue.forHandle counts an op waiting for the idle check of a handle', async () => {
    let releaseCheck!: () => void;
    let checks = 0;
    const guard = new EngineGuard<object>({
      create: () => ({}),
      // The check of an idle handle (no op) waits until the test lets it pass.
      probe: (_engine, { op }) => {
        if (op !== undefined) return undefined;
        checks++;
        return new Promise<void>((resolve) => {
          releaseCheck = resolve;
        });
      },
      liveness: { interval: 5_000, idleCheckAfter: 0 },
    });
    try {
      await guard.read(() => 'open the handle');
      const read = guard.read(() => 'after the check', { label: 'checked' });
      await waitFor(() => checks === 1, 5_000, 'the idle check');
      const { queued, queue } = guard.status();
      expect(queued).toMatchObject([{ label: 'checked', waitingFor: [] }]);
      expect(queue).toEqual({ readers: 0, writers: 0, forHandle: 1 });
      releaseCheck();
      await expect(read).resolves.toBe('after the check');
      expect(guard.status().queue.forHandle).toBe(0);
    } finally {
      await guard.close();
    }
  }, 30_000);
});
