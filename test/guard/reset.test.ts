import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { EngineGuard, type EngineGuardOptions, HookTimeoutError } from '../../src/index.js';
import { errorOf, flush, waitFor } from '../support/guard.js';

interface Conn {
  generation: number;
  /** State an op leaves behind (a temp table, a SET). */
  dirty: string[];
  destroyed: boolean;
}

function guardWith(extra: Partial<EngineGuardOptions<Conn>>): EngineGuard<Conn> {
  return new EngineGuard<Conn>({
    create: ({ generation }) => ({ generation, dirty: [], destroyed: false }),
    destroy: (conn) => {
      conn.destroyed = true;
    },
    ...extra,
  });
}

describe('reset', () => {
  it('cleans a shared handle before it serves the next caller', async () => {
    const seen: string[][] = [];
    const guard = guardWith({
      reset: async (conn) => {
        await sleep(20);
        conn.dirty.length = 0;
      },
    });
    const first = guard.write(async (conn) => {
      conn.dirty.push('temp table of caller 1');
      await sleep(5);
    });
    const second = guard.read((conn) => seen.push([...conn.dirty]));
    await Promise.all([first, second]);
    expect(seen).toEqual([[]]);
    await guard.close();
  });

  it('is told which op used the handle and how it ended', async () => {
    const calls: { kind: string; label: string | undefined; ok: boolean }[] = [];
    const guard = guardWith({
      reset: (_conn, { op, ok }) => {
        calls.push({ kind: op.kind, label: op.label, ok });
      },
    });
    await guard.read(() => 1, { label: 'a' });
    await errorOf(
      guard.write(
        () => {
          throw new Error('boom');
        },
        { label: 'b' },
      ),
    );
    expect(calls).toEqual([
      { kind: 'read', label: 'a', ok: true },
      { kind: 'write', label: 'b', ok: false },
    ]);
    await guard.close();
  });

  it('gives the handle back in the same turn when it answers synchronously', async () => {
    const guard = guardWith({ reset: () => undefined });
    await guard.read(() => 1);
    expect(guard.status().handles).toMatchObject({ idle: 1, busy: 0 });
    await guard.close();
  });

  it('retires the handle when it fails, and the next op gets a fresh one', async () => {
    const errors: unknown[] = [];
    const replaced: string[] = [];
    let fail = true;
    const guard = guardWith({
      reset: () => {
        if (fail) {
          fail = false;
          return Promise.reject(new Error('server closed the connection'));
        }
      },
    });
    guard.on('resetError', ({ error }) => errors.push(error));
    guard.on('replace', ({ reason }) => replaced.push(reason));
    const first = await guard.read((conn) => conn);
    const second = await guard.read((conn) => conn);
    expect(second).not.toBe(first);
    expect(second.generation).toBeGreaterThan(first.generation);
    await waitFor(() => first.destroyed, 2_000, 'destroy of the handle whose reset failed');
    expect(errors).toHaveLength(1);
    expect(replaced).toEqual(['reset']);
    expect(guard.status().counters.replacements).toBe(1);
    await guard.close();
  });

  it('retires the handle when it throws synchronously', async () => {
    let calls = 0;
    const guard = guardWith({
      reset: () => {
        calls++;
        if (calls === 1) throw new Error('sync failure');
      },
    });
    const first = await guard.read((conn) => conn);
    const second = await guard.read((conn) => conn);
    expect(second).not.toBe(first);
    await guard.close();
  });

  it('bounds a reset that never settles by resetTimeout and aborts its signal', async () => {
    let signal: AbortSignal | undefined;
    let calls = 0;
    const errors: unknown[] = [];
    const guard = guardWith({
      resetTimeout: 50,
      reset: (_conn, ctx) => {
        calls++;
        if (calls > 1) return;
        signal = ctx.signal;
        return new Promise<void>(() => {});
      },
    });
    guard.on('resetError', ({ error }) => errors.push(error));
    const first = await guard.read((conn) => conn);
    const second = await guard.read((conn) => conn);
    expect(second).not.toBe(first);
    expect(signal?.aborted).toBe(true);
    expect(errors[0]).toBeInstanceOf(HookTimeoutError);
    expect((errors[0] as HookTimeoutError).hook).toBe('reset');
    // Destroyed at once: the guard does not wait any longer for a reset that overran its bound.
    await waitFor(() => first.destroyed, 1_000, 'destroy of the handle whose reset hung');
    await guard.close();
  });

  it('does not run on a handle retired by a fatal error', async () => {
    let resets = 0;
    const guard = guardWith({
      isFatal: () => true,
      reset: () => {
        resets++;
      },
    });
    await errorOf(
      guard.read(() => {
        throw new Error('connection reset');
      }),
    );
    expect(resets).toBe(0);
    await guard.close();
  });

  it('runs after an op its caller aborted, once the engine wound it down', async () => {
    let resets = 0;
    const guard = guardWith({
      reset: () => {
        resets++;
      },
    });
    const controller = new AbortController();
    const op = guard.read(
      (_conn, ctx) =>
        new Promise((_resolve, reject) => {
          ctx.signal.addEventListener('abort', () =>
            setTimeout(() => reject(ctx.signal.reason), 10),
          );
        }),
      { signal: controller.signal },
    );
    await flush();
    controller.abort(new Error('caller gave up'));
    await errorOf(op);
    await waitFor(() => resets === 1, 2_000, 'reset after the cancelled op');
    await guard.close();
  });

  it('close() aborts a reset in flight and waits for its handle to be destroyed', async () => {
    let signal: AbortSignal | undefined;
    let conn: Conn | undefined;
    const guard = guardWith({
      reset: (c, ctx) => {
        conn = c;
        signal = ctx.signal;
        return new Promise<void>((resolve) =>
          ctx.signal.addEventListener('abort', () => resolve()),
        );
      },
    });
    await guard.read(() => 1);
    expect(guard.status().handles.busy).toBe(1);
    await guard.close();
    expect(signal?.aborted).toBe(true);
    expect(conn?.destroyed).toBe(true);
  });

  it('is validated', () => {
    expect(() => guardWith({ reset: 1 as never })).toThrow(TypeError);
    expect(() => guardWith({ resetTimeout: 0 })).toThrow(RangeError);
  });
});
