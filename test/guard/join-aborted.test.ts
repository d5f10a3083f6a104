/**
 * Found in review (a test that failed before the fix): a nested guard call that joins its outer op ignores an already-aborted
 * `signal` and runs fn. The lock rejects such a joined call (issue 7, item 9: "A joined
 * lock.read(fn, { signal }) runs fn although signal is already aborted"); the guard has the same
 * bug: `EngineGuard.#op` joins before it looks at `settings.signal`.
 */
import { describe, expect, it } from 'vitest';
import { RWLock } from '../../src/index.js';
import { FakeEngineFactory } from '../../src/testing/index.js';
import { fakeGuard } from '../support/guard.js';

describe('joined call with an aborted signal', () => {
  it('the lock rejects a joined read whose signal is already aborted (reference behaviour)', async () => {
    const lock = new RWLock();
    const reason = new Error('gave up');
    let ran = false;
    const outcome = await lock.read(() =>
      lock
        .read(
          () => {
            ran = true;
          },
          { signal: AbortSignal.abort(reason) },
        )
        .catch((error: unknown) => error),
    );
    expect({ ran, outcome }).toEqual({ ran: false, outcome: reason });
  });

  it('a nested guard.read that joins its outer op rejects with signal.reason and does not run fn when its signal is already aborted', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { pool: 1, liveness: undefined });
    try {
      const reason = new Error('gave up');
      let ran = false;
      const outcome = await guard.read(() =>
        guard
          .read(
            () => {
              ran = true;
              return 'inner ran';
            },
            { signal: AbortSignal.abort(reason) },
          )
          .catch((error: unknown) => error),
      );
      expect({ ran, outcome }).toEqual({ ran: false, outcome: reason });
    } finally {
      await guard.close();
    }
  });
});
