/**
 * Sessions that pin on state (SPEC 8.1): a session holds a handle only while it holds connection
 * state, as the guard's `state` hook reports it after each of its ops.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import {
  EngineGuard,
  type EngineGuardOptions,
  type GuardEvents,
  HookTimeoutError,
  LockTimeoutError,
  type Session,
  SessionLostError,
  SessionStateDiscardedError,
} from '../../src/index.js';
import { errorOf, flush, gate, waitFor } from '../support/guard.js';

/** A connection whose state is a set of temp tables, as a database session's would be. */
interface Conn {
  readonly generation: number;
  readonly tables: Set<string>;
  /** Ops running on it now (never more than one). */
  busy: number;
  dead: boolean;
  destroyed: boolean;
}

function guardWith(extra: Partial<EngineGuardOptions<Conn>> = {}): EngineGuard<Conn> {
  return new EngineGuard<Conn>({
    create: ({ generation }) => ({
      generation,
      tables: new Set(),
      busy: 0,
      dead: false,
      destroyed: false,
    }),
    destroy: (conn) => {
      conn.destroyed = true;
    },
    reset: (conn) => {
      conn.tables.clear();
    },
    state: (conn) => [...conn.tables].sort().map((name) => ({ kind: 'temp table', name })),
    isFatal: (error) => (error as Error).message === 'connection lost',
    isAlive: (conn) => !conn.dead,
    pool: 2,
    maxSessions: 2,
    ...extra,
  });
}

/** Runs `work` on `conn`, checking that no other op uses it at the same time. */
async function on<T>(conn: Conn, work: () => Promise<T> | T): Promise<T> {
  expect(conn.busy).toBe(0);
  conn.busy++;
  try {
    return await work();
  } finally {
    conn.busy--;
  }
}

function recordEvents<K extends keyof GuardEvents>(
  guard: EngineGuard<Conn>,
  type: K,
): GuardEvents[K][] {
  const seen: GuardEvents[K][] = [];
  guard.on(type, (event) => seen.push(event));
  return seen;
}

describe('a session that pins on state', () => {
  it('is the default with a state hook; pin: always keeps the old model; bad pins are refused', async () => {
    const guard = guardWith();
    expect(guard.session().status()).toMatchObject({
      pin: 'on-state',
      pinned: false,
      state: 'open',
    });
    expect(guard.session({ pin: 'always' }).status()).toMatchObject({
      pin: 'always',
      state: 'new',
    });
    expect(() => guard.session({ pin: 'sometimes' as 'always' })).toThrow(TypeError);
    await guard.close();
    const plain = guardWith({ state: undefined });
    expect(plain.session().status().pin).toBe('always');
    expect(() => plain.session({ pin: 'on-state' })).toThrow(/no "state" hook/);
    await plain.close();
    // Without slots, an on-state session still runs (stateless until it makes state).
    const slotless = guardWith({ maxSessions: 0 });
    const session = slotless.session();
    expect(await session.read(() => 42)).toBe(42);
    const refused = await errorOf(session.write((conn) => conn.tables.add('t')));
    expect(refused).toMatchObject({ reason: 'no-slot' });
    expect((refused as Error).message).toMatch(/no session slots \(maxSessions is 0\)/);
    expect(() => slotless.session({ pin: 'always' })).toThrow(/no session slots/);
    await slotless.close();
  });

  it('runs its ops side by side while unpinned: a short read answers during its own long one', async () => {
    const guard = guardWith();
    const session = guard.session({ label: 'agent' });
    const long = gate();
    const longRead = session.read((conn) => on(conn, () => long.promise.then(() => 'long')));
    await flush();
    const started = performance.now();
    expect(await session.read(() => 42, { timeout: 1_000 })).toBe(42);
    expect(performance.now() - started).toBeLessThan(1_000);
    expect(session.status()).toMatchObject({ pinned: false, running: true });
    long.open();
    expect(await longRead).toBe('long');
    expect(guard.status().handles.sessions).toBe(0);
    await guard.close();
  });

  it('pins to the handle its state is on: every later op runs there, nobody else sees it, and it unpins when the state is gone', async () => {
    const guard = guardWith({ pool: 4, maxSessions: 2 });
    const pins = recordEvents(guard, 'sessionPin');
    const unpins = recordEvents(guard, 'sessionUnpin');
    const session = guard.session({ label: 'client 1' });
    const other = guard.session({ label: 'client 2' });
    let home: Conn | undefined;
    await session.write((conn) =>
      on(conn, () => {
        home = conn;
        conn.tables.add('scratch');
      }),
    );
    expect(session.status()).toMatchObject({
      pinned: true,
      heldState: [{ kind: 'temp table', name: 'scratch' }],
    });
    expect(pins).toHaveLength(1);
    expect(pins[0]?.state).toEqual([{ kind: 'temp table', name: 'scratch' }]);
    expect(guard.status().handles.sessions).toBe(1);
    // 8 of 8 concurrent reads of the session see its table.
    const seen = await Promise.all(
      Array.from({ length: 8 }, () =>
        session.read((conn) => on(conn, () => conn === home && conn.tables.has('scratch'))),
      ),
    );
    expect(seen).toEqual(Array(8).fill(true));
    // Other callers never run on it, nor see the table.
    const outside = await Promise.all([
      ...Array.from({ length: 6 }, () => guard.read((conn) => on(conn, () => conn.tables.size))),
      ...Array.from({ length: 6 }, () => other.read((conn) => on(conn, () => conn.tables.size))),
    ]);
    expect(outside).toEqual(Array(12).fill(0));
    // Dropped: the session unpins and the handle serves everyone again, as it is (no reset).
    await session.write((conn) => on(conn, () => conn.tables.delete('scratch')));
    expect(session.status()).toMatchObject({ pinned: false, heldState: [] });
    expect(unpins).toHaveLength(1);
    expect(guard.status().handles.sessions).toBe(0);
    const gates = [gate(), gate()];
    const side = gates.map((g) => session.read((conn) => on(conn, () => g.promise)));
    await flush();
    expect(session.status().running).toBe(true);
    expect(guard.status().running).toHaveLength(2);
    for (const g of gates) g.open();
    await Promise.all(side);
    await guard.close();
  });

  it('takes back the calls that had not started when it pinned, and runs them where the state is', async () => {
    // pool 1: the session's second read waits for the only shared handle while its first op runs.
    const guard = guardWith({ pool: 1, maxSessions: 1 });
    const session = guard.session();
    const making = gate();
    let home: Conn | undefined;
    const first = session.write((conn) =>
      on(conn, async () => {
        home = conn;
        await making.promise;
        conn.tables.add('t');
      }),
    );
    await flush();
    const second = session.read((conn) => on(conn, () => conn === home && conn.tables.has('t')));
    const third = session.read((conn) => on(conn, () => conn === home && conn.tables.has('t')));
    await flush();
    expect(guard.status().queued.map((q) => q.sessionId)).toEqual([session.id, session.id]);
    making.open();
    await first;
    expect(await second).toBe(true);
    expect(await third).toBe(true);
    expect(session.status().ops).toBe(3);
    await guard.close();
  });

  it('names its own running op when a call waits behind it while pinned', async () => {
    const guard = guardWith();
    const session = guard.session({ label: 'pinned' });
    await session.write((conn) => on(conn, () => conn.tables.add('t')));
    const long = gate();
    const running = session.read((conn) => on(conn, () => long.promise), { label: 'long one' });
    await flush();
    const waiting = session.read(() => 'never', { timeout: 200, label: 'short one' });
    await flush();
    const queued = guard.status().queued;
    expect(queued).toHaveLength(1);
    expect(queued[0]).toMatchObject({ label: 'short one', sessionId: session.id });
    expect(queued[0]?.waitingFor).toEqual([
      expect.objectContaining({ label: 'long one', kind: 'read', sessionId: session.id }),
    ]);
    const error = await errorOf(waiting);
    expect(error).toBeInstanceOf(LockTimeoutError);
    expect((error as LockTimeoutError).timeout).toBe(200);
    expect((error as LockTimeoutError).waitingFor).toEqual([
      expect.objectContaining({ label: 'long one', sessionId: session.id }),
    ]);
    expect((error as Error).message).toMatch(/"long one" of session \d+/);
    long.open();
    await running;
    await guard.close();
  });

  it('discards state it cannot keep when every slot is taken, and says so at that call', async () => {
    const guard = guardWith({ pool: 2, maxSessions: 1 });
    const first = guard.session({ label: 'first' });
    await first.write((conn) => on(conn, () => conn.tables.add('mine')));
    const second = guard.session({ label: 'second' });
    let where: Conn | undefined;
    const error = await errorOf(
      second.write((conn) =>
        on(conn, () => {
          where = conn;
          conn.tables.add('t');
          return 'committed';
        }),
      ),
    );
    expect(error).toBeInstanceOf(SessionStateDiscardedError);
    expect(error).toMatchObject({
      code: 'ERR_SESSION_STATE_DISCARDED',
      reason: 'no-slot',
      discarded: [{ kind: 'temp table', name: 't' }],
      sessionId: second.id,
    });
    expect((error as Error).message).toMatch(/temp table t/);
    expect((error as Error).message).toMatch(/maxSessions 1/);
    // The handle was reset before anyone else got it.
    expect(where?.tables.size).toBe(0);
    expect(second.status().pinned).toBe(false);
    expect(await second.read((conn) => conn.tables.has('t'))).toBe(false);
    await guard.close();
  });

  it('discards the state a concurrent op left on a second handle: one session, one handle', async () => {
    const guard = guardWith({ pool: 2, maxSessions: 2 });
    const session = guard.session();
    const a = gate();
    const b = gate();
    const make = (name: string, until: Promise<void>) =>
      session.read((conn) =>
        on(conn, async () => {
          await until;
          conn.tables.add(name);
        }),
      );
    // Unpinned: both reads run side by side, each on a shared handle of its own.
    const first = make('a', a.promise);
    const second = make('b', b.promise);
    await flush();
    expect(guard.status().running).toHaveLength(2);
    a.open();
    await first;
    expect(session.status()).toMatchObject({ pinned: true, heldState: [{ name: 'a' }] });
    b.open();
    // The second had started before the first ended: its state is on another handle, and is
    // discarded with a clear error rather than split from the session's.
    const error = await errorOf(second);
    expect(error).toMatchObject({
      reason: 'split',
      discarded: [{ kind: 'temp table', name: 'b' }],
    });
    expect((error as Error).message).toMatch(/already holds state on another connection/);
    expect(session.status().heldState).toEqual([{ kind: 'temp table', name: 'a' }]);
    expect(await guard.read((conn) => conn.tables.size)).toBe(0);
    await guard.close();
  });

  it('treats a state check that fails or overruns as unknown: discarded, with the cause', async () => {
    const guard = guardWith({
      resetTimeout: 100,
      state: (conn) => {
        if (conn.tables.has('boom')) throw new Error('behind a transaction pooler');
        if (conn.tables.has('slow')) return new Promise(() => {});
        return [...conn.tables].map((name) => ({ kind: 'temp table', name }));
      },
    });
    const session = guard.session();
    const failed = await errorOf(session.write((conn) => on(conn, () => conn.tables.add('boom'))));
    expect(failed).toMatchObject({ reason: 'unknown', discarded: undefined });
    expect((failed as Error).cause).toMatchObject({ message: 'behind a transaction pooler' });
    expect((failed as Error).message).toMatch(/behind a transaction pooler/);
    const slow = await errorOf(session.write((conn) => on(conn, () => conn.tables.add('slow'))));
    expect(slow).toMatchObject({ reason: 'unknown' });
    expect((slow as Error).cause).toBeInstanceOf(HookTimeoutError);
    expect(session.status().pinned).toBe(false);
    expect(await guard.read((conn) => conn.tables.size)).toBe(0);
    // A hook that answers nonsense is unknown too.
    const odd = guardWith({ state: () => [{ kind: 1 }] as never });
    const error = await errorOf(odd.session().read(() => 1));
    expect((error as Error).cause).toBeInstanceOf(TypeError);
    await odd.close();
    await guard.close();
  });

  it('counts only pinned sessions against maxSessions: twenty idle unpinned sessions hold nothing', async () => {
    const created: Conn[] = [];
    const guard = guardWith({
      pool: 2,
      maxSessions: 1,
      create: ({ generation }) => {
        const conn = {
          generation,
          tables: new Set<string>(),
          busy: 0,
          dead: false,
          destroyed: false,
        };
        created.push(conn);
        return conn;
      },
    });
    const sessions: Session<Conn>[] = Array.from({ length: 20 }, (_, i) =>
      guard.session({ label: `s${i}` }),
    );
    await Promise.all(sessions.map((s) => s.read(() => 1)));
    // Only the shared pool's handles were opened: none for the sessions.
    expect(created.length).toBeLessThanOrEqual(2);
    const status = guard.status();
    expect(status.sessions).toHaveLength(20);
    expect(status.sessions.filter((s) => s.pinned)).toHaveLength(0);
    expect(status.handles.sessions).toBe(0);
    await guard.close();
  });

  it('loses its state when the pinned handle dies; restore rebuilds it and pins again', async () => {
    const guard = guardWith();
    const lost = recordEvents(guard, 'sessionLost');
    const plain = guard.session();
    await plain.write((conn) => on(conn, () => conn.tables.add('t')));
    await plain.read((conn) => {
      conn.dead = true;
    });
    expect(await errorOf(plain.read(() => 1))).toBeInstanceOf(SessionLostError);
    expect(await errorOf(plain.read(() => 1))).toBeInstanceOf(SessionLostError);
    expect(lost).toHaveLength(1);
    plain.reopen();
    expect(plain.status()).toMatchObject({ state: 'open', pinned: false });
    expect(await plain.read((conn) => conn.tables.has('t'))).toBe(false);

    const restoring = guard.session({
      restore: (conn) => {
        conn.tables.add('t');
      },
    });
    await restoring.write((conn) => on(conn, () => conn.tables.add('t')));
    await restoring
      .read((conn) => {
        throw Object.assign(new Error('connection lost'), { conn });
      })
      .catch(() => undefined);
    expect(restoring.status().state).toBe('lost');
    const after = await restoring.read((conn, ctx) => ({
      has: conn.tables.has('t'),
      restored: ctx.restored,
    }));
    expect(after).toEqual({ has: true, restored: true });
    expect(restoring.status()).toMatchObject({ state: 'open', pinned: true });
    await guard.close();
  });

  it('publishes sessionPin and sessionUnpin on the diagnostics channel too', async () => {
    const seen: string[] = [];
    const listener = (message: unknown): void => {
      const type = (message as { type: string }).type;
      if (type.startsWith('session')) seen.push(type);
    };
    subscribe('engine-guard:guard:event', listener);
    try {
      const guard = guardWith();
      const session = guard.session();
      await session.write((conn) => conn.tables.add('t'));
      await session.write((conn) => conn.tables.clear());
      await guard.close();
    } finally {
      unsubscribe('engine-guard:guard:event', listener);
    }
    expect(seen).toEqual(['sessionPin', 'sessionUnpin', 'sessionClose']);
  });

  it('expires after its idle timeout while pinned, and destroys the handle that held its state', async () => {
    const guard = guardWith();
    const session = guard.session({ idleTimeout: 50 });
    let home: Conn | undefined;
    await session.write((conn) => {
      home = conn;
      conn.tables.add('t');
    });
    await waitFor(() => session.status().state === 'closed', 2_000, 'the idle close');
    await waitFor(() => home?.destroyed === true, 2_000, 'the destroy');
    expect(guard.status().handles.sessions).toBe(0);
    await guard.close();
  });

  it('lets a close() finish the ops that run and drop the ones that wait', async () => {
    const guard = guardWith({ pool: 1 });
    const session = guard.session();
    const long = gate();
    const running = session.read(() => long.promise.then(() => 'done'));
    await flush();
    const waiting = session.read(() => 'never');
    await flush();
    const closed = session.close();
    expect(await errorOf(waiting)).toMatchObject({ code: 'ERR_SESSION_CLOSED' });
    long.open();
    expect(await running).toBe('done');
    await closed;
    await sleep(0);
    await guard.close();
  });
});

describe('a session read on its own handle', () => {
  for (const [pool, maxSessions] of [
    [1, 1],
    [2, 2],
  ] as const) {
    it(`never waits behind stateless reads that wait for a shared handle (pool ${pool}, maxSessions ${maxSessions})`, async () => {
      const guard = guardWith({ pool, maxSessions });
      const pinned = guard.session({ label: 'on-state' });
      await pinned.write((conn) => conn.tables.add('t'));
      // With a second slot, a pin: 'always' session holds its own handle too.
      const always =
        maxSessions > 1 ? guard.session({ label: 'always', pin: 'always' }) : undefined;
      await always?.read(() => 1);
      const long = gate();
      // Every shared handle busy, and more stateless reads queued for one.
      const holding = Array.from({ length: pool }, () => guard.read(() => long.promise));
      const waiting = Array.from({ length: 3 }, () => guard.read(() => 'later'));
      await flush();
      expect(guard.status().queued.length).toBeGreaterThanOrEqual(3);
      expect(await pinned.read((conn) => conn.tables.has('t'), { timeout: 1_000 })).toBe(true);
      if (always !== undefined) {
        expect(await always.read(() => 'own', { timeout: 1_000 })).toBe('own');
      }
      // A session write still waits for every read: writes are exclusive guard-wide.
      const write = pinned.write(() => 'wrote');
      await flush();
      expect(guard.status().queued.some((q) => q.kind === 'write')).toBe(true);
      long.open();
      await Promise.all([...holding, ...waiting]);
      expect(await write).toBe('wrote');
      await guard.close();
    });
  }
});
