import diagnosticsChannel from 'node:diagnostics_channel';
import { describe, expect, expectTypeOf, it } from 'vitest';
import {
  channelNames,
  EngineGuard,
  type GuardEventMessage,
  type GuardEvents,
  type LockCancelMessage,
  LockTimeoutError,
  RWLock,
} from '../../src/index.js';

/** Collects what a channel publishes while `body` runs. */
async function collect<M>(name: string, body: () => Promise<void>): Promise<M[]> {
  const seen: M[] = [];
  const onMessage = (message: unknown) => seen.push(message as M);
  diagnosticsChannel.subscribe(name, onMessage);
  try {
    await body();
  } finally {
    diagnosticsChannel.unsubscribe(name, onMessage);
  }
  return seen;
}

describe('diagnostics channels', () => {
  it('keeps the channel names stable', () => {
    expect(channelNames).toEqual({
      lockAcquire: 'engine-guard:lock:acquire',
      lockRelease: 'engine-guard:lock:release',
      lockCancel: 'engine-guard:lock:cancel',
      op: 'engine-guard:op',
      guardEvent: 'engine-guard:guard:event',
    });
  });

  it('types guard event messages as a union discriminated by type, one member per event', () => {
    expectTypeOf<GuardEventMessage['type']>().toEqualTypeOf<keyof GuardEvents>();
    expectTypeOf<Extract<GuardEventMessage, { type: 'stall' }>['event']>().toEqualTypeOf<
      GuardEvents['stall']
    >();
    expectTypeOf<Extract<GuardEventMessage, { type: 'connect' }>['event']>().toEqualTypeOf<{
      generation: number;
      durationMs: number;
    }>();
    expectTypeOf<GuardEventMessage['guard']>().toEqualTypeOf<string | undefined>();
  });

  it('publishes each guard event with the payload its type promises', async () => {
    const guard = new EngineGuard<object>({ name: 'diag', create: () => ({}), liveness: false });
    const messages = await collect<GuardEventMessage>(channelNames.guardEvent, async () => {
      await guard.read(() => 'ok');
      await guard.close();
    });
    const connect = messages.find((m) => m.type === 'connect');
    expect(connect).toEqual({
      guard: 'diag',
      type: 'connect',
      event: { generation: 1, durationMs: expect.any(Number) },
    });
    const states = messages.filter((m) => m.type === 'state').map((m) => m.event);
    expect(states.at(-1)).toMatchObject({ to: 'closed' });
  });

  it('lock:cancel carries the very value the waiter rejects with: abort reason, LockTimeoutError', async () => {
    const lock = new RWLock({ name: 'diag-lock' });
    const held = await lock.acquireWrite();
    const controller = new AbortController();
    const reason = new Error('caller gave up');
    let aborted: unknown;
    let timedOut: unknown;
    const messages = await collect<LockCancelMessage>(channelNames.lockCancel, async () => {
      const a = lock.acquireRead({ signal: controller.signal }).catch((e: unknown) => e);
      const t = lock.acquireWrite({ timeout: 5 }).catch((e: unknown) => e);
      controller.abort(reason);
      [aborted, timedOut] = await Promise.all([a, t]);
    });
    held.release();
    expect(aborted).toBe(reason);
    expect(timedOut).toBeInstanceOf(LockTimeoutError);
    expect(messages).toEqual([
      { lock: 'diag-lock', mode: 'read', reason },
      { lock: 'diag-lock', mode: 'write', reason: timedOut },
    ]);
  });
});
