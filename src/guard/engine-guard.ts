import { opTracing } from '../diagnostics.js';
import {
  DeadlockError,
  EngineStalledError,
  GuardClosedError,
  LockTimeoutError,
  SessionLimitError,
} from '../errors.js';
import { heldBy, runHolding } from '../internal/context.js';
import { attempt, bounded, isThenable, noop } from '../internal/promises.js';
import { SignalFanout } from '../internal/signal-fanout.js';
import {
  validateDuration,
  validateFunction,
  validateOptionalFunction,
  validateOptionalString,
  validateOptionsObject,
  validateUnknownKeys,
} from '../internal/validate.js';
import { WaiterQueue } from '../internal/waiter-queue.js';
import { Watchdog } from '../liveness/watchdog.js';
import type { Lease } from '../lock/lease.js';
import { RWLock } from '../lock/rwlock.js';
import type { Handle, HandlePool, RetireReason } from '../pool/handle-pool.js';
import { Admission } from './admission.js';
import { Bootstrap, BootstrapHold } from './bootstrap.js';
import { type CachedValue, type CachedValueOptions, GuardCachedValue } from './cached-value.js';
import { ClusterLeases, claimCoordinator } from './cluster-lease.js';
import { TypedEvents } from './events.js';
import { HandleReset } from './handle-reset.js';
import { GuardHealth } from './health.js';
import { ABANDONED, CLOSED, DONE, Op, type OpFn, STALLED } from './op.js';
import { refuse, traceCall } from './op-trace.js';
import { type OpSettings, parseGuardOptions, parseOpOptions, withTrace } from './options.js';
import { openPool, type SharedPoolParts } from './pool-hooks.js';
import { GuardSession, REQUEUED, type SessionHost } from './session.js';
import { StateCheck } from './state-check.js';
import type {
  EngineGuardOptions,
  GuardCounters,
  GuardEvents,
  GuardStatus,
  OpContext,
  OpKind,
  OpOptions,
  QueuedOpStatus,
  Session,
  SessionOptions,
  SessionPin,
  Subscription,
} from './types.js';

const SESSION_KEYS = ['label', 'idleTimeout', 'restore', 'pin'];

export { DEFAULT_LIVENESS } from './options.js';

/**
 * Concurrency-safe access to one shared engine (a database connection, an analytics daemon, a
 * browser, a REPL) from many concurrent callers.
 *
 * Invariants:
 * - Reads share the engine, each on its own handle (up to `pool` at once); a write is exclusive
 *   across the guard and runs alone. Waiters are served with the fairness of {@link RWLock}
 *   (option `fairness`): reads queued before a write enter together; a queued write holds later
 *   reads back for `bypassAfter` ms, after which they may pass it while the reads it waits for
 *   still run, so one long read plus one queued write never stalls every other caller.
 * - A running op is never cut off for taking long. It is convicted of a stall only when its
 *   engine stops answering: no heartbeat for `liveness.interval` and then `liveness.failures`
 *   consecutive failed probes. A convicted op's caller is answered at once with
 *   {@link EngineStalledError}; its lease is revoked so others proceed; its handle is cancelled,
 *   destroyed in the background and replaced on demand.
 * - `timeout` and `acquireTimeout` bound waiting only.
 * - Once the engine counts as down, every op that did not opt into `waitForReady` fails fast
 *   with {@link EngineUnavailableError}, queued ones included: nothing waits forever on a dead
 *   engine by default.
 * - `status()` is synchronous and never touches an engine or a lock.
 * - Every promise it returns settles: on success, failure, abort, stall, or `close()`.
 *
 * The life of one op is the state machine of `op.ts`; this class coordinates the lock, the
 * pool and the watchdog around it.
 *
 * @example
 * ```ts
 * const guard = new EngineGuard({
 *   create: async () => connect(),
 *   destroy: (conn) => conn.close(),
 *   probe: (conn, { op }) => checkAlive(conn, op),
 *   pool: 4,
 * });
 * const rows = await guard.read((conn, ctx) => conn.query(sql, { signal: ctx.signal }));
 * guard.status(); // never waits
 * await guard.close();
 * ```
 */
export class EngineGuard<E> implements AsyncDisposable {
  /** Name given at construction. */
  readonly name: string | undefined;
  readonly #options: EngineGuardOptions<E>;
  readonly #lock: RWLock;
  readonly #pool: HandlePool<E>;
  /** Handles reserved for sessions; undefined with `maxSessions: 0`. */
  readonly #sessionPool: HandlePool<E> | undefined;
  readonly #maxSessions: number;
  /** Open sessions, oldest first. */
  readonly #sessions = new Set<GuardSession<E>>();
  readonly #sessionHost: SessionHost<E>;
  #nextSessionId = 0;
  /** Undefined without a `reset` hook. */
  readonly #reset: HandleReset<E> | undefined;
  /** Undefined without a `state` hook: sessions then pin always. */
  readonly #stateCheck: StateCheck<E> | undefined;
  readonly #watchdog: Watchdog<Op<E>> | undefined;
  readonly #events: TypedEvents<GuardEvents>;
  /** One listener per caller signal, however many running ops share it (see SignalFanout). */
  readonly #callerSignals = new SignalFanout<Op<E>>((ops) => {
    for (const op of ops) this.#onCallerAbort(op);
  });
  /** Ops waiting for a lease or a handle, in arrival order (intrusive: O(1) in and out). */
  readonly #queued = new WaiterQueue<Op<E>>();
  /** Ops running or cancelling, in start order. */
  readonly #running = new WaiterQueue<Op<E>>();
  readonly #opDefaults: OpSettings;
  readonly #cancelTimeout: number;
  readonly #closeTimeout: number;
  readonly #health: GuardHealth<E>;
  readonly #admission: Admission<E>;
  readonly #counters: GuardCounters;
  /** Cluster leases of the ops that need one (see `coordinator`). */
  readonly #cluster: ClusterLeases<E> | undefined;
  #nextId = 0;
  #closed = false;
  #closing: Promise<void> | undefined = undefined;

  /**
   * @throws TypeError | RangeError when an option is invalid or unknown, naming it.
   */
  constructor(options: EngineGuardOptions<E>) {
    const settings = parseGuardOptions(options);
    const coordinator = claimCoordinator(options.coordinator);
    this.name = settings.name;
    this.#options = options;
    this.#cancelTimeout = settings.cancelTimeout;
    this.#closeTimeout = settings.closeTimeout;
    this.#opDefaults = {
      signal: undefined,
      timeout: settings.acquireTimeout,
      label: undefined,
      waitForReady: settings.waitForReady,
    };
    this.#events = new TypedEvents<GuardEvents>(this.name);
    this.#health = new GuardHealth(this.name, this.#events, this.#running, this.#queued, {
      pool: settings.pool,
      maxSessions: settings.maxSessions,
    });
    this.#counters = this.#health.counters;
    this.#lock = new RWLock(settings.lock);
    const poolEvents = this.#health.poolEvents();
    const shared: SharedPoolParts<E> = {
      generations: { value: 0 },
      bootstrap: new Bootstrap(options.bootstrap, this),
      owner: this,
    };
    this.#pool = openPool(options, settings, settings.pool, shared, {
      ...poolEvents,
      // The engine may have just been declared down: ops queued for the lock hear it too.
      onConnectError: (error, attempts, retryInMs) => {
        poolEvents.onConnectError(error, attempts, retryInMs);
        this.#failFastQueued();
      },
      onRetire: (handle, reason, cause) => {
        poolEvents.onRetire(handle, reason, cause);
        this.#failFastQueued();
      },
    });
    this.#health.watchPool(this.#pool);
    this.#maxSessions = settings.maxSessions;
    this.#sessionPool =
      settings.maxSessions === 0
        ? undefined
        : openPool(options, settings, settings.maxSessions, shared, poolEvents);
    this.#sessionHost = this.#makeSessionHost();
    this.#reset =
      options.reset === undefined
        ? undefined
        : new HandleReset(
            options.reset,
            settings.resetTimeout,
            this.#pool,
            (generation, error) => {
              this.#health.recordError(error);
              this.#events.emit('resetError', { generation, error });
            },
            this.name,
          );
    this.#stateCheck =
      options.state === undefined
        ? undefined
        : new StateCheck(options.state, settings.resetTimeout);
    this.#admission = new Admission(
      this.#lock,
      this.#pool,
      this.#queued,
      this.#health,
      this.name,
      (op, fn, lease, handle, now) => this.#run(op, fn, lease, handle, now),
    );
    this.#cluster =
      coordinator === undefined
        ? undefined
        : new ClusterLeases(coordinator, (op, error) => this.#onCallerAbort(op, error));
    const probe = options.probe;
    this.#watchdog =
      settings.liveness === undefined || probe === undefined
        ? undefined
        : new Watchdog<Op<E>>(settings.liveness, {
            subjects: () => this.#liveOps(),
            probe: (op, signal) => {
              const state = op.state;
              if (state.tag !== 'running') return Promise.resolve();
              return attempt(() => probe(state.handle.engine, { signal, op: op.info() }));
            },
            onProbeResult: (op, ok, error, durationMs) =>
              this.#health.recordProbe(
                op.info(),
                op.generation,
                ok,
                error,
                durationMs,
                op.probeFailures,
              ),
            onConvict: (op, lastError) => this.#convict(op, lastError),
          });
  }

  /**
   * Runs `fn` as a shared read on its own engine handle. Reads run concurrently, up to `pool`.
   * A nested `read`/`write` in `fn`'s async context joins this op: it runs at once on the same
   * handle with the outer op's `ctx` (its own `signal`, `timeout` and `label` are not used), and
   * a nested write inside a read rejects with {@link DeadlockError}. This holds while the op is
   * being cancelled too, so cleanup in a `catch` of an aborted op runs at once.
   *
   * Rejects with: whatever `fn` throws; `signal.reason` when the caller aborts;
   * {@link LockTimeoutError} (naming the ops it waited for) when `timeout` passes while queued;
   * {@link EngineStalledError} when the engine stops answering; {@link EngineUnavailableError}
   * while the engine is down (unless `waitForReady`); {@link QueueFullError};
   * {@link GuardClosedError}.
   * @throws TypeError | RangeError at the call, on invalid or unknown arguments.
   */
  read<T>(
    fn: (engine: E, ctx: OpContext) => T | PromiseLike<T>,
    options?: OpOptions,
  ): Promise<Awaited<T>> {
    return this.#op('read', fn, options);
  }

  /**
   * Runs `fn` exclusively: it waits for running reads to finish and runs alone. For
   * engine-wide state (attach/detach, schema, catalog, search path) and for writes. A stalled
   * write rejects with an {@link EngineStalledError} whose `indeterminate` is true.
   * @throws TypeError | RangeError at the call, on invalid or unknown arguments.
   */
  write<T>(
    fn: (engine: E, ctx: OpContext) => T | PromiseLike<T>,
    options?: OpOptions,
  ): Promise<Awaited<T>> {
    return this.#op('write', fn, options);
  }

  /**
   * A session: one caller's ops, with its connection state (temporary tables, `SET`s, prepared
   * statements) kept on a handle of its own and seen by no other caller (see {@link Session}).
   *
   * With `pin: 'on-state'` (the default when the guard has a `state` hook) the session holds a
   * handle only while it holds state: its ops run on shared handles, side by side, until one
   * leaves state; the session then keeps that handle (a `maxSessions` slot) and runs its ops on
   * it one at a time, until the state is gone. With `pin: 'always'` its first op takes a handle
   * from the `maxSessions` slots and keeps it. Either way `close()`, `await using` or its
   * `idleTimeout` gives it back.
   *
   * @example
   * ```ts
   * await using session = guard.session({ label: 'client 7', idleTimeout: 600_000 });
   * await session.write((conn) => conn.query('create temp table scratch(x int)'));
   * await session.read((conn) => conn.query('select count(*) from scratch'));
   * ```
   * @throws RangeError when `pin` is `'always'` (the default without a `state` hook) and the
   * guard has no session slots (`maxSessions` is 0), or `pin` is `'on-state'` and the guard has
   * no `state` hook.
   * @throws GuardClosedError when the guard is closed.
   * @throws TypeError | RangeError on invalid or unknown options.
   */
  session(options: SessionOptions<E> = {}): Session<E> {
    validateOptionsObject(options);
    validateUnknownKeys(options, SESSION_KEYS, '');
    const label = validateOptionalString(options.label, 'label');
    const idleTimeout = validateDuration(options.idleTimeout, 'idleTimeout');
    validateOptionalFunction(options.restore, 'restore');
    const pin = this.#sessionPin(options.pin);
    if (pin === 'always' && this.#maxSessions === 0) {
      throw new RangeError(
        `${this.#describe()} has no session slots: set its "maxSessions" option to the number of sessions that may hold a handle at once`,
      );
    }
    if (this.#closed) throw new GuardClosedError(this.name);
    const session = new GuardSession<E>(
      ++this.#nextSessionId,
      this.#sessionHost,
      { label, idleTimeout, restore: options.restore },
      pin,
    );
    this.#sessions.add(session);
    return session;
  }

  #sessionPin(pin: unknown): SessionPin {
    if (pin === undefined) return this.#stateCheck === undefined ? 'always' : 'on-state';
    if (pin !== 'always' && pin !== 'on-state') {
      throw new TypeError(`The "pin" option must be 'on-state' or 'always' (got ${String(pin)})`);
    }
    if (pin === 'on-state' && this.#stateCheck === undefined) {
      throw new RangeError(
        `${this.#describe()} has no "state" hook, so a session cannot pin on state: give the guard a state hook (the adapters' guard options include one), or use pin: 'always'`,
      );
    }
    return pin;
  }

  /**
   * A value loaded from the engine under a read and served from memory: `get()` never waits,
   * and refreshes in the background once the value is older than `maxAge`
   * (stale-while-revalidate). For status-style calls (table count, engine version).
   */
  cache<T>(
    loader: (engine: E, ctx: OpContext) => T | PromiseLike<T>,
    options?: CachedValueOptions,
  ): CachedValue<T> {
    validateFunction(loader, 'loader');
    return new GuardCachedValue<T>((opOptions) => this.read(loader, opOptions), options);
  }

  /** Subscribes to a typed event; dispose the result to unsubscribe. */
  on<K extends keyof GuardEvents>(
    type: K,
    listener: (event: GuardEvents[K]) => void,
  ): Subscription {
    return this.#events.on(type, listener);
  }

  /**
   * A synchronous snapshot. Never waits, never touches an engine or a lock; safe to call from a
   * `status` endpoint while every handle is wedged.
   */
  status(): GuardStatus {
    const lock = this.#lock.state;
    return this.#health.snapshot(
      {
        readers: lock.queuedReaders,
        writers: lock.queuedWriters,
        forHandle: this.#pool.waiting,
      },
      this.#sessionStatuses(),
      this.#cluster?.status(),
      this.#sessionPool === undefined
        ? 0
        : this.#sessionPool.busyCount + this.#sessionPool.idleCount,
      this.#sessionQueued(),
    );
  }

  /** True once `close()` was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Closes the guard: queued ops reject with {@link GuardClosedError}, running ops have
   * `ctx.signal` aborted and their callers rejected, handles are destroyed. Resolves once every
   * destroy settled and every `create` in flight settled (its signal aborted; a handle it still
   * returns is destroyed), bounded by `closeTimeout`; idempotent (every call returns the same
   * promise). So the resource the handles come from (a DuckDB instance, a driver's pool) can be
   * freed once it resolved.
   */
  close(): Promise<void> {
    if (this.#closing !== undefined) return this.#closing;
    // Set before #close runs: a close() made from a listener while closing gets this promise.
    let settle!: (closed: Promise<void>) => void;
    this.#closing = new Promise<void>((resolve) => {
      settle = resolve;
    });
    settle(this.#close());
    return this.#closing;
  }

  /** Same as `close()`, for `await using guard = new EngineGuard(...)`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  // ---------------------------------------------------------------------------------------------
  // Entering: join, refuse, or queue.

  #op<T>(
    kind: OpKind,
    fn: (engine: E, ctx: OpContext) => T | PromiseLike<T>,
    options: OpOptions | undefined,
  ): Promise<Awaited<T>> {
    validateFunction(fn, 'fn');
    const settings = parseOpOptions(options, this.#opDefaults);
    const outer = heldBy<Op<E> | BootstrapHold>(this);
    if (outer instanceof BootstrapHold) return Promise.reject(outer.deadlock(this.name));
    if (outer !== undefined) {
      const held = outer.state;
      // Cancelling still holds the handle: cleanup in the op's `catch` must not queue behind it.
      if (held.tag === 'running' || held.tag === 'cancelling') {
        return this.#join(outer, held.handle, kind, fn, settings.signal);
      }
    }
    // Traced from here, in the caller's context: joined calls above are part of their op.
    if (opTracing.hasSubscribers) {
      return traceCall(this, this.name, kind, settings, undefined, (trace) =>
        this.#enter(kind, fn, withTrace(settings, trace)),
      ) as Promise<Awaited<T>>;
    }
    return this.#enter(kind, fn, settings) as Promise<Awaited<T>>;
  }

  /** A stateless call that joins no op: refused at once, or made an op and started. */
  #enter(kind: OpKind, fn: OpFn<E>, settings: OpSettings): Promise<unknown> {
    if (this.#closed) return refuse(settings, new GuardClosedError(this.name));
    const signal = settings.signal;
    if (signal?.aborted) {
      this.#counters.aborts++;
      return refuse(settings, signal.reason);
    }
    if (this.#pool.isDown && !settings.waitForReady) {
      return refuse(settings, this.#pool.unavailableError());
    }
    const op = new Op<E>(++this.#nextId, kind, settings.label, signal, settings.waitForReady);
    op.key = settings.key;
    return this.#launch(op, fn, settings);
  }

  #launch(op: Op<E>, fn: OpFn<E>, settings: OpSettings): Promise<unknown> {
    settings.trace?.attach(op);
    return this.#start(op, fn, settings.timeout);
  }

  // ---------------------------------------------------------------------------------------------
  // Sessions.

  #sessionStatuses(): GuardStatus['sessions'] {
    if (this.#sessions.size === 0) return [];
    return Array.from(this.#sessions, (session) => session.status());
  }

  /** Calls waiting in their sessions' own queues (see `status().queued`). */
  #sessionQueued(): QueuedOpStatus[] {
    if (this.#sessions.size === 0) return [];
    const now = performance.now();
    const queued: QueuedOpStatus[] = [];
    for (const session of this.#sessions) {
      for (const call of session.queuedCalls(now)) queued.push({ ...call, sessionId: session.id });
    }
    return queued;
  }

  #makeSessionHost(): SessionHost<E> {
    return {
      owner: this,
      name: this.name,
      opDefaults: this.#opDefaults,
      maxSessions: this.#maxSessions,
      nextOpId: () => ++this.#nextId,
      nested: (session, kind, fn, signal) => {
        const outer = heldBy<Op<E> | BootstrapHold>(this);
        if (outer instanceof BootstrapHold) return Promise.reject(outer.deadlock(this.name));
        if (outer === undefined) return undefined;
        const held = outer.state;
        if (held.tag !== 'running' && held.tag !== 'cancelling') return undefined;
        if (outer.sessionId === session.id) return this.#join(outer, held.handle, kind, fn, signal);
        return Promise.reject(
          new DeadlockError(
            `Cannot run an op of session ${session.id} inside op ${outer.id} of ${this.#describe()}: it would wait for the lease that op holds`,
            this.name,
          ),
        );
      },
      acquire: (signal, timeout, reported) => this.#acquireSessionHandle(signal, timeout, reported),
      isAlive: (handle) => {
        const isAlive = this.#options.isAlive;
        if (isAlive === undefined) return true;
        try {
          return isAlive(handle.engine) !== false;
        } catch {
          return false;
        }
      },
      run: (session, call, fn, settings, handle, restored, afterCheck) => {
        if (this.#closed) {
          return {
            result: Promise.reject(new GuardClosedError(this.name)),
            op: undefined,
            leave: noop,
          };
        }
        const op = new Op<E>(
          call.id,
          call.kind,
          settings.label,
          settings.signal,
          settings.waitForReady,
        );
        op.key = session;
        op.sessionId = session.id;
        op.counted = call.counted;
        op.restored = restored;
        op.afterCheck = afterCheck;
        if (handle !== undefined) {
          op.ownHandle = handle;
          op.onHandleLost = (lost, cause) => session.lose(lost, cause);
        }
        return {
          result: this.#launch(op, fn, settings),
          op,
          leave: (reason) => this.#admission.leave(op, reason),
        };
      },
      pin: (handle) => {
        const slots = this.#sessionPool;
        if (slots === undefined || this.#closed || !slots.tryAdopt(handle)) return false;
        this.#pool.detach(handle);
        return true;
      },
      unpin: (handle) => {
        const slots = this.#sessionPool;
        if (slots === undefined) return;
        if (this.#pool.tryAdopt(handle)) {
          slots.detach(handle);
          this.#pool.release(handle);
        } else {
          // The pool opened another handle meanwhile and is full: this one is not needed.
          slots.retire(handle, 'session-end', undefined);
        }
      },
      discard: (handle, op, ok, answer) => {
        if (answer.running === true) {
          // The state hook overran (or the guard closed under it): no reset beside it.
          this.#pool.retire(handle, this.#closed ? 'close' : 'reset', answer.error);
        } else if (this.#reset !== undefined) {
          this.#reset.run(handle, op, ok, op.lastBeat);
        } else {
          this.#pool.retire(handle, 'session-end', undefined);
        }
      },
      release: (handle, aliveAt) => this.#pool.release(handle, aliveAt),
      retire: (handle, reason, cause) => this.#sessionPool?.retire(handle, reason, cause),
      emit: (type, event) => this.#events.emit(type, event),
      forget: (session) => {
        this.#sessions.delete(session);
      },
    };
  }

  async #acquireSessionHandle(
    signal: AbortSignal | undefined,
    timeout: number | undefined,
    reportedTimeout: number | undefined,
  ): Promise<Handle<E>> {
    const pool = this.#sessionPool;
    if (pool === undefined || this.#closed) throw new GuardClosedError(this.name);
    try {
      return await pool.acquire(signal, timeout, reportedTimeout, this.#opDefaults.waitForReady);
    } catch (error) {
      // Every slot held by another session (not a slow connect): say so.
      if (error instanceof LockTimeoutError && pool.busyCount >= this.#maxSessions) {
        throw new SessionLimitError(this.#maxSessions, error.timeout, this.name);
      }
      throw error;
    }
  }

  /**
   * Takes `handle` out of service: a shared one from the pool; a session's from the session
   * slots, and its session learns that its state is gone.
   */
  #retire(
    op: Op<E>,
    handle: Handle<E>,
    reason: Exclude<RetireReason, 'session-end'>,
    cause: unknown,
    beforeDestroy?: () => Promise<unknown>,
  ): void {
    if (op.ownHandle === undefined) {
      this.#pool.retire(handle, reason, cause, beforeDestroy);
      return;
    }
    this.#sessionPool?.retire(handle, reason, cause, beforeDestroy);
    op.onHandleLost?.(handle, cause);
  }

  #join<T>(
    outer: Op<E>,
    handle: Handle<E>,
    kind: OpKind,
    fn: (engine: E, ctx: OpContext) => T | PromiseLike<T>,
    signal: AbortSignal | undefined,
  ): Promise<Awaited<T>> {
    if (kind === 'write' && outer.kind === 'read') {
      return Promise.reject(
        new DeadlockError(
          `Cannot run a write on ${this.#describe()} inside one of its reads (op ${outer.id}): it would wait for itself`,
          this.name,
        ),
      );
    }
    // As for the lock: a joined call whose caller already gave up does not run.
    if (signal?.aborted) {
      this.#counters.aborts++;
      return Promise.reject(signal.reason);
    }
    return attempt(() => fn(handle.engine, outer.context)) as Promise<Awaited<T>>;
  }

  #start(op: Op<E>, fn: OpFn<E>, timeout: number | undefined): Promise<unknown> {
    const answer = op.answer();
    this.#admission.admit(op, this.#cluster?.wrap(op, fn, timeout) ?? fn, timeout);
    return answer;
  }

  // ---------------------------------------------------------------------------------------------
  // Running and ending.

  #run(op: Op<E>, fn: OpFn<E>, lease: Lease, handle: Handle<E>, now: number): void {
    this.#queued.remove(op);
    op.to({ tag: 'running', lease, handle });
    this.#running.push(op);
    op.generation = handle.generation;
    op.startedAt = now;
    op.lastBeat = now;
    // Each caller's call counts once, though a session may run it again (see `Op.counted`).
    if (!op.counted) this.#counters.ops++;
    this.#watchdog?.watch(op, now);
    if (op.callerSignal !== undefined) this.#callerSignals.add(op.callerSignal, op);
    let result: unknown;
    try {
      result = runHolding(this, op, fn, handle.engine, op.context);
    } catch (error) {
      this.#fnSettled(op, false, error);
      return;
    }
    if (!isThenable(result)) {
      this.#fnSettled(op, true, result);
      return;
    }
    // A throwing `then` getter, a revoked Proxy or a `then` that throws after settling: every
    // way out of fn ends the op, once (#fnSettled ignores all but the first outcome).
    try {
      result.then(
        (value) => this.#fnSettled(op, true, value),
        (error: unknown) => this.#fnSettled(op, false, error),
      );
    } catch (error) {
      this.#fnSettled(op, false, error);
    }
  }

  /** The op no longer counts as running. Its lease and handle are dealt with by the caller. */
  #endRun(op: Op<E>): void {
    this.#running.remove(op);
    this.#watchdog?.unwatch(op);
    if (op.callerSignal !== undefined) this.#callerSignals.remove(op.callerSignal, op);
    // Its failed probes made the guard degraded; they leave with it.
    if (op.probeFailures > 0) this.#health.update();
  }

  #fnSettled(op: Op<E>, ok: boolean, value: unknown): void {
    if (op.fnSettled) return;
    op.fnSettled = true;
    op.onFnSettled?.();
    const state = op.state;
    if (state.tag === 'running') {
      this.#endRun(op);
      op.to(DONE);
      const checking = this.#returnHandle(op, state.handle, ok, value, true);
      state.lease.release();
      // A session op whose state is being checked: its caller hears back after the check.
      if (!checking) this.#answer(op, ok, value);
      return;
    }
    if (state.tag === 'cancelling') {
      state.outcome = { ok, value };
      this.#finishCancel(op);
    }
    // stalled / abandoned / closed: the caller was answered and the handle retired already.
  }

  /**
   * Once the engine counts as down, ops still queued for the lock get the answer new callers
   * get, unless they opted into waiting for it (the pool tells the ops waiting for a handle).
   * Their lock waiters leave the lock's queue with them.
   */
  #failFastQueued(): void {
    if (!this.#pool.isDown) return;
    for (let op = this.#queued.head; op !== null; ) {
      const next: Op<E> | null = op.next;
      // A session's op has its handle already: the shared pool's outage is not its concern.
      if (op.state.tag === 'waiting' && !op.waitForReady && op.ownHandle === undefined) {
        this.#admission.leave(op, this.#pool.unavailableError());
      }
      op = next;
    }
  }

  /** The caller's signal aborted while the op ran (or its cluster lease was lost: `reason`). */
  #onCallerAbort(op: Op<E>, reason: unknown = op.callerSignal?.reason): void {
    const state = op.state;
    if (state.tag !== 'running') return;
    this.#counters.aborts++;
    this.#watchdog?.unwatch(op);
    // The op is cancelling before any user code runs: fn's abort listeners and the cancel hook
    // may call close(), settle fn or start nested calls, and must find the op where it is.
    const cancelling = {
      tag: 'cancelling' as const,
      lease: state.lease,
      handle: state.handle,
      cancel: undefined as Promise<unknown> | undefined,
      cancelInFlight: false,
      outcome: undefined,
      // If the engine does not wind the op down (and answer the cancel) in time, the handle
      // is presumed lost.
      grace: setTimeout(() => this.#abandon(op, reason), this.#cancelTimeout),
    };
    op.to(cancelling);
    // fn sees its signal abort before the engine sees the cancel, so an error caused by the
    // cancel is recognised as cancellation (never fatal).
    op.abort(reason);
    op.reject(reason);
    const cancel = this.#options.cancel;
    if (cancel !== undefined && !op.fnSettled && op.state === cancelling) {
      this.#counters.cancels++;
      const info = op.info();
      // Not bounded here: whether it really returned decides if the handle may serve again.
      const cancelled = attempt(() => cancel(state.handle.engine, { op: info, reason }));
      cancelling.cancel = cancelled;
      cancelling.cancelInFlight = true;
      cancelled.then(
        () => this.#cancelReturned(op),
        () => this.#cancelReturned(op),
      );
    }
    this.#health.update();
  }

  #cancelReturned(op: Op<E>): void {
    const state = op.state;
    if (state.tag !== 'cancelling') return;
    state.cancelInFlight = false;
    this.#finishCancel(op);
  }

  /**
   * Keeps the handle once the engine wound the op down and the cancel call returned: a cancel
   * still in flight could otherwise hit the next op on this handle.
   */
  #finishCancel(op: Op<E>): void {
    const state = op.state;
    if (state.tag !== 'cancelling' || state.cancelInFlight || state.outcome === undefined) return;
    clearTimeout(state.grace);
    this.#endRun(op);
    // A checked op (an on-state session's) ends once its check has answered: its session's next
    // op waits for its end, and must not start on the handle while the `state` hook runs there.
    if (!this.#returnHandle(op, state.handle, state.outcome.ok, state.outcome.value, false)) {
      op.to(DONE);
    }
    state.lease.release();
  }

  #abandon(op: Op<E>, reason: unknown): void {
    const state = op.state;
    if (state.tag !== 'cancelling') return;
    this.#endRun(op);
    op.to(ABANDONED);
    state.lease.revoke(reason);
    const cancelled = state.cancel;
    // The handle is destroyed only once a late cancel returned (bounded by destroyTimeout).
    this.#retire(
      op,
      state.handle,
      'abandoned',
      reason,
      cancelled === undefined ? undefined : () => cancelled,
    );
    if (!op.fnSettled) this.#events.emit('abandon', { op: op.info(), reason });
  }

  /** A cancel call, settled (never rejected) when it returns or after `cancelTimeout`. */
  #sendCancel(call: () => unknown): Promise<unknown> {
    return bounded(attempt(call), this.#cancelTimeout, noop);
  }

  #answer(op: Op<E>, ok: boolean, value: unknown): void {
    if (ok) {
      this.#counters.succeeded++;
      op.resolve(value);
    } else if (value === REQUEUED) {
      // Taken back by its session before its fn ran: not a failure, the call runs again.
      op.reject(value);
    } else {
      this.#counters.failed++;
      this.#health.recordError(value);
      op.reject(value);
    }
  }

  /**
   * Where the op's handle goes now that the op let go of it. True when it is being checked for
   * session state (a `pin: 'on-state'` session's op): then the check answers the op's caller if
   * `answer`, else (an aborted op, answered already) moves the op to `done`.
   */
  #returnHandle(
    op: Op<E>,
    handle: Handle<E>,
    ok: boolean,
    value: unknown,
    answer: boolean,
  ): boolean {
    const afterCheck = op.afterCheck;
    if (value === REQUEUED) {
      // Its fn never ran (its session took it back): the handle holds nothing of it.
      this.#pool.release(handle, op.lastBeat);
    } else if (!ok && this.#isFatal(op, value)) {
      this.#retire(op, handle, 'fatal', value);
    } else if (afterCheck !== undefined && this.#stateCheck !== undefined) {
      this.#stateCheck.run(handle.engine, op, ok, op.sessionId ?? 0, (found) => {
        const refused = afterCheck(op, handle, found, ok, ok ? undefined : value);
        // Its caller was answered when it aborted: the op ends now.
        if (!answer) {
          op.to(DONE);
          return;
        }
        if (refused === undefined) this.#answer(op, ok, value);
        else this.#answer(op, false, refused);
      });
      return true;
    } else if (op.ownHandle !== undefined) {
      // A session's handle stays with its session, state and all.
    } else if (this.#reset !== undefined) {
      this.#reset.run(handle, op, ok, op.lastBeat);
    } else {
      // Its last sign of life: saves a clock read per op, and errs toward checking early.
      this.#pool.release(handle, op.lastBeat);
    }
    return false;
  }

  #isFatal(op: Op<E>, error: unknown): boolean {
    const isFatal = this.#options.isFatal;
    if (isFatal === undefined) return false;
    // Cancellation is not a fatal error: the handle survived it.
    if (
      op.aborted &&
      (error === op.abortReason || (error as Error | null)?.name === 'AbortError')
    ) {
      return false;
    }
    try {
      return isFatal(error) === true;
    } catch {
      return false;
    }
  }

  #convict(op: Op<E>, lastError: unknown): void {
    const state = op.state;
    if (state.tag !== 'running') return;
    this.#counters.stalls++;
    const error = new EngineStalledError({
      guardName: this.name,
      kind: op.kind,
      opId: op.id,
      label: op.label,
      generation: op.generation,
      probeFailures: op.probeFailures,
      cause: lastError,
    });
    this.#endRun(op);
    op.to(STALLED);
    op.abort(error);
    this.#health.recordError(error);
    op.reject(error);
    state.lease.revoke(error);
    const cancel = this.#options.cancel;
    const info = op.info();
    const cancelFirst =
      cancel === undefined
        ? undefined
        : () => {
            this.#counters.cancels++;
            return this.#sendCancel(() => cancel(state.handle.engine, { op: info, reason: error }));
          };
    this.#retire(op, state.handle, 'stall', error, cancelFirst);
    this.#events.emit('stall', { op: info, error, probeFailures: op.probeFailures });
    // The caller has its answer while fn is still running: the guard stops waiting for it.
    if (!op.fnSettled) this.#events.emit('abandon', { op: info, reason: error });
    this.#health.update();
  }

  async #close(): Promise<void> {
    this.#closed = true;
    this.#health.close();
    const error = new GuardClosedError(this.name);
    this.#watchdog?.stop();
    const sessionPool = this.#sessionPool;
    for (const session of [...this.#sessions]) {
      // Its close retires its handle once its op settled: close() waits for that destroy too.
      const closed = session.closeFor('guard-closed');
      sessionPool?.trackDestroy(closed);
    }
    for (let op = this.#queued.head; op !== null; op = this.#queued.head) {
      this.#admission.leave(op, error);
    }
    for (let op = this.#running.head; op !== null; op = this.#running.head) {
      const state = op.state;
      if (state.tag !== 'running' && state.tag !== 'cancelling') break;
      if (state.tag === 'cancelling') clearTimeout(state.grace);
      this.#endRun(op);
      op.to(CLOSED);
      op.abort(error);
      if (state.tag === 'running') op.reject(error);
      state.lease.revoke(error);
      const fnDone = op.fnSettled
        ? Promise.resolve()
        : new Promise<void>((resolve) => {
            op.onFnSettled = resolve;
          });
      // Destroy only after fn and any cancel in flight are done with the engine (bounded).
      const cancelled = state.tag === 'cancelling' ? state.cancel : undefined;
      const idle = cancelled === undefined ? fnDone : Promise.all([fnDone, cancelled]);
      this.#retire(op, state.handle, 'close', error, () => idle);
    }
    // Checks in flight are given up: their handles are discarded (reset or destroyed) below.
    this.#stateCheck?.close(this.name);
    // Handles being reset are given up with the rest; close() waits for their destroy too.
    if (this.#reset !== undefined) this.#pool.trackDestroy(this.#reset.close());
    const closing: Promise<unknown> =
      sessionPool === undefined
        ? Promise.all([this.#pool.close(), this.#cluster?.close()])
        : Promise.all([this.#pool.close(), sessionPool.close(), this.#cluster?.close()]);
    await bounded(closing, this.#closeTimeout, noop);
  }

  /** The running ops, for the watchdog; safe against the consumer unlinking the one it gets. */
  *#liveOps(): Generator<Op<E>> {
    for (let op = this.#running.head; op !== null; ) {
      const next: Op<E> | null = op.next;
      yield op;
      op = next;
    }
  }

  #describe(): string {
    return this.name === undefined ? 'the engine guard' : `engine guard "${this.name}"`;
  }
}
