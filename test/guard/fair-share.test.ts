/**
 * EngineGuard fair share (SPEC §8, issue 9): queued reads take turns by the op option `key`.
 * Ops wait on gates the test opens one at a time, so everything is counted in completions, never
 * in time.
 */
import { getEventListeners } from 'node:events';
import { describe, expect, it } from 'vitest';
import { LockTimeoutError, type OpOptions } from '../../src/index.js';
import { FakeEngineFactory } from '../../src/testing/index.js';
import { errorOf, type FakeGuard, fakeGuard, queued, waitFor } from '../support/guard.js';

/** Ops that start, record their name, and end when the test says so. */
class Gates {
  readonly started: string[] = [];
  readonly #open = new Map<string, () => void>();

  constructor(readonly guard: FakeGuard) {}

  read(name: string, options?: OpOptions): Promise<unknown> {
    return this.guard.read(() => this.#gate(name), options);
  }

  write(name: string, options?: OpOptions): Promise<unknown> {
    return this.guard.write(() => this.#gate(name), options);
  }

  #gate(name: string): Promise<string> {
    this.started.push(name);
    return new Promise((resolve) => this.#open.set(name, () => resolve(name)));
  }

  /** Waits until `n` ops have started in all. */
  running(n: number): Promise<void> {
    return waitFor(() => this.started.length >= n, 5_000, `${n} ops started`);
  }

  /** Ends the running op `name` and waits until `then` ops have started in all. */
  async complete(name: string, then: number): Promise<void> {
    const open = this.#open.get(name);
    if (open === undefined) throw new Error(`${name} is not running`);
    this.#open.delete(name);
    open();
    await this.running(then);
  }

  /** Ends the running ops one by one, oldest first, until nothing is left to start. */
  async drain(total: number): Promise<void> {
    while (this.#open.size > 0) {
      const [name, open] = this.#open.entries().next().value as [string, () => void];
      this.#open.delete(name);
      open();
      if (this.started.length < total) {
        await waitFor(() => this.#open.size > 0, 5_000, 'the next op');
      }
    }
  }
}

/** Runs `body` with gates on a fresh guard of `pool` handles, and closes the guard. */
async function withGates(pool: number, body: (gates: Gates) => Promise<void>): Promise<void> {
  const guard = fakeGuard(new FakeEngineFactory(), { pool });
  try {
    await body(new Gates(guard));
  } finally {
    await guard.close();
  }
}

describe('EngineGuard fair share across keys', () => {
  it('pool 2: key A has 1,000 queued reads, key B one read: B starts within the next 2 completions', async () => {
    await withGates(2, async (gates) => {
      const heavy = Array.from({ length: 1_000 }, (_, i) => gates.read(`a${i}`, { key: 'A' }));
      await gates.running(2);
      expect(queued(gates.guard)).toBe(998);
      const light = gates.read('b', { key: 'B' });
      await gates.complete('a0', 3);
      await gates.complete('a1', 4);
      expect(gates.started.slice(0, 4)).toContain('b');
      await gates.drain(1_001);
      await expect(light).resolves.toBe('b');
      await expect(Promise.all(heavy)).resolves.toHaveLength(1_000);
      expect(gates.started.filter((n) => n !== 'b')).toEqual(heavy.map((_, i) => `a${i}`));
      expect(queued(gates.guard)).toBe(0);
    });
  }, 60_000);

  it('pool 2 without keys: the same single read starts only after every earlier read', async () => {
    await withGates(2, async (gates) => {
      const heavy = Array.from({ length: 20 }, (_, i) => gates.read(`a${i}`));
      await gates.running(2);
      const light = gates.read('b');
      await gates.drain(21);
      await Promise.all([light, ...heavy]);
      expect(gates.started.indexOf('b')).toBe(20);
    });
  }, 30_000);

  it('three keys interleave round-robin; a keyless crowd is one more group', async () => {
    await withGates(1, async (gates) => {
      const all = [gates.read('hold')];
      await gates.running(1);
      for (const key of ['A', 'B', 'C']) {
        for (let i = 1; i <= 2; i++) all.push(gates.read(`${key}${i}`, { key }));
      }
      for (let i = 1; i <= 3; i++) all.push(gates.read(`n${i}`));
      await gates.drain(all.length);
      await Promise.all(all);
      expect(gates.started).toEqual(['hold', 'A1', 'B1', 'C1', 'n1', 'A2', 'B2', 'C2', 'n2', 'n3']);
    });
  }, 30_000);

  it('a queued write keeps its FIFO place: after the reads queued before it, before the ones after', async () => {
    await withGates(1, async (gates) => {
      const all = [gates.read('hold')];
      await gates.running(1);
      all.push(
        gates.read('A1', { key: 'A' }),
        gates.read('A2', { key: 'A' }),
        gates.read('B1', { key: 'B' }),
        gates.write('W', { key: 'A' }), // writers accept a key and ignore it
        gates.read('C1', { key: 'C' }),
        gates.read('A3', { key: 'A' }),
      );
      await gates.drain(all.length);
      await Promise.all(all);
      expect(gates.started).toEqual(['hold', 'A1', 'B1', 'A2', 'W', 'C1', 'A3']);
    });
  }, 30_000);

  it('aborts and timeouts in the middle of a key leave nothing behind', async () => {
    await withGates(1, async (gates) => {
      const hold = gates.read('hold');
      await gates.running(1);
      const controller = new AbortController();
      const a1 = gates.read('A1', { key: 'A' });
      const a2 = errorOf(gates.read('A2', { key: 'A', signal: controller.signal }));
      const a3 = errorOf(gates.read('A3', { key: 'A', timeout: 20 }));
      const a4 = gates.read('A4', { key: 'A' });
      const b1 = errorOf(gates.read('B1', { key: 'B', signal: controller.signal }));
      const c1 = gates.read('C1', { key: 'C' });
      expect(gates.guard.status().queue).toEqual({ readers: 6, writers: 0, forHandle: 0 });
      controller.abort(new Error('caller left'));
      await expect(a2).resolves.toBe(controller.signal.reason);
      await expect(b1).resolves.toBe(controller.signal.reason);
      await expect(a3).resolves.toBeInstanceOf(LockTimeoutError);
      expect(gates.guard.status().queue).toEqual({ readers: 3, writers: 0, forHandle: 0 });
      expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0);
      await gates.drain(4);
      await Promise.all([hold, a1, a4, c1]);
      expect(gates.started).toEqual(['hold', 'A1', 'C1', 'A4']);
      expect(gates.guard.status().queue).toEqual({ readers: 0, writers: 0, forHandle: 0 });
    });
  }, 30_000);

  it('validates key at the call: a string or a number, else a TypeError naming it', async () => {
    const guard = fakeGuard(new FakeEngineFactory());
    try {
      for (const bad of [null, {}, true, Symbol('k'), 1n]) {
        expect(() => guard.read(() => 1, { key: bad as never })).toThrow(
          /The "key" option must be a string or a number/,
        );
      }
      expect(() => guard.read(() => 1, { keys: 'a' } as never)).toThrow(/did you mean "key"/);
      await expect(guard.read(() => 1, { key: 'tenant-1' })).resolves.toBe(1);
      await expect(guard.write(() => 2, { key: 7 })).resolves.toBe(2);
    } finally {
      await guard.close();
    }
  });
});
