import type { GuardEvents, GuardStatus, Subscription } from '../guard/types.js';

/**
 * What `instrumentGuard` uses of a guard: an `EngineGuard` of any engine type. Structural, so a
 * guard made by either build of engine-guard (ESM or CJS) fits.
 */
export interface InstrumentableGuard {
  readonly name: string | undefined;
  status(): GuardStatus;
  on<K extends keyof GuardEvents>(type: K, listener: (event: GuardEvents[K]) => void): Subscription;
}
