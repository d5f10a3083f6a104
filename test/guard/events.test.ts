/**
 * EngineGuard on the FakeEngine (no real server). Typed events and diagnostics channels.
 * Timing margins are generous on purpose (noisy 2-core machines); assertions are on behaviour.
 */
import diagnosticsChannel from 'node:diagnostics_channel';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { EngineStalledError, type OpTraceContext, ProbeTimeoutError } from '../../src/index.js';
import {
  FakeEngineConnectionError,
  FakeEngineError,
  FakeEngineFactory,
} from '../../src/testing/index.js';
import { errorOf, fakeGuard, record, waitFor } from '../support/guard.js';

describe('j. events and diagnostics channels', () => {
  it('emits typed events with their payloads; dispose() stops them', async () => {
    const factory = new FakeEngineFactory();
    factory.failNextCreates(1);
    const guard = fakeGuard(factory, {
      name: 'events',
      pool: 1,
      reconnect: { initialDelay: 10, jitter: 0 },
    });
    const types = [
      'stall',
      'replace',
      'probeFailure',
      'abandon',
      'connectError',
      'connect',
      'state',
    ] as const;
    const seen: Record<string, unknown[]> = Object.fromEntries(types.map((t) => [t, []]));
    const subscriptions = types.map((type) =>
      guard.on(type, (event: unknown) => seen[type]!.push(event)),
    );
    try {
      await guard.read((e) => e.call(1));
      expect(seen.connectError).toEqual([
        { error: expect.any(FakeEngineConnectionError), attempts: 1, retryInMs: 10 },
      ]);
      const generation = guard.status().generation;
      expect(seen.connect).toEqual([{ generation, durationMs: expect.any(Number) }]);
      // The exact sequence of states is checked in 'state events follow status().state'.
      expect(seen.state?.slice(0, 2)).toEqual([
        { from: 'idle', to: 'connecting' },
        { from: 'connecting', to: 'degraded' },
      ]);

      // A wedged op that ignores its signal: probe failures, stall, abandon, replace.
      const engine = factory.created[0]!;
      engine.wedge();
      engine.nextCall('ignore-abort');
      const error = await errorOf(
        guard.read((e, ctx) => e.call(2, { signal: ctx.signal, duration: 60_000 }), {
          label: 'stuck',
        }),
      );
      expect(error).toBeInstanceOf(EngineStalledError);
      const op = {
        id: expect.any(Number),
        kind: 'read',
        label: 'stuck',
        generation,
        startedAt: expect.any(Number),
      };
      expect(seen.probeFailure).toEqual([
        { op, generation, error: expect.any(ProbeTimeoutError), consecutive: 1 },
        { op, generation, error: expect.any(ProbeTimeoutError), consecutive: 2 },
      ]);
      expect(seen.stall).toEqual([{ op, error, probeFailures: 2 }]);
      expect(seen.abandon).toEqual([{ op, reason: error }]);
      expect(seen.replace).toEqual([{ generation, reason: 'stall', cause: error }]);
      expect(seen.state?.at(-1)).toMatchObject({ to: 'degraded' });

      // Unsubscribed: the same story again is not reported.
      for (const [i, sub] of subscriptions.entries()) {
        if (i % 2 === 0) sub.dispose();
        else sub[Symbol.dispose]();
      }
      const counts = types.map((t) => seen[t]!.length);
      factory.failNextCreates(1);
      await guard.read((e) => e.call(3));
      const engine2 = factory.created[1]!;
      engine2.wedge();
      engine2.nextCall('ignore-abort');
      await errorOf(guard.read((e, ctx) => e.call(4, { signal: ctx.signal, duration: 60_000 })));
      expect(guard.status().counters.stalls).toBe(2);
      expect(types.map((t) => seen[t]!.length)).toEqual(counts);
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('state events follow status().state', async () => {
    const factory = new FakeEngineFactory();
    factory.failNextCreates(1);
    const guard = fakeGuard(factory, { pool: 1, reconnect: { initialDelay: 10, jitter: 0 } });
    const states = record(guard, 'state');
    const lastState = () => states.at(-1)?.to ?? 'idle';
    try {
      await guard.read((e) => e.call(1));
      expect(guard.status().state).toBe('ready');
      expect(states).toEqual([
        { from: 'idle', to: 'connecting' },
        { from: 'connecting', to: 'degraded' },
        { from: 'degraded', to: 'ready' },
      ]);
      const engine = factory.created[0]!;
      engine.nextCall('stall');
      await expect(
        guard.read((e, ctx) => e.call(2, { signal: ctx.signal })),
      ).rejects.toBeInstanceOf(EngineStalledError);
      // Once the stalled handle is torn down, the state settles; the last event must agree.
      await waitFor(
        () => factory.destroyed.includes(engine),
        5_000,
        'the stalled engine destroyed',
      );
      await sleep(50);
      expect(lastState()).toBe(guard.status().state);
      await guard.read((e) => e.call(3));
      expect(lastState()).toBe(guard.status().state);
    } finally {
      await guard.close();
    }
    expect(lastState()).toBe('closed');
  }, 30_000);

  it('publishes on engine-guard:guard:event and traces ops on engine-guard:op', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, {
      name: 'traced',
      reconnect: { initialDelay: 10, jitter: 0 },
    });
    const events: { guard: unknown; type: string; event: unknown }[] = [];
    const onEvent = (message: unknown): void => {
      const m = message as { guard: unknown; type: string; event: unknown };
      if (m.guard === 'traced') events.push(m);
    };
    const trace: { phase: string; ctx: OpTraceContext }[] = [];
    const push =
      (phase: string) =>
      (ctx: unknown): void => {
        const c = ctx as OpTraceContext;
        if (c.guard === 'traced') trace.push({ phase, ctx: { ...c } });
      };
    const handlers = {
      start: push('start'),
      end: push('end'),
      asyncStart: push('asyncStart'),
      asyncEnd: push('asyncEnd'),
      error: push('error'),
    };
    const channel = diagnosticsChannel.tracingChannel('engine-guard:op');
    diagnosticsChannel.subscribe('engine-guard:guard:event', onEvent);
    channel.subscribe(handlers);
    try {
      factory.failNextCreates(1);
      await expect(guard.read((e) => e.call('ok'), { label: 'good' })).resolves.toBe('ok');
      factory.created[0]!.nextCall('fail');
      const failure = await errorOf(guard.write((e) => e.call('x'), { label: 'bad' }));
      expect(failure).toBeInstanceOf(FakeEngineError);

      expect(events).toContainEqual({
        guard: 'traced',
        type: 'connectError',
        event: { error: expect.any(FakeEngineConnectionError), attempts: 1, retryInMs: 10 },
      });
      expect(events).toContainEqual({
        guard: 'traced',
        type: 'connect',
        event: { generation: 2, durationMs: expect.any(Number) },
      });

      const good = trace.filter((t) => t.ctx.label === 'good');
      expect(good.map((t) => t.phase)).toEqual(
        expect.arrayContaining(['start', 'end', 'asyncStart', 'asyncEnd']),
      );
      expect(good.map((t) => t.phase)).not.toContain('error');
      // The op is made inside the call: its id is there once the call returned (`end`).
      expect(good.find((t) => t.phase === 'start')?.ctx).toMatchObject({
        guard: 'traced',
        kind: 'read',
        label: 'good',
      });
      expect(good.find((t) => t.phase === 'end')?.ctx.id).toEqual(expect.any(Number));
      expect(good.find((t) => t.phase === 'asyncEnd')?.ctx).toMatchObject({
        result: 'ok',
        outcome: 'ok',
      });
      const bad = trace.filter((t) => t.ctx.label === 'bad');
      expect(bad.map((t) => t.phase)).toEqual(expect.arrayContaining(['start', 'error']));
      expect(bad.find((t) => t.phase === 'error')?.ctx).toMatchObject({
        kind: 'write',
        error: failure,
      });
    } finally {
      diagnosticsChannel.unsubscribe('engine-guard:guard:event', onEvent);
      channel.unsubscribe(handlers);
      await guard.close();
    }
  }, 30_000);
});
