import { getEventListeners } from 'node:events';
import { describe, expect, it } from 'vitest';
import { EngineUnavailableError, GuardClosedError, LockTimeoutError } from '../../src/index.js';
import { backoffDelay, defaultBackoff, resolveBackoff } from '../../src/pool/backoff.js';
import { type Handle, HandlePool, type PoolHooks } from '../../src/pool/handle-pool.js';

interface Engine {
  id: number;
}

function makePool(
  overrides: Partial<PoolHooks<Engine>> = {},
  settings: Partial<ConstructorParameters<typeof HandlePool<Engine>>[0]> = {},
) {
  let next = 0;
  const log = { opened: [] as number[], destroyed: [] as number[], retired: [] as string[] };
  const hooks: PoolHooks<Engine> = {
    open: async () => {
      const engine = { id: ++next };
      log.opened.push(engine.id);
      return engine;
    },
    destroy: (engine) => {
      log.destroyed.push(engine.id);
    },
    probeIdle: undefined,
    isAlive: undefined,
    onConnect: () => {},
    onConnectError: () => {},
    onRetire: (_h, reason) => log.retired.push(reason),
    onDestroyError: () => {},
    onIdleProbe: () => {},
    onChange: () => {},
    ...overrides,
  };
  const pool = new HandlePool<Engine>(
    {
      size: 2,
      backoff: { ...defaultBackoff, initialDelay: 5, maxDelay: 20 },
      connectTimeout: 1_000,
      destroyTimeout: 200,
      idleCheckAfter: undefined,
      probeTimeout: 100,
      name: 'pool-test',
      generations: { value: 0 },
      ...settings,
    },
    hooks,
  );
  return { pool, log };
}

describe('HandlePool', () => {
  it('opens lazily, reuses idle handles and never exceeds its size', async () => {
    const { pool, log } = makePool();
    expect(log.opened).toEqual([]);
    const a = (await pool.acquire(undefined, undefined)) as Handle<Engine>;
    pool.release(a);
    const again = pool.acquire(undefined, undefined);
    expect(again).toBe(a); // synchronous reuse
    const b = await pool.acquire(undefined, undefined);
    expect(log.opened).toEqual([1, 2]);
    const third = pool.acquire(undefined, undefined);
    await new Promise((r) => setTimeout(r, 20));
    expect(log.opened).toEqual([1, 2]);
    pool.release(b);
    await expect(third).resolves.toBe(b);
    await pool.close();
  });

  it('a waiter that aborts leaves the queue; the handle opened for it goes idle', async () => {
    let openNow: () => void = () => {};
    const { pool } = makePool({
      open: () =>
        new Promise((resolve) => {
          openNow = () => resolve({ id: 7 });
        }),
    });
    const ac = new AbortController();
    const pending = pool.acquire(ac.signal, undefined);
    expect(pool.waiting).toBe(1);
    ac.abort(new Error('left'));
    await expect(pending).rejects.toThrow('left');
    expect(pool.waiting).toBe(0);
    expect(getEventListeners(ac.signal, 'abort')).toHaveLength(0);
    openNow();
    await new Promise((r) => setTimeout(r, 5));
    expect(pool.idleCount).toBe(1);
    await pool.close();
  });

  it('retries failed opens with backoff and reports EngineUnavailableError on timeout', async () => {
    let fail = true;
    const errors: unknown[] = [];
    const { pool } = makePool({
      open: async () => {
        if (fail) throw new Error('refused');
        return { id: 1 };
      },
      onConnectError: (error) => errors.push(error),
    });
    const err = await Promise.resolve(pool.acquire(undefined, 60)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(EngineUnavailableError);
    expect(((err as EngineUnavailableError).cause as Error).message).toBe('refused');
    expect(errors.length).toBeGreaterThan(1);
    expect(pool.isDown).toBe(true);
    fail = false;
    // Background retries bring it back without any caller.
    const deadline = Date.now() + 2_000;
    while (pool.isDown && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    expect(pool.isDown).toBe(false);
    expect(pool.idleCount).toBe(1);
    await pool.close();
  });

  it('times out with LockTimeoutError when nothing failed but nothing freed up', async () => {
    const { pool } = makePool({}, { size: 1 });
    const held = await pool.acquire(undefined, undefined);
    const err = await Promise.resolve(pool.acquire(undefined, 20, 500)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LockTimeoutError);
    // The caller's whole bound and the owner's name, not just the time that was left.
    expect((err as LockTimeoutError).timeout).toBe(500);
    expect((err as LockTimeoutError).lockName).toBe('pool-test');
    pool.release(held as Handle<Engine>);
    await pool.close();
  });

  it('a connect that never settles is abandoned after connectTimeout', async () => {
    let calls = 0;
    const { pool } = makePool(
      {
        open: () => {
          calls++;
          if (calls === 1) return new Promise<Engine>(() => {}); // ignores its signal
          return Promise.resolve({ id: calls });
        },
      },
      { connectTimeout: 50 },
    );
    const handle = await pool.acquire(undefined, 2_000);
    expect((handle as Handle<Engine>).engine.id).toBe(2);
    await pool.close();
  });

  it('retire takes a handle out of service at once, even if destroy never returns', async () => {
    const { pool, log } = makePool({ destroy: () => new Promise<void>(() => {}) }, { size: 1 });
    const a = (await pool.acquire(undefined, undefined)) as Handle<Engine>;
    pool.retire(a, 'stall', new Error('stalled'));
    expect(pool.busyCount).toBe(0);
    expect(pool.retiring).toBe(1);
    const b = (await pool.acquire(undefined, 1_000)) as Handle<Engine>;
    expect(b.engine.id).toBe(2);
    expect(log.retired).toEqual(['stall']);
    // destroyTimeout (200 ms) bounds the destroy that never returns.
    await pool.drained();
    expect(pool.retiring).toBe(0);
    pool.release(b);
    await pool.close();
  });

  it('replaces an idle handle whose pre-use probe fails', async () => {
    const { pool, log } = makePool(
      { probeIdle: async () => Promise.reject(new Error('half-open')) },
      { idleCheckAfter: 0, size: 1 },
    );
    const a = (await pool.acquire(undefined, undefined)) as Handle<Engine>;
    pool.release(a);
    const b = (await pool.acquire(undefined, 1_000)) as Handle<Engine>;
    expect(b.engine.id).toBe(2);
    expect(log.retired).toEqual(['idle-check']);
    pool.release(b);
    await pool.close();
  });

  it('retires idle handles that isAlive reports dead before handing one out', async () => {
    const dead = new Set<number>();
    const { pool, log } = makePool({ isAlive: (engine) => !dead.has(engine.id) });
    const a = (await pool.acquire(undefined, undefined)) as Handle<Engine>;
    const b = (await pool.acquire(undefined, undefined)) as Handle<Engine>;
    pool.release(a);
    pool.release(b);
    dead.add(b.engine.id); // b is on top of the idle stack
    expect(pool.tryAcquire()).toBe(a);
    expect(log.retired).toEqual(['fatal']);
    dead.add(a.engine.id);
    pool.release(a);
    const c = (await pool.acquire(undefined, 1_000)) as Handle<Engine>;
    expect(c.engine.id).toBe(3);
    expect(log.retired).toEqual(['fatal', 'fatal']);
    pool.release(c);
    await pool.close();
  });

  it('close rejects waiters and destroys idle handles', async () => {
    const { pool, log } = makePool({}, { size: 1 });
    const a = (await pool.acquire(undefined, undefined)) as Handle<Engine>;
    const waiting = pool.acquire(undefined, undefined);
    const closing = pool.close();
    await expect(waiting).rejects.toBeInstanceOf(GuardClosedError);
    pool.release(a); // a busy handle returned after close is destroyed, not kept
    await closing;
    await pool.drained();
    expect(log.destroyed).toEqual([1]);
    expect(pool.idleCount).toBe(0);
  });
});

describe('backoff', () => {
  it('grows exponentially, caps at maxDelay and randomises only the jitter fraction', () => {
    const policy = resolveBackoff({ initialDelay: 100, maxDelay: 1_000, factor: 2, jitter: 0.5 });
    expect(backoffDelay(policy, 1, () => 0)).toBe(100);
    expect(backoffDelay(policy, 2, () => 0)).toBe(200);
    expect(backoffDelay(policy, 3, () => 0)).toBe(400);
    expect(backoffDelay(policy, 10, () => 0)).toBe(1_000);
    expect(backoffDelay(policy, 10, () => 1)).toBe(500);
    expect(resolveBackoff(undefined)).toEqual(defaultBackoff);
  });
});
