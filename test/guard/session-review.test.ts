/**
 * The session, reset and bootstrap code attacked as a hostile user would: re-entrant calls from
 * inside hooks and listeners, aborts racing grants, close() during every wait, slots that must
 * come back after every kind of session end.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import {
  DeadlockError,
  EngineGuard,
  type EngineGuardOptions,
  EngineStalledError,
  SessionClosedError,
  SessionLostError,
} from '../../src/index.js';
import { errorOf, flush, gate, waitFor } from '../support/guard.js';

interface Conn {
  generation: number;
  /** Ops running on it now. */
  busy: number;
  destroyed: number;
}

function guardWith(extra: Partial<EngineGuardOptions<Conn>> = {}): {
  guard: EngineGuard<Conn>;
  conns: Conn[];
} {
  const conns: Conn[] = [];
  const guard = new EngineGuard<Conn>({
    create: ({ generation }) => {
      const conn = { generation, busy: 0, destroyed: 0 };
      conns.push(conn);
      return conn;
    },
    destroy: (conn) => {
      conn.destroyed++;
    },
    pool: 1,
    maxSessions: 1,
    ...extra,
  });
  return { guard, conns };
}

describe('session review', () => {
  it('close() of a session whose first op waits for a slot answers that op and resolves', async () => {
    const { guard } = guardWith();
    const holder = guard.session({ label: 'holder' });
    await holder.read(() => 1);
    const waiter = guard.session({ label: 'waiter' });
    const ran: number[] = [];
    const first = waiter.read(() => ran.push(1));
    await flush();
    let closed = false;
    const closing = waiter.close().then(() => {
      closed = true;
    });
    expect(await errorOf(first)).toBeInstanceOf(SessionClosedError);
    await closing;
    expect(closed).toBe(true);
    expect(ran).toEqual([]);
    expect(guard.status().sessions.map((s) => s.label)).toEqual(['holder']);
    // The slot the holder keeps is the only one taken: closing it lets a new session in.
    await holder.close();
    const next = guard.session();
    await expect(next.read(() => 'in', { timeout: 1_000 })).resolves.toBe('in');
    await guard.close();
  });

  it('a session op does not start on its handle while an aborted one still winds down there', async () => {
    const cancelled = gate();
    const { guard } = guardWith({
      pool: 2,
      // The engine takes a while to acknowledge a cancel.
      cancel: () => cancelled.promise,
      cancelTimeout: 5_000,
    });
    const session = guard.session();
    const controller = new AbortController();
    let overlap = false;
    const busyOn = async (conn: Conn, work: () => Promise<void>): Promise<void> => {
      if (conn.busy > 0) overlap = true;
      conn.busy++;
      try {
        await work();
      } finally {
        conn.busy--;
      }
    };
    const first = session.read(
      (conn) =>
        busyOn(conn, async () => {
          // Ignores its signal until the engine answered the cancel.
          await cancelled.promise;
        }),
      { signal: controller.signal },
    );
    await flush();
    controller.abort(new Error('caller left'));
    await errorOf(first);
    const second = session.read((conn) => busyOn(conn, async () => undefined));
    await flush(10);
    cancelled.open();
    await second;
    expect(overlap).toBe(false);
    await guard.close();
  });

  it('fn never starts once its caller aborted, however close the abort is to the slot grant', async () => {
    for (let hops = 0; hops < 12; hops++) {
      const { guard } = guardWith();
      const session = guard.session();
      const controller = new AbortController();
      let startedAborted = false;
      const op = session.read(
        () => {
          if (controller.signal.aborted) startedAborted = true;
          return 'ran';
        },
        { signal: controller.signal },
      );
      for (let i = 0; i < hops; i++) await Promise.resolve();
      controller.abort(new Error('caller left'));
      const outcome = await op.then(
        (value) => value,
        (error: unknown) => error,
      );
      expect(startedAborted, `abort after ${hops} microtask hops`).toBe(false);
      if (outcome !== 'ran') expect((outcome as Error).message).toBe('caller left');
      await guard.close();
    }
  });

  it('fn does not run after restore when the op was aborted while restore ran', async () => {
    const restoring = gate();
    let fnRan = false;
    let fatal = true;
    const { guard } = guardWith({
      isFatal: () => fatal,
      cancel: () => undefined,
    });
    const session = guard.session({ restore: () => restoring.promise });
    // Lose the session's handle: restore runs before the next op.
    await errorOf(
      session.read(() => {
        throw new Error('connection lost');
      }),
    );
    fatal = false;
    expect(session.status().state).toBe('lost');
    const controller = new AbortController();
    const op = session.read(
      () => {
        fnRan = true;
      },
      { signal: controller.signal },
    );
    await flush();
    controller.abort(new Error('caller left'));
    await errorOf(op);
    restoring.open();
    await flush(10);
    expect(fnRan).toBe(false);
    await guard.close();
  });

  it('a reset that closes the guard and never settles: close() still destroys its handle', async () => {
    const closing: { guard?: EngineGuard<Conn> } = {};
    const { guard, conns } = guardWith({
      destroyTimeout: 50,
      reset: () => {
        void closing.guard?.close();
        return new Promise<void>(() => {});
      },
    });
    closing.guard = guard;
    await guard.read(() => 1);
    await guard.close();
    expect(conns.map((c) => c.destroyed)).toEqual([1]);
  });

  it('reopen() while a lost session waits for a slot: the loss is accepted, restore does not run', async () => {
    let fatal = true;
    const restores: number[] = [];
    const { guard } = guardWith({ isFatal: () => fatal });
    const session = guard.session({ restore: (conn) => restores.push(conn.generation) });
    await errorOf(
      session.read(() => {
        throw new Error('connection lost');
      }),
    );
    fatal = false;
    // Another session takes the only slot the loss freed.
    const other = guard.session();
    await other.read(() => 1);
    const next = session.read((_conn, ctx) => ctx.restored);
    await flush();
    session.reopen();
    await other.close();
    await expect(next).resolves.toBe(false);
    expect(restores).toEqual([]);
    await guard.close();
  });

  it('reopen() while an op runs, then that op kills the handle: the next op starts fresh, as asked', async () => {
    const { guard } = guardWith({ isFatal: (error) => (error as Error).message === 'gone' });
    const session = guard.session();
    const first = await session.read((conn) => conn);
    const dying = session.read(async () => {
      await sleep(1);
      session.reopen();
      await sleep(1);
      throw new Error('gone');
    });
    expect(await errorOf(dying)).toMatchObject({ message: 'gone' });
    const next = await session.read((conn) => conn);
    expect(next).not.toBe(first);
    await guard.close();
  });

  for (const call of ['reopen', 'close'] as const) {
    it(`${call}() called synchronously from a session's fn waits for that op before dropping the handle`, async () => {
      const { guard } = guardWith();
      const session = guard.session();
      const seen: { destroyedDuring: number; running: boolean }[] = [];
      let pending: Promise<void> | undefined;
      // The session holds its handle already: this op starts in the same turn as the call.
      await session.read(() => 1);
      const value = await session.read(async (conn) => {
        if (call === 'reopen') session.reopen();
        else pending = session.close();
        const running = session.status().running;
        await sleep(5);
        seen.push({ destroyedDuring: conn.destroyed, running });
        return conn;
      });
      await pending;
      expect(seen).toEqual([{ destroyedDuring: 0, running: true }]);
      await guard.close();
      expect(value.destroyed).toBe(1);
    });
  }

  it('a sessionLost listener that reopens: the next op runs on a fresh handle, restore or not', async () => {
    let fatal = true;
    const restored: boolean[] = [];
    const { guard } = guardWith({ isFatal: () => fatal });
    const session = guard.session({ restore: (_conn, ctx) => restored.push(ctx.restored) });
    guard.on('sessionLost', () => session.reopen());
    const first = await session.read((conn) => conn);
    await errorOf(
      session.read(() => {
        throw new Error('connection lost');
      }),
    );
    fatal = false;
    expect(session.status().state).toBe('new');
    const second = await session.read((conn, ctx) => ({ conn, restored: ctx.restored }));
    expect(second.conn).not.toBe(first);
    expect(second.restored).toBe(false);
    expect(restored).toEqual([]);
    await guard.close();
  });

  it('restore that reads through its session joins the op; restore that closes the session ends it after the op', async () => {
    let fatal = true;
    const { guard } = guardWith({ isFatal: () => fatal });
    let session!: ReturnType<typeof guard.session>;
    let closing: Promise<void> | undefined;
    session = guard.session({
      restore: async () => {
        const inner = await session.read((conn) => conn.generation);
        closing = session.close();
        return inner;
      },
    });
    await session.read(() => 1);
    await errorOf(
      session.read(() => {
        throw new Error('gone');
      }),
    );
    fatal = false;
    await expect(session.read((conn, ctx) => ctx.restored && conn.generation > 0)).resolves.toBe(
      true,
    );
    await closing;
    expect(session.status().state).toBe('closed');
    expect(await errorOf(session.read(() => 1))).toBeInstanceOf(SessionClosedError);
    // Its slot is free again.
    await expect(guard.session().read(() => 'in', { timeout: 1_000 })).resolves.toBe('in');
    await guard.close();
  });

  it('a bootstrap that calls the guard is refused at once instead of waiting for the handle it opens', async () => {
    const inner: unknown[] = [];
    let first = true;
    const { guard } = guardWith({
      maxSessions: 1,
      reconnect: { initialDelay: 5, maxDelay: 10, jitter: 0 },
      bootstrap: async () => {
        if (!first) return;
        first = false;
        // It would wait for the handle being opened: a stateless read, and a session's read.
        inner.push(await errorOf(guard.read(() => 1)));
        inner.push(await errorOf(guard.session().read(() => 1)));
        throw new Error('bootstrap could not read');
      },
    });
    // The first attempt fails with the bootstrap; the retry runs it again and succeeds.
    await expect(guard.read(() => 'served', { timeout: 2_000 })).resolves.toBe('served');
    expect(inner).toHaveLength(2);
    for (const error of inner) expect(error).toBeInstanceOf(DeadlockError);
    await guard.close();
  });

  it('a sessionLost listener that closes the guard: every promise settles, every handle is destroyed', async () => {
    const { guard, conns } = guardWith({
      pool: 2,
      maxSessions: 2,
      isFatal: (error) => (error as Error).message === 'gone',
    });
    let closing: Promise<void> | undefined;
    guard.on('sessionLost', () => {
      closing = guard.close();
    });
    const session = guard.session();
    const other = guard.session();
    await other.read(() => 1);
    const stateless = guard.read(() => new Promise((resolve) => setTimeout(resolve, 20, 'late')));
    const dying = errorOf(
      session.read(() => {
        throw new Error('gone');
      }),
    );
    const queued = errorOf(session.read(() => 1));
    expect(await dying).toMatchObject({ message: 'gone' });
    expect(await queued).toBeInstanceOf(SessionClosedError);
    expect(await errorOf(stateless)).toMatchObject({ code: 'ERR_GUARD_CLOSED' });
    await closing;
    expect(guard.status().sessions).toEqual([]);
    for (const conn of conns) expect(conn.destroyed).toBe(1);
  });

  it('a reset that closes the guard and answers synchronously: its handle is destroyed by close()', async () => {
    const closing: { guard?: EngineGuard<Conn>; done?: Promise<void> } = {};
    const { guard, conns } = guardWith({
      reset: () => {
        closing.done = closing.guard?.close();
      },
    });
    closing.guard = guard;
    await guard.read(() => 1);
    await closing.done;
    expect(conns.map((c) => c.destroyed)).toEqual([1]);
  });

  it('a session op convicted while its session closes: close() resolves, the slot is free, the handle destroyed once', async () => {
    let hung: Conn | undefined;
    const { guard, conns } = guardWith({
      probe: (conn) => {
        if (conn === hung) throw new Error('no answer');
      },
      liveness: { interval: 20, timeout: 20, failures: 2 },
      destroyTimeout: 50,
    });
    const lost: unknown[] = [];
    guard.on('sessionLost', (event) => lost.push(event));
    const session = guard.session({ idleTimeout: 10 });
    const running = errorOf(
      session.read((conn) => {
        hung = conn;
        return new Promise(() => {});
      }),
    );
    // Queued behind it, past the idle timeout: the session must not idle out from under it.
    const queued = errorOf(session.read(() => 1));
    await sleep(15);
    expect(session.status().state).toBe('open');
    const closed = session.close();
    expect(await running).toBeInstanceOf(EngineStalledError);
    expect(await queued).toBeInstanceOf(SessionClosedError);
    await closed;
    // Closing: its loss is no news to anyone.
    expect(lost).toEqual([]);
    await expect(guard.session().read(() => 'slot', { timeout: 1_000 })).resolves.toBe('slot');
    await guard.close();
    for (const conn of conns) expect(conn.destroyed).toBe(1);
  });

  it('the slot comes back after every kind of session end', async () => {
    let fatal = false;
    const { guard, conns } = guardWith({ isFatal: () => fatal, isAlive: (c) => c.busy >= 0 });
    const slotFree = (): Promise<unknown> => guard.session().read(() => 1, { timeout: 1_000 });
    // Closed.
    const a = guard.session();
    await a.read(() => 1);
    await a.close();
    // Lost (fatal error), never reopened, then closed.
    const b = guard.session();
    fatal = true;
    await errorOf(
      b.read(() => {
        throw new Error('gone');
      }),
    );
    fatal = false;
    expect(await errorOf(b.read(() => 1))).toBeInstanceOf(SessionLostError);
    const c = guard.session();
    await c.read(() => 1);
    // Reopened after use.
    c.reopen();
    await c.close();
    // Idle timeout.
    const d = guard.session({ idleTimeout: 20 });
    await d.read(() => 1);
    await waitFor(() => d.status().state === 'closed', 2_000, 'idle close');
    // First op timed out waiting for a slot.
    const holder = guard.session();
    await holder.read(() => 1);
    const e = guard.session();
    await errorOf(e.read(() => 1, { timeout: 20 }));
    await holder.close();
    await slotFree();
    await b.close();
    await e.close();
    await guard.close();
    for (const conn of conns) expect(conn.destroyed).toBe(1);
  });

  it('guard.close() while a session op is queued behind another ends both and leaves no session', async () => {
    const { guard, conns } = guardWith({ pool: 2, maxSessions: 2 });
    const session = guard.session({ idleTimeout: 10_000 });
    const hold = gate();
    const first = session.read(() => hold.promise);
    const second = session.write(() => 2);
    await flush();
    const closed = guard.close();
    await errorOf(first);
    await errorOf(second);
    hold.open();
    await closed;
    expect(guard.status().sessions).toEqual([]);
    for (const conn of conns) expect(conn.destroyed).toBe(1);
    await sleep(0);
  });
});

describe('setup, like bootstrap, opens the handle an op would wait for', () => {
  it('an op started inside setup is refused at once with DeadlockError', async () => {
    const inner: unknown[] = [];
    const guard: EngineGuard<{ generation: number }> = new EngineGuard({
      create: ({ generation }) => ({ generation }),
      setup: async () => {
        if (inner.length > 0) return;
        inner.push(await errorOf(guard.read(() => 1)));
      },
      connectTimeout: 60_000,
    });
    await expect(guard.read(() => 'served', { timeout: 2_000 })).resolves.toBe('served');
    expect(inner).toHaveLength(1);
    expect(inner[0]).toBeInstanceOf(DeadlockError);
    expect((inner[0] as Error).message).toMatch(/setup hook/);
    await guard.close();
  });
});
