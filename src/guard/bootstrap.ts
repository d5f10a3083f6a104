/**
 * `bootstrap`: the guard's once-per-guard hook (create the shared workspace, the catalog), run on
 * the first handle before its `setup`.
 *
 * - Single-flight: attempts that open handles meanwhile wait for the one run in flight and share
 *   its outcome, so no handle runs `setup` before bootstrap succeeded.
 * - A failure fails the attempts that waited on it; the pool's reconnect backoff schedules the
 *   next attempt, which runs bootstrap again.
 * - Once it succeeded it never runs again, whatever happens to the handle it ran on.
 */
import { attempt, untilAborted } from '../internal/promises.js';
import type { EngineGuardOptions } from './types.js';

type BootstrapHook<E> = NonNullable<EngineGuardOptions<E>['bootstrap']>;

export class Bootstrap<E> {
  readonly #hook: BootstrapHook<E> | undefined;
  #done = false;
  #inFlight: Promise<void> | undefined = undefined;

  constructor(hook: BootstrapHook<E> | undefined) {
    this.#hook = hook;
  }

  /** True once bootstrap succeeded (or when there is none). */
  get done(): boolean {
    return this.#done || this.#hook === undefined;
  }

  /**
   * Bootstraps on `engine` unless done; waits for a run already in flight instead. The caller
   * bounds the wait with its own signal.
   */
  ensure(engine: E, signal: AbortSignal, generation: number): Promise<void> | undefined {
    const hook = this.#hook;
    if (this.#done || hook === undefined) return undefined;
    if (this.#inFlight !== undefined) return this.#inFlight;
    // Given up with the attempt that runs it (connect timeout, close): the attempts sharing it
    // fail with it rather than wait on a hook that may never settle.
    const run = untilAborted(
      attempt(() => hook(engine, { signal, generation })),
      signal,
    ).then(
      () => {
        this.#done = true;
        if (this.#inFlight === run) this.#inFlight = undefined;
      },
      (error: unknown) => {
        if (this.#inFlight === run) this.#inFlight = undefined;
        throw error;
      },
    );
    this.#inFlight = run;
    return run;
  }
}
