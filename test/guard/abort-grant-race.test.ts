/**
 * Found in review (a test that failed before the fix): a caller that aborts in the turn between its lease being granted and the guard
 * starting it. `Admission.#onHandle` checks `callerSignal.aborted` for exactly this window, but
 * `Admission.#onLease` (lease granted, handle idle) does not: fn starts for a caller that already
 * gave up, and as the signal's abort event has already fired, the caller is not answered until
 * fn ends on its own.
 */
import { describe, expect, it } from 'vitest';
import { FakeEngineFactory } from '../../src/testing/index.js';
import { fakeGuard, flush } from '../support/guard.js';

describe('abort racing the lease grant', () => {
  it('a caller that aborts after its lease is granted but before it starts never runs fn and is rejected with its reason', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { pool: 1, liveness: undefined });
    let stop: () => void = () => {};
    const forever = new Promise<void>((resolve) => {
      stop = resolve;
    });
    try {
      await guard.read(() => 'warm'); // one idle handle from now on
      // A write whose fn returns a thenable we settle by hand: settling it synchronously ends the
      // write, which releases its lease, which grants the queued read (resolution queued).
      let endWrite: (value: unknown) => void = () => {};
      const writer = guard.write(() => ({
        // biome-ignore lint/suspicious/noThenProperty: a thenable settled by hand, synchronously
        then(resolve: (value: unknown) => void) {
          endWrite = resolve;
        },
      }));
      await flush();
      const ac = new AbortController();
      const reason = new Error('gave up');
      let ran = false;
      const read = guard.read(
        () => {
          ran = true;
          return forever; // runs until the test ends
        },
        { signal: ac.signal },
      );
      const outcome = read.then(
        () => 'resolved',
        (error: unknown) => error,
      );
      expect(guard.status().queue.readers).toBe(1);
      endWrite('w'); // the lock grants the read now; the guard reacts in a later microtask
      ac.abort(reason); // the caller gives up before that reaction
      await writer;
      const settled = await Promise.race([
        outcome,
        new Promise((resolve) => setTimeout(() => resolve('still pending'), 500)),
      ]);
      expect({ ran, settled }).toEqual({ ran: false, settled: reason });
    } finally {
      stop();
      await guard.close();
    }
  }, 30_000);
});
