import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import {
  DeadlockError,
  EngineGuard,
  type EngineGuardOptions,
  EngineStalledError,
  SessionClosedError,
  SessionLimitError,
  SessionLostError,
} from '../../src/index.js';
import { errorOf, flush, waitFor } from '../support/guard.js';

interface Conn {
  generation: number;
  /** Session state: what a temp table or a SET would be. */
  state: string[];
  busy: number;
  hung: boolean;
  dead: boolean;
  destroyed: boolean;
}

function guardWith(extra: Partial<EngineGuardOptions<Conn>> = {}): EngineGuard<Conn> {
  return new EngineGuard<Conn>({
    create: ({ generation }) => ({
      generation,
      state: [],
      busy: 0,
      hung: false,
      dead: false,
      destroyed: false,
    }),
    destroy: (conn) => {
      conn.destroyed = true;
    },
    reset: (conn) => {
      conn.state.length = 0;
    },
    isFatal: (error) => (error as Error).message === 'connection lost',
    isAlive: (conn) => !conn.dead,
    pool: 2,
    maxSessions: 2,
    ...extra,
  });
}

/** Runs on `conn`, checking that no other op uses it at the same time. */
async function exclusive<T>(conn: Conn, work: () => Promise<T> | T): Promise<T> {
  expect(conn.busy).toBe(0);
  conn.busy++;
  try {
    return await work();
  } finally {
    conn.busy--;
  }
}

describe('sessions', () => {
  it('keep their state on a handle of their own, never reset and never lent to stateless ops', async () => {
    const guard = guardWith();
    const session = guard.session({ label: 'client 1' });
    const mine = await session.write((conn) => {
      conn.state.push('temp table scratch');
      return conn;
    });
    const seen = await Promise.all(
      Array.from({ length: 8 }, () =>
        session.read((conn) => exclusive(conn, () => [...conn.state])),
      ),
    );
    expect(seen).toEqual(Array.from({ length: 8 }, () => ['temp table scratch']));
    const stateless = await Promise.all(
      Array.from({ length: 8 }, () => guard.read((conn) => exclusive(conn, () => conn))),
    );
    for (const conn of stateless) {
      expect(conn).not.toBe(mine);
      expect(conn.state).toEqual([]);
    }
    const other = guard.session({ label: 'client 2' });
    expect(await other.read((conn) => conn.state)).toEqual([]);
    await guard.close();
  });

  it('run their ops one at a time, in call order', async () => {
    const guard = guardWith();
    const session = guard.session();
    const order: number[] = [];
    await Promise.all(
      [30, 1, 10, 0].map((ms, i) =>
        (i % 2 === 0 ? session.read : session.write).call(session, (conn) =>
          exclusive(conn, async () => {
            await sleep(ms);
            order.push(i);
          }),
        ),
      ),
    );
    expect(order).toEqual([0, 1, 2, 3]);
    expect(session.status().ops).toBe(4);
    await guard.close();
  });

  it('a session write is exclusive guard-wide', async () => {
    const guard = guardWith();
    const session = guard.session();
    let running = 0;
    let overlap = false;
    const track = async (): Promise<void> => {
      running++;
      if (running > 1) overlap = true;
      await sleep(10);
      running--;
    };
    const reads = Array.from({ length: 3 }, () =>
      guard.read(async () => {
        running++;
        await sleep(20);
        running--;
      }),
    );
    await flush();
    await Promise.all([...reads, session.write(track), guard.read(async () => sleep(1))]);
    expect(overlap).toBe(false);
    await guard.close();
  });

  it('ctx tells the session id and that nothing was restored', async () => {
    const guard = guardWith();
    const session = guard.session();
    const ctx = await session.read((_conn, c) => ({ id: c.sessionId, restored: c.restored }));
    expect(ctx).toEqual({ id: session.id, restored: false });
    expect(await guard.read((_conn, c) => c.sessionId)).toBeUndefined();
    await guard.close();
  });

  describe('losing the handle', () => {
    it('makes the session lost: the next op rejects with SessionLostError until reopen()', async () => {
      const guard = guardWith();
      const lost: unknown[] = [];
      guard.on('sessionLost', ({ session }) => lost.push(session.state));
      const session = guard.session({ label: 'c' });
      const first = await session.write((conn) => {
        conn.state.push('x');
        return conn;
      });
      await errorOf(
        session.read(() => {
          throw new Error('connection lost');
        }),
      );
      expect(session.status()).toMatchObject({
        state: 'lost',
        losses: 1,
        generation: first.generation,
      });
      const error = await errorOf(session.read((conn) => conn.state));
      expect(error).toBeInstanceOf(SessionLostError);
      expect(error).toMatchObject({
        code: 'ERR_SESSION_LOST',
        sessionId: session.id,
        generation: first.generation,
      });
      // Still lost: nothing silently continues on a fresh handle.
      expect(await errorOf(session.read(() => 1))).toBeInstanceOf(SessionLostError);
      expect(lost).toEqual(['lost']);
      await waitFor(() => first.destroyed, 2_000, 'destroy of the lost handle');
      session.reopen();
      const fresh = await session.read((conn) => conn);
      expect(fresh).not.toBe(first);
      expect(fresh.state).toEqual([]);
      expect(session.status().state).toBe('open');
      await guard.close();
    });

    it('with restore, the next op runs after restore rebuilt the state, and ctx.restored is true', async () => {
      const guard = guardWith();
      const restoredFlags: boolean[] = [];
      const session = guard.session({
        restore: (conn, ctx) => {
          restoredFlags.push(ctx.restored);
          conn.state.push('restored search_path');
        },
      });
      await session.read((conn) => conn.state.push('search_path'));
      await errorOf(
        session.write(() => {
          throw new Error('connection lost');
        }),
      );
      expect(session.status().state).toBe('lost');
      const after = await session.read((conn, ctx) => ({
        state: [...conn.state],
        restored: ctx.restored,
      }));
      expect(after).toEqual({ state: ['restored search_path'], restored: true });
      const next = await session.read((_conn, ctx) => ctx.restored);
      expect(next).toBe(false);
      expect(restoredFlags).toEqual([true]);
      await guard.close();
    });

    it('a failing restore fails the op and is tried again by the next one', async () => {
      const guard = guardWith();
      let attempts = 0;
      const session = guard.session({
        restore: () => {
          attempts++;
          if (attempts === 1) throw new Error('cannot re-attach yet');
        },
      });
      await errorOf(
        session.read(() => {
          throw new Error('connection lost');
        }),
      );
      const failed = await errorOf(session.read(() => 'never'));
      expect((failed as Error).message).toBe('cannot re-attach yet');
      expect(await session.read((_c, ctx) => ctx.restored)).toBe(true);
      expect(attempts).toBe(2);
      await guard.close();
    });

    it('a handle found dead between ops (isAlive) loses the session too', async () => {
      const guard = guardWith();
      const session = guard.session();
      const conn = await session.read((c) => c);
      conn.dead = true;
      expect(await errorOf(session.read(() => 1))).toBeInstanceOf(SessionLostError);
      await guard.close();
    });

    it('a stalled session op loses the session; other sessions and stateless ops go on', async () => {
      const guard = guardWith({
        probe: (conn) => {
          if (conn.hung) throw new Error('no answer');
        },
        liveness: { interval: 30, timeout: 30, failures: 2 },
      });
      const victim = guard.session({ label: 'victim' });
      const bystander = guard.session({ label: 'bystander' });
      await bystander.write((conn) => conn.state.push('mine'));
      const stalled = victim.read(async (conn) => {
        conn.hung = true;
        await new Promise(() => {});
      });
      expect(await errorOf(stalled)).toBeInstanceOf(EngineStalledError);
      expect(victim.status().state).toBe('lost');
      expect(await errorOf(victim.read(() => 1))).toBeInstanceOf(SessionLostError);
      expect(await bystander.read((conn) => conn.state)).toEqual(['mine']);
      expect(await guard.read(() => 'ok')).toBe('ok');
      await guard.close();
    });
  });

  describe('limits', () => {
    it('a new session waits for a slot, then rejects with SessionLimitError at its timeout', async () => {
      const guard = guardWith({ maxSessions: 1 });
      const first = guard.session();
      await first.read(() => 1);
      const second = guard.session();
      const error = await errorOf(second.read(() => 1, { timeout: 30 }));
      expect(error).toBeInstanceOf(SessionLimitError);
      expect(error).toMatchObject({ code: 'ERR_SESSION_LIMIT', maxSessions: 1, timeout: 30 });
      const waiting = second.read(() => 'got a slot');
      await sleep(10);
      await first.close();
      expect(await waiting).toBe('got a slot');
      await guard.close();
    });

    it('an idle session past its idleTimeout is closed and frees its slot', async () => {
      const guard = guardWith({ maxSessions: 1 });
      const closed: string[] = [];
      guard.on('sessionClose', ({ reason }) => closed.push(reason));
      const idle = guard.session({ idleTimeout: 30 });
      const conn = await idle.read((c) => c);
      const next = guard.session();
      expect(await next.read(() => 'slot freed', { timeout: 2_000 })).toBe('slot freed');
      expect(closed).toEqual(['idle']);
      expect(conn.destroyed).toBe(true);
      const error = await errorOf(idle.read(() => 1));
      expect(error).toBeInstanceOf(SessionClosedError);
      expect(error).toMatchObject({ reason: 'idle' });
      await guard.close();
    });

    it('an op keeps its session from idling out while it runs', async () => {
      const guard = guardWith();
      const session = guard.session({ idleTimeout: 20 });
      expect(
        await session.read(async () => {
          await sleep(60);
          return 'done';
        }),
      ).toBe('done');
      expect(session.status().state).toBe('open');
      await guard.close();
    });

    it('session() needs maxSessions and valid options', () => {
      const guard = guardWith({ maxSessions: 0 });
      expect(() => guard.session()).toThrow(/maxSessions/);
      const ok = guardWith();
      expect(() => ok.session({ lable: 'x' } as never)).toThrow(/label/);
      expect(() => ok.session({ idleTimeout: -1 })).toThrow(RangeError);
      expect(() => ok.session({ restore: 'no' as never })).toThrow(TypeError);
    });
  });

  describe('closing', () => {
    it('close() rejects queued ops, lets the running one finish, destroys the handle', async () => {
      const guard = guardWith();
      const session = guard.session();
      let conn: Conn | undefined;
      const running = session.read(async (c) => {
        conn = c;
        await sleep(30);
        return 'finished';
      });
      const queued = session.read(() => 'never');
      await flush();
      const closing = session.close();
      expect(await errorOf(queued)).toBeInstanceOf(SessionClosedError);
      expect(await running).toBe('finished');
      await closing;
      expect(conn?.destroyed).toBe(true);
      expect(guard.status().sessions).toEqual([]);
      expect(session.close()).toBe(closing);
      expect(() => session.reopen()).toThrow(SessionClosedError);
      await guard.close();
    });

    it('close() does not wait behind a slot that may never free: the waiting first op is rejected', async () => {
      const guard = guardWith({ maxSessions: 1 });
      const holder = guard.session();
      await holder.read(() => 1);
      const waiting = guard.session();
      const op = waiting.read(() => 'never');
      await flush();
      await waiting.close();
      expect(await errorOf(op)).toBeInstanceOf(SessionClosedError);
      // The slot is still the holder's; after it closes, a new session gets it.
      await holder.close();
      expect(await guard.session().read(() => 'slot')).toBe('slot');
      await guard.close();
    });

    it('close() takes an op still queued for the lock out: its fn never runs', async () => {
      const guard = guardWith();
      const session = guard.session();
      await session.read(() => 1);
      let release!: () => void;
      const writing = guard.write(() => new Promise<void>((resolve) => (release = resolve)));
      await flush();
      let ran = false;
      const queued = session.read(() => {
        ran = true;
      });
      await flush();
      const closing = session.close();
      expect(await errorOf(queued)).toBeInstanceOf(SessionClosedError);
      await closing;
      release();
      await writing;
      await flush();
      expect(ran).toBe(false);
      expect(guard.status().queue.readers).toBe(0);
      await guard.close();
    });

    it('await using closes the session', async () => {
      const guard = guardWith();
      let conn: Conn | undefined;
      {
        await using session = guard.session();
        conn = await session.read((c) => c);
      }
      expect(conn?.destroyed).toBe(true);
      await guard.close();
    });

    it("the guard's close() closes every session and waits for their handles' destroy", async () => {
      // The op that never settles keeps its handle's destroy waiting: bound that.
      const guard = guardWith({ destroyTimeout: 50 });
      const a = guard.session();
      const b = guard.session();
      const connA = await a.read((c) => c);
      const running = b.read(() => new Promise(() => {}));
      await flush();
      await guard.close();
      expect(connA.destroyed).toBe(true);
      expect(await errorOf(running)).toMatchObject({ code: 'ERR_GUARD_CLOSED' });
      expect(await errorOf(a.read(() => 1))).toMatchObject({
        code: 'ERR_SESSION_CLOSED',
        reason: 'guard-closed',
      });
      expect(() => guard.session()).toThrow(/closed/);
    });

    it('reopen() on an open session drops its handle after the running op', async () => {
      const guard = guardWith();
      const session = guard.session();
      const first = await session.write((c) => {
        c.state.push('x');
        return c;
      });
      const running = session.read(async (c) => {
        session.reopen();
        await sleep(5);
        return c;
      });
      expect(await running).toBe(first);
      const second = await session.read((c) => c);
      expect(second).not.toBe(first);
      expect(second.state).toEqual([]);
      await guard.close();
    });
  });

  it('a queued call whose caller aborts leaves the session queue; an aborted op keeps the session open', async () => {
    const guard = guardWith({ cancel: () => undefined });
    const session = guard.session();
    const controller = new AbortController();
    const running = session.read(
      (_c, ctx) =>
        new Promise((_resolve, reject) => {
          ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason));
        }),
      { signal: controller.signal },
    );
    const queuedController = new AbortController();
    const queued = session.read(() => 'never', { signal: queuedController.signal });
    await flush();
    expect(session.status().queued).toBe(1);
    queuedController.abort(new Error('not needed'));
    expect(((await errorOf(queued)) as Error).message).toBe('not needed');
    expect(session.status().queued).toBe(0);
    controller.abort(new Error('stop'));
    expect(((await errorOf(running)) as Error).message).toBe('stop');
    expect(await session.read(() => 'still open')).toBe('still open');
    expect(session.status().state).toBe('open');
    await guard.close();
  });

  it('a nested call joins its own session op and is refused inside another op', async () => {
    const guard = guardWith();
    const session = guard.session();
    const joined = await session.write(async (outer) => session.read((inner) => inner === outer));
    expect(joined).toBe(true);
    const refused = await guard.read(() => errorOf(session.read(() => 1)));
    expect(refused).toBeInstanceOf(DeadlockError);
    await guard.close();
  });

  it('status() and events report sessions', async () => {
    const guard = guardWith();
    const opened: number[] = [];
    guard.on('sessionOpen', ({ session }) => opened.push(session.id));
    const session = guard.session({ label: 'reporting' });
    expect(guard.status().sessions).toMatchObject([
      { id: session.id, label: 'reporting', state: 'new', ops: 0 },
    ]);
    await session.read(() => 1);
    expect(guard.status().sessions).toMatchObject([
      { state: 'open', ops: 1, running: false, queued: 0 },
    ]);
    expect(opened).toEqual([session.id]);
    await guard.close();
  });
});
