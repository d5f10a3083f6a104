/**
 * close() and a connect attempt still in flight: close() resolves only once the attempt settled
 * and the handle it produced was destroyed, so that whoever frees the engine's resource after
 * close() (a DuckDB instance, a driver's pool) never frees it under a connect (DuckDB's
 * `closeSync()` then crashed the process, or hung it, in the example server's shutdown).
 */
import { DuckDBInstance } from '@duckdb/node-api';
import { describe, expect, it } from 'vitest';
import { duckdbGuardOptions } from '../../src/adapters/duckdb.js';
import { EngineGuard, GuardClosedError } from '../../src/index.js';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

describe('close() with a connect attempt in flight', () => {
  it('waits for an attempt that ignores its signal, then destroys the handle it made', async () => {
    const events: string[] = [];
    const guard = new EngineGuard<{ id: number }>({
      create: async () => {
        events.push('create:start');
        await sleep(300);
        events.push('create:end');
        return { id: 1 };
      },
      destroy: async (engine) => {
        await sleep(50);
        events.push(`destroy:${engine.id}`);
      },
      liveness: false,
    });
    const read = guard.read(() => 'never').catch((error: unknown) => error);
    await sleep(20);
    expect(events).toEqual(['create:start']);
    events.push('close');
    await guard.close();
    events.push('closed');
    expect(events).toEqual(['create:start', 'close', 'create:end', 'destroy:1', 'closed']);
    expect(await read).toBeInstanceOf(GuardClosedError);
  });

  it('destroys a handle whose setup was given up only once that setup settled', async () => {
    const events: string[] = [];
    const guard = new EngineGuard<{ id: number }>({
      create: () => ({ id: 1 }),
      setup: async () => {
        events.push('setup:start');
        await sleep(300); // ignores its signal, using the engine all along
        events.push('setup:end');
      },
      destroy: () => {
        events.push('destroy');
      },
      liveness: false,
    });
    const read = guard.read(() => 'never').catch((error: unknown) => error);
    await sleep(20);
    expect(events).toEqual(['setup:start']);
    events.push('close');
    await guard.close();
    events.push('closed');
    expect(events).toEqual(['setup:start', 'close', 'setup:end', 'destroy', 'closed']);
    expect(await read).toBeInstanceOf(GuardClosedError);
  });

  it('does not wait past an attempt that ends on its signal', async () => {
    let destroyed = 0;
    const guard = new EngineGuard<object>({
      create: ({ signal }) =>
        new Promise<object>((_, reject) => {
          signal.addEventListener('abort', () => reject(signal.reason), { once: true });
        }),
      destroy: () => {
        destroyed++;
      },
      liveness: false,
    });
    const read = guard.read(() => 'never').catch((error: unknown) => error);
    await sleep(20);
    const t0 = performance.now();
    await guard.close();
    expect(performance.now() - t0).toBeLessThan(1_000);
    expect(destroyed).toBe(0);
    expect(await read).toBeInstanceOf(GuardClosedError);
  });

  it('gives up on an attempt that never settles after closeTimeout', async () => {
    const guard = new EngineGuard<object>({
      create: () => new Promise<object>(() => {}),
      liveness: false,
      closeTimeout: 300,
    });
    const read = guard.read(() => 'never').catch((error: unknown) => error);
    await sleep(20);
    const t0 = performance.now();
    await guard.close();
    const took = performance.now() - t0;
    expect(took).toBeGreaterThanOrEqual(250);
    expect(took).toBeLessThan(5_000);
    expect(await read).toBeInstanceOf(GuardClosedError);
  });

  it('DuckDB: after close(), no connect is in flight and no connection is open', async () => {
    const leftovers: string[] = [];
    for (let i = 0; i < 60; i++) {
      const instance = await DuckDBInstance.create(':memory:');
      const base = duckdbGuardOptions(instance, {
        pool: 3,
        // A setup that runs queries, as the example server's does: closed mid-setup too.
        async setup(conn) {
          await conn.run('PRAGMA enable_progress_bar');
          await conn.run('SELECT count(*) FROM duckdb_settings()');
        },
      });
      let creating = 0;
      let open = 0;
      let settingUp = 0;
      const guard = new EngineGuard({
        ...base,
        create: async (ctx) => {
          creating++;
          try {
            const conn = await base.create(ctx);
            open++;
            return conn;
          } finally {
            creating--;
          }
        },
        setup: async (conn, ctx) => {
          settingUp++;
          try {
            await base.setup?.(conn, ctx);
          } finally {
            settingUp--;
          }
        },
        destroy: async (conn, ctx) => {
          try {
            await base.destroy?.(conn, ctx);
          } finally {
            open--;
          }
        },
      });
      const read = guard.read(() => 1).catch(() => undefined);
      // Close at different points of the connect (before, during, after).
      if (i % 6 !== 0) await sleep(i % 6);
      await guard.close();
      if (creating !== 0 || open !== 0 || settingUp !== 0) {
        leftovers.push(`run ${i}: ${creating} connecting, ${settingUp} in setup, ${open} open`);
        // Let them finish before the instance goes: closing it under them crashes the process.
        while (creating !== 0 || settingUp !== 0) await sleep(10);
        await sleep(100);
      }
      await read;
      instance.closeSync();
    }
    expect(leftovers).toEqual([]);
  }, 60_000);
});
