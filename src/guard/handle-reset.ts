/**
 * `reset`: a shared handle goes back to a clean state after a stateless op, before it serves
 * another caller, so one caller's session state (temporary tables, `SET`s, locks) never reaches
 * the next.
 *
 * - The handle stays out of the pool until `reset` settled: nobody can be handed a dirty handle.
 * - A reset that throws, rejects or outlives `resetTimeout` retires the handle (destroyed once
 *   the reset call returned, bounded by `destroyTimeout`); the next op gets a fresh one.
 * - A reset that answers synchronously (an adapter that knows the op left nothing) costs no
 *   timer, controller or promise: the handle goes back in the same turn.
 * - `close()` aborts the resets in flight and waits for their handles' destroy.
 */
import { GuardClosedError, HookTimeoutError } from '../errors.js';
import { isThenable } from '../internal/promises.js';
import type { Handle, HandlePool } from '../pool/handle-pool.js';
import { DeadlineSweep } from './deadline-sweep.js';
import type { Op } from './op.js';
import type { EngineGuardOptions, OpInfo, ResetContext } from './types.js';

type ResetHook<E> = NonNullable<EngineGuardOptions<E>['reset']>;

/** The `ctx` of one reset call: its signal and op snapshot are made only if the hook reads them. */
class ResetCall<E> implements ResetContext {
  readonly #op: Op<E>;
  readonly ok: boolean;
  #info: OpInfo | undefined = undefined;
  controller: AbortController | undefined = undefined;

  constructor(op: Op<E>, ok: boolean) {
    this.#op = op;
    this.ok = ok;
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

/** A reset whose hook returned a promise, until it settles or is given up. */
class PendingReset<E> {
  constructor(
    readonly call: ResetCall<E>,
    readonly handle: Handle<E>,
    readonly deadline: number,
  ) {}
}

/** See the module documentation. */
export class HandleReset<E> {
  readonly #hook: ResetHook<E>;
  readonly #timeout: number;
  readonly #pool: HandlePool<E>;
  readonly #onError: (generation: number, error: unknown) => void;
  readonly #name: string | undefined;
  /** Resets in flight, bounded by one timer. */
  readonly #inFlight = new DeadlineSweep<PendingReset<E>>((pending) =>
    this.#finish(pending, new HookTimeoutError('reset', this.#timeout), true),
  );
  #closing = false;
  /** Reset hooks running right now (a hook can start another op, hence a count). */
  #inHook = 0;
  /** Resolves the wait of a `close()` made from inside a running hook, once the hooks returned. */
  #hooksReturned: (() => void) | undefined = undefined;

  constructor(
    hook: ResetHook<E>,
    timeout: number,
    pool: HandlePool<E>,
    onError: (generation: number, error: unknown) => void,
    name: string | undefined,
  ) {
    this.#name = name;
    this.#hook = hook;
    this.#timeout = timeout;
    this.#pool = pool;
    this.#onError = onError;
  }

  /** Resets `handle` after `op`, then gives it back to the pool (or retires it). */
  run(handle: Handle<E>, op: Op<E>, ok: boolean, aliveAt: number): void {
    const call = new ResetCall<E>(op, ok);
    let result: unknown;
    let threw = false;
    this.#inHook++;
    try {
      result = this.#hook(handle.engine, call);
    } catch (error) {
      threw = true;
      result = error;
    }
    try {
      this.#settle(handle, call, threw, result, aliveAt);
    } finally {
      // The handle's fate is sealed (released, retiring or watched): a close() made by the hook
      // may stop waiting for it now.
      if (--this.#inHook === 0 && this.#hooksReturned !== undefined) {
        this.#hooksReturned();
        this.#hooksReturned = undefined;
      }
    }
  }

  #settle(
    handle: Handle<E>,
    call: ResetCall<E>,
    threw: boolean,
    result: unknown,
    aliveAt: number,
  ): void {
    if (threw) {
      this.#failed(handle, result, undefined);
      return;
    }
    if (!isThenable(result)) {
      this.#pool.release(handle, aliveAt);
      return;
    }
    const returned = Promise.resolve(result);
    if (this.#closing) {
      // The hook closed the guard itself: nothing will abort it now, so give the handle up.
      this.#failed(handle, new GuardClosedError(this.#name), returned);
      return;
    }
    // No timer, controller or promise of its own: one sweep timer bounds every reset in flight,
    // and the hook's signal exists only if the hook asked for it.
    const pending = new PendingReset(call, handle, performance.now() + this.#timeout);
    this.#inFlight.add(pending);
    returned.then(
      () => this.#finish(pending, undefined, false),
      (error: unknown) => this.#finish(pending, error, true),
    );
  }

  /** Ends a reset in flight, once: the handle goes back, or is retired when `failed`. */
  #finish(pending: PendingReset<E>, error: unknown, failed: boolean): void {
    if (!this.#inFlight.delete(pending)) return;
    if (failed) {
      // Its signal (if the hook asked for one) tells the hook it was given up.
      pending.call.controller?.abort(error);
      // Not waiting for the hook: it settled already, or overran its bound (or the guard is
      // closing), and the handle is destroyed under it either way.
      this.#failed(pending.handle, error, undefined);
    } else {
      this.#pool.release(pending.handle, performance.now());
    }
  }

  /** Aborts every reset in flight; resolves once their handles were given up. */
  close(): Promise<void> {
    this.#closing = true;
    const closed = new GuardClosedError(this.#name);
    const waits: Promise<void>[] = [];
    for (const pending of this.#inFlight.items()) this.#finish(pending, closed, true);
    // Called from inside a reset hook: its handle is not in flight yet; wait until it is settled.
    if (this.#inHook > 0) {
      waits.push(
        new Promise<void>((resolve) => {
          this.#hooksReturned = resolve;
        }),
      );
    }
    return Promise.all(waits).then(() => undefined);
  }

  #failed(handle: Handle<E>, error: unknown, returned: Promise<unknown> | undefined): void {
    // The handle may be mid-statement: destroy it once the reset call returned (bounded).
    const before = returned === undefined ? undefined : () => returned;
    if (this.#closing) {
      this.#pool.retire(handle, 'close', error, before);
      return;
    }
    this.#onError(handle.generation, error);
    this.#pool.retire(handle, 'reset', error, before);
  }
}
