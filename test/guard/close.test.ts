/**
 * EngineGuard on the FakeEngine (no real server). close(): queued ops, running ops, hooks that never settle.
 * Timing margins are generous on purpose (noisy 2-core machines); assertions are on behaviour.
 */
import { describe, expect, it } from 'vitest';
import { EngineGuard, GuardClosedError, type OpContext } from '../../src/index.js';
import { type FakeEngine, FakeEngineFactory } from '../../src/testing/index.js';
import { activeTimeouts, errorOf, fakeGuard, waitFor } from '../support/guard.js';

describe('h. close()', () => {
  it('rejects queued ops, aborts running ones, destroys handles and is idempotent', async () => {
    const before = activeTimeouts();
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, {
      pool: 1,
      closeTimeout: 1_000,
      destroyTimeout: 300,
      cancelTimeout: 300,
    });
    await guard.read((e) => e.call('warm'));
    // A running op that ignores its signal and never returns.
    factory.created[0]!.nextCall('ignore-abort');
    let runningCtx: OpContext | undefined;
    const running = guard.read((e, ctx) => {
      runningCtx = ctx;
      return e.call('x', { signal: ctx.signal, duration: 60_000 });
    });
    await waitFor(() => guard.status().running.length === 1, 5_000, 'the running op');
    const runningError = errorOf(running).then((error) => ({ error, at: performance.now() }));
    const queuedOps = [
      guard.read((e) => e.call('q1')),
      guard.write((e) => e.call('q2')),
      guard.read((e) => e.call('q3')),
    ].map(errorOf);
    expect(guard.status().queue).toMatchObject({ readers: 2, writers: 1 });

    const t0 = performance.now();
    const closing = guard.close();
    expect(guard.close()).toBe(closing);
    expect(guard[Symbol.asyncDispose]()).toBe(closing);
    expect(guard.closed).toBe(true);

    const { error, at } = await runningError;
    expect(error).toBeInstanceOf(GuardClosedError);
    expect(at - t0).toBeLessThan(100);
    expect(runningCtx?.signal.aborted).toBe(true);
    expect(runningCtx?.signal.reason).toBeInstanceOf(GuardClosedError);
    for (const queuedError of await Promise.all(queuedOps)) {
      expect(queuedError).toBeInstanceOf(GuardClosedError);
    }
    await closing;
    expect(performance.now() - t0).toBeLessThan(1_000 + 500);
    expect(factory.live).toBe(0);
    expect(guard.status()).toMatchObject({
      state: 'closed',
      running: [],
      queue: { readers: 0, writers: 0, forHandle: 0 },
      handles: { total: 0 },
    });
    await expect(guard.read((e) => e.call('late'))).rejects.toBeInstanceOf(GuardClosedError);
    await expect(guard.write((e) => e.call('late'))).rejects.toBeInstanceOf(GuardClosedError);
    await expect(guard.close()).resolves.toBeUndefined();
    // Nothing of the guard keeps the process alive.
    await waitFor(() => activeTimeouts() <= before, 2_000, 'the guard timers to be gone');
  }, 30_000);

  it('bounds a create that never settles', async () => {
    const before = activeTimeouts();
    let creates = 0;
    const guard = new EngineGuard<FakeEngine>({
      create: () => {
        creates++;
        return new Promise<FakeEngine>(() => {}); // ignores its signal too
      },
      closeTimeout: 300,
    });
    const waiting = errorOf(guard.read((e) => e.call('x')));
    await waitFor(() => creates === 1, 5_000, 'the create');
    expect(guard.status().handles.connecting).toBe(1);
    const t0 = performance.now();
    await guard.close();
    expect(performance.now() - t0).toBeLessThan(300 + 500);
    expect(await waiting).toBeInstanceOf(GuardClosedError);
    expect(guard.status().handles.connecting).toBe(0);
    await waitFor(() => activeTimeouts() <= before, 2_000, 'the guard timers to be gone');
  }, 30_000);

  it('bounds a destroy that never settles', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, {
      destroy: () => new Promise<void>(() => {}),
      destroyTimeout: 200,
      closeTimeout: 2_000,
    });
    await guard.read((e) => e.call('warm'));
    const t0 = performance.now();
    await guard.close();
    expect(performance.now() - t0).toBeLessThan(200 + 500);
  }, 30_000);
});
