/**
 * Model-based property test of sessions that pin on state (SPEC 8.1).
 *
 * Random command sequences drive a guard (pool 1–3, maxSessions 0–2, a `reset` and a `state`
 * hook) over a fake engine whose state is a set of temp tables, each owned by the caller that
 * made it. Calls are held until a command settles them, and so are the `state` checks that the
 * scenario makes slow; time is faked (ticks run the idle, op, check and cancel timers). After
 * every command the promise queue is flushed and `status()` is checked. The engine itself is
 * the observer: every fn, restore, reset and check enters its handle, and checks there the rules
 * of 8.1:
 * 1. no silent split: an op of a session whose fn starts after an op that left state was
 *    answered (not aborted, not discarded) runs on the handle that holds that state;
 * 2. no silent loss: that state is still there (or the session is lost and says so: restore
 *    rebuilt it, or the op never runs); state that could not be kept is reset and its own call
 *    rejects with SessionStateDiscardedError naming it;
 * 3. no leak: a caller never runs on a handle that holds another caller's state;
 * 4. an unpinned session never queues a call behind its own running op;
 * plus: one call per handle at a time, writes alone, every promise settles, every handle
 * destroyed exactly once after `guard.close()`, no timer left, pinned sessions within
 * `maxSessions`, and `status()` consistent (`pinned`, `heldState`, `handles.sessions`, session
 * calls in `queued` naming the session's running op while pinned).
 */
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  EngineGuard,
  type HeldState,
  type OpContext,
  type Session,
  SessionClosedError,
  SessionLostError,
  SessionStateDiscardedError,
  type StateContext,
} from '../../src/index.js';
import { FakeCoordinator } from '../coordination/fake-coordinator.js';
import {
  FATAL,
  ModelObserver,
  type ObservedHandle,
  throwingThen,
} from '../support/model-engine.js';

/** Who made a table: a session's id, or a stateless op ('op <id>'). */
type Owner = number | `op ${number}`;

interface Conn extends ObservedHandle {
  readonly tables: Map<string, Owner>;
  /** Retired by the guard for a cause (a 'replace' event): its state is gone. */
  retired: boolean;
  /** Resets begun on it so far. */
  resets: number;
  /** A deaf state check overran on it: the guard may destroy it under the check, never reuse it. */
  stuck: boolean;
}

type Body = 'gated' | 'sync-ok' | 'sync-throw' | 'bad-then';
type Effect = 'none' | 'create' | 'drop' | 'drop-all';
/** How the `state` hook answers one check. */
type CheckHow =
  | 'sync'
  | 'async'
  | 'gated'
  | 'throw'
  | 'reject'
  | 'overrun'
  /** Held like 'gated', but deaf to its signal: it stops using the handle only when answered. */
  | 'deaf'
  | 'nonsense'
  | 'undefined-clean';
type ResetOutcome = 'sync-ok' | 'async-ok' | 'sync-throw' | 'async-reject';
type RestoreOutcome = 'ok' | 'async-ok' | 'error' | 'fatal';

type Command =
  | {
      kind: 'stateless';
      mode: 'read' | 'write';
      body: Body;
      effect: 'none' | 'create';
      abortable: boolean;
    }
  | { kind: 'open'; restore: boolean; always: boolean; idle: boolean }
  | {
      kind: 'sessionOp';
      pick: number;
      mode: 'read' | 'write';
      body: Body;
      effect: Effect;
      table: number;
      abortable: boolean;
      timeout: boolean;
    }
  | { kind: 'close'; pick: number }
  | { kind: 'reopen'; pick: number }
  | { kind: 'settle'; pick: number; how: 'ok' | 'error' | 'fatal' }
  | { kind: 'answer'; pick: number; how: 'ok' | 'throw' }
  | { kind: 'abort'; pick: number }
  | { kind: 'kill'; pick: number }
  | { kind: 'tick'; ms: number }
  /** Grants the oldest cluster lease waiting (with a coordinator). */
  | { kind: 'grant' }
  | { kind: 'closeGuard' };

interface Scenario {
  pool: number;
  maxSessions: number;
  checks: CheckHow[];
  resets: ResetOutcome[];
  restores: RestoreOutcome[];
  /** Whether a gated fn ends at once when its op is aborted (else only when settled). */
  honorsAbort: boolean[];
  /** Short: an op whose fn ignores its abort is abandoned within a tick. */
  cancelTimeout: number;
  commands: Command[];
  /** Closes the guard after this command, with whatever is in flight then. */
  closeGuardAt: number | null;
  /**
   * A coordinator that coordinates reads and grants only on `grant`: an op then starts (lease
   * and handle) well before its fn runs.
   */
  coordinated: boolean;
  /** The session every run starts with has a `restore` hook. */
  firstRestores: boolean;
}

const RESET_TIMEOUT = 1_000;
const IDLE_TIMEOUT = 1_500;
const OP_TIMEOUT = 1_200;
const TABLES = ['a', 'b', 'c'];

/** What the runs reached, summed over all of them: the property must not hold vacuously. */
const reached = {
  pins: 0,
  unpins: 0,
  takenBack: 0,
  sideBySide: 0,
  discardNoSlot: 0,
  discardSplit: 0,
  discardUnknown: 0,
  checkTimeouts: 0,
  keptUnknown: 0,
  restorePins: 0,
  sessionLost: 0,
  idleCloses: 0,
  abortedOpPinned: 0,
  namedOwnOp: 0,
  reopenWhilePinned: 0,
  requiredChecked: 0,
  guardClosedMidRun: 0,
};

/** One call of the run, from the caller's call to its answer. */
interface CallRecord {
  readonly session: SessionModel | undefined;
  readonly controller: AbortController | undefined;
  /** ctx.id, once fn started. */
  id: number | undefined;
  conn: Conn | undefined;
  /** The table its fn made, if it made one. */
  created: string | undefined;
  /** The session's reopen count when it was called: reopen() gives up what calls before it make. */
  epoch: number;
  /** Its caller was answered with an outcome that keeps what it made (see `answered()`). */
  acked: boolean;
  answered: boolean;
  /** Its fn runs (started and not settled). */
  running: boolean;
  /** Resets of its handle begun before its fn ended. */
  resetsAtEnd: number;
  /** Called while its session was unpinned and open. */
  calledUnpinned: boolean;
}

/** A table a session made, as the session's caller knows it. */
interface Entry {
  conn: Conn;
  readonly creator: CallRecord;
}

interface SessionModel {
  readonly session: Session<Conn>;
  readonly id: number;
  readonly pin: 'on-state' | 'always';
  readonly restore: boolean;
  /** reopen() calls so far: state made before one is given up. */
  epoch: number;
  /** Its tables, by name: where each was made and by whom. */
  readonly entries: Map<string, Entry>;
}

/** A held `state` check: `answer` ends it. */
interface HeldCheck {
  readonly conn: Conn;
  readonly answer: (how: 'ok' | 'throw') => void;
}

class Run extends ModelObserver<Conn> {
  readonly sessions: SessionModel[] = [];
  readonly checks: HeldCheck[] = [];
  readonly calls: CallRecord[] = [];
  readonly guard: EngineGuard<Conn>;
  readonly coordinator: FakeCoordinator | undefined;
  guardClosed = false;
  /** Ops whose restore ran (by op id): exactly those see `ctx.restored`. */
  readonly restoredOps = new Set<number>();
  /** Handles a restore rebuilt state on (a session pinned to one is a restore that pinned). */
  readonly restoredOn = new Set<Conn>();
  /** The last check of each handle could not tell its state (the pin then keeps what it had). */
  readonly unknownAt = new Set<Conn>();
  #checks = 0;
  #resets = 0;
  #restores = 0;
  #gated = 0;

  constructor(readonly scenario: Scenario) {
    super();
    this.coordinator = scenario.coordinated
      ? new FakeCoordinator({ coordinatesReads: true, autoGrant: false })
      : undefined;
    this.guard = new EngineGuard<Conn>({
      create: ({ generation }) => {
        const conn: Conn = {
          generation,
          active: 0,
          kind: undefined,
          tables: new Map(),
          dead: false,
          retired: false,
          resets: 0,
          stuck: false,
          destroyed: 0,
        };
        this.conns.push(conn);
        return conn;
      },
      destroy: (conn) => {
        // (The guard gives up on a call that outlives its bound: an abandoned op, a deaf check
        // past resetTimeout, an op the guard's close() waited destroyTimeout for.)
        if (conn.active > 0 && !conn.retired && !conn.stuck && !this.guardClosed) {
          this.fail(`handle ${conn.generation} destroyed while a call runs on it`);
        }
        conn.destroyed++;
      },
      reset: (conn) => this.reset(conn) as Promise<void>,
      // Answers what a hostile hook might: a list, a throw, a promise, nonsense.
      state: (conn, ctx) => this.check(conn, ctx) as HeldState[],
      isFatal: (error) => (error as Error | null)?.message === FATAL,
      isAlive: (conn) => !conn.dead,
      cancel: () => undefined,
      cancelTimeout: scenario.cancelTimeout,
      resetTimeout: RESET_TIMEOUT,
      liveness: false,
      pool: scenario.pool,
      maxSessions: scenario.maxSessions,
      coordinator: this.coordinator,
    });
    this.guard.on('replace', ({ generation }) => {
      const conn = this.conns.find((c) => c.generation === generation);
      if (conn !== undefined) conn.retired = true;
    });
    this.guard.on('sessionPin', () => reached.pins++);
    this.guard.on('sessionUnpin', () => reached.unpins++);
    this.guard.on('sessionLost', () => reached.sessionLost++);
    this.guard.on('sessionClose', ({ reason }) => {
      if (reason === 'idle') reached.idleCloses++;
    });
  }

  /** (An abandoned op may still run on its retired handle: its lease was revoked.) */
  protected override gaveUp(conn: Conn): boolean {
    return conn.retired;
  }

  reset(conn: Conn): unknown {
    this.enter(conn, 'reset');
    conn.resets++;
    const outcome = this.scenario.resets[this.#resets++ % this.scenario.resets.length];
    const clean = (): void => {
      this.exit(conn);
      conn.tables.clear();
    };
    const failed = (): Error => {
      this.exit(conn);
      return new Error('reset failed');
    };
    if (conn.dead) throw failed();
    switch (outcome) {
      case 'sync-ok':
        clean();
        return undefined;
      case 'async-ok':
        return Promise.resolve().then(clean);
      case 'sync-throw':
        throw failed();
      default:
        return Promise.resolve().then(() => {
          throw failed();
        });
    }
  }

  /** The `state` hook: what tables the handle holds, answered as the scenario says. */
  check(conn: Conn, ctx: StateContext): unknown {
    this.enter(conn, `state check of op ${ctx.op.id}`);
    const how = this.scenario.checks[this.#checks++ % this.scenario.checks.length] as CheckHow;
    if (
      how === 'sync' ||
      how === 'async' ||
      how === 'undefined-clean' ||
      how === 'gated' ||
      how === 'deaf'
    ) {
      this.unknownAt.delete(conn);
    } else {
      this.unknownAt.add(conn);
    }
    const held = (): HeldState[] =>
      [...conn.tables.keys()].sort().map((name) => ({ kind: 'temp table', name }));
    if (conn.dead) {
      this.exit(conn);
      this.unknownAt.add(conn);
      throw new Error(FATAL);
    }
    switch (how) {
      case 'sync':
        this.exit(conn);
        return held();
      case 'undefined-clean':
        this.exit(conn);
        return conn.tables.size === 0 ? undefined : held();
      case 'nonsense':
        this.exit(conn);
        return 'nothing to see';
      case 'throw':
        this.exit(conn);
        throw new Error('state check failed');
      case 'async':
        return Promise.resolve().then(() => {
          this.exit(conn);
          return held();
        });
      case 'reject':
        return Promise.resolve().then(() => {
          this.exit(conn);
          throw new Error('state check failed');
        });
      default:
        // 'gated' waits for an `answer` command, 'overrun' for nothing: only its bound (or the
        // guard's close) ends it. Either stops using the handle when its signal aborts; 'deaf'
        // does not.
        return new Promise((resolve, reject) => {
          let open = true;
          const end = (): boolean => {
            if (!open) return false;
            open = false;
            const at = this.checks.indexOf(check);
            if (at >= 0) this.checks.splice(at, 1);
            this.exit(conn);
            return true;
          };
          const check: HeldCheck = {
            conn,
            answer: (answer) => {
              if (!end()) return;
              if (answer === 'ok') resolve(held());
              else {
                this.unknownAt.add(conn);
                reject(new Error('state check failed'));
              }
            },
          };
          if (how !== 'overrun') this.checks.push(check);
          if (how === 'deaf') {
            // Told it lost: its answer will not count, but it runs on until answered.
            ctx.signal.addEventListener(
              'abort',
              () => {
                this.unknownAt.add(conn);
                conn.stuck = true;
              },
              { once: true },
            );
            return;
          }
          ctx.signal.addEventListener(
            'abort',
            () => {
              if (!end()) return;
              this.unknownAt.add(conn);
              reject(ctx.signal.reason);
            },
            { once: true },
          );
        });
    }
  }

  /** The fn of an op: checks where it runs, makes or drops state, then does what `body` says. */
  fn(
    call: CallRecord,
    body: Body,
    effect: Effect,
    table: string,
    closedAtCall: boolean,
  ): (conn: Conn, ctx: OpContext) => unknown {
    return (conn, ctx) => {
      if (call.id !== undefined) this.fail(`the fn of op ${call.id} ran twice`);
      call.id = ctx.id;
      call.conn = conn;
      if (call.controller?.signal.aborted) this.fail(`fn of op ${ctx.id} started after abort`);
      if (closedAtCall) this.fail(`op ${ctx.id} ran although its session was closed when called`);
      const model = call.session;
      if (model === undefined) {
        if (ctx.sessionId !== undefined) this.fail(`stateless op ${ctx.id} has a sessionId`);
        this.checkNoLeak(conn, undefined, `stateless op ${ctx.id}`);
      } else {
        if (ctx.sessionId !== model.id) this.fail(`op ${ctx.id} has sessionId ${ctx.sessionId}`);
        if (ctx.restored !== this.restoredOps.has(ctx.id)) {
          this.fail(`op ${ctx.id} of session ${model.id}: ctx.restored ${ctx.restored}`);
        }
        this.checkNoLeak(conn, model.id, `op ${ctx.id} of session ${model.id}`);
        this.checkRequired(model, conn, `op ${ctx.id}`);
        for (const other of this.calls) {
          if (other !== call && other.session === model && other.running) reached.sideBySide++;
        }
        if (call.calledUnpinned && model.session.status().pinned) reached.takenBack++;
      }
      this.enter(conn, `op ${ctx.id}`, ctx.kind);
      if (conn.dead) {
        this.exit(conn);
        throw new Error(FATAL);
      }
      this.effect(call, conn, effect, table);
      call.running = true;
      const ended = (): void => {
        call.running = false;
        call.resetsAtEnd = conn.resets;
      };
      switch (body) {
        case 'sync-ok':
          ended();
          return this.endCall(conn, 'ok');
        case 'sync-throw':
          ended();
          return this.endCall(conn, 'error');
        case 'bad-then':
          ended();
          this.exit(conn);
          return throwingThen(new Error('then getter threw'));
        default: {
          const honors =
            this.scenario.honorsAbort[this.#gated++ % this.scenario.honorsAbort.length];
          return this.hold(conn, ctx.signal, honors === true, ended);
        }
      }
    };
  }

  /** Makes or drops a table as `effect` says, owned by the caller. */
  effect(call: CallRecord, conn: Conn, effect: Effect, table: string): void {
    const model = call.session;
    const owner: Owner = model?.id ?? `op ${call.id ?? 0}`;
    if (effect === 'create') {
      conn.tables.set(table, owner);
      call.created = table;
      model?.entries.set(table, { conn, creator: call });
    } else if (effect === 'drop') {
      conn.tables.delete(table);
      if (model?.entries.get(table)?.conn === conn) model.entries.delete(table);
    } else if (effect === 'drop-all') {
      conn.tables.clear();
      if (model !== undefined) {
        for (const [name, entry] of model.entries) {
          if (entry.conn === conn) model.entries.delete(name);
        }
      }
    }
  }

  /** Invariant 3: nobody else's state on the handle a caller runs on. */
  checkNoLeak(conn: Conn, owner: number | undefined, what: string): void {
    for (const [name, made] of conn.tables) {
      if (made !== owner) {
        this.fail(
          `leak: ${what} runs on handle ${conn.generation} holding table ${name} of ${made}`,
        );
      }
    }
  }

  /**
   * Invariants 1 and 2: the state the session's caller was told it has (made by a call answered
   * since, not discarded, not given up by reopen()) is on the handle this op runs on.
   */
  checkRequired(model: SessionModel, conn: Conn, what: string): void {
    for (const [name, entry] of model.entries) {
      if (!entry.creator.acked || entry.creator.epoch !== model.epoch) continue;
      reached.requiredChecked++;
      if (entry.conn === conn) {
        if (conn.tables.get(name) !== model.id) {
          this.fail(
            `silent loss: table ${name} of session ${model.id} gone from its handle ${conn.generation} when ${what} ran`,
          );
        }
        continue;
      }
      const gone = entry.conn.dead || entry.conn.retired || entry.conn.destroyed > 0;
      this.fail(
        gone
          ? `silent loss: session ${model.id}'s table ${name} died with handle ${entry.conn.generation}, and ${what} ran on ${conn.generation} with no restore and no SessionLostError`
          : `silent split: ${what} of session ${model.id} ran on handle ${conn.generation} while its table ${name} is on handle ${entry.conn.generation}`,
      );
    }
  }

  restoreHook(holder: { model?: SessionModel }) {
    return (conn: Conn, ctx: OpContext): unknown => {
      const model = holder.model as SessionModel;
      if (!ctx.restored) this.fail(`restore of op ${ctx.id} without ctx.restored`);
      this.checkNoLeak(conn, model.id, `restore of op ${ctx.id}`);
      // Restore runs when the session's state died: never while it lives on another handle.
      for (const [name, entry] of model.entries) {
        if (!entry.creator.acked || entry.creator.epoch !== model.epoch) continue;
        // (A restored table whose pin was refused was reset: it lives nowhere.)
        const there = entry.conn.tables.get(name) === model.id;
        const gone = entry.conn.dead || entry.conn.retired || entry.conn.destroyed > 0;
        if (there && !gone && entry.conn !== conn) {
          this.fail(
            `restore of session ${model.id} on ${conn.generation} while its table ${name} lives on ${entry.conn.generation}`,
          );
        }
      }
      this.enter(conn, `restore of op ${ctx.id}`, ctx.kind);
      const outcome = this.scenario.restores[this.#restores++ % this.scenario.restores.length];
      if (conn.dead) {
        this.exit(conn);
        throw new Error(FATAL);
      }
      // Rebuilds what the session's fns made (as an app that records its state in fn would),
      // answered or not: a call answered in the turn the restore runs tells its caller later.
      const rebuild = (): void => {
        this.exit(conn);
        for (const [name, entry] of model.entries) {
          if (entry.creator.epoch !== model.epoch) continue;
          conn.tables.set(name, model.id);
          entry.conn = conn;
        }
        this.restoredOps.add(ctx.id);
        this.restoredOn.add(conn);
      };
      switch (outcome) {
        case 'ok':
          rebuild();
          return undefined;
        case 'async-ok':
          return Promise.resolve().then(rebuild);
        case 'error':
          this.exit(conn);
          throw new Error('restore failed');
        default:
          this.exit(conn);
          conn.dead = true;
          return Promise.reject(new Error(FATAL));
      }
    };
  }

  newCall(session: SessionModel | undefined, controller: AbortController | undefined): CallRecord {
    const status = session?.session.status();
    const call: CallRecord = {
      session,
      controller,
      id: undefined,
      conn: undefined,
      created: undefined,
      epoch: session?.epoch ?? 0,
      acked: false,
      answered: false,
      running: false,
      resetsAtEnd: 0,
      calledUnpinned:
        status !== undefined &&
        status.pin === 'on-state' &&
        !status.pinned &&
        status.state === 'open',
    };
    this.calls.push(call);
    return call;
  }

  /** A session op's caller heard back: does the answer keep what its fn made? */
  answered(call: CallRecord, closedAtCall: boolean, error?: unknown): void {
    call.answered = true;
    const model = call.session as SessionModel;
    if (error === undefined) {
      // (Once the session closed, what its running calls leave is discarded without a word.)
      call.acked = call.id !== undefined && model.session.status().state !== 'closed';
      return;
    }
    if (error instanceof SessionStateDiscardedError) {
      if (error.sessionId !== model.id)
        this.fail(`discard of session ${error.sessionId} told to ${model.id}`);
      if (call.id === undefined)
        this.fail(`SessionStateDiscardedError for a call whose fn never ran`);
      if (error.reason === 'no-slot') reached.discardNoSlot++;
      else if (error.reason === 'split') reached.discardSplit++;
      else reached.discardUnknown++;
      if ((error.cause as Error | undefined)?.name === 'HookTimeoutError') reached.checkTimeouts++;
      if (error.reason !== 'unknown') {
        const names = (error.discarded ?? []).map((entry) => entry.name);
        if (call.created !== undefined && !names.includes(call.created)) {
          this.fail(`op ${call.id} made ${call.created}, discarded [${names}] without it`);
        }
      }
      // Discarded: never part of the session's state, and gone before the handle serves again.
      for (const [name, entry] of model.entries) {
        if (entry.creator === call) model.entries.delete(name);
      }
      // Reset (or given up) before its caller heard back.
      const conn = call.conn;
      if (conn !== undefined && conn.resets === call.resetsAtEnd && conn.destroyed === 0) {
        this.fail(
          `op ${call.id}'s state was discarded, but handle ${conn.generation} was not reset`,
        );
      }
      return;
    }
    if (error instanceof SessionLostError) {
      if (model.restore) this.fail(`session ${model.id} has restore, yet got SessionLostError`);
    }
    if (closedAtCall && !(error instanceof SessionClosedError) && !this.guardClosed) {
      this.fail(`a closed session's op failed with ${String(error)}`);
    }
    const aborted =
      call.controller?.signal.aborted === true && error === call.controller.signal.reason;
    const fatal = (error as Error | null)?.message === FATAL;
    const closed =
      (error as Error | null)?.name === 'GuardClosedError' || error instanceof SessionClosedError;
    // An op that failed after making state keeps it, and its caller knows it may exist.
    call.acked =
      call.id !== undefined &&
      !aborted &&
      !fatal &&
      !closed &&
      model.session.status().state !== 'closed';
  }

  apply(command: Command): void {
    const sessions = this.sessions;
    switch (command.kind) {
      case 'stateless': {
        const controller = command.abortable ? new AbortController() : undefined;
        const call = this.newCall(undefined, controller);
        const fn = this.fn(call, command.body, command.effect, `s${this.calls.length}`, false);
        const answered = (): void => {
          call.answered = true;
        };
        this.track(
          this.guard[command.mode](fn, { signal: controller?.signal }),
          answered,
          answered,
        );
        return;
      }
      case 'open': {
        if (sessions.length >= 5) return;
        if (this.guardClosed) {
          expect(() => this.guard.session()).toThrow(/closed/);
          return;
        }
        if (command.always && this.scenario.maxSessions === 0) return;
        const holder: { model?: SessionModel } = {};
        const session = this.guard.session({
          pin: command.always ? 'always' : 'on-state',
          idleTimeout: command.idle ? IDLE_TIMEOUT : undefined,
          restore: command.restore ? (conn, ctx) => this.restoreHook(holder)(conn, ctx) : undefined,
        });
        const model: SessionModel = {
          session,
          id: session.status().id,
          pin: command.always ? 'always' : 'on-state',
          restore: command.restore,
          epoch: 0,
          entries: new Map(),
        };
        holder.model = model;
        sessions.push(model);
        return;
      }
      case 'sessionOp': {
        if (sessions.length === 0) return;
        const model = sessions[command.pick % sessions.length] as SessionModel;
        const controller = command.abortable ? new AbortController() : undefined;
        const closedAtCall = model.session.status().state === 'closed';
        const call = this.newCall(model, controller);
        const table = TABLES[command.table % TABLES.length] as string;
        const fn = this.fn(call, command.body, command.effect, table, closedAtCall);
        const promise = model.session[command.mode](fn, {
          signal: controller?.signal,
          timeout: command.timeout ? OP_TIMEOUT : undefined,
        });
        this.track(
          promise,
          (error) => this.answered(call, closedAtCall, error),
          () => this.answered(call, closedAtCall),
        );
        return;
      }
      case 'close': {
        if (sessions.length === 0) return;
        const model = sessions[command.pick % sessions.length] as SessionModel;
        this.track(model.session.close());
        return;
      }
      case 'reopen': {
        if (sessions.length === 0) return;
        const model = sessions[command.pick % sessions.length] as SessionModel;
        const status = model.session.status();
        if (status.state === 'closed') {
          expect(() => model.session.reopen()).toThrow(SessionClosedError);
          return;
        }
        if (status.pinned && status.running) reached.reopenWhilePinned++;
        // (Before the call: calls queued behind a loss may start in it.)
        model.epoch++;
        model.session.reopen();
        return;
      }
      case 'settle': {
        this.gates[command.pick % Math.max(1, this.gates.length)]?.settle(command.how);
        return;
      }
      case 'answer': {
        this.checks[command.pick % Math.max(1, this.checks.length)]?.answer(command.how);
        return;
      }
      case 'abort': {
        const live = this.calls.filter(
          (c) => c.controller !== undefined && !c.controller.signal.aborted && !c.answered,
        );
        live[command.pick % Math.max(1, live.length)]?.controller?.abort(new Error('caller left'));
        return;
      }
      case 'kill': {
        const alive = this.conns.filter((c) => !c.dead && c.destroyed === 0);
        const conn = alive[command.pick % Math.max(1, alive.length)];
        if (conn !== undefined) conn.dead = true;
        return;
      }
      case 'grant': {
        if (this.coordinator !== undefined && this.coordinator.pending.length > 0) {
          this.coordinator.grant();
        }
        return;
      }
      case 'tick': {
        vi.advanceTimersByTime(command.ms);
        return;
      }
      case 'closeGuard': {
        if (this.guardClosed) return;
        if (this.checks.length > 0 || this.gates.length > 0) reached.guardClosedMidRun++;
        this.guardClosed = true;
        this.track(this.guard.close());
        return;
      }
    }
  }

  /** status() answers at every point, and agrees with what the engine sees. */
  checkStatus(): void {
    const status = this.guard.status();
    const { busy, total, sessions: sessionHandles } = status.handles;
    const { pool, maxSessions } = this.scenario;
    if (total > pool) this.fail(`${total} shared handles, pool ${pool}`);
    if (busy > total) this.fail(`status: ${busy} busy of ${total}`);
    if (sessionHandles > maxSessions) {
      this.fail(`${sessionHandles} session handles, maxSessions ${maxSessions}`);
    }
    const pinned = status.sessions.filter((s) => s.pinned);
    if (pinned.length > maxSessions)
      this.fail(`${pinned.length} pinned, maxSessions ${maxSessions}`);
    if (sessionHandles < pinned.length) {
      this.fail(`handles.sessions ${sessionHandles} with ${pinned.length} sessions pinned`);
    }
    for (const s of status.sessions) {
      const model = this.sessions.find((m) => m.id === s.id);
      if (model === undefined) {
        this.fail(`status lists unknown session ${s.id}`);
        continue;
      }
      if (model.pin === 'on-state' && s.pinned !== s.heldState.length > 0) {
        this.fail(
          `session ${s.id}: pinned ${s.pinned} with heldState [${s.heldState.map((h) => h.name)}]`,
        );
      }
      if (!s.pinned || model.pin !== 'on-state') continue;
      const conn = this.conns.find((c) => c.generation === s.generation);
      if (conn === undefined) {
        this.fail(`session ${s.id} pinned to unknown handle ${s.generation}`);
        continue;
      }
      for (const held of s.heldState) {
        const entry = model.entries.get(held.name);
        if (
          entry !== undefined &&
          entry.conn === conn &&
          entry.creator.controller?.signal.aborted
        ) {
          reached.abortedOpPinned++;
        }
      }
      if (this.unknownAt.has(conn)) reached.keptUnknown++;
      if (model.restore && this.restoredOn.has(conn)) reached.restorePins++;
      // Quiet and last checked: what holds the pin is what the handle holds.
      const quiet = conn.active === 0 && !this.calls.some((c) => c.conn === conn && !c.answered);
      if (quiet && !this.unknownAt.has(conn) && !conn.dead && conn.destroyed === 0) {
        const names = [...conn.tables.keys()].sort().join(',');
        const shown = s.heldState
          .map((h) => h.name)
          .sort()
          .join(',');
        if (names !== shown) {
          this.fail(
            `session ${s.id} pinned by [${shown}], its handle ${conn.generation} holds [${names}]`,
          );
        }
      }
    }
    for (const q of status.queued) {
      if (q.sessionId === undefined) continue;
      const model = this.sessions.find((m) => m.id === q.sessionId);
      const s = status.sessions.find((x) => x.id === q.sessionId);
      const own = q.waitingFor.filter((b) => b.sessionId !== undefined);
      if (own.some((b) => b.sessionId !== q.sessionId)) {
        this.fail(`call ${q.id} of session ${q.sessionId} waits for another session's op`);
      }
      // Invariant 4: only a pinned (or lost) session queues calls behind its own running op.
      if (
        own.length > 0 &&
        model?.pin === 'on-state' &&
        s !== undefined &&
        !s.pinned &&
        s.state === 'open'
      ) {
        this.fail(
          `call ${q.id} of unpinned session ${q.sessionId} waits for its own op ${own[0]?.id}`,
        );
      }
      if (s === undefined || !s.pinned) continue;
      const running = this.calls.find(
        (c) => c.session === model && c.running && c.conn?.generation === s.generation,
      );
      if (running === undefined || running.id === q.id) continue;
      if (q.waitingFor.length !== 1 || q.waitingFor[0]?.id !== running.id) {
        this.fail(
          `call ${q.id} of pinned session ${q.sessionId} waits for [${q.waitingFor.map((b) => b.id)}], not its running op ${running.id}`,
        );
      } else {
        reached.namedOwnOp++;
      }
    }
  }
}

const body = fc.constantFrom<Body>(
  'gated',
  'gated',
  'gated',
  'sync-ok',
  'sync-ok',
  'sync-throw',
  'bad-then',
);
const pick = fc.nat(7);
const command: fc.Arbitrary<Command> = fc.oneof(
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('stateless' as const),
      mode: fc.constantFrom('read' as const, 'write' as const),
      body,
      effect: fc.constantFrom('none' as const, 'none' as const, 'create' as const),
      abortable: fc.boolean(),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('open' as const),
      restore: fc.boolean(),
      always: fc.constantFrom(false, false, false, true),
      idle: fc.constantFrom(false, false, true),
    }),
  },
  {
    weight: 8,
    arbitrary: fc.record({
      kind: fc.constant('sessionOp' as const),
      pick,
      mode: fc.constantFrom('read' as const, 'read' as const, 'write' as const),
      body,
      effect: fc.constantFrom<Effect>(
        'none',
        'none',
        'create',
        'create',
        'create',
        'drop',
        'drop-all',
      ),
      table: fc.nat(2),
      abortable: fc.boolean(),
      timeout: fc.constantFrom(false, false, true),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('close' as const), pick }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('reopen' as const), pick }) },
  {
    weight: 6,
    arbitrary: fc.record({
      kind: fc.constant('settle' as const),
      pick,
      how: fc.constantFrom('ok' as const, 'ok' as const, 'error' as const, 'fatal' as const),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant('answer' as const),
      pick,
      how: fc.constantFrom('ok' as const, 'ok' as const, 'ok' as const, 'throw' as const),
    }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('abort' as const), pick }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('kill' as const), pick }) },
  { weight: 3, arbitrary: fc.constant({ kind: 'grant' as const }) },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('tick' as const),
      ms: fc.constantFrom(1, 600, RESET_TIMEOUT + 1, IDLE_TIMEOUT + 1),
    }),
  },
);

const scenario: fc.Arbitrary<Scenario> = fc.record({
  pool: fc.integer({ min: 1, max: 3 }),
  maxSessions: fc.constantFrom(0, 1, 1, 2, 2),
  checks: fc.array(
    fc.oneof(
      {
        weight: 20,
        arbitrary: fc.constantFrom<CheckHow>('sync', 'async', 'gated', 'undefined-clean'),
      },
      {
        weight: 1,
        arbitrary: fc.constantFrom<CheckHow>('throw', 'reject', 'overrun', 'nonsense', 'deaf'),
      },
    ),
    { minLength: 1, maxLength: 12 },
  ),
  resets: fc.array(
    fc.constantFrom<ResetOutcome>('sync-ok', 'sync-ok', 'async-ok', 'sync-throw', 'async-reject'),
    { minLength: 1, maxLength: 6 },
  ),
  restores: fc.array(fc.constantFrom<RestoreOutcome>('ok', 'ok', 'async-ok', 'error', 'fatal'), {
    minLength: 1,
    maxLength: 6,
  }),
  honorsAbort: fc.array(fc.boolean(), { minLength: 1, maxLength: 6 }),
  cancelTimeout: fc.constantFrom(600_000, 600_000, 500),
  commands: fc.array(command, { minLength: 8, maxLength: 60, size: 'max' }),
  closeGuardAt: fc.option(fc.nat(59), { freq: 4 }),
  coordinated: fc.constantFrom(false, false, true),
  firstRestores: fc.boolean(),
});

async function flush(turns = 3): Promise<void> {
  for (let i = 0; i < turns; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

async function play(s: Scenario): Promise<void> {
  const run = new Run(s);
  // Every run has a session from the start: most of the interesting ones need one.
  run.apply({ kind: 'open', restore: s.firstRestores, always: false, idle: false });
  for (const [at, cmd] of s.commands.entries()) {
    run.apply(at === s.closeGuardAt ? { kind: 'closeGuard' } : cmd);
    await flush();
    run.checkStatus();
  }
  // Wind down: end every held call and check, give every open session one more op (the state
  // its callers were told of must be where it runs), then close the sessions.
  for (let round = 0; round < 60; round++) {
    const busy = run.gates.length > 0 || run.checks.length > 0 || run.pending.size > 0;
    if (!busy && round > 2) break;
    for (const gate of [...run.gates]) gate.settle('ok');
    while (run.coordinator !== undefined && run.coordinator.pending.length > 0) {
      run.coordinator.grant();
    }
    for (const check of [...run.checks]) check.answer('ok');
    if (round === 1) {
      for (const model of run.sessions) {
        if (model.session.status().state === 'closed' || run.guardClosed) continue;
        const call = run.newCall(model, undefined);
        run.track(
          model.session.read(run.fn(call, 'sync-ok', 'none', 'a', false)),
          (error) => run.answered(call, false, error),
          () => run.answered(call, false),
        );
      }
    }
    if (round === 2) for (const model of run.sessions) run.track(model.session.close());
    await flush();
    if (round > 3) vi.advanceTimersByTime(RESET_TIMEOUT + 1);
    await flush();
    run.checkStatus();
  }
  expect(run.pending.size, 'promises left before guard.close()').toBe(0);
  const closed = run.guard.close();
  let done = false;
  closed.then(() => {
    done = true;
  });
  for (let round = 0; round < 20 && !done; round++) {
    for (const gate of [...run.gates]) gate.settle('ok');
    while (run.coordinator !== undefined && run.coordinator.pending.length > 0) {
      run.coordinator.grant();
    }
    await flush();
    vi.advanceTimersByTime(1_000);
  }
  await closed;
  await flush();
  run.checkStatus();
  expect(run.violations).toEqual([]);
  expect(run.pending.size).toBe(0);
  expect(run.guard.status().sessions).toEqual([]);
  for (const conn of run.conns) {
    expect(conn.destroyed, `handle ${conn.generation} destroyed once`).toBe(1);
    expect(conn.active, `handle ${conn.generation} idle at the end`).toBe(0);
  }
  expect(vi.getTimerCount(), 'timers left after close()').toBe(0);
}

describe('sessions that pin on state (model-based)', () => {
  beforeEach(() => {
    vi.useFakeTimers({
      toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date', 'performance'],
    });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("never split, lose or leak a session's state, and never queue an unpinned session behind itself", async () => {
    await fc.assert(fc.asyncProperty(scenario, play), {
      numRuns: Number(process.env.PIN_MODEL_RUNS ?? 1500),
    });
    // Each is reached about ten times or more per 1,500 runs (the rarest: a split discard).
    for (const [what, count] of Object.entries(reached)) {
      expect(count, `runs that reached ${what}`).toBeGreaterThan(0);
    }
    // A bound for a loaded machine, not a speed assertion.
  }, 300_000);
});
