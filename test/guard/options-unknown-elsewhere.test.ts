/**
 * Found in review (a test that failed before the fix): unknown option names are rejected for the guard's constructor and for
 * `read`/`write`, but not for the other public option bags: `new RWLock({...})`, the lock's
 * acquire/read/write options, and `guard.cache(loader, {...})`. A misspelled `bypasAfter`,
 * `timout` or `maxage` silently falls back to the default there (issue 7: "Misspelled options
 * ... are silently accepted").
 */
import { describe, expect, it } from 'vitest';
import { EngineGuard, RWLock } from '../../src/index.js';

describe('unknown option names outside the guard constructor', () => {
  it('new RWLock rejects a misspelled option naming it', () => {
    expect(() => new RWLock({ bypasAfter: 5 } as never)).toThrow(/bypasAfter/);
  });

  it('lock.read rejects a misspelled acquire option naming it', () => {
    const lock = new RWLock();
    expect(() => lock.read(() => 1, { timout: 5 } as never)).toThrow(/timout/);
  });

  it('guard.cache rejects a misspelled option naming it', async () => {
    const guard = new EngineGuard<number>({ create: () => 1, liveness: false });
    try {
      expect(() => guard.cache(() => 1, { maxage: 5 } as never)).toThrow(/maxage/);
    } finally {
      await guard.close();
    }
  });
});
