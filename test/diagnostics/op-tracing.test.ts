/**
 * The `engine-guard:op` tracing channel (SPEC 11): one context per call of `read`/`write`, on a
 * guard or a session, with `start`/`end` around the call and `error`/`asyncStart`/`asyncEnd` at
 * its answer; the context carries the op's id, wait and run times and outcome by then. Calls that
 * are refused, time out, abort, stall or close are traced like the rest.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import diagnosticsChannel from 'node:diagnostics_channel';
import { afterEach, describe, expect, it } from 'vitest';
import {
  channelNames,
  DeadlockError,
  EngineGuard,
  EngineStalledError,
  EngineUnavailableError,
  GuardClosedError,
  LockTimeoutError,
  type OpTraceContext,
  QueueFullError,
  SessionClosedError,
} from '../../src/index.js';
import { FakeEngineFactory } from '../../src/testing/index.js';
import { FakeCoordinator } from '../coordination/fake-coordinator.js';
import { errorOf, fakeGuard, gate, stalledRead, waitFor } from '../support/guard.js';

type Phase = 'start' | 'end' | 'asyncStart' | 'asyncEnd' | 'error';

interface Seen {
  phase: Phase;
  /** The context object itself (the same one in every event of a call). */
  ctx: OpTraceContext;
  /** Its fields as they were when the event fired. */
  copy: OpTraceContext;
  /** The caller's async-context value when the event fired (see `caller`). */
  store: string | undefined;
}

/** Marks which caller made a call, to see in which async context `start` is published. */
const caller = new AsyncLocalStorage<string>();
const channel = diagnosticsChannel.tracingChannel<unknown, OpTraceContext>(channelNames.op);
let unsubscribe: (() => void) | undefined;

/** Records every event of the guards in `sources`, from now until the test ends. */
function trace(...sources: object[]): Seen[] {
  const seen: Seen[] = [];
  const on = (phase: Phase) => (ctx: OpTraceContext) => {
    if (sources.includes(ctx.source)) {
      seen.push({ phase, ctx, copy: { ...ctx }, store: caller.getStore() });
    }
  };
  const handlers = {
    start: on('start'),
    end: on('end'),
    asyncStart: on('asyncStart'),
    asyncEnd: on('asyncEnd'),
    error: on('error'),
  };
  channel.subscribe(handlers);
  unsubscribe = () => channel.unsubscribe(handlers);
  return seen;
}

afterEach(() => {
  unsubscribe?.();
  unsubscribe = undefined;
});

/** The events of one call (by its context object), in order. */
function callsOf(seen: readonly Seen[]): Seen[][] {
  const calls = new Map<OpTraceContext, Seen[]>();
  for (const event of seen) {
    const list = calls.get(event.ctx) ?? [];
    list.push(event);
    calls.set(event.ctx, list);
  }
  return [...calls.values()];
}

function phases(events: readonly Seen[]): Phase[] {
  return events.map((event) => event.phase);
}

/** The one traced call whose label is `label`. */
function call(seen: readonly Seen[], label: string): Seen[] {
  const found = callsOf(seen).filter((events) => events[0]?.ctx.label === label);
  expect(found, `calls labelled ${label}`).toHaveLength(1);
  return found[0] as Seen[];
}

function at(events: readonly Seen[], phase: Phase): OpTraceContext {
  const event = events.find((e) => e.phase === phase);
  if (event === undefined) throw new Error(`no ${phase} event`);
  return event.copy;
}

const OK: Phase[] = ['start', 'end', 'asyncStart', 'asyncEnd'];
const FAILED: Phase[] = ['start', 'end', 'error', 'asyncStart', 'asyncEnd'];

describe('engine-guard:op tracing channel', () => {
  it('traces a read and a write: one context per call, complete by asyncEnd', async () => {
    const guard = new EngineGuard<object>({ name: 'traced', create: () => ({}), pool: 2 });
    const seen = trace(guard);
    try {
      await guard.read(() => 'r', { label: 'a read', key: 'tenant-1' });
      await guard.write(() => 'w', { label: 'a write' });
    } finally {
      await guard.close();
    }
    const read = call(seen, 'a read');
    expect(phases(read)).toEqual(OK);
    expect(at(read, 'start')).toMatchObject({
      guard: 'traced',
      source: guard,
      kind: 'read',
      label: 'a read',
      key: 'tenant-1',
      sessionId: undefined,
      outcome: undefined,
      waitMs: undefined,
    });
    expect(at(read, 'asyncEnd')).toMatchObject({
      id: expect.any(Number),
      outcome: 'ok',
      result: 'r',
      generation: 1,
      waitMs: expect.any(Number),
      runMs: expect.any(Number),
      clusterWaitMs: undefined,
    });
    expect(at(read, 'asyncEnd').error).toBeUndefined();
    const write = call(seen, 'a write');
    expect(phases(write)).toEqual(OK);
    expect(at(write, 'asyncEnd')).toMatchObject({ kind: 'write', outcome: 'ok', result: 'w' });
    expect(at(write, 'asyncEnd').id).toBeGreaterThan(at(read, 'asyncEnd').id ?? 0);
  });

  it("reports each op's real wait and run: a write queued behind a long read", async () => {
    const guard = new EngineGuard<object>({ name: 'timed', create: () => ({}), pool: 2 });
    const seen = trace(guard);
    const hold = gate();
    try {
      await guard.read(() => 'warm');
      let readRan = { from: 0, to: 0 };
      const reader = guard.read(
        async () => {
          const from = performance.now();
          await hold.promise;
          readRan = { from, to: performance.now() };
        },
        { label: 'long read' },
      );
      await waitFor(() => guard.status().running.length === 1, 5_000, 'the read to run');
      const writeCalled = performance.now();
      let writeStarted = 0;
      const writer = guard.write(
        () => {
          writeStarted = performance.now();
        },
        { label: 'queued write' },
      );
      const writeReturned = performance.now();
      await new Promise((resolve) => setTimeout(resolve, 60));
      const released = performance.now();
      hold.open();
      await Promise.all([reader, writer]);
      const answered = performance.now();

      const read = at(call(seen, 'long read'), 'asyncEnd');
      // The read ran from before its fn started to after its fn ended.
      expect(read.runMs).toBeGreaterThanOrEqual(readRan.to - readRan.from);
      const write = at(call(seen, 'queued write'), 'asyncEnd');
      // The write waited at least from its call's return to the read's release, at most from
      // before its call to its fn's start: bounds from the test's own clock, no margin needed.
      expect(write.waitMs).toBeGreaterThanOrEqual(released - writeReturned);
      expect(write.waitMs).toBeLessThanOrEqual(writeStarted - writeCalled);
      expect(write.runMs).toBeLessThanOrEqual(answered - writeCalled);
    } finally {
      hold.open();
      await guard.close();
    }
  });

  it("traces fn's failure: error before asyncEnd, outcome 'error'", async () => {
    const guard = new EngineGuard<object>({ name: 'failing', create: () => ({}) });
    const seen = trace(guard);
    const boom = new Error('boom');
    try {
      await expect(
        guard.write(
          () => {
            throw boom;
          },
          { label: 'throws' },
        ),
      ).rejects.toBe(boom);
    } finally {
      await guard.close();
    }
    const events = call(seen, 'throws');
    expect(phases(events)).toEqual(FAILED);
    expect(at(events, 'error')).toMatchObject({ outcome: 'error', error: boom, generation: 1 });
    expect(at(events, 'error').runMs).toEqual(expect.any(Number));
  });

  describe('calls answered without running', () => {
    it('closed, already aborted, engine down: refused at once, outcome set by end', async () => {
      const factory = new FakeEngineFactory();
      factory.failNextCreates(5);
      const down = fakeGuard(factory, {
        name: 'down',
        reconnect: { initialDelay: 5_000, failFastAfter: 1 },
      });
      const closed = new EngineGuard<object>({ name: 'closed', create: () => ({}) });
      await closed.close();
      const seen = trace(down, closed);
      try {
        await errorOf(down.read((e) => e.call(1)));
        await waitFor(() => down.status().reconnect.failures >= 1, 5_000, 'the failed connect');
        const unavailable = await errorOf(down.read((e) => e.call(1), { label: 'while down' }));
        expect(unavailable).toBeInstanceOf(EngineUnavailableError);
        const reason = new Error('gave up before calling');
        const aborted = await errorOf(
          down.read((e) => e.call(1), { label: 'aborted', signal: AbortSignal.abort(reason) }),
        );
        expect(aborted).toBe(reason);
        const refused = await errorOf(closed.write(() => 1, { label: 'after close' }));
        expect(refused).toBeInstanceOf(GuardClosedError);

        for (const [label, outcome, error] of [
          ['while down', 'refused', unavailable],
          ['aborted', 'aborted', reason],
          ['after close', 'closed', refused],
        ] as const) {
          const events = call(seen, label);
          expect(phases(events), label).toEqual(FAILED);
          // Known at the call: in the context before `end` already.
          expect(at(events, 'end'), label).toMatchObject({ outcome, id: undefined });
          expect(at(events, 'error'), label).toMatchObject({
            outcome,
            error,
            runMs: undefined,
            generation: undefined,
            waitMs: expect.any(Number),
          });
        }
      } finally {
        await down.close();
      }
    });

    it('queue full, timed out, aborted while queued: outcome and the wait it had', async () => {
      const guard = new EngineGuard<object>({ name: 'busy', create: () => ({}), maxQueue: 2 });
      const seen = trace(guard);
      const hold = gate();
      try {
        const holder = guard.write(() => hold.promise, { label: 'holder' });
        await waitFor(() => guard.status().running.length === 1, 5_000, 'the holder');
        const controller = new AbortController();
        const timedOut = errorOf(guard.read(() => 1, { label: 'times out', timeout: 30 }));
        const aborted = errorOf(
          guard.read(() => 1, { label: 'aborted in queue', signal: controller.signal }),
        );
        const full = await errorOf(guard.read(() => 1, { label: 'queue full' }));
        expect(full).toBeInstanceOf(QueueFullError);
        expect(await timedOut).toBeInstanceOf(LockTimeoutError);
        controller.abort();
        const reason = await aborted;
        hold.open();
        await holder;

        expect(at(call(seen, 'queue full'), 'error')).toMatchObject({
          outcome: 'refused',
          error: full,
          id: expect.any(Number),
          runMs: undefined,
        });
        const timeout = call(seen, 'times out');
        expect(phases(timeout)).toEqual(FAILED);
        expect(at(timeout, 'error')).toMatchObject({ outcome: 'timeout', runMs: undefined });
        // It waited its whole timeout (timers fire late, never early).
        expect(at(timeout, 'error').waitMs).toBeGreaterThanOrEqual(29);
        expect(at(call(seen, 'aborted in queue'), 'error')).toMatchObject({
          outcome: 'aborted',
          error: reason,
          runMs: undefined,
        });
      } finally {
        hold.open();
        await guard.close();
      }
    });

    it('a call inside a running op joins it and is not traced apart; a refused nested write is not either', async () => {
      const guard = new EngineGuard<object>({ name: 'nested', create: () => ({}) });
      const seen = trace(guard);
      try {
        await guard.read(
          async () => {
            await guard.read(() => 'inner', { label: 'inner' });
            await expect(guard.write(() => 'w', { label: 'inner write' })).rejects.toBeInstanceOf(
              DeadlockError,
            );
          },
          { label: 'outer' },
        );
      } finally {
        await guard.close();
      }
      expect(callsOf(seen).map((events) => events[0]?.ctx.label)).toEqual(['outer']);
    });
  });

  it("a stalled op: outcome 'stalled', after the run it had", async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { name: 'stalls', pool: 1 });
    const seen = trace(guard);
    try {
      const error = await stalledRead(guard, factory, { label: 'wedged' });
      expect(error).toBeInstanceOf(EngineStalledError);
      const events = call(seen, 'wedged');
      expect(phases(events)).toEqual(FAILED);
      expect(at(events, 'error')).toMatchObject({ outcome: 'stalled', error, generation: 1 });
      // Convicted after two failed probes of 100 ms each, past a 100 ms silence.
      expect(at(events, 'error').runMs).toBeGreaterThanOrEqual(200);
    } finally {
      await guard.close();
    }
  });

  it("a write's cluster lease wait is in its context, inside its run", async () => {
    const coordinator = new FakeCoordinator({ autoGrant: false });
    const guard = new EngineGuard<object>({ name: 'cluster', create: () => ({}), coordinator });
    const seen = trace(guard);
    try {
      const write = guard.write(() => 'w', { label: 'fenced write' });
      await waitFor(() => coordinator.pending.length === 1, 5_000, 'the cluster acquire');
      const asked = performance.now();
      await new Promise((resolve) => setTimeout(resolve, 40));
      const granted = performance.now();
      coordinator.pending[0]?.settle(true);
      await write;
      const ctx = at(call(seen, 'fenced write'), 'asyncEnd');
      expect(ctx.clusterWaitMs).toBeGreaterThanOrEqual(granted - asked);
      expect(ctx.runMs).toBeGreaterThanOrEqual(ctx.clusterWaitMs ?? Number.POSITIVE_INFINITY);
      await guard.read(() => 'r', { label: 'plain read' });
      expect(at(call(seen, 'plain read'), 'asyncEnd').clusterWaitMs).toBeUndefined();
    } finally {
      await guard.close();
    }
  });

  describe('sessions', () => {
    it('traces session ops from the call, in the caller context, with the session wait', async () => {
      const guard = new EngineGuard<object>({
        name: 'sessions',
        create: () => ({}),
        maxSessions: 1,
      });
      const seen = trace(guard);
      const hold = gate();
      try {
        const session = guard.session({ label: 'client 7' });
        const first = caller.run('caller A', () =>
          session.write(() => hold.promise, { label: 'first' }),
        );
        const second = caller.run('caller B', () => session.read(() => 'two', { label: 'second' }));
        const secondReturned = performance.now();
        // Both started at their call, each in its own caller's context, before any turn came.
        expect(seen.filter((e) => e.phase === 'start').map((e) => [e.ctx.label, e.store])).toEqual([
          ['first', 'caller A'],
          ['second', 'caller B'],
        ]);
        expect(at(call(seen, 'second'), 'end').id).toBeUndefined();
        await waitFor(() => guard.status().running.length === 1, 5_000, 'the first op');
        await new Promise((resolve) => setTimeout(resolve, 40));
        const released = performance.now();
        hold.open();
        await first;
        expect(await second).toBe('two');

        const one = at(call(seen, 'first'), 'asyncEnd');
        const two = at(call(seen, 'second'), 'asyncEnd');
        expect(phases(call(seen, 'second'))).toEqual(OK);
        expect(one).toMatchObject({ sessionId: session.id, kind: 'write', outcome: 'ok' });
        expect(two).toMatchObject({
          sessionId: session.id,
          kind: 'read',
          outcome: 'ok',
          key: undefined,
          id: expect.any(Number),
          generation: one.generation,
        });
        // The second waited in the session's queue for the first: that counts as its wait.
        expect(two.waitMs).toBeGreaterThanOrEqual(released - secondReturned);
        expect(two.id).toBeGreaterThan(one.id ?? 0);

        await session.close();
        const closed = await errorOf(session.read(() => 1, { label: 'after session close' }));
        expect(closed).toBeInstanceOf(SessionClosedError);
        const refused = call(seen, 'after session close');
        expect(phases(refused)).toEqual(FAILED);
        expect(at(refused, 'end')).toMatchObject({ outcome: 'closed', sessionId: session.id });
      } finally {
        hold.open();
        await guard.close();
      }
    });

    it('a session op queued behind a stateless write and aborted there', async () => {
      const guard = new EngineGuard<object>({
        name: 'session-abort',
        create: () => ({}),
        maxSessions: 1,
      });
      const seen = trace(guard);
      const hold = gate();
      try {
        const session = guard.session();
        await session.read(() => 'open');
        const holder = guard.write(() => hold.promise, { label: 'stateless write' });
        await waitFor(() => guard.status().running.length === 1, 5_000, 'the write');
        const controller = new AbortController();
        const queued = errorOf(
          session.read(() => 1, { label: 'session read', signal: controller.signal }),
        );
        await waitFor(() => guard.status().queued.length === 1, 5_000, 'the session read queued');
        controller.abort();
        const reason = await queued;
        hold.open();
        await holder;
        const events = call(seen, 'session read');
        expect(phases(events)).toEqual(FAILED);
        expect(at(events, 'error')).toMatchObject({
          outcome: 'aborted',
          error: reason,
          sessionId: session.id,
          id: expect.any(Number),
          runMs: undefined,
        });
      } finally {
        hold.open();
        await guard.close();
      }
    });
  });

  it('publishes start in the caller context for a queued stateless op too', async () => {
    const guard = new EngineGuard<object>({ name: 'ctx', create: () => ({}) });
    const seen = trace(guard);
    const hold = gate();
    try {
      const holder = caller.run('holder', () => guard.write(() => hold.promise, { label: 'h' }));
      const queued = caller.run('queued caller', () => guard.read(() => 'q', { label: 'q' }));
      hold.open();
      await Promise.all([holder, queued]);
      expect(seen.find((e) => e.phase === 'start' && e.ctx.label === 'q')?.store).toBe(
        'queued caller',
      );
    } finally {
      hold.open();
      await guard.close();
    }
  });
});
