import { setTimeout as sleep } from 'node:timers/promises';
import { expect, it } from 'vitest';
import { EngineGuard, EngineUnavailableError } from '../../src/index.js';

interface Conn {
  generation: number;
}

// Found by the churn test (seed -1117182852): the engine was declared down when its last handle
// was retired, at a moment when no retry was planned, and nothing ever tried again.
it('a guard that goes down when its last handle is retired keeps trying in the background', async () => {
  let healthy = true;
  const guard = new EngineGuard<Conn>({
    pool: 2,
    create: ({ generation }) => {
      if (!healthy) throw new Error('connection refused');
      return { generation };
    },
    isFatal: (error) => (error as Error).message === 'connection lost',
    reconnect: { initialDelay: 5, maxDelay: 20, jitter: 0, failFastAfter: 3 },
  });
  let fail!: () => void;
  const holder = guard.read(
    () =>
      new Promise<void>((_resolve, reject) => {
        fail = () => reject(new Error('connection lost'));
      }),
  );
  await sleep(5);
  healthy = false;
  // A second read needs a second handle: three attempts fail while the first handle is busy, so
  // the engine is not down yet; the read gives up.
  await expect(guard.read(() => 1, { timeout: 100 })).rejects.toBeInstanceOf(
    EngineUnavailableError,
  );
  // The retry timer fires with nobody waiting and a handle still busy: no attempt is planned.
  await sleep(60);
  healthy = true;
  // The last handle is retired: now the engine counts as down.
  fail();
  await expect(holder).rejects.toThrow('connection lost');
  const until = performance.now() + 2_000;
  let result: unknown;
  for (;;) {
    try {
      result = await guard.read(() => 'served');
      break;
    } catch (error) {
      expect(error).toBeInstanceOf(EngineUnavailableError);
      if (performance.now() > until) throw new Error('still down 2 s after the engine came back');
      await sleep(10);
    }
  }
  expect(result).toBe('served');
  await guard.close();
});
