/**
 * Model-based property test of sessions, reset and stateless ops with fair-share keys (SPEC §8).
 *
 * Random command sequences drive a guard (pool 1–3, maxSessions 1–3, a `reset` hook) over a fake
 * engine whose every call is held until a command settles it, so nothing depends on timing: no
 * watchdog, no op timeouts, a `cancelTimeout` that never runs out; after every command the
 * promise queue is flushed. The engine itself is the observer: each handle records who uses it
 * and when, and every hook checks the rules the guard promises:
 * - no handle serves two callers at once (a cancelled op still winding down counts);
 * - a session's ops run on its own handle, never on one another caller used, and its handle
 *   changes only after it died (then restore runs first, `ctx.restored` true for exactly that op)
 *   or after `reopen()`; a lost session without restore rejects with `SessionLostError`;
 * - a shared handle is reset between two callers, a session handle never; no stateless op ever
 *   runs on a session handle; a retired handle is never used again;
 * - every promise settles, and after `guard.close()` every handle was destroyed exactly once
 *   and no timer is left behind.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  EngineGuard,
  type OpContext,
  type Session,
  SessionClosedError,
  SessionLostError,
} from '../../src/index.js';
import { activeTimeouts, flush } from '../support/guard.js';
import { FATAL, ModelObserver, throwingThen } from '../support/model-engine.js';

/** Who used a handle: a session's id, or 'stateless' (each stateless op is a caller of its own). */
type User = number | 'stateless';

interface Conn {
  readonly generation: number;
  /** Calls (fn, restore, reset) running on it now. */
  active: number;
  /** The kind of the op running on it, while one does (a reset has none). */
  kind: 'read' | 'write' | undefined;
  /** Sessions that ran on it; a stateless op adds 'stateless'. */
  readonly users: Set<User>;
  /** A stateless op ran on it and no reset followed yet. */
  dirty: boolean;
  /** It died (a fatal error, or isAlive says so): every later call on it fails fatally. */
  dead: boolean;
  destroyed: number;
}

type Body = 'gated' | 'sync-ok' | 'sync-throw' | 'bad-then';
type ResetOutcome = 'sync-ok' | 'async-ok' | 'sync-throw' | 'async-reject' | 'bad-then';
type RestoreOutcome = 'ok' | 'async-ok' | 'error' | 'bad-then' | 'fatal';

type Command =
  | {
      kind: 'stateless';
      mode: 'read' | 'write';
      body: Body;
      abortable: boolean;
      /** Fair-share key: none (the keyless group) or one of a few callers. */
      key: string | undefined;
    }
  | { kind: 'open'; restore: boolean }
  | {
      kind: 'sessionOp';
      pick: number;
      mode: 'read' | 'write';
      body: Body;
      abortable: boolean;
    }
  | { kind: 'close'; pick: number }
  | { kind: 'reopen'; pick: number }
  | { kind: 'settle'; pick: number; how: 'ok' | 'error' | 'fatal' }
  | { kind: 'abort'; pick: number }
  | { kind: 'kill'; pick: number };

interface Scenario {
  pool: number;
  maxSessions: number;
  resets: ResetOutcome[];
  restores: RestoreOutcome[];
  /** Whether a gated fn ends at once when its op is aborted (else only when settled). */
  honorsAbort: boolean[];
  commands: Command[];
}

/** What the runs reached, summed over all of them: the property must not hold vacuously. */
const reached = {
  sessionLost: 0,
  restoredOps: 0,
  freshAfterReopen: 0,
  resetFailed: 0,
  cancelledSessionOps: 0,
  slotWaits: 0,
};

interface SessionModel {
  readonly session: Session<Conn>;
  readonly id: number;
  readonly restore: boolean;
  /** The handle its last call ran on. */
  conn: Conn | undefined;
  /** reopen() calls so far. */
  reopens: number;
  /**
   * `reopens` when the session took each handle (by generation, seen in its status() after
   * each command: a command's reopen() runs before the handles its flush lets be taken).
   */
  readonly takenAt: Map<number, number>;
  /** The generation its status() showed last. */
  lastGeneration: number;
  /** close() was called. */
  closed: boolean;
  /** Ops whose restore ran (by op id), to check `ctx.restored`. */
  readonly restoredOps: Set<number>;
  /** Its last restore failed without killing the handle: the next op restores on it again. */
  restorePending: boolean;
}

class Run extends ModelObserver<Conn> {
  readonly sessions: SessionModel[] = [];
  readonly controllers: AbortController[] = [];
  readonly guard: EngineGuard<Conn>;
  #resets = 0;
  #restores = 0;
  #gated = 0;

  constructor(readonly scenario: Scenario) {
    super();
    this.guard = new EngineGuard<Conn>({
      create: ({ generation }) => {
        const conn: Conn = {
          generation,
          active: 0,
          kind: undefined,
          users: new Set(),
          dirty: false,
          dead: false,
          destroyed: 0,
        };
        this.conns.push(conn);
        return conn;
      },
      destroy: (conn) => {
        if (conn.active > 0) this.fail(`handle ${conn.generation} destroyed while in use`);
        conn.destroyed++;
      },
      // Returns what a hostile hook might: a value, a throw, a promise, a thenable that throws.
      reset: (conn) => this.reset(conn) as Promise<void>,
      isFatal: (error) => (error as Error | null)?.message === FATAL,
      isAlive: (conn) => !conn.dead,
      cancel: () => undefined,
      cancelTimeout: 600_000,
      liveness: false,
      pool: scenario.pool,
      maxSessions: scenario.maxSessions,
    });
  }

  reset(conn: Conn): unknown {
    this.enter(conn, 'reset');
    for (const user of conn.users) {
      if (user !== 'stateless') this.fail(`session ${user}'s handle ${conn.generation} was reset`);
    }
    const outcome = this.scenario.resets[this.#resets++ % this.scenario.resets.length];
    const clean = (): void => {
      this.exit(conn);
      conn.dirty = false;
    };
    const failed = (): Error => {
      reached.resetFailed++;
      this.exit(conn);
      return new Error('reset failed');
    };
    switch (outcome) {
      case 'sync-ok':
        clean();
        return undefined;
      case 'async-ok':
        return Promise.resolve().then(clean);
      case 'sync-throw':
        throw failed();
      case 'async-reject':
        return Promise.resolve().then(() => {
          throw failed();
        });
      default:
        return throwingThen(failed());
    }
  }

  /** The fn of an op: checks where it runs, then does what `body` says. */
  fn(
    user: SessionModel | undefined,
    body: Body,
    controller: AbortController | undefined,
    closedAtCall: boolean,
  ) {
    return (conn: Conn, ctx: OpContext): unknown => {
      if (controller?.signal.aborted)
        this.fail(`fn started after its caller aborted (op ${ctx.id})`);
      if (closedAtCall) this.fail(`op ${ctx.id} ran although its session was closed when called`);
      if (user === undefined) this.checkStateless(conn, ctx);
      else this.checkSession(user, conn, ctx, false);
      this.enter(conn, `op ${ctx.id}`, ctx.kind);
      if (conn.dead) {
        this.exit(conn);
        throw new Error(FATAL);
      }
      switch (body) {
        case 'sync-ok':
          return this.endCall(conn, 'ok');
        case 'sync-throw':
          return this.endCall(conn, 'error');
        case 'bad-then':
          this.exit(conn);
          return throwingThen(new Error('then getter threw'));
        default:
          return this.gate(conn, ctx, user !== undefined);
      }
    };
  }

  gate(conn: Conn, ctx: OpContext, inSession: boolean): Promise<unknown> {
    const honors = this.scenario.honorsAbort[this.#gated++ % this.scenario.honorsAbort.length];
    return this.hold(conn, ctx.signal, honors === true, undefined, () => {
      if (inSession) reached.cancelledSessionOps++;
    });
  }

  checkStateless(conn: Conn, ctx: OpContext): void {
    if (ctx.sessionId !== undefined) this.fail(`stateless op ${ctx.id} has a sessionId`);
    if (ctx.restored) this.fail(`stateless op ${ctx.id} says restored`);
    for (const user of conn.users) {
      if (user !== 'stateless') {
        this.fail(`stateless op ${ctx.id} on session ${user}'s handle ${conn.generation}`);
      }
    }
    if (conn.dirty) this.fail(`handle ${conn.generation} not reset before op ${ctx.id}`);
    conn.users.add('stateless');
    conn.dirty = true;
  }

  /** A session's call (fn, or restore when `restoring`) runs on `conn`. */
  checkSession(model: SessionModel, conn: Conn, ctx: OpContext, restoring: boolean): void {
    if (ctx.sessionId !== model.id) {
      this.fail(`op ${ctx.id} of session ${model.id} has sessionId ${ctx.sessionId}`);
    }
    for (const user of conn.users) {
      if (user !== model.id) {
        this.fail(`session ${model.id} runs on handle ${conn.generation}, used by ${user}`);
      }
    }
    conn.users.add(model.id);
    if (conn !== model.conn) {
      // A fresh handle: fine after reopen(); after a death only through restore; never silently.
      const previous = model.conn;
      // reopen() applies to the handle the session held when it was called.
      const reopened =
        previous !== undefined && this.takenAt(model, conn) > this.takenAt(model, previous);
      if (reopened) reached.freshAfterReopen++;
      if (previous !== undefined && !reopened) {
        if (!previous.dead) {
          this.fail(`session ${model.id} moved off live handle ${previous.generation}`);
        } else if (!model.restore) {
          this.fail(`session ${model.id} lost handle ${previous.generation} silently`);
        } else if (!restoring && !model.restoredOps.has(ctx.id)) {
          this.fail(`session ${model.id} continued without restore on a new handle`);
        }
      } else if (
        restoring &&
        (previous !== undefined || !this.heldBefore(model, conn)) &&
        !this.diedUnseen(model, conn)
      ) {
        // (A session whose first handle died before any op ran on it restores too: the guard
        // does not know that nothing ran there, and errs toward telling.)
        this.fail(`session ${model.id} restored on a handle that needed none`);
      }
      model.conn = conn;
      model.restorePending = false;
    }
    const restored = restoring || model.restoredOps.has(ctx.id);
    if (ctx.restored !== restored) {
      this.fail(`op ${ctx.id} of session ${model.id}: ctx.restored ${ctx.restored}`);
    }
  }

  /** The session took a handle other than `conn` before. */
  heldBefore(model: SessionModel, conn: Conn): boolean {
    for (const generation of model.takenAt.keys()) {
      if (generation !== 0 && generation !== conn.generation) return true;
    }
    return false;
  }

  /**
   * The handle the session took last before `conn` died with no reopen() since it was taken,
   * while no fn ran on it (an op aborted before it started): the session lost it, so restore is
   * due, though no call of this model ever saw that handle.
   */
  diedUnseen(model: SessionModel, conn: Conn): boolean {
    let last = 0;
    for (const generation of model.takenAt.keys()) {
      if (generation < conn.generation && generation > last) last = generation;
    }
    const taken = this.conns.find((c) => c.generation === last);
    return (
      taken?.dead === true &&
      taken !== model.conn &&
      this.takenAt(model, taken) === this.takenAt(model, conn)
    );
  }

  /** The reopen() calls made before the session took the handle of `generation`. */
  takenAt(model: SessionModel, conn: { generation: number }): number {
    // Not seen yet: taken in this command's flush, after any reopen() of this command.
    return model.takenAt.get(conn.generation) ?? model.reopens;
  }

  restoreHook(model: SessionModel) {
    return (conn: Conn, ctx: OpContext): unknown => {
      if (!ctx.restored) this.fail(`restore of op ${ctx.id} without ctx.restored`);
      if (conn !== model.conn) this.checkSession(model, conn, ctx, true);
      else if (!model.restorePending) {
        this.fail(`restore of session ${model.id} again on restored handle ${conn.generation}`);
      }
      this.enter(conn, `restore of op ${ctx.id}`, ctx.kind);
      const outcome = this.scenario.restores[this.#restores++ % this.scenario.restores.length];
      const ok = (): void => {
        this.exit(conn);
        model.restorePending = false;
        model.restoredOps.add(ctx.id);
        reached.restoredOps++;
      };
      switch (outcome) {
        case 'ok':
          ok();
          return undefined;
        case 'async-ok':
          return Promise.resolve().then(ok);
        case 'error':
          this.exit(conn);
          model.restorePending = true;
          throw new Error('restore failed');
        case 'bad-then':
          this.exit(conn);
          model.restorePending = true;
          return throwingThen(new Error('restore then getter threw'));
        default:
          this.exit(conn);
          conn.dead = true;
          return Promise.reject(new Error(FATAL));
      }
    };
  }

  options(abortable: boolean): { signal?: AbortSignal; controller?: AbortController } {
    if (!abortable) return {};
    const controller = new AbortController();
    this.controllers.push(controller);
    return { signal: controller.signal, controller };
  }

  apply(command: Command): void {
    const sessions = this.sessions;
    switch (command.kind) {
      case 'stateless': {
        const { signal, controller } = this.options(command.abortable);
        const fn = this.fn(undefined, command.body, controller, false);
        this.track(this.guard[command.mode](fn, { signal, key: command.key }));
        return;
      }
      case 'open': {
        if (sessions.length >= 5) return;
        const holder: { model?: SessionModel } = {};
        const session = this.guard.session({
          restore: command.restore
            ? (conn, ctx) => this.restoreHook(holder.model as SessionModel)(conn, ctx)
            : undefined,
        });
        const model: SessionModel = {
          session,
          id: session.status().id,
          restore: command.restore,
          conn: undefined,
          reopens: 0,
          takenAt: new Map(),
          lastGeneration: 0,
          closed: false,
          restoredOps: new Set(),
          restorePending: false,
        };
        holder.model = model;
        sessions.push(model);
        return;
      }
      case 'sessionOp': {
        if (sessions.length === 0) return;
        const model = sessions[command.pick % sessions.length] as SessionModel;
        const { signal, controller } = this.options(command.abortable);
        const closedAtCall = model.closed;
        const holding = sessions.filter((m) => !m.closed && m.conn !== undefined && !m.conn.dead);
        if (model.conn === undefined && holding.length >= this.scenario.maxSessions) {
          reached.slotWaits++;
        }
        const fn = this.fn(model, command.body, controller, closedAtCall);
        this.track(model.session[command.mode](fn, { signal }), (error) => {
          if (error instanceof SessionLostError) {
            reached.sessionLost++;
            const conn = this.conns.find((c) => c.generation === error.generation);
            if (model.restore)
              this.fail(`session ${model.id} has restore, yet got SessionLostError`);
            // Lost: that handle died, and no reopen() came after the session took it.
            if (conn === undefined || !conn.dead || model.reopens > this.takenAt(model, conn)) {
              this.fail(`session ${model.id} got SessionLostError with nothing lost`);
            }
          }
          if (closedAtCall && !(error instanceof SessionClosedError)) {
            this.fail(`a closed session's op failed with ${String(error)}`);
          }
        });
        return;
      }
      case 'close': {
        if (sessions.length === 0) return;
        const model = sessions[command.pick % sessions.length] as SessionModel;
        model.closed = true;
        this.track(model.session.close());
        return;
      }
      case 'reopen': {
        if (sessions.length === 0) return;
        const model = sessions[command.pick % sessions.length] as SessionModel;
        if (model.closed) {
          expect(() => model.session.reopen()).toThrow(SessionClosedError);
          return;
        }
        model.session.reopen();
        model.reopens++;
        return;
      }
      case 'settle': {
        const gate = this.gates[command.pick % Math.max(1, this.gates.length)];
        gate?.settle(command.how);
        return;
      }
      case 'abort': {
        const live = this.controllers.filter((c) => !c.signal.aborted);
        live[command.pick % Math.max(1, live.length)]?.abort(new Error('caller left'));
        return;
      }
      case 'kill': {
        const alive = this.conns.filter((c) => !c.dead && c.destroyed === 0);
        const conn = alive[command.pick % Math.max(1, alive.length)];
        if (conn !== undefined) conn.dead = true;
        return;
      }
    }
  }

  /** status() must answer at every point, and agree with what the engine sees. */
  checkStatus(): void {
    const status = this.guard.status();
    const { busy, total } = status.handles;
    if (total > this.scenario.pool)
      this.fail(`${total} shared handles, pool ${this.scenario.pool}`);
    if (busy > total) this.fail(`status: ${busy} busy of ${total}`);
    for (const model of this.sessions) {
      const generation = model.session.status().generation;
      if (generation !== model.lastGeneration) {
        model.lastGeneration = generation;
        model.takenAt.set(generation, model.reopens);
      }
    }
    const open = new Set(this.sessions.map((s) => s.id));
    for (const session of status.sessions) {
      if (!open.has(session.id)) this.fail(`status lists unknown session ${session.id}`);
    }
  }
}

const body = fc.constantFrom<Body>('gated', 'gated', 'gated', 'sync-ok', 'sync-throw', 'bad-then');
const pick = fc.nat(7);
const command: fc.Arbitrary<Command> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant('stateless' as const),
      mode: fc.constantFrom('read' as const, 'write' as const),
      body,
      abortable: fc.boolean(),
      key: fc.constantFrom(undefined, 'a', 'b', 'c'),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({ kind: fc.constant('open' as const), restore: fc.boolean() }),
  },
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant('sessionOp' as const),
      pick,
      mode: fc.constantFrom('read' as const, 'write' as const),
      body,
      abortable: fc.boolean(),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('close' as const), pick }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('reopen' as const), pick }) },
  {
    weight: 5,
    arbitrary: fc.record({
      kind: fc.constant('settle' as const),
      pick,
      how: fc.constantFrom('ok' as const, 'ok' as const, 'error' as const, 'fatal' as const),
    }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('abort' as const), pick }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('kill' as const), pick }) },
);

const scenario: fc.Arbitrary<Scenario> = fc.record({
  pool: fc.integer({ min: 1, max: 3 }),
  maxSessions: fc.integer({ min: 1, max: 3 }),
  resets: fc.array(
    fc.constantFrom<ResetOutcome>(
      'sync-ok',
      'sync-ok',
      'async-ok',
      'async-ok',
      'sync-throw',
      'async-reject',
      'bad-then',
    ),
    { minLength: 1, maxLength: 8 },
  ),
  restores: fc.array(
    fc.constantFrom<RestoreOutcome>('ok', 'async-ok', 'error', 'bad-then', 'fatal'),
    {
      minLength: 1,
      maxLength: 6,
    },
  ),
  honorsAbort: fc.array(fc.boolean(), { minLength: 1, maxLength: 6 }),
  // Long runs: a loss and its restore take a session, an op, a death and another op.
  commands: fc.array(command, { minLength: 8, maxLength: 40, size: 'max' }),
});

async function play(s: Scenario): Promise<void> {
  const timersBefore = activeTimeouts();
  const run = new Run(s);
  for (const cmd of s.commands) {
    run.apply(cmd);
    await flush(3);
    run.checkStatus();
  }
  // Wind down: end every held call, close every session, then the guard.
  for (let round = 0; round < 50 && (run.gates.length > 0 || run.pending.size > 0); round++) {
    for (const gate of [...run.gates]) gate.settle('ok');
    if (round === 1) for (const model of run.sessions) run.track(model.session.close());
    await flush(3);
  }
  // Everything settled without the guard's close(): a session's close() ends its waits itself.
  expect(run.pending.size, 'promises left before guard.close()').toBe(0);
  const closed = run.guard.close();
  await flush(3);
  for (const gate of [...run.gates]) gate.settle('ok');
  await closed;
  await flush(3);
  run.checkStatus();
  expect(run.violations).toEqual([]);
  expect(run.pending.size).toBe(0);
  expect(run.guard.status().sessions).toEqual([]);
  for (const conn of run.conns) {
    expect(conn.destroyed, `handle ${conn.generation} destroyed once`).toBe(1);
    expect(conn.active, `handle ${conn.generation} idle at the end`).toBe(0);
  }
  // At most as many as before: a timer of an earlier run may have ended meanwhile.
  expect(activeTimeouts()).toBeLessThanOrEqual(timersBefore);
}

describe('sessions, reset and stateless ops (model-based)', () => {
  it('keep every handle to one caller, every session to its own handle, and every promise settled', async () => {
    await fc.assert(fc.asyncProperty(scenario, play), { numRuns: 1000 });
    for (const [what, count] of Object.entries(reached)) {
      expect(count, `runs that reached ${what}`).toBeGreaterThan(0);
    }
    // A bound for a loaded machine (about 5 s when quiet), not a speed assertion.
  }, 120_000);
});
