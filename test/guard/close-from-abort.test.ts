/**
 * Found in review (a test that failed before the fix): close() called from inside the `cancel` hook. `EngineGuard.#onCallerAbort`
 * calls `cancel` while the op is still `running` and moves it to `cancelling` only afterwards;
 * a close() inside the hook moves the op to `closed` first, so `op.to({ tag: 'cancelling' })`
 * throws IllegalTransitionError out of the caller's abort listener (an uncaught exception), and
 * the grace timer built in the argument object is left armed.
 */
import { describe, expect, it } from 'vitest';
import { EngineGuard, GuardClosedError } from '../../src/index.js';

describe('close() from inside the cancel hook', () => {
  it('a cancel hook that closes the guard neither throws out of the abort nor leaves the op half-moved', async () => {
    let guard: EngineGuard<number> | undefined;
    let closing: Promise<void> | undefined;
    guard = new EngineGuard<number>({
      create: () => 1,
      cancel: () => {
        // e.g. the engine looks gone: shut everything down
        closing = guard?.close();
      },
      liveness: false,
      cancelTimeout: 100,
      closeTimeout: 500,
    });
    let stop: () => void = () => {};
    const fnDone = new Promise<void>((resolve) => {
      stop = resolve;
    });
    const ac = new AbortController();
    const reason = new Error('stop');
    const op = guard.read(() => fnDone, { signal: ac.signal }).catch((error: unknown) => error);
    await new Promise((resolve) => setTimeout(resolve, 20));
    let thrown: unknown;
    try {
      // The guard's abort listener runs synchronously in abort(); EventTarget reports what it
      // throws as an uncaught exception, so look for it around the call as well.
      const onError = (error: unknown) => {
        thrown = error;
      };
      process.prependOnceListener('uncaughtException', onError);
      ac.abort(reason);
      await new Promise((resolve) => setTimeout(resolve, 20));
      process.removeListener('uncaughtException', onError);
    } catch (error) {
      thrown = error;
    }
    stop();
    const outcome = await op;
    await closing;
    expect(thrown).toBeUndefined();
    expect(outcome === reason || outcome instanceof GuardClosedError).toBe(true);
    expect(guard.status().state).toBe('closed');
  }, 30_000);

  it('a ctx.signal listener that closes the guard on caller abort neither throws out of the abort nor leaves the op half-moved', async () => {
    const guard = new EngineGuard<number>({
      create: () => 1,
      liveness: false,
      cancelTimeout: 100,
      closeTimeout: 500,
    });
    let stop: () => void = () => {};
    const fnDone = new Promise<void>((resolve) => {
      stop = resolve;
    });
    let closing: Promise<void> | undefined;
    const ac = new AbortController();
    const op = guard
      .read(
        (_engine, ctx) => {
          ctx.signal.addEventListener('abort', () => {
            closing = guard.close();
          });
          return fnDone;
        },
        { signal: ac.signal },
      )
      .catch((error: unknown) => error);
    await new Promise((resolve) => setTimeout(resolve, 20));
    let thrown: unknown;
    const onError = (error: unknown) => {
      thrown = error;
    };
    process.prependOnceListener('uncaughtException', onError);
    ac.abort(new Error('stop'));
    await new Promise((resolve) => setTimeout(resolve, 20));
    process.removeListener('uncaughtException', onError);
    stop();
    await op;
    await closing;
    expect(thrown).toBeUndefined();
  }, 30_000);
});
