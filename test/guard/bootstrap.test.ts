import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { EngineGuard, type EngineGuardOptions } from '../../src/index.js';
import { errorOf } from '../support/guard.js';

interface Conn {
  generation: number;
}

function guardWith(log: string[], extra: Partial<EngineGuardOptions<Conn>>): EngineGuard<Conn> {
  return new EngineGuard<Conn>({
    create: ({ generation }) => {
      log.push(`create ${generation}`);
      return { generation };
    },
    setup: (conn) => {
      log.push(`setup ${conn.generation}`);
    },
    reconnect: { initialDelay: 5, maxDelay: 10, jitter: 0 },
    ...extra,
  });
}

describe('bootstrap', () => {
  it('runs once, before any setup, across concurrent first ops', async () => {
    const log: string[] = [];
    const guard = guardWith(log, {
      pool: 4,
      bootstrap: async (conn) => {
        log.push(`bootstrap on ${conn.generation}`);
        await sleep(20);
        log.push('bootstrap done');
      },
    });
    await Promise.all(Array.from({ length: 4 }, () => guard.read(() => sleep(10))));
    expect(log.filter((line) => line.startsWith('bootstrap on'))).toHaveLength(1);
    const done = log.indexOf('bootstrap done');
    const setups = log.flatMap((line, i) => (line.startsWith('setup') ? [i] : []));
    expect(setups).toHaveLength(4);
    for (const at of setups) expect(at).toBeGreaterThan(done);
    await guard.close();
  });

  it('does not run again when a handle is replaced', async () => {
    const log: string[] = [];
    let bootstraps = 0;
    const guard = guardWith(log, {
      isFatal: () => true,
      bootstrap: () => {
        bootstraps++;
      },
    });
    await errorOf(
      guard.read(() => {
        throw new Error('connection lost');
      }),
    );
    const conn = await guard.read((c) => c);
    expect(conn.generation).toBe(2);
    expect(bootstraps).toBe(1);
    expect(log.filter((line) => line.startsWith('setup'))).toEqual(['setup 1', 'setup 2']);
    await guard.close();
  });

  it('is retried with the reconnect backoff when it fails, and no setup runs before it succeeds', async () => {
    const log: string[] = [];
    let bootstraps = 0;
    const guard = guardWith(log, {
      bootstrap: () => {
        bootstraps++;
        log.push(`bootstrap ${bootstraps}`);
        if (bootstraps < 3) throw new Error('catalog not reachable yet');
      },
    });
    const connectErrors: unknown[] = [];
    guard.on('connectError', ({ error }) => connectErrors.push(error));
    const conn = await guard.read((c) => c);
    expect(bootstraps).toBe(3);
    expect(connectErrors).toHaveLength(2);
    expect(log.filter((line) => line.startsWith('setup'))).toEqual([`setup ${conn.generation}`]);
    expect(log.indexOf(`setup ${conn.generation}`)).toBeGreaterThan(log.indexOf('bootstrap 3'));
    await guard.close();
  });

  it('a bootstrap that never settles is bounded by connectTimeout', async () => {
    const log: string[] = [];
    let bootstraps = 0;
    const guard = guardWith(log, {
      connectTimeout: 50,
      bootstrap: () => {
        bootstraps++;
        if (bootstraps === 1) return new Promise<void>(() => {});
      },
    });
    const conn = await guard.read((c) => c);
    expect(bootstraps).toBe(2);
    expect(conn.generation).toBe(2);
    await guard.close();
  });
});
