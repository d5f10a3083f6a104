/**
 * The `state` check: after each op of a session that pins on state, what connection state did
 * the op leave on its handle? The answer decides where the handle goes (see session.ts): back
 * to the pool as it is, kept by the session (pinned), or reset with the caller told.
 *
 * - An answer given synchronously (the adapter knows the op left nothing) costs no timer,
 *   controller or promise, and the caller hears back in the same turn.
 * - An asynchronous answer is bounded by `resetTimeout` (one sweep timer for all checks in
 *   flight); past it, or when the hook throws, rejects, or answers something that is not a list
 *   of `{ kind, name }`, the state is unknown.
 * - `close()` gives up every check in flight: unknown, with `GuardClosedError`.
 * - A check given up before its hook returned (its bound, `close()`) says so (`running`): the
 *   hook may still be using the handle, which then serves nobody again.
 */
import { GuardClosedError, HookTimeoutError } from '../errors.js';
import { isThenable } from '../internal/promises.js';
import { DeadlineSweep } from './deadline-sweep.js';
import type { Op } from './op.js';
import type { EngineGuardOptions, HeldState, OpInfo, StateAnswer, StateContext } from './types.js';

type StateHook<E> = NonNullable<EngineGuardOptions<E>['state']>;

const CLEAN: StateAnswer = Object.freeze({ held: Object.freeze([]) as readonly HeldState[] });

/** The `ctx` of one check: its signal and op snapshot are made only if the hook reads them. */
class StateCall<E> implements StateContext {
  readonly #op: Op<E>;
  readonly ok: boolean;
  readonly sessionId: number;
  #info: OpInfo | undefined = undefined;
  controller: AbortController | undefined = undefined;
  deadline = 0;
  done: ((answer: StateAnswer) => void) | undefined = undefined;

  constructor(op: Op<E>, ok: boolean, sessionId: number) {
    this.#op = op;
    this.ok = ok;
    this.sessionId = sessionId;
  }

  get op(): OpInfo {
    this.#info ??= this.#op.info();
    return this.#info;
  }

  get signal(): AbortSignal {
    this.controller ??= new AbortController();
    return this.controller.signal;
  }
}

/**
 * The hook's answer as a frozen list, or the reason it is unusable. A list is what the guard
 * shows in `status()` and events, so it is copied: the hook may reuse its array.
 */
function parseAnswer(value: unknown): StateAnswer {
  if (value === undefined || value === null) return CLEAN;
  if (!Array.isArray(value)) {
    return {
      held: undefined,
      error: new TypeError(
        'The "state" hook must return an array of { kind, name } (or undefined for no state)',
      ),
    };
  }
  if (value.length === 0) return CLEAN;
  const held: HeldState[] = [];
  for (const entry of value as unknown[]) {
    const kind = (entry as { kind?: unknown } | null)?.kind;
    const name = (entry as { name?: unknown } | null)?.name;
    if (typeof kind !== 'string' || typeof name !== 'string') {
      return {
        held: undefined,
        error: new TypeError(
          'Each entry the "state" hook returns must be { kind: string, name: string }',
        ),
      };
    }
    held.push(Object.freeze({ kind, name }));
  }
  return { held: Object.freeze(held) };
}

/** See the module documentation. */
export class StateCheck<E> {
  readonly #hook: StateHook<E>;
  readonly #timeout: number;
  readonly #inFlight = new DeadlineSweep<StateCall<E>>((call) =>
    this.#finish(call, {
      held: undefined,
      error: new HookTimeoutError('state', this.#timeout),
      running: true,
    }),
  );
  #closed = false;

  constructor(hook: StateHook<E>, timeout: number) {
    this.#hook = hook;
    this.#timeout = timeout;
  }

  /** Checks what `op` left on `engine`; `done` gets the answer (in this turn when it is sync). */
  run(
    engine: E,
    op: Op<E>,
    ok: boolean,
    sessionId: number,
    done: (answer: StateAnswer) => void,
  ): void {
    const call = new StateCall<E>(op, ok, sessionId);
    let result: unknown;
    try {
      result = this.#hook(engine, call);
    } catch (error) {
      done({ held: undefined, error });
      return;
    }
    if (!isThenable(result)) {
      done(parseAnswer(result));
      return;
    }
    if (this.#closed) {
      // The hook closed the guard itself: given up at once, and told so if it listens.
      const error = new GuardClosedError(undefined);
      call.controller?.abort(error);
      done({ held: undefined, error, running: true });
      return;
    }
    call.deadline = performance.now() + this.#timeout;
    call.done = done;
    this.#inFlight.add(call);
    Promise.resolve(result).then(
      (value) => this.#finish(call, parseAnswer(value)),
      (error: unknown) => this.#finish(call, { held: undefined, error }),
    );
  }

  /** Gives up every check in flight: their state is unknown. */
  close(name: string | undefined): void {
    this.#closed = true;
    const closed = new GuardClosedError(name);
    for (const call of this.#inFlight.items()) {
      this.#finish(call, { held: undefined, error: closed, running: true });
    }
  }

  #finish(call: StateCall<E>, answer: StateAnswer): void {
    if (!this.#inFlight.delete(call)) return;
    // Its signal (if the hook asked for one) tells a hook that is still running that it lost.
    if (answer.held === undefined) call.controller?.abort(answer.error);
    call.done?.(answer);
  }
}
