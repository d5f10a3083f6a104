/**
 * Found in review (a test that failed before the fix): close() stops the watchdog (`Watchdog.stop` disarms its tick timer) but not a
 * probe in flight: the probe's timeout timer (ref'd, `liveness.timeout` long) stays armed after
 * close() resolved, and the probe's `signal` is never aborted, so a probe stuck on a wedged
 * engine keeps running (and keeps the process alive) after the guard is closed.
 */
import { describe, expect, it } from 'vitest';
import { EngineGuard } from '../../src/index.js';
import { activeTimeouts, waitFor } from '../support/guard.js';

describe('close() with a probe in flight', () => {
  it('close() aborts a probe in flight and leaves no timer of its own behind', async () => {
    const before = activeTimeouts();
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
    await waitFor(() => probeSignal !== undefined, 5_000, 'a probe in flight');
    const closing = guard.close();
    stopFn(); // fn ends with the close, so nothing of the op itself remains
    await closing;
    await op;
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect({ probeAborted: probeSignal?.aborted, timers: activeTimeouts() - before }).toEqual({
      probeAborted: true,
      timers: 0,
    });
  }, 30_000);
});
