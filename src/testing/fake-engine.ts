import type { EngineGuardOptions } from '../guard/types.js';

/**
 * How one call on a {@link FakeEngine} behaves, scripted with {@link FakeEngine.nextCall}.
 *
 * - `'ok'`: resolves with the call's value after its duration (`duration` option, else
 *   {@link FakeEngineOptions.callDuration}).
 * - `'fail'`: rejects with a {@link FakeEngineError} after its duration; the engine stays alive.
 * - `'fatal'`: after its duration the connection dies: the call, and every other call and ping
 *   on the engine, rejects with a {@link FakeEngineConnectionError} and the engine is no longer
 *   {@link FakeEngine.alive} (as after {@link FakeEngine.kill}).
 * - `'stall'`: a wedged call on a half-open link. It never settles on its own, and while it runs
 *   pings on the engine hang too (they answer once it is over). Aborting its `signal` rejects it
 *   (the client gives up locally); {@link FakeEngine.cancelRunning} does not (the server may
 *   cancel, but its answer cannot come back). {@link FakeEngine.kill} and
 *   {@link FakeEngine.close} reject it.
 * - `'slow'`: a slow but alive call: resolves with the value after its duration (`duration`
 *   option, else {@link FakeEngineOptions.slowDuration}), reports progress, and pings keep
 *   answering meanwhile.
 * - `'ignore-abort'`: like `'ok'`, but neither its `signal` nor
 *   {@link FakeEngine.cancelRunning} can stop it: it resolves after its duration whatever
 *   happens. Combine with {@link FakeEngine.wedge} for a call that never returns and cannot be
 *   aborted.
 */
export type FakeBehavior = 'ok' | 'fail' | 'stall' | 'slow' | 'ignore-abort' | 'fatal';

const BEHAVIORS: ReadonlySet<string> = new Set<FakeBehavior>([
  'ok',
  'fail',
  'stall',
  'slow',
  'ignore-abort',
  'fatal',
]);

/** Options of a {@link FakeEngine}, and of every engine a {@link FakeEngineFactory} creates. */
export interface FakeEngineOptions {
  /** Name shown in error messages. Default `'fake-engine'`. */
  name?: string;
  /** Duration of `'ok'`, `'fail'`, `'fatal'` and `'ignore-abort'` calls, in ms. Default 0. */
  callDuration?: number;
  /** Duration of `'slow'` calls, in ms. Default 1000. */
  slowDuration?: number;
  /**
   * While a call with a duration runs and the engine answers, its `onProgress` callback is called
   * every `progressInterval` ms (not while stalled or wedged). 0 disables progress. Default 100.
   */
  progressInterval?: number;
}

/** Options of {@link FakeEngine.call}. */
export interface FakeCallOptions {
  /** Aborting rejects the call with `signal.reason`, unless its behavior is `'ignore-abort'`. */
  signal?: AbortSignal;
  /** Duration of this call in ms, overriding the engine's default for its behavior. */
  duration?: number;
  /**
   * Called periodically while the call makes progress (see
   * {@link FakeEngineOptions.progressInterval}), e.g. to send a heartbeat. If it throws, the call
   * rejects with that error.
   */
  onProgress?: () => void;
}

/** Options of {@link FakeEngine.ping}. */
export interface FakePingOptions {
  /** Aborting rejects a hanging ping with `signal.reason`. */
  signal?: AbortSignal;
}

/** The connection to a {@link FakeEngine} is gone (killed, closed, fatal call, failed create). */
export class FakeEngineConnectionError extends Error {
  override readonly name = 'FakeEngineConnectionError';
  /** `'ECONNRESET'` for a lost connection, `'ECONNREFUSED'` for a failed create. */
  readonly code: 'ECONNRESET' | 'ECONNREFUSED';

  /**
   * @param message - Error message.
   * @param options - `code` (default `'ECONNRESET'`) and an optional `cause`.
   */
  constructor(
    message = 'fake engine connection reset',
    options: { code?: 'ECONNRESET' | 'ECONNREFUSED'; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = options.code ?? 'ECONNRESET';
  }
}

/** A running call was cancelled server-side by {@link FakeEngine.cancelRunning}. */
export class FakeEngineCancelledError extends Error {
  override readonly name = 'FakeEngineCancelledError';
  /** Always `'ECANCELLED'`. */
  readonly code = 'ECANCELLED';

  /** @param message - Error message. */
  constructor(message = 'fake engine call cancelled') {
    super(message);
  }
}

/** An ordinary engine error (behavior `'fail'`): the call failed, the connection is fine. */
export class FakeEngineError extends Error {
  override readonly name = 'FakeEngineError';
  /** Always `'EFAKE'`. */
  readonly code = 'EFAKE';

  /** @param message - Error message. */
  constructor(message = 'fake engine call failed') {
    super(message);
  }
}

interface RunningCall {
  readonly behavior: FakeBehavior;
  /**
   * How the finished work ends: with a value, with `error`, or by killing the connection.
   * `undefined` while the work runs. Held (not delivered) while the engine is wedged.
   */
  held: { readonly value: unknown } | 'error' | 'fatal' | undefined;
  error: unknown;
  /** Settles the call: clears timers and the abort listener. */
  settle(result: { ok: true; value: unknown } | { ok: false; error: unknown }): void;
}

interface PendingPing {
  resolve(): void;
  reject(error: unknown): void;
}

function checkMs(name: string, value: unknown): number {
  if (typeof value !== 'number') {
    throw new TypeError(`${name} must be a number of milliseconds, got ${typeof value}`);
  }
  if (!Number.isFinite(value) || value < 0) {
    throw new RangeError(`${name} must be a finite number >= 0, got ${value}`);
  }
  return value;
}

function checkSignal(name: string, signal: unknown): AbortSignal | undefined {
  if (signal === undefined) return undefined;
  if (!(signal instanceof AbortSignal)) throw new TypeError(`${name} must be an AbortSignal`);
  return signal;
}

interface ResolvedOptions {
  readonly name: string;
  readonly callDuration: number;
  readonly slowDuration: number;
  readonly progressInterval: number;
}

function resolveOptions(options: FakeEngineOptions): ResolvedOptions {
  if (typeof options !== 'object' || options === null) {
    throw new TypeError('options must be an object');
  }
  const name = options.name ?? 'fake-engine';
  if (typeof name !== 'string') throw new TypeError('options.name must be a string');
  return {
    name,
    callDuration: checkMs('options.callDuration', options.callDuration ?? 0),
    slowDuration: checkMs('options.slowDuration', options.slowDuration ?? 1000),
    progressInterval: checkMs('options.progressInterval', options.progressInterval ?? 100),
  };
}

let nextId = 1;

/**
 * A scriptable fake of ONE engine handle (a connection), for unit tests of code that uses an
 * engine guard: script each call to succeed, fail, stall, run slowly, ignore abort or kill the
 * connection, and wedge the whole handle like a half-open link.
 *
 * Timers are plain `setTimeout`s, cleared whenever a call settles, so Vitest / Jest fake timers
 * drive it too. Abort listeners are removed when a call or ping settles.
 *
 * @example
 * ```ts
 * const engine = new FakeEngine({ callDuration: 10 });
 * engine.nextCall('stall');
 * const stuck = engine.call('rows', { signal }); // never settles until `signal` aborts
 * ```
 */
export class FakeEngine {
  /** Unique id of this engine among all FakeEngines of the process. */
  readonly id: number;
  /** Name from the options. */
  readonly name: string;

  readonly #callDuration: number;
  readonly #slowDuration: number;
  readonly #progressInterval: number;
  readonly #script: FakeBehavior[] = [];
  readonly #running = new Set<RunningCall>();
  readonly #pings = new Set<PendingPing>();
  #closed = false;
  #alive = true;
  #wedged = false;
  #calls = 0;
  #cancels = 0;
  #aborts = 0;
  #pingCount = 0;

  /**
   * @param options - Name, durations and progress interval.
   * @throws TypeError / RangeError when a duration is not a finite number >= 0.
   */
  constructor(options: FakeEngineOptions = {}) {
    const resolved = resolveOptions(options);
    this.id = nextId++;
    this.name = resolved.name;
    this.#callDuration = resolved.callDuration;
    this.#slowDuration = resolved.slowDuration;
    this.#progressInterval = resolved.progressInterval;
  }

  /** Whether {@link FakeEngine.close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Whether the connection is usable: false after {@link FakeEngine.kill}, a `'fatal'` call or close. */
  get alive(): boolean {
    return this.#alive;
  }

  /** Whether the engine is wedged (see {@link FakeEngine.wedge}). */
  get wedged(): boolean {
    return this.#wedged;
  }

  /** Number of {@link FakeEngine.call} invocations, including rejected ones. */
  get calls(): number {
    return this.#calls;
  }

  /** Number of {@link FakeEngine.cancelRunning} invocations. */
  get cancels(): number {
    return this.#cancels;
  }

  /** Number of calls rejected because their `signal` aborted. */
  get aborts(): number {
    return this.#aborts;
  }

  /** Number of {@link FakeEngine.ping} invocations. */
  get pings(): number {
    return this.#pingCount;
  }

  /** Number of calls currently running (not settled). */
  get running(): number {
    return this.#running.size;
  }

  /**
   * Runs a call whose behavior is the next one scripted with {@link FakeEngine.nextCall}
   * (`'ok'` when none is), resolving with `value` on success.
   *
   * Honors `signal`: when it aborts (or is already aborted) the call rejects at once with
   * `signal.reason`, unless the behavior is `'ignore-abort'`. On a wedged engine results are held
   * until {@link FakeEngine.unwedge}. On a dead or closed engine it rejects with a
   * {@link FakeEngineConnectionError}.
   *
   * @param value - What the call resolves with.
   * @param options - `signal`, `duration` override and `onProgress` callback.
   * @throws TypeError / RangeError (synchronously) on invalid options.
   */
  call<T>(value: T, options: FakeCallOptions = {}): Promise<T> {
    const signal = checkSignal('options.signal', options.signal);
    const explicit =
      options.duration === undefined ? undefined : checkMs('options.duration', options.duration);
    const onProgress = options.onProgress;
    if (onProgress !== undefined && typeof onProgress !== 'function') {
      throw new TypeError('options.onProgress must be a function');
    }
    this.#calls++;
    const behavior = this.#script.shift() ?? 'ok';
    if (!this.#alive) return Promise.reject(this.#deadError());
    if (signal?.aborted && behavior !== 'ignore-abort') {
      this.#aborts++;
      return Promise.reject(signal.reason);
    }
    const duration = explicit ?? (behavior === 'slow' ? this.#slowDuration : this.#callDuration);

    return new Promise<T>((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      let progressTimer: ReturnType<typeof setTimeout> | undefined;
      const onAbort = (): void => {
        this.#aborts++;
        call.settle({ ok: false, error: signal?.reason });
      };
      const call: RunningCall = {
        behavior,
        held: undefined,
        error: undefined,
        settle: (result) => {
          if (!this.#running.delete(call)) return;
          if (timer !== undefined) clearTimeout(timer);
          if (progressTimer !== undefined) clearTimeout(progressTimer);
          timer = undefined;
          progressTimer = undefined;
          signal?.removeEventListener('abort', onAbort);
          if (result.ok) resolve(result.value as T);
          else reject(result.error);
          if (behavior === 'stall') this.#releasePings();
        },
      };
      this.#running.add(call);
      if (signal !== undefined && behavior !== 'ignore-abort') {
        signal.addEventListener('abort', onAbort, { once: true });
      }
      if (behavior === 'stall') return;

      const finish = (): void => {
        timer = undefined;
        if (progressTimer !== undefined) clearTimeout(progressTimer);
        progressTimer = undefined;
        let held: RunningCall['held'];
        if (behavior === 'fail') {
          held = 'error';
          call.error = new FakeEngineError(`${this.name}: call failed`);
        } else if (behavior === 'fatal') {
          held = 'fatal';
        } else {
          held = { value };
        }
        call.held = held;
        if (!this.#wedged) this.#deliver(call);
      };
      if (duration === 0) {
        finish();
        return;
      }
      timer = setTimeout(finish, duration);
      if (onProgress !== undefined && this.#progressInterval > 0) {
        const tick = (): void => {
          progressTimer = setTimeout(tick, this.#progressInterval);
          if (this.#wedged) return;
          try {
            onProgress();
          } catch (error) {
            call.settle({ ok: false, error });
          }
        };
        progressTimer = setTimeout(tick, this.#progressInterval);
      }
    });
  }

  /**
   * Liveness probe: resolves when the engine is alive and answering. While the engine is wedged,
   * or a `'stall'` call runs on it, the ping hangs until that is over, or until its `signal`
   * aborts (then it rejects with `signal.reason`). On a dead or closed engine it rejects with a
   * {@link FakeEngineConnectionError}.
   *
   * @param options - Optional `signal`.
   */
  ping(options: FakePingOptions = {}): Promise<void> {
    const signal = checkSignal('options.signal', options.signal);
    this.#pingCount++;
    if (!this.#alive) return Promise.reject(this.#deadError());
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (!this.#blocked()) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const onAbort = (): void => ping.reject(signal?.reason);
      const done = (): boolean => {
        signal?.removeEventListener('abort', onAbort);
        return this.#pings.delete(ping);
      };
      const ping: PendingPing = {
        resolve: () => {
          if (done()) resolve();
        },
        reject: (error) => {
          if (done()) reject(error);
        },
      };
      this.#pings.add(ping);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /**
   * Server-side cancel of the running calls, as a separate cancel request would do. Running calls
   * reject with a {@link FakeEngineCancelledError}, except `'ignore-abort'` calls (they finish
   * normally) and `'stall'` calls (the answer is lost on the half-open link). On a wedged engine
   * the cancellation is held until {@link FakeEngine.unwedge}, like any answer. Never hangs.
   *
   * @returns Whether any call was running.
   */
  cancelRunning(): Promise<boolean> {
    this.#cancels++;
    const any = this.#running.size > 0;
    for (const call of [...this.#running]) {
      if (call.behavior === 'ignore-abort' || call.behavior === 'stall') continue;
      if (call.held !== undefined) continue; // already finished, answer on its way
      call.held = 'error';
      call.error = new FakeEngineCancelledError(`${this.name}: call cancelled`);
      if (!this.#wedged) this.#deliver(call);
    }
    return Promise.resolve(any);
  }

  /**
   * Closes the connection: running calls and hanging pings reject with a
   * {@link FakeEngineConnectionError}; later calls too. Idempotent.
   */
  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#die(new FakeEngineConnectionError(`${this.name}: connection closed`));
    }
    return Promise.resolve();
  }

  /**
   * Scripts the behaviors of the next calls: `times` calls with `behavior`, after any behaviors
   * queued before (FIFO). Calls beyond the script behave `'ok'`.
   *
   * @param behavior - See {@link FakeBehavior}.
   * @param times - How many calls, an integer >= 0. Default 1.
   * @returns This engine, for chaining.
   * @throws TypeError on an unknown behavior; RangeError on a bad `times`.
   */
  nextCall(behavior: FakeBehavior, times = 1): this {
    if (typeof behavior !== 'string' || !BEHAVIORS.has(behavior)) {
      throw new TypeError(`behavior must be one of ${[...BEHAVIORS].join(', ')}`);
    }
    if (typeof times !== 'number' || !Number.isInteger(times) || times < 0) {
      throw new RangeError(`times must be an integer >= 0, got ${String(times)}`);
    }
    for (let i = 0; i < times; i++) this.#script.push(behavior);
    return this;
  }

  /**
   * The whole handle stops answering, like a half-open connection or a server stopped with
   * SIGSTOP: running calls, new calls and pings do not settle. Calls still honour their `signal`
   * (except `'ignore-abort'` ones), pings too; {@link FakeEngine.kill} and
   * {@link FakeEngine.close} still reject everything. Work continues in the background and its
   * results are held until {@link FakeEngine.unwedge}.
   */
  wedge(): void {
    this.#wedged = true;
  }

  /** Ends {@link FakeEngine.wedge}: held results and pings are delivered now. */
  unwedge(): void {
    if (!this.#wedged) return;
    this.#wedged = false;
    for (const call of [...this.#running]) {
      if (call.held !== undefined) this.#deliver(call);
    }
    this.#releasePings();
  }

  /**
   * The connection is gone (e.g. the server reset it): running calls and hanging pings reject with
   * a {@link FakeEngineConnectionError} (code `'ECONNRESET'`), new ones too, and
   * {@link FakeEngine.alive} becomes false. Even `'ignore-abort'` and wedged calls reject.
   */
  kill(): void {
    this.#die(new FakeEngineConnectionError(`${this.name}: connection reset`));
  }

  #deliver(call: RunningCall): void {
    const held = call.held;
    if (held === undefined) return;
    if (held === 'fatal') {
      this.kill();
    } else if (held === 'error') {
      call.settle({ ok: false, error: call.error });
    } else {
      call.settle({ ok: true, value: held.value });
    }
  }

  #die(error: FakeEngineConnectionError): void {
    this.#alive = false;
    for (const ping of [...this.#pings]) ping.reject(error);
    for (const call of [...this.#running]) call.settle({ ok: false, error });
  }

  #deadError(): FakeEngineConnectionError {
    return new FakeEngineConnectionError(
      this.#closed ? `${this.name}: connection closed` : `${this.name}: connection reset`,
    );
  }

  #blocked(): boolean {
    if (this.#wedged) return true;
    for (const call of this.#running) if (call.behavior === 'stall') return true;
    return false;
  }

  #releasePings(): void {
    if (!this.#alive || this.#blocked()) return;
    for (const ping of [...this.#pings]) ping.resolve();
  }
}

/** Options of a {@link FakeEngineFactory}. */
export interface FakeEngineFactoryOptions extends FakeEngineOptions {
  /** Time a successful create takes, in ms. Default 0. */
  createDuration?: number;
  /**
   * Called with each new engine before `create` resolves, e.g. to script its first calls. If it
   * throws, the engine is closed, not recorded, and `create` rejects with that error.
   */
  onCreate?: (engine: FakeEngine) => void;
}

/** Options of {@link FakeEngineFactory.create}. */
export interface FakeCreateOptions {
  /** Aborting rejects a pending create with `signal.reason`. */
  signal?: AbortSignal;
}

type CreateScript = { readonly kind: 'fail'; readonly error: Error } | { readonly kind: 'stall' };

/**
 * Builds {@link FakeEngine}s the way a pool's `create` function would, with scriptable failures
 * and stalls, and records what it created and destroyed.
 *
 * @example
 * ```ts
 * const factory = new FakeEngineFactory();
 * factory.failNextCreates(2);
 * const guard = new EngineGuard({
 *   create: ({ signal }) => factory.create({ signal }),
 *   destroy: (engine) => factory.destroy(engine),
 * });
 * ```
 */
export class FakeEngineFactory {
  /** Every engine created, in order. */
  readonly created: FakeEngine[] = [];
  /** Every engine passed to {@link FakeEngineFactory.destroy}, in order, each once. */
  readonly destroyed: FakeEngine[] = [];

  readonly #options: FakeEngineOptions;
  readonly #createDuration: number;
  readonly #onCreate: ((engine: FakeEngine) => void) | undefined;
  readonly #script: CreateScript[] = [];
  #attempts = 0;

  /**
   * @param options - Options for every engine, plus `createDuration` and `onCreate`.
   * @throws TypeError / RangeError on invalid options.
   */
  constructor(options: FakeEngineFactoryOptions = {}) {
    const { createDuration, onCreate, ...engineOptions } = options;
    this.#createDuration = checkMs('options.createDuration', createDuration ?? 0);
    if (onCreate !== undefined && typeof onCreate !== 'function') {
      throw new TypeError('options.onCreate must be a function');
    }
    this.#onCreate = onCreate;
    resolveOptions(engineOptions); // validate now rather than at the first create
    this.#options = engineOptions;
  }

  /**
   * Guard options wired to this factory, for a guard under test: `create`/`destroy` through
   * the factory, `probe` = `ping`, `cancel` = `cancelRunning`, `isFatal` = a
   * {@link FakeEngineConnectionError}, `isAlive` = `engine.alive`. `overrides` win.
   *
   * @example
   * ```ts
   * const factory = new FakeEngineFactory();
   * const guard = new EngineGuard(factory.guardOptions({ liveness: { interval: 50, timeout: 50 } }));
   * factory.created[0]?.nextCall('stall'); // the next call on the first engine wedges
   * ```
   */
  guardOptions(
    overrides: Partial<EngineGuardOptions<FakeEngine>> = {},
  ): EngineGuardOptions<FakeEngine> {
    return {
      create: ({ signal }) => this.create({ signal }),
      destroy: (engine) => this.destroy(engine),
      probe: (engine, { signal }) => engine.ping({ signal }),
      cancel: (engine) => engine.cancelRunning(),
      isFatal: (error) => error instanceof FakeEngineConnectionError,
      isAlive: (engine) => engine.alive,
      ...overrides,
    };
  }

  /** Engines created and not yet destroyed. */
  get live(): number {
    return this.created.length - this.destroyed.length;
  }

  /** Number of {@link FakeEngineFactory.create} invocations, failed and stalled ones included. */
  get attempts(): number {
    return this.#attempts;
  }

  /**
   * The next `n` creates (after those already scripted) reject with `error`, by default a
   * {@link FakeEngineConnectionError} with code `'ECONNREFUSED'`.
   *
   * @param n - Number of creates, an integer >= 0.
   * @param error - The rejection reason; the same instance is used for all `n`.
   * @returns This factory, for chaining.
   */
  failNextCreates(n: number, error?: Error): this {
    checkCount(n);
    const reason =
      error ??
      new FakeEngineConnectionError('fake engine: connection refused', { code: 'ECONNREFUSED' });
    for (let i = 0; i < n; i++) this.#script.push({ kind: 'fail', error: reason });
    return this;
  }

  /**
   * The next `n` creates (after those already scripted) never settle, unless their `signal`
   * aborts: an engine that accepts the TCP connection but never completes the handshake.
   *
   * @param n - Number of creates, an integer >= 0.
   * @returns This factory, for chaining.
   */
  stallNextCreates(n: number): this {
    checkCount(n);
    for (let i = 0; i < n; i++) this.#script.push({ kind: 'stall' });
    return this;
  }

  /**
   * Creates an engine, or fails or stalls as scripted. Rejects with `signal.reason` when the
   * signal is aborted before the engine is ready.
   *
   * @param options - Optional `signal`.
   */
  create(options: FakeCreateOptions = {}): Promise<FakeEngine> {
    const signal = checkSignal('options.signal', options.signal);
    this.#attempts++;
    const script = this.#script.shift();
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (script?.kind === 'fail') return Promise.reject(script.error);
    return new Promise<FakeEngine>((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const onAbort = (): void => {
        if (timer !== undefined) clearTimeout(timer);
        reject(signal?.reason);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      if (script?.kind === 'stall') return;
      const finish = (): void => {
        signal?.removeEventListener('abort', onAbort);
        const engine = new FakeEngine(this.#options);
        try {
          this.#onCreate?.(engine);
        } catch (error) {
          void engine.close();
          reject(error);
          return;
        }
        this.created.push(engine);
        resolve(engine);
      };
      if (this.#createDuration === 0) finish();
      else timer = setTimeout(finish, this.#createDuration);
    });
  }

  /**
   * Closes `engine` and records it in {@link FakeEngineFactory.destroyed} (once, even when
   * destroyed twice).
   *
   * @param engine - An engine, normally one of {@link FakeEngineFactory.created}.
   */
  async destroy(engine: FakeEngine): Promise<void> {
    if (!(engine instanceof FakeEngine)) throw new TypeError('engine must be a FakeEngine');
    if (!this.destroyed.includes(engine)) this.destroyed.push(engine);
    await engine.close();
  }
}

function checkCount(n: unknown): void {
  if (typeof n !== 'number') throw new TypeError(`n must be a number, got ${typeof n}`);
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`n must be an integer >= 0, got ${n}`);
}
