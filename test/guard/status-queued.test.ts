/**
 * EngineGuard on the FakeEngine (no real server). `status().queued`: each queued op and the
 * running ops it waits for; a wait bound that runs out names them (issue 11, guard part).
 */
import { describe, expect, it } from 'vitest';
import { LockTimeoutError } from '../../src/index.js';
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
});
