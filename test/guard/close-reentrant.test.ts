/**
 * Found in review (a test that failed before the fix): `close()` is documented as idempotent, every call returning the same promise,
 * but `this.#closing ??= this.#close()` assigns only after the synchronous part of `#close` ran,
 * and that part emits the `state` event (`to: 'closed'`). A listener that calls close() then
 * starts a second, nested `#close` and gets a different promise.
 */
import { describe, expect, it } from 'vitest';
import { EngineGuard } from '../../src/index.js';

describe('close() called from a state listener during close()', () => {
  it('returns the same promise to a close() made by a state listener while closing', async () => {
    const guard = new EngineGuard<number>({ create: () => 1, liveness: false });
    await guard.read(() => 1);
    let inner: Promise<void> | undefined;
    guard.on('state', (event) => {
      if (event.to === 'closed') inner = guard.close();
    });
    const outer = guard.close();
    await outer;
    await inner;
    expect(inner).toBe(outer);
  });
});
