/** Helpers shared by the lock tests. */
import type { RWLockState } from '../../src/index.js';

/** `lock.state` of a lock nobody holds or waits for. */
export const IDLE: RWLockState = {
  readers: 0,
  writing: false,
  queuedReaders: 0,
  queuedWriters: 0,
  bypassing: false,
};

/** Lets every pending promise callback run. */
export async function flush(): Promise<void> {
  for (let i = 0; i < 10; i++) await Promise.resolve();
}
