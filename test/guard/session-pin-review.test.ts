/**
 * Sessions that pin on state (SPEC 8.1), attacked by hand: the races the model-based test found
 * or that a hostile caller would try, each pinned down as one deterministic scenario.
 */
import { describe, expect, it } from 'vitest';
import {
  EngineGuard,
  type EngineGuardOptions,
  type HeldState,
  HookTimeoutError,
  type Session,
  SessionClosedError,
  SessionLostError,
  SessionStateDiscardedError,
} from '../../src/index.js';
import { FakeCoordinator } from '../coordination/fake-coordinator.js';
import { errorOf, flush, gate, waitFor } from '../support/guard.js';

/** A connection whose state is a set of temp tables. */
interface Conn {
  readonly generation: number;
  readonly tables: Set<string>;
  /** Calls (fn, state check, reset) running on it now. */
  busy: number;
  /** Most calls that ran on it at once. */
  most: number;
  destroyed: number;
}

function held(conn: Conn): HeldState[] {
  return [...conn.tables].sort().map((name) => ({ kind: 'temp table', name }));
}

/** Marks `conn` used by one more call while `work` runs. */
function use<T>(conn: Conn, work: () => T): T {
  conn.busy++;
  conn.most = Math.max(conn.most, conn.busy);
  let async = false;
  try {
    const result = work();
    if (result instanceof Promise) {
      async = true;
      return result.finally(() => {
        conn.busy--;
      }) as T;
    }
    return result;
  } finally {
    if (!async) conn.busy--;
  }
}

function guardWith(extra: Partial<EngineGuardOptions<Conn>> = {}): {
  guard: EngineGuard<Conn>;
  conns: Conn[];
} {
  const conns: Conn[] = [];
  const guard = new EngineGuard<Conn>({
    create: ({ generation }) => {
      const conn: Conn = { generation, tables: new Set(), busy: 0, most: 0, destroyed: 0 };
      conns.push(conn);
      return conn;
    },
    destroy: (conn) => {
      conn.destroyed++;
    },
    reset: (conn) => {
      conn.tables.clear();
    },
    state: (conn) => use(conn, () => held(conn)),
    cancel: () => undefined,
    pool: 2,
    maxSessions: 2,
    ...extra,
  });
  return { guard, conns };
}

describe('pin on state, attacked by hand', () => {
  it('runs a call once when its own state check pins the session in the turn it starts', async () => {
    // A handle idle in the pool, a sync fn and a sync check: the op runs, is checked and pins
    // the session before the session even knows the op it started.
    const { guard } = guardWith();
    await guard.read(() => 1);
    const session = guard.session();
    let runs = 0;
    const result = await session.write((conn) => {
      runs++;
      conn.tables.add('t');
      return runs;
    });
    expect(session.status().pinned).toBe(true);
    expect(runs).toBe(1);
    expect(result).toBe(1);
    expect(session.status().ops).toBe(1);
    await guard.close();
  });

  it('starts a pinned session next op only once the state check of its aborted op has answered', async () => {
    // The aborted op's caller hears back at once; its fn winds down, then the state hook runs on
    // the pinned handle. The next op must not run there meanwhile, nor find the handle moved back
    // to the pool by that check.
    const checks: { conn: Conn; open: () => void }[] = [];
    let holdChecks = false;
    const { guard } = guardWith({
      pool: 1,
      state: (conn) =>
        use(conn, async () => {
          if (holdChecks) {
            const held = gate();
            checks.push({ conn, open: held.open });
            await held.promise;
          }
          return [...conn.tables].map((name) => ({ kind: 'temp table', name }));
        }),
    });
    const session = guard.session();
    let home: Conn | undefined;
    await session.write((conn) => {
      home = conn;
      conn.tables.add('t');
    });
    expect(session.status().pinned).toBe(true);
    const caller = new AbortController();
    const long = gate();
    const aborted = session.read((conn) => use(conn, () => long.promise), {
      signal: caller.signal,
    });
    await flush();
    holdChecks = true;
    const next = session.read((conn) => use(conn, () => conn.tables.has('t')));
    caller.abort(new Error('caller left'));
    expect(await errorOf(aborted)).toMatchObject({ message: 'caller left' });
    // The aborted op winds down: its state check starts, and is held.
    long.open();
    await flush();
    expect(checks).toHaveLength(1);
    expect(home?.busy).toBe(1);
    holdChecks = false;
    // The check finds the table gone (dropped meanwhile): the session unpins. The next op then
    // floats on a shared handle, and nothing else ever ran beside the check.
    home?.tables.delete('t');
    checks[0]?.open();
    expect(await next).toBe(false);
    expect(home?.most).toBe(1);
    expect(session.status().pinned).toBe(false);
    // The handle went back to the pool once, and serves one caller at a time.
    await Promise.all([guard.read(() => 1), guard.read(() => 2)]);
    expect(guard.status().handles).toMatchObject({ busy: 0, sessions: 0 });
    await guard.close();
  });

  it('stops floating the calls it had queued once one of them pins the session in its turn', async () => {
    // Pinned, with calls queued behind the op that drops the state. That op unpins the session,
    // which floats its queued calls: the first runs at once on the handle just returned (a sync
    // fn and check) and pins the session again. The calls after it must then run where its state
    // is, not float to a shared handle.
    const { guard } = guardWith({ pool: 1 });
    const session = guard.session();
    await session.write((conn) => {
      conn.tables.add('t');
    });
    const dropping = gate();
    const drop = session.write(async (conn) => {
      await dropping.promise;
      conn.tables.delete('t');
    });
    await flush();
    const make = session.write((conn) => {
      conn.tables.add('u');
      return conn.generation;
    });
    const after = [1, 2].map(() =>
      session.read((conn) => ({ generation: conn.generation, u: conn.tables.has('u') })),
    );
    dropping.open();
    await drop;
    const home = await make;
    expect(session.status()).toMatchObject({ pinned: true, generation: home });
    expect(await Promise.all(after)).toEqual([
      { generation: home, u: true },
      { generation: home, u: true },
    ]);
    await guard.close();
  });

  it('runs a call where the state is when its fn is due after the session pinned (a cluster lease wait)', async () => {
    // With a coordinator that coordinates reads, a floating read has started (it holds its lease
    // and a shared handle) but waits for its cluster lease before fn runs. Another read of the
    // session leaves state and is answered meanwhile: the first one's fn, due after that, must
    // run on the pinned handle, not on the shared one it was given.
    const coordinator = new FakeCoordinator({ coordinatesReads: true, autoGrant: false });
    const { guard } = guardWith({ coordinator });
    const session = guard.session();
    const make = session.read((conn) => {
      conn.tables.add('t');
      return conn.generation;
    });
    await flush();
    const after = session.read((conn) => ({
      generation: conn.generation,
      t: conn.tables.has('t'),
    }));
    await flush();
    expect(coordinator.pending).toHaveLength(2);
    coordinator.grant();
    const home = await make;
    expect(session.status()).toMatchObject({ pinned: true, generation: home });
    coordinator.grant();
    await flush();
    // It runs again, serially: a new cluster lease for it.
    coordinator.grant();
    expect(await after).toEqual({ generation: home, t: true });
    // The shared handle it had held is back in the pool, clean, and counted nowhere as a failure.
    expect(guard.status()).toMatchObject({
      handles: { busy: 0, sessions: 1 },
      counters: { failed: 0 },
      lastError: null,
    });
    await guard.close();
  });

  it('answers a floating call of a session closed while pinned, when its cluster lease comes', async () => {
    // Pinned by one read while another, started, waits for its cluster lease; the session closes
    // while its serial op waits for its own. The floating read must settle, its fn never run (as
    // for the calls the session had queued), and the serial one, started, finishes.
    const coordinator = new FakeCoordinator({ coordinatesReads: true, autoGrant: false });
    const { guard } = guardWith({ coordinator });
    const session = guard.session();
    const make = session.read((conn) => conn.tables.add('t'));
    await flush();
    let ran = false;
    const started = session.read(() => {
      ran = true;
    });
    await flush();
    coordinator.grant();
    await make;
    expect(session.status().pinned).toBe(true);
    const serial = session.read(() => 'serial');
    await flush();
    expect(coordinator.pending).toHaveLength(2);
    const closed = session.close();
    coordinator.grant();
    coordinator.grant();
    expect(await errorOf(started)).toBeInstanceOf(SessionClosedError);
    expect(await serial).toBe('serial');
    expect(ran).toBe(false);
    await closed;
    await guard.close();
  });

  it('floats its calls again after reopen() accepts a loss, while the restoring call still runs', async () => {
    // Lost, with restore: the next call restores on a shared handle, serially. reopen() gives
    // the state up: the session is unpinned and open, and a call made now runs beside that one.
    const dead = new Set<Conn>();
    const { guard } = guardWith({ isAlive: (conn) => !dead.has(conn) });
    const session = guard.session({
      restore: (conn) => {
        conn.tables.add('t');
      },
    });
    let home: Conn | undefined;
    await session.write((conn) => {
      home = conn;
      conn.tables.add('t');
    });
    if (home !== undefined) dead.add(home);
    const long = gate();
    const restoring = session.read((_conn, ctx) => long.promise.then(() => ctx.restored));
    await flush();
    expect(session.status().state).toBe('lost');
    session.reopen();
    expect(session.status()).toMatchObject({ state: 'open', pinned: false });
    expect(await session.read(() => 'beside', { timeout: 1_000 })).toBe('beside');
    long.open();
    expect(await restoring).toBe(true);
    await guard.close();
  });

  it('pins into a slot that only an idle handle holds (opened for a pin: always session that left)', async () => {
    // A pin: 'always' session's first op waits for its handle to open, and its caller leaves:
    // the handle opens anyway and waits idle in the sessions' pool. No session holds it, so an
    // on-state session that makes state may take the slot.
    let opening: (() => void) | undefined;
    const { guard } = guardWith({
      maxSessions: 1,
      create: async ({ generation }) => {
        if (opening === undefined) {
          await new Promise<void>((resolve) => {
            opening = resolve;
          });
        }
        return { generation, tables: new Set<string>(), busy: 0, most: 0, destroyed: 0 };
      },
    });
    const always = guard.session({ pin: 'always' });
    const caller = new AbortController();
    const left = always.read(() => 1, { signal: caller.signal });
    await flush();
    caller.abort(new Error('caller left'));
    await errorOf(left);
    opening?.();
    await flush();
    expect(guard.status().handles.sessions).toBe(1);
    const session = guard.session();
    await session.write((conn) => conn.tables.add('t'));
    expect(session.status().pinned).toBe(true);
    expect(guard.status().handles.sessions).toBe(1);
    await guard.close();
  });

  describe('a state check that overruns its bound, its hook still running on the handle', () => {
    /** A guard whose state hook hangs once `hang` is set, deaf to its signal, until `release`. */
    function hanging() {
      const hung: (() => void)[] = [];
      const control = { hang: false, resets: [] as { conn: Conn; busy: number }[] };
      const made = guardWith({
        resetTimeout: 50,
        reset: (conn) => {
          control.resets.push({ conn, busy: conn.busy });
          conn.tables.clear();
        },
        state: (conn) =>
          use(conn, () => {
            if (!control.hang) return held(conn);
            const until = gate();
            hung.push(until.open);
            return until.promise.then(() => held(conn));
          }),
      });
      const release = (): void => {
        for (const open of hung.splice(0)) open();
      };
      return { ...made, control, release };
    }

    it('retires a shared handle instead of resetting it under the hook', async () => {
      const { guard, conns, control, release } = hanging();
      const session = guard.session();
      control.hang = true;
      const error = await errorOf(session.write((conn) => conn.tables.add('t')));
      expect(error).toBeInstanceOf(SessionStateDiscardedError);
      expect((error as Error).cause).toBeInstanceOf(HookTimeoutError);
      // Nothing else ran on the handle while the hook did: no reset, and no other caller.
      expect(control.resets.filter((r) => r.busy > 0)).toEqual([]);
      control.hang = false;
      await guard.read((conn) => {
        expect(conn).not.toBe(conns[0]);
      });
      await flush();
      expect(conns[0]?.destroyed).toBe(1);
      release();
      await guard.close();
    });

    it('gives up a pinned handle: the session is lost rather than run beside the hook', async () => {
      const { guard, conns, control, release } = hanging();
      const session = guard.session();
      await session.write((conn) => conn.tables.add('t'));
      expect(session.status().pinned).toBe(true);
      control.hang = true;
      const checked = session.read(() => 'read');
      const next = session.read((conn) => ({ busy: conn.busy, generation: conn.generation }));
      // The read's own answer stands (its fn succeeded); the handle cannot serve the next one.
      expect(await checked).toBe('read');
      expect(await errorOf(next)).toBeInstanceOf(SessionLostError);
      expect(session.status()).toMatchObject({ state: 'lost', pinned: false });
      await flush();
      expect(conns[0]?.destroyed).toBe(1);
      expect(guard.status().handles.sessions).toBe(0);
      release();
      await guard.close();
    });
  });

  describe('a state hook that calls back into the guard', () => {
    for (const mode of ['sync', 'async'] as const) {
      it(`closes the guard (${mode}): the call is answered, every handle destroyed once, no reset under the hook`, async () => {
        const resets: number[] = [];
        let closing: Promise<void> | undefined;
        const box: { guard?: EngineGuard<Conn> } = {};
        const { guard, conns } = guardWith({
          reset: (conn) => {
            resets.push(conn.busy);
            conn.tables.clear();
          },
          state: (conn) =>
            use(conn, () => {
              closing ??= box.guard?.close();
              if (mode === 'sync') return held(conn);
              return new Promise<HeldState[]>((resolve) =>
                setTimeout(() => resolve(held(conn)), 20),
              );
            }),
        });
        box.guard = guard;
        const session = guard.session();
        const made = await session.write((conn) => {
          conn.tables.add('t');
          return 'made';
        });
        expect(made).toBe('made');
        await closing;
        await waitFor(() => conns.every((conn) => conn.busy === 0), 2_000, 'the hook');
        expect(conns.map((conn) => conn.destroyed)).toEqual(conns.map(() => 1));
        expect(resets.filter((busy) => busy > 0)).toEqual([]);
      });
    }

    it('waits for its own pinned session: bounded by resetTimeout, then the session is lost', async () => {
      const box: { session?: Session<Conn>; callBack: boolean } = { callBack: false };
      let nested: Promise<unknown> | undefined;
      const { guard } = guardWith({
        resetTimeout: 50,
        state: (conn) =>
          use(conn, async () => {
            if (box.callBack && nested === undefined) {
              // Queued behind the very op this check follows.
              nested = box.session?.read(() => 'nested');
              await nested?.catch(() => undefined);
            }
            return held(conn);
          }),
      });
      const session = guard.session();
      box.session = session;
      await session.write((conn) => {
        conn.tables.add('t');
      });
      expect(session.status().pinned).toBe(true);
      box.callBack = true;
      expect(await session.read(() => 'read')).toBe('read');
      expect(await errorOf(nested as Promise<unknown>)).toBeInstanceOf(SessionLostError);
      expect(session.status().state).toBe('lost');
      await guard.close();
    });
  });
});
