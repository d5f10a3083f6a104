import { describe, expect, it } from 'vitest';
import { EngineGuard, LockTimeoutError } from '../../src/index.js';
import { errorOf } from '../support/guard.js';

describe('a session op whose lock wait runs out', () => {
  it('names the timeout its caller gave, not what was left of it when it left the session queue', async () => {
    const guard = new EngineGuard<{ id: number }>({
      create: ({ generation }) => ({ id: generation }),
      pool: 1,
      maxSessions: 1,
    });
    let release!: () => void;
    const holding = guard.write(() => new Promise<void>((resolve) => (release = resolve)));
    const session = guard.session({ label: 'waits' });
    // A session read waits for the running write (writes are exclusive guard-wide).
    const error = await errorOf(session.read(() => 'never', { timeout: 150 }));
    expect(error).toBeInstanceOf(LockTimeoutError);
    expect((error as LockTimeoutError).timeout).toBe(150);
    expect((error as LockTimeoutError).message).toMatch(/^Timed out after 150 ms/);
    release();
    await holding;
    await session.close();
    await guard.close();
  });
});
