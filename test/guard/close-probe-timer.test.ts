/**
 * Found in review (a test that failed before the fix): close() stops the watchdog (`Watchdog.stop` disarms its tick timer) but not a
 * probe in flight: the probe's timeout timer (ref'd, `liveness.timeout` long) stays armed after
 * close() resolved, and the probe's `signal` is never aborted, so a probe stuck on a wedged
 * engine keeps running (and keeps the process alive) after the guard is closed.
 *
 * On fake timers: every timer counted is one the guard made (a count of the process's timers
 * also sees the test runner's, which come and go under load), and the watchdog's tick comes when
 * the test says so.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { EngineGuard } from '../../src/index.js';

describe('close() with a probe in flight', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('close() aborts a probe in flight and leaves no timer of its own behind', async () => {
    let probeSignal: AbortSignal | undefined;
    let stopFn: () => void = () => {};
    const fnDone = new Promise<void>((resolve) => {
      stopFn = resolve;
    });
    const guard = new EngineGuard<number>({
      create: () => 1,
      probe: (_engine, { signal }) => {
        probeSignal = signal;
        return new Promise(() => {}); // the engine is wedged: the probe never answers
      },
      liveness: { interval: 20, timeout: 20_000, failures: 3 },
      closeTimeout: 200,
      destroyTimeout: 200,
    });
    const op = guard.read(() => fnDone).catch((error: unknown) => error);
    await vi.advanceTimersByTimeAsync(20); // the watchdog's tick: the op is silent, probe it
    expect(probeSignal?.aborted).toBe(false);
    expect(vi.getTimerCount()).toBeGreaterThan(0); // the probe's timeout, at least
    const closing = guard.close();
    stopFn(); // fn ends with the close, so nothing of the op itself remains
    await closing;
    await op;
    expect({ probeAborted: probeSignal?.aborted, timers: vi.getTimerCount() }).toEqual({
      probeAborted: true,
      timers: 0,
    });
  }, 30_000);
});
