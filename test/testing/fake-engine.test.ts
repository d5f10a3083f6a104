import { getEventListeners, setMaxListeners } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  FakeEngine,
  FakeEngineCancelledError,
  FakeEngineConnectionError,
  FakeEngineError,
  FakeEngineFactory,
} from '../../src/testing/index.js';

const NEVER = Symbol('never');

/** Resolves with the promise's outcome, or NEVER when it is still pending after `ms`. */
async function settledWithin<T>(
  promise: Promise<T>,
  ms: number,
): Promise<{ value: T } | { error: unknown } | typeof NEVER> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<typeof NEVER>((resolve) => {
    timer = setTimeout(() => resolve(NEVER), ms);
  });
  try {
    return await Promise.race([
      promise.then(
        (value) => ({ value }),
        (error: unknown) => ({ error }),
      ),
      timeout,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

const listeners = (signal: AbortSignal): number => getEventListeners(signal, 'abort').length;

afterEach(() => {
  vi.useRealTimers();
});

describe('FakeEngine', () => {
  it("'ok' resolves with the value, counts calls, ids are unique", async () => {
    const a = new FakeEngine({ name: 'a' });
    const b = new FakeEngine();
    expect(a.id).not.toBe(b.id);
    expect(a.name).toBe('a');
    await expect(a.call({ rows: 3 })).resolves.toEqual({ rows: 3 });
    await expect(a.call('x')).resolves.toBe('x');
    expect(a.calls).toBe(2);
    expect(a.running).toBe(0);
    expect(a.alive).toBe(true);
    expect(a.closed).toBe(false);
  });

  it('takes callDuration, or the per-call duration', async () => {
    const engine = new FakeEngine({ callDuration: 80 });
    let t = performance.now();
    await engine.call(1);
    expect(performance.now() - t).toBeGreaterThanOrEqual(75);
    const long = new FakeEngine({ callDuration: 10_000 });
    t = performance.now();
    await long.call(1, { duration: 0 });
    expect(performance.now() - t).toBeLessThan(5000);
  });

  it("'fail' rejects with FakeEngineError and keeps the engine alive", async () => {
    const engine = new FakeEngine().nextCall('fail');
    const error = await engine.call(1).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(FakeEngineError);
    expect(error).toMatchObject({ name: 'FakeEngineError', code: 'EFAKE' });
    expect(engine.alive).toBe(true);
    await expect(engine.call(2)).resolves.toBe(2); // back to 'ok'
  });

  it("'fatal' rejects with a connection error, kills the engine and its other calls", async () => {
    const engine = new FakeEngine({ slowDuration: 10_000 });
    engine.nextCall('slow').nextCall('fatal');
    const other = engine.call('other');
    const fatal = engine.call('fatal', { duration: 20 });
    const [otherError, fatalError] = await Promise.all([
      other.catch((e: unknown) => e),
      fatal.catch((e: unknown) => e),
    ]);
    expect(fatalError).toBeInstanceOf(FakeEngineConnectionError);
    expect(fatalError).toMatchObject({ name: 'FakeEngineConnectionError', code: 'ECONNRESET' });
    expect(otherError).toBeInstanceOf(FakeEngineConnectionError);
    expect(engine.alive).toBe(false);
    expect(engine.closed).toBe(false);
    await expect(engine.call(3)).rejects.toBeInstanceOf(FakeEngineConnectionError);
    await expect(engine.ping()).rejects.toBeInstanceOf(FakeEngineConnectionError);
  });

  it("'stall' never settles, hangs pings while it runs, and rejects on abort", async () => {
    const engine = new FakeEngine().nextCall('stall');
    const controller = new AbortController();
    const call = engine.call('x', { signal: controller.signal });
    expect(await settledWithin(call, 100)).toBe(NEVER);
    const ping = engine.ping();
    expect(await settledWithin(ping, 50)).toBe(NEVER);
    // A server-side cancel does not help: the answer is lost on the half-open link.
    await expect(engine.cancelRunning()).resolves.toBe(true);
    expect(await settledWithin(call, 50)).toBe(NEVER);

    const reason = new Error('caller gave up');
    controller.abort(reason);
    await expect(call).rejects.toBe(reason);
    await expect(ping).resolves.toBeUndefined(); // the stall is over: pings answer again
    expect(listeners(controller.signal)).toBe(0);
    expect(engine.aborts).toBe(1);
    expect(engine.running).toBe(0);
  });

  it("'slow' takes its duration while pings keep answering and progress is reported", async () => {
    const engine = new FakeEngine({ slowDuration: 250, progressInterval: 40 }).nextCall('slow');
    let progress = 0;
    const start = performance.now();
    const call = engine.call('done', { onProgress: () => progress++ });
    await sleep(50);
    await expect(settledWithin(engine.ping(), 100)).resolves.toEqual({ value: undefined });
    await expect(call).resolves.toBe('done');
    expect(performance.now() - start).toBeGreaterThanOrEqual(240);
    expect(progress).toBeGreaterThanOrEqual(1);
    const after = progress;
    await sleep(100);
    expect(progress).toBe(after); // progress timer cleared on settle
  });

  it('a throwing onProgress rejects the call with its error', async () => {
    const engine = new FakeEngine({ progressInterval: 10 });
    const boom = new Error('heartbeat failed');
    const call = engine.call(1, {
      duration: 5000,
      onProgress: () => {
        throw boom;
      },
    });
    await expect(call).rejects.toBe(boom);
    expect(engine.running).toBe(0);
  });

  it("'ignore-abort' resolves after its duration even though its signal aborted", async () => {
    const engine = new FakeEngine().nextCall('ignore-abort', 2);
    const controller = new AbortController();
    const call = engine.call('finished anyway', { signal: controller.signal, duration: 500 });
    controller.abort(new Error('stop'));
    await engine.cancelRunning();
    expect(await settledWithin(call, 30)).toBe(NEVER);
    await expect(call).resolves.toBe('finished anyway');
    // Even an already-aborted signal is ignored.
    await expect(engine.call('still', { signal: controller.signal })).resolves.toBe('still');
    expect(engine.aborts).toBe(0);
  });

  it('abort rejects a running call with signal.reason and removes its listener', async () => {
    const engine = new FakeEngine({ callDuration: 10_000 });
    const controller = new AbortController();
    const call = engine.call(1, { signal: controller.signal });
    expect(listeners(controller.signal)).toBe(1);
    controller.abort('because');
    await expect(call).rejects.toBe('because');
    expect(listeners(controller.signal)).toBe(0);
    expect(engine.running).toBe(0);
  });

  it('an already aborted signal rejects without running', async () => {
    const engine = new FakeEngine();
    const signal = AbortSignal.abort(new Error('pre-aborted'));
    await expect(engine.call(1, { signal })).rejects.toThrow('pre-aborted');
    await expect(engine.ping({ signal })).rejects.toThrow('pre-aborted');
    expect(listeners(signal)).toBe(0);
    expect(engine.running).toBe(0);
  });

  it('a long-lived signal holds no listeners after many settled calls and pings', async () => {
    const engine = new FakeEngine();
    const controller = new AbortController();
    const { signal } = controller;
    setMaxListeners(1000, signal); // 250 waiters at once below, on purpose
    engine.nextCall('fail', 50).nextCall('slow', 50);
    const work: Promise<unknown>[] = [];
    for (let i = 0; i < 200; i++) work.push(engine.call(i, { signal, duration: i % 3 }));
    engine.wedge();
    for (let i = 0; i < 50; i++) work.push(engine.ping({ signal }));
    expect(listeners(signal)).toBeGreaterThan(0);
    engine.unwedge();
    const results = await Promise.allSettled(work);
    expect(results.filter((r) => r.status === 'rejected')).toHaveLength(50);
    expect(listeners(signal)).toBe(0);
    expect(controller.signal.aborted).toBe(false);
  });

  it('wedge holds running calls, new calls and pings; abort still works; unwedge delivers', async () => {
    const engine = new FakeEngine({ callDuration: 20 });
    const running = engine.call('running');
    engine.wedge();
    expect(engine.wedged).toBe(true);
    const fresh = engine.call('fresh');
    const ping = engine.ping();
    const controller = new AbortController();
    const abortable = engine.call('abortable', { signal: controller.signal });
    expect(await settledWithin(Promise.race([running, fresh, ping]), 150)).toBe(NEVER);

    controller.abort(new Error('aborted while wedged'));
    await expect(abortable).rejects.toThrow('aborted while wedged');
    expect(listeners(controller.signal)).toBe(0);

    engine.unwedge();
    await expect(running).resolves.toBe('running');
    await expect(fresh).resolves.toBe('fresh');
    await expect(ping).resolves.toBeUndefined();
  });

  it("wedge + 'ignore-abort' never settles even on abort, until kill", async () => {
    const engine = new FakeEngine().nextCall('ignore-abort');
    engine.wedge();
    const controller = new AbortController();
    const call = engine.call(1, { signal: controller.signal });
    controller.abort();
    expect(await settledWithin(call, 100)).toBe(NEVER);
    engine.kill();
    await expect(call).rejects.toBeInstanceOf(FakeEngineConnectionError);
  });

  it('a ping on a wedged engine rejects when its signal aborts', async () => {
    const engine = new FakeEngine();
    engine.wedge();
    const signal = AbortSignal.timeout(50);
    await expect(engine.ping({ signal })).rejects.toMatchObject({ name: 'TimeoutError' });
    expect(listeners(signal)).toBe(0);
    expect(engine.pings).toBe(1);
  });

  it('kill rejects running and new calls and pings with ECONNRESET', async () => {
    const engine = new FakeEngine({ callDuration: 10_000 });
    engine.nextCall('ok').nextCall('stall');
    const a = engine.call('a');
    const b = engine.call('b');
    const ping = engine.ping(); // hangs behind the stall
    engine.kill();
    for (const p of [a, b, ping]) {
      await expect(p).rejects.toMatchObject({
        name: 'FakeEngineConnectionError',
        code: 'ECONNRESET',
      });
    }
    expect(engine.alive).toBe(false);
    await expect(engine.call('c')).rejects.toBeInstanceOf(FakeEngineConnectionError);
  });

  it('cancelRunning rejects running calls with FakeEngineCancelledError', async () => {
    const engine = new FakeEngine({ callDuration: 10_000 });
    await expect(engine.cancelRunning()).resolves.toBe(false);
    const controller = new AbortController();
    const call = engine.call(1, { signal: controller.signal });
    await expect(engine.cancelRunning()).resolves.toBe(true);
    const error = await call.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(FakeEngineCancelledError);
    expect(error).toMatchObject({ name: 'FakeEngineCancelledError', code: 'ECANCELLED' });
    expect(engine.cancels).toBe(2);
    expect(engine.alive).toBe(true);
    expect(listeners(controller.signal)).toBe(0);
    await expect(engine.call(2, { duration: 0 })).resolves.toBe(2);
  });

  it('close rejects running calls, is idempotent, and refuses new calls', async () => {
    const engine = new FakeEngine({ callDuration: 10_000 });
    const call = engine.call(1);
    await engine.close();
    await engine.close();
    expect(engine.closed).toBe(true);
    expect(engine.alive).toBe(false);
    await expect(call).rejects.toThrow(/closed/);
    await expect(engine.call(2)).rejects.toBeInstanceOf(FakeEngineConnectionError);
  });

  it('scripts behaviors FIFO and falls back to ok', async () => {
    const engine = new FakeEngine();
    engine.nextCall('fail', 2).nextCall('ok').nextCall('fail', 0);
    const outcomes = await Promise.allSettled([1, 2, 3, 4].map((i) => engine.call(i)));
    expect(outcomes.map((o) => o.status)).toEqual([
      'rejected',
      'rejected',
      'fulfilled',
      'fulfilled',
    ]);
  });

  it('works with Vitest fake timers', async () => {
    vi.useFakeTimers();
    const engine = new FakeEngine({ callDuration: 60_000 });
    let done = false;
    const call = engine.call('late').then((v) => {
      done = true;
      return v;
    });
    await vi.advanceTimersByTimeAsync(59_999);
    expect(done).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    await expect(call).resolves.toBe('late');
    expect(vi.getTimerCount()).toBe(0);
  });

  it('rejects bad input', () => {
    const engine = new FakeEngine();
    expect(() => engine.nextCall('bogus' as 'ok')).toThrow(TypeError);
    expect(() => engine.nextCall('ok', -1)).toThrow(/times/);
    expect(() => engine.call(1, { duration: -1 })).toThrow(/duration/);
    expect(() => engine.call(1, { signal: {} as AbortSignal })).toThrow(TypeError);
    expect(() => new FakeEngine({ callDuration: Number.NaN })).toThrow(/callDuration/);
    expect(() => new FakeEngine({ slowDuration: -1 })).toThrow(RangeError);
    expect(() => new FakeEngineFactory({ createDuration: -1 })).toThrow(/createDuration/);
    expect(() => new FakeEngineFactory().failNextCreates(1.5)).toThrow(RangeError);
    expect(engine.calls).toBe(0);
  });
});

describe('FakeEngineFactory', () => {
  it('creates and destroys engines and tracks them', async () => {
    const factory = new FakeEngineFactory({ callDuration: 1 });
    const a = await factory.create();
    const b = await factory.create();
    expect(a).toBeInstanceOf(FakeEngine);
    expect(a.id).not.toBe(b.id);
    expect(factory.created).toEqual([a, b]);
    expect(factory.live).toBe(2);
    await factory.destroy(a);
    await factory.destroy(a);
    expect(a.closed).toBe(true);
    expect(factory.destroyed).toEqual([a]);
    expect(factory.live).toBe(1);
    await expect(b.call('b')).resolves.toBe('b');
  });

  it('failNextCreates rejects the next n creates, then recovers', async () => {
    const factory = new FakeEngineFactory();
    factory.failNextCreates(2);
    const custom = new Error('auth failed');
    factory.failNextCreates(1, custom);
    const first = await factory.create().catch((e: unknown) => e);
    expect(first).toMatchObject({ name: 'FakeEngineConnectionError', code: 'ECONNREFUSED' });
    await expect(factory.create()).rejects.toBeInstanceOf(FakeEngineConnectionError);
    await expect(factory.create()).rejects.toBe(custom);
    await expect(factory.create()).resolves.toBeInstanceOf(FakeEngine);
    expect(factory.attempts).toBe(4);
    expect(factory.created).toHaveLength(1);
  });

  it('stallNextCreates never settles until the signal aborts, and cleans up', async () => {
    const factory = new FakeEngineFactory();
    factory.stallNextCreates(1);
    const controller = new AbortController();
    const stalled = factory.create({ signal: controller.signal });
    expect(await settledWithin(stalled, 100)).toBe(NEVER);
    expect(listeners(controller.signal)).toBe(1);
    const reason = new Error('connect timeout');
    controller.abort(reason);
    await expect(stalled).rejects.toBe(reason);
    expect(listeners(controller.signal)).toBe(0);
    expect(factory.created).toHaveLength(0);
    // The next create is normal again, and leaves no listener on its signal.
    const signal = new AbortController().signal;
    await expect(factory.create({ signal })).resolves.toBeInstanceOf(FakeEngine);
    expect(listeners(signal)).toBe(0);
  });

  it('createDuration delays creates; abort rejects a pending create', async () => {
    const factory = new FakeEngineFactory({ createDuration: 5000 });
    const signal = AbortSignal.timeout(50);
    const start = performance.now();
    await expect(factory.create({ signal })).rejects.toMatchObject({ name: 'TimeoutError' });
    expect(performance.now() - start).toBeLessThan(4000);
    expect(listeners(signal)).toBe(0);
    await expect(factory.create({ signal: AbortSignal.abort('no') })).rejects.toBe('no');
    expect(factory.created).toHaveLength(0);
  });

  it('onCreate scripts each new engine', async () => {
    const factory = new FakeEngineFactory({
      onCreate: (engine) => {
        engine.nextCall('fail');
      },
    });
    const engine = await factory.create();
    await expect(engine.call(1)).rejects.toBeInstanceOf(FakeEngineError);
    await expect(engine.call(2)).resolves.toBe(2);
  });
});
