/**
 * `bootstrap`: the guard's once-per-guard hook (create the shared workspace, the catalog), run on
 * the first handle before its `setup`.
 *
 * - Single-flight: attempts that open handles meanwhile wait for the one run in flight and share
 *   its outcome, so no handle runs `setup` before bootstrap succeeded.
 * - A failure fails the attempts that waited on it; the pool's reconnect backoff schedules the
 *   next attempt, which runs bootstrap again.
 * - Once it succeeded it never runs again, whatever happens to the handle it ran on.
 * - It runs before any op can: an op it starts on its guard would wait for the very handle being
 *   opened, so such calls are refused with a {@link DeadlockError} (see {@link BootstrapHold}).
 */
import { DeadlockError } from '../errors.js';
import { runHolding } from '../internal/context.js';
import { attempt, untilAborted } from '../internal/promises.js';
import type { EngineGuardOptions } from './types.js';

/**
 * What a running `bootstrap` or `setup` holds in the async context, in its guard's name: the
 * guard refuses the ops started there (they would wait for the handle being opened). Released once
 * the hook settled, so work it left behind is not.
 */
export class BootstrapHold {
  released = false;

  constructor(readonly hook: 'bootstrap' | 'setup') {}

  /** The error for an op started inside the hook of `guardName`. */
  deadlock(guardName: string | undefined): DeadlockError {
    return new DeadlockError(
      `Cannot run an op of ${guardName === undefined ? 'the engine guard' : `engine guard "${guardName}"`} inside its ${this.hook} hook: it would wait for the handle being opened; use the engine the hook is given`,
      guardName,
    );
  }
}

/** Runs a connect-time hook holding a {@link BootstrapHold} in `owner`'s name. */
export function runConnectHook<A extends unknown[], R>(
  owner: object,
  hookName: 'bootstrap' | 'setup',
  hook: (...args: A) => R,
  ...args: A
): Promise<unknown> {
  const hold = new BootstrapHold(hookName);
  const run: Promise<unknown> = attempt(() => runHolding(owner, hold, hook, ...args));
  const release = (): void => {
    hold.released = true;
  };
  run.then(release, release);
  return run;
}

type BootstrapHook<E> = NonNullable<EngineGuardOptions<E>['bootstrap']>;

export class Bootstrap<E> {
  readonly #hook: BootstrapHook<E> | undefined;
  /** The guard: the owner of the hold its bootstrap runs in. */
  readonly #owner: object;
  #done = false;
  #inFlight: Promise<void> | undefined = undefined;

  constructor(hook: BootstrapHook<E> | undefined, owner: object) {
    this.#hook = hook;
    this.#owner = owner;
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
      runConnectHook(this.#owner, 'bootstrap', hook, engine, { signal, generation }),
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
