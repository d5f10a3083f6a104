/**
 * Demo-only fault injection (`--demo-faults`), so `npm run demo` can show a wedged call on the
 * embedded engine without a network to break.
 *
 * `wedge(handle)` makes one engine handle behave like a connection that went half-open: the call
 * running on it never answers (and ignores its abort signal), and liveness probes of that handle
 * hang too. Nothing else is faked: the guard's own watchdog probes the silent op, the probes time
 * out, the op is convicted after `liveness.failures` of them, its caller gets
 * `EngineStalledError`, and the handle is cancelled, destroyed and replaced as for a real stall.
 */
import type { EngineGuardOptions } from 'engine-guard';

export class DemoFaults<H> {
  readonly #wedged = new WeakSet<object>();
  /** Handles wedged so far. */
  wedges = 0;

  /** Wraps the probe so that a wedged handle's probes never answer. */
  wrap(options: EngineGuardOptions<H>): EngineGuardOptions<H> {
    const probe = options.probe;
    if (probe === undefined) return options;
    return {
      ...options,
      probe: (handle, ctx) => {
        if (this.isWedged(handle)) {
          // Like a probe on a half-open connection: no answer, ever. The guard bounds it by
          // `liveness.timeout` and counts it as failed.
          return new Promise((_resolve, reject) => {
            ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason), { once: true });
          });
        }
        return probe(handle, ctx);
      },
    };
  }

  /**
   * Wedges `handle` and returns a promise that never settles: the engine call "hangs" and ignores
   * cancellation, the way a call blocked on a dead socket does.
   */
  wedge(handle: H): Promise<never> {
    this.#wedged.add(handle as object);
    this.wedges++;
    return new Promise<never>(() => {});
  }

  isWedged(handle: H): boolean {
    return this.#wedged.has(handle as object);
  }
}
