/**
 * Floating calls of a `pin: 'on-state'` session that are taken back (the session pinned) or left
 * (the session closed) before they ran: nothing of them may stay queued in the guard's lock or
 * pool, nothing already answered may run again, and each call counts once.
 */
import diagnosticsChannel from 'node:diagnostics_channel';
import { describe, expect, it } from 'vitest';
import {
  channelNames,
  EngineGuard,
  type EngineGuardOptions,
  type HeldState,
  QueueFullError,
  SessionClosedError,
  SessionStateDiscardedError,
} from '../../src/index.js';
import { FakeCoordinator } from '../coordination/fake-coordinator.js';
import { errorOf, flush, gate } from '../support/guard.js';

/** A connection whose state is a set of temp tables. */
interface Conn {
  readonly generation: number;
  readonly tables: Set<string>;
}

function held(conn: Conn): HeldState[] {
  return [...conn.tables].sort().map((name) => ({ kind: 'temp table', name }));
}

function guardWith(extra: Partial<EngineGuardOptions<Conn>> = {}): EngineGuard<Conn> {
  return new EngineGuard<Conn>({
    create: ({ generation }) => ({ generation, tables: new Set() }),
    destroy: () => undefined,
    reset: (conn) => {
      conn.tables.clear();
    },
    state: (conn) => held(conn),
    cancel: () => undefined,
    pool: 2,
    maxSessions: 1,
    ...extra,
  });
}

/** Settles `promise` within a few turns, or says it is still pending. */
async function settledSoon(promise: Promise<unknown>): Promise<unknown> {
  const pending = Symbol('pending');
  return Promise.race([
    promise.then(
      (value) => ({ value }),
      (error: unknown) => ({ error }),
    ),
    flush(10).then(() => pending),
  ]).then((outcome) => (outcome === pending ? 'still pending' : outcome));
}

describe('floating calls taken back or left before they ran', () => {
  it('leaves no ghost writer in the lock when the session closes under a queued floating write', async () => {
    const guard = guardWith({ fairness: 'fifo', maxQueue: 2 });
    const long = gate();
    const reading = guard.read(() => long.promise);
    await flush();
    const session = guard.session();
    const write = session.write(() => 'never');
    await flush();
    // Held back by the queued write (fifo), for as long as the long read runs.
    const behind = guard.read(() => 'behind');
    await flush();
    expect(guard.status().queue).toMatchObject({ writers: 1, readers: 1 });
    const closed = session.close();
    expect(await errorOf(write)).toBeInstanceOf(SessionClosedError);
    // Gone from the lock as from the guard's queue, and the read it held back is let in.
    expect(await settledSoon(behind)).toEqual({ value: 'behind' });
    expect(guard.status()).toMatchObject({ queued: [], queue: { writers: 0, readers: 0 } });
    // Its maxQueue slot is free.
    const queuedWrites = [guard.write(() => 1), guard.write(() => 2)];
    await flush();
    expect(guard.status().queue.writers).toBe(2);
    expect(await errorOf(guard.write(() => 'full'))).toBeInstanceOf(QueueFullError);
    long.open();
    await reading;
    expect(await Promise.all(queuedWrites)).toEqual([1, 2]);
    await closed;
    await guard.close();
  });

  it('gives the lease back when the session closes in the turn the lock grants its floating write', async () => {
    // The withdrawal finds the waiter granted already (here: closed from a subscriber of the
    // lock's acquire channel, told as the grant is made): nothing to take out of the queue, and
    // the lease that reaches the op that left is given straight back.
    const guard = guardWith();
    const long = gate();
    const reading = guard.read(() => long.promise);
    await flush();
    const session = guard.session();
    let ran = false;
    const write = session.write(() => {
      ran = true;
    });
    await flush();
    let closing: Promise<void> | undefined;
    const close = (message: unknown): void => {
      if ((message as { mode?: string }).mode === 'write') closing ??= session.close();
    };
    diagnosticsChannel.subscribe(channelNames.lockAcquire, close);
    try {
      long.open();
      await reading;
      expect(await errorOf(write)).toBeInstanceOf(SessionClosedError);
    } finally {
      diagnosticsChannel.unsubscribe(channelNames.lockAcquire, close);
    }
    expect(closing).toBeDefined();
    await closing;
    expect(ran).toBe(false);
    expect(await settledSoon(guard.write(() => 'free'))).toEqual({ value: 'free' });
    expect(guard.status()).toMatchObject({
      queued: [],
      queue: { readers: 0, writers: 0, forHandle: 0 },
    });
    await guard.close();
  });

  it('leaves no ghost writer in the lock when the session pins and takes a queued floating write back', async () => {
    const checking = gate();
    const guard = guardWith({
      state: async (conn) => {
        await checking.promise;
        return held(conn);
      },
    });
    const session = guard.session();
    const make = session.write((conn) => {
      conn.tables.add('t');
      return conn.generation;
    });
    await flush();
    // Its state check runs (held back); a long read takes the lock meanwhile.
    const long = gate();
    const reading = guard.read(() => long.promise);
    await flush();
    const write = session.write((conn) => conn.tables.has('t'));
    await flush();
    expect(guard.status().queue.writers).toBe(1);
    checking.open();
    const home = await make;
    expect(session.status()).toMatchObject({ pinned: true, generation: home });
    await flush();
    // Taken back, it waits for the lock again, serially: once, not twice.
    const status = guard.status();
    expect(status.queued).toHaveLength(1);
    expect(status.queue).toEqual({ readers: 0, writers: 1, forHandle: 0 });
    long.open();
    await reading;
    expect(await write).toBe(true);
    expect(guard.status().queue).toEqual({ readers: 0, writers: 0, forHandle: 0 });
    await session.close();
    await guard.close();
  });

  it('leaves no ghost waiter in the pool when the session pins and takes back a floating call that waited for a handle', async () => {
    const checking = gate();
    const connecting = gate();
    const guard = guardWith({
      pool: 1,
      create: async ({ generation }) => {
        if (generation > 1) await connecting.promise;
        return { generation, tables: new Set<string>() };
      },
      state: async (conn) => {
        await checking.promise;
        return held(conn);
      },
    });
    const session = guard.session();
    const make = session.write((conn) => {
      conn.tables.add('t');
      return conn.generation;
    });
    await flush();
    // The only handle is in the state check: the next floating call holds its lease and waits
    // for a handle.
    const write = session.write((conn) => conn.tables.has('t'));
    await flush();
    expect(guard.status().queue.forHandle).toBe(1);
    checking.open();
    const home = await make;
    expect(session.status()).toMatchObject({ pinned: true, generation: home });
    expect(await write).toBe(true);
    expect(guard.status()).toMatchObject({
      queued: [],
      queue: { readers: 0, writers: 0, forHandle: 0 },
    });
    connecting.open();
    await flush();
    await session.close();
    await guard.close();
  });

  it('does not take back a floating call that a sessionPin listener closed the session under', async () => {
    const checking = gate();
    const guard = guardWith({
      state: async (conn) => {
        await checking.promise;
        return held(conn);
      },
    });
    const session = guard.session();
    let closing: Promise<void> | undefined;
    guard.on('sessionPin', () => {
      closing = session.close();
    });
    const make = session.write((conn) => conn.tables.add('t'));
    await flush();
    const long = gate();
    const reading = guard.read(() => long.promise);
    await flush();
    let ran = false;
    const write = session.write(
      () => {
        ran = true;
      },
      { timeout: 60_000 },
    );
    await flush();
    checking.open();
    await make;
    expect(await errorOf(write)).toBeInstanceOf(SessionClosedError);
    await closing;
    // Nothing left in the closed session: no call queued, no timer running.
    expect(session.status()).toMatchObject({ state: 'closed', queued: 0, running: false });
    long.open();
    await reading;
    await flush();
    expect(ran).toBe(false);
    await guard.close();
  });

  it('answers at once a taken-back call whose caller aborted in the turn it was taken back', async () => {
    // A floating read holds its lease and handle but waits for its cluster lease; the session
    // pins meanwhile, so when the lease comes its fn is not run: it is taken back, behind the
    // session's running op. Its caller aborts in that very turn (here: from a subscriber of the
    // lock's release channel, told as the op gives its lease back).
    const coordinator = new FakeCoordinator({ coordinatesReads: true, autoGrant: false });
    const guard = guardWith({ coordinator, maxSessions: 2 });
    const session = guard.session();
    const make = session.read((conn) => conn.tables.add('t'));
    await flush();
    const controller = new AbortController();
    let ran = false;
    const after = session.read(
      () => {
        ran = true;
      },
      { signal: controller.signal },
    );
    await flush();
    coordinator.grant();
    await make;
    expect(session.status().pinned).toBe(true);
    // The pinned session runs a call of its own (waiting for its cluster lease, after the
    // floating one's): the taken-back call would wait behind it.
    const serial = session.read(() => 'serial');
    await flush();
    expect(coordinator.pending).toHaveLength(2);
    const reason = new Error('caller gave up');
    const abort = (): void => controller.abort(reason);
    diagnosticsChannel.subscribe(channelNames.lockRelease, abort);
    try {
      coordinator.grant();
      expect(await settledSoon(after)).toEqual({ error: reason });
    } finally {
      diagnosticsChannel.unsubscribe(channelNames.lockRelease, abort);
    }
    expect(ran).toBe(false);
    coordinator.grant();
    expect(await serial).toBe('serial');
    expect(session.status()).toMatchObject({ queued: 0, running: false });
    await session.close();
    await guard.close();
  });

  it('counts a call taken back after its op started as one op', async () => {
    const coordinator = new FakeCoordinator({ coordinatesReads: true, autoGrant: false });
    const guard = guardWith({ coordinator, maxSessions: 2 });
    const session = guard.session();
    const make = session.read((conn) => conn.tables.add('t'));
    await flush();
    const after = session.read((conn) => conn.tables.has('t'));
    await flush();
    coordinator.grant();
    await make;
    coordinator.grant();
    await flush();
    coordinator.grant();
    expect(await after).toBe(true);
    expect(guard.status().counters).toMatchObject({ ops: 2, succeeded: 2, failed: 0 });
    await session.close();
    await guard.close();
  });
});

describe("the call's own error, when its state is discarded", () => {
  const violation = Object.assign(new Error('duplicate key value'), { code: '23505' });

  it('is the cause when the state could not be kept (no slot)', async () => {
    const guard = guardWith({ maxSessions: 0 });
    const session = guard.session();
    const error = await errorOf(
      session.write((conn) => {
        conn.tables.add('t');
        throw violation;
      }),
    );
    expect(error).toBeInstanceOf(SessionStateDiscardedError);
    expect(error).toMatchObject({ reason: 'no-slot', cause: violation, opError: violation });
    await guard.close();
  });

  it('is kept as opError when the check failed (its error is the cause)', async () => {
    const checkError = new Error('state check failed');
    const guard = guardWith({
      state: () => {
        throw checkError;
      },
    });
    const session = guard.session();
    const error = await errorOf(
      session.write((conn) => {
        conn.tables.add('t');
        throw violation;
      }),
    );
    expect(error).toBeInstanceOf(SessionStateDiscardedError);
    expect(error).toMatchObject({ reason: 'unknown', cause: checkError, opError: violation });
    await guard.close();
  });

  it('is undefined when the call succeeded', async () => {
    const guard = guardWith({ maxSessions: 0 });
    const session = guard.session();
    const error = await errorOf(session.write((conn) => conn.tables.add('t')));
    expect(error).toBeInstanceOf(SessionStateDiscardedError);
    expect((error as SessionStateDiscardedError).opError).toBeUndefined();
    expect((error as Error).cause).toBeUndefined();
    await guard.close();
  });
});
