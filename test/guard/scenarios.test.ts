/**
 * Fault scenarios of EngineGuard on the FakeEngine (no real server): SPEC sections 4 and 7.
 * Timing margins are generous on purpose (noisy 2-core machines); assertions are on behaviour.
 */
import diagnosticsChannel from 'node:diagnostics_channel';
import { stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  DeadlockError,
  EngineGuard,
  type EngineGuardOptions,
  EngineStalledError,
  EngineUnavailableError,
  GuardClosedError,
  type GuardEvents,
  LockTimeoutError,
  type OpContext,
  type OpTraceContext,
  ProbeTimeoutError,
} from '../../src/index.js';
import {
  FakeEngine,
  FakeEngineCancelledError,
  FakeEngineConnectionError,
  FakeEngineError,
  FakeEngineFactory,
} from '../../src/testing/index.js';

type Options = EngineGuardOptions<FakeEngine>;
type Guard = EngineGuard<FakeEngine>;

function fakeGuard(factory: FakeEngineFactory, extra: Partial<Options> = {}): Guard {
  return new EngineGuard<FakeEngine>({
    create: ({ signal }) => factory.create({ signal }),
    destroy: (engine) => factory.destroy(engine),
    probe: (engine, { signal }) => engine.ping({ signal }),
    cancel: (engine) => engine.cancelRunning(),
    isFatal: (error) => (error as { code?: string } | null)?.code === 'ECONNRESET',
    liveness: { interval: 100, timeout: 100, failures: 2 },
    ...extra,
  });
}

/** Resolves with the rejection reason; fails if the promise resolves. */
function errorOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    (value) => {
      throw new Error(`expected a rejection, got ${String(value)}`);
    },
    (error: unknown) => error,
  );
}

async function waitFor(cond: () => boolean, timeoutMs = 5_000, what = 'condition'): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!cond()) {
    if (performance.now() > end)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(2);
  }
}

function record<K extends keyof GuardEvents>(guard: Guard, type: K): GuardEvents[K][] {
  const seen: GuardEvents[K][] = [];
  guard.on(type, (event) => seen.push(event));
  return seen;
}

function busyWait(ms: number): void {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    // the event loop is blocked
  }
}

function activeTimeouts(): number {
  return process.getActiveResourcesInfo().filter((kind) => kind === 'Timeout').length;
}

const queued = (guard: Guard): number => {
  const q = guard.status().queue;
  return q.readers + q.writers + q.forHandle;
};

// ---------------------------------------------------------------------------------------------

describe('a. writer queued behind a wedged reader', () => {
  it('convicts the reader, revokes its lease and runs the queued write on a new handle', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { pool: 1 });
    try {
      await guard.read((e) => e.call('warm'));
      const engine = factory.created[0]!;
      // A call that never returns and cannot be aborted, on a handle that answers nothing.
      engine.wedge();
      engine.nextCall('ignore-abort');
      let readerGeneration = 0;
      const reader = guard.read(
        (e, ctx) => {
          readerGeneration = ctx.generation;
          return e.call('r', { signal: ctx.signal, duration: 60_000 });
        },
        { label: 'wedged reader' },
      );
      const readerError = errorOf(reader);
      await waitFor(() => guard.status().running.length === 1, 5_000, 'the reader');
      let writeEngine: FakeEngine | undefined;
      let writeGeneration = 0;
      let readerSettledBeforeWrite = false;
      void readerError.then(() => {
        readerSettledBeforeWrite = writeEngine === undefined;
      });
      const writer = guard.write(
        (e, ctx) => {
          writeEngine = e;
          writeGeneration = ctx.generation;
          return e.call('w', { signal: ctx.signal });
        },
        { label: 'queued write' },
      );
      expect(guard.status().queue).toEqual({ readers: 0, writers: 1, forHandle: 0 });

      const error = await readerError;
      expect(error).toBeInstanceOf(EngineStalledError);
      expect(error).toMatchObject({
        indeterminate: false,
        kind: 'read',
        label: 'wedged reader',
        generation: readerGeneration,
        probeFailures: 2,
      });
      await expect(writer).resolves.toBe('w');
      expect(readerSettledBeforeWrite).toBe(true);
      expect(writeEngine).not.toBe(engine);
      expect(writeGeneration).toBeGreaterThan(readerGeneration);
      expect(factory.created).toHaveLength(2);
      expect(guard.status().counters).toMatchObject({ stalls: 1, replacements: 1 });
      await waitFor(() => factory.destroyed.includes(engine), 5_000, 'the wedged engine destroyed');
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('also frees the queue behind a stalled call that honours its signal', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { pool: 2 });
    try {
      await guard.read((e) => e.call('warm'));
      factory.created[0]!.nextCall('stall');
      const reader = errorOf(guard.read((e, ctx) => e.call('r', { signal: ctx.signal })));
      await waitFor(() => guard.status().running.length === 1, 5_000, 'the reader');
      const writer = guard.write((e) => e.call('w'));
      expect(guard.status().queue.writers).toBe(1);
      const error = await reader;
      expect(error).toBeInstanceOf(EngineStalledError);
      expect((error as EngineStalledError).indeterminate).toBe(false);
      await expect(writer).resolves.toBe('w');
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('reports a stalled write as indeterminate and lets the queued reads through', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { pool: 2 });
    try {
      await guard.read((e) => e.call('warm'));
      const engine = factory.created[0]!;
      engine.nextCall('stall');
      const write = errorOf(
        guard.write((e, ctx) => e.call('w', { signal: ctx.signal }), { label: 'ddl' }),
      );
      await waitFor(() => guard.status().running.length === 1, 5_000, 'the write');
      const reads = [guard.read((e) => e.call(1)), guard.read((e) => e.call(2))];
      expect(guard.status().queue.readers).toBe(2);
      const error = await write;
      expect(error).toBeInstanceOf(EngineStalledError);
      expect(error).toMatchObject({ indeterminate: true, kind: 'write', label: 'ddl' });
      expect((error as Error).message).toMatch(/indeterminate/);
      await expect(Promise.all(reads)).resolves.toEqual([1, 2]);
    } finally {
      await guard.close();
    }
  }, 30_000);
});

// ---------------------------------------------------------------------------------------------

type Fault = 'ok' | 'fail' | 'never' | number; // a number: slow, taking that many ms
type OpBehavior = 'ok' | 'fail' | 'slow' | 'stall' | 'ignore-abort' | 'fatal';
interface CallerSpec {
  kind: 'read' | 'write';
  startAt: number;
  timeout: number | undefined;
  abortAt: number | undefined;
  behavior: OpBehavior;
}
interface ChurnScenario {
  pool: number;
  creates: Fault[];
  setups: Fault[];
  destroys: Fault[];
  callers: CallerSpec[];
}

const faultArb: fc.Arbitrary<Fault> = fc.oneof(
  { arbitrary: fc.constant<Fault>('ok'), weight: 4 },
  { arbitrary: fc.constant<Fault>('fail'), weight: 2 },
  { arbitrary: fc.constant<Fault>('never'), weight: 1 },
  { arbitrary: fc.integer({ min: 10, max: 350 }), weight: 2 },
);

const callerArb: fc.Arbitrary<CallerSpec> = fc.record({
  kind: fc.constantFrom<'read' | 'write'>('read', 'read', 'read', 'write'),
  startAt: fc.integer({ min: 0, max: 300 }),
  timeout: fc.option(fc.integer({ min: 0, max: 500 }), { nil: undefined }),
  abortAt: fc.option(fc.integer({ min: 0, max: 500 }), { nil: undefined }),
  behavior: fc.constantFrom<OpBehavior>(
    'ok',
    'ok',
    'ok',
    'fail',
    'slow',
    'stall',
    'ignore-abort',
    'fatal',
  ),
});

const scenarioArb: fc.Arbitrary<ChurnScenario> = fc.record({
  pool: fc.integer({ min: 1, max: 3 }),
  creates: fc.array(faultArb, { maxLength: 8 }),
  setups: fc.array(faultArb, { maxLength: 8 }),
  destroys: fc.array(faultArb, { maxLength: 8 }),
  callers: fc.array(callerArb, { minLength: 5, maxLength: 25 }),
});

const CHURN = { connectTimeout: 200, destroyTimeout: 200, cancelTimeout: 150, closeTimeout: 400 };

async function act(fault: Fault, what: string): Promise<void> {
  if (fault === 'fail') throw new Error(`${what} failed`);
  if (fault === 'never') await new Promise<never>(() => {});
  if (typeof fault === 'number') await sleep(fault);
}

/** One churn run; throws (with every violation listed) when an invariant breaks. */
async function churn(s: ChurnScenario): Promise<void> {
  const creates = [...s.creates];
  const setups = [...s.setups];
  const destroys = [...s.destroys];
  const violations: string[] = [];
  const engines = new Map<
    FakeEngine,
    { generation: number; signal: AbortSignal; destroyed: boolean }
  >();
  const retired = new Set<number>();
  let checking = true;

  const liveInService = (): number => {
    let n = 0;
    for (const meta of engines.values()) {
      // Live and in service: created, not destroyed, not abandoned (its attempt was given up),
      // not retired (it left service at once, its destroy runs in the background).
      if (!meta.destroyed && !meta.signal.aborted && !retired.has(meta.generation)) n++;
    }
    return n;
  };

  const guard: Guard = new EngineGuard<FakeEngine>({
    pool: s.pool,
    create: async ({ signal, generation }) => {
      await act(creates.shift() ?? 'ok', 'create');
      const engine = new FakeEngine({ name: `e${generation}` });
      engines.set(engine, { generation, signal, destroyed: false });
      check('create');
      return engine;
    },
    setup: () => act(setups.shift() ?? 'ok', 'setup'),
    destroy: async (engine) => {
      const meta = engines.get(engine);
      if (meta === undefined) violations.push('destroy of an engine never created');
      else if (meta.destroyed) violations.push(`engine e${meta.generation} destroyed twice`);
      else meta.destroyed = true;
      const fault = destroys.shift() ?? 'ok';
      if (fault !== 'never') void engine.close();
      await act(fault, 'destroy');
    },
    probe: (engine, { signal }) => engine.ping({ signal }),
    cancel: (engine) => engine.cancelRunning(),
    isFatal: (error) => (error as { code?: string } | null)?.code === 'ECONNRESET',
    liveness: { interval: 40, timeout: 40, failures: 2 },
    reconnect: { initialDelay: 5, maxDelay: 40, jitter: 0.5, failFastAfter: 3 },
    ...CHURN,
  });
  guard.on('replace', (event) => retired.add(event.generation));

  function check(where: string): void {
    if (!checking) return;
    const live = liveInService();
    if (live > s.pool)
      violations.push(`${where}: ${live} live in-service handles > pool ${s.pool}`);
    const h = guard.status().handles;
    if (h.total + h.connecting > s.pool) {
      violations.push(`${where}: status().handles ${JSON.stringify(h)} exceed pool ${s.pool}`);
    }
    if (h.total !== h.busy + h.idle) violations.push(`${where}: ${JSON.stringify(h)}`);
  }

  const ticker = setInterval(() => check('tick'), 3);
  const settled = s.callers.map(() => false);
  const timers = new Set<NodeJS.Timeout>();
  try {
    const calls = s.callers.map(
      (c, i) =>
        new Promise<void>((resolve) => {
          const start = setTimeout(() => {
            timers.delete(start);
            const ac = new AbortController();
            const reason = new Error(`caller ${i} aborted`);
            let abortTimer: NodeJS.Timeout | undefined;
            if (c.abortAt !== undefined) {
              abortTimer = setTimeout(() => ac.abort(reason), c.abortAt);
            }
            const fn = (engine: FakeEngine, ctx: OpContext): Promise<number> => {
              if (c.behavior !== 'ok') engine.nextCall(c.behavior);
              const duration = c.behavior === 'slow' ? 80 : c.behavior === 'ignore-abort' ? 250 : 5;
              return engine.call(i, { signal: ctx.signal, duration });
            };
            let promise: Promise<number>;
            try {
              const options = { signal: ac.signal, timeout: c.timeout, label: `c${i}` };
              promise = c.kind === 'read' ? guard.read(fn, options) : guard.write(fn, options);
            } catch (error) {
              violations.push(`caller ${i}: threw synchronously: ${String(error)}`);
              promise = Promise.resolve(i);
            }
            promise
              .then(
                (value) => {
                  if (value !== i) violations.push(`caller ${i}: resolved with ${value}`);
                  if (c.behavior === 'fail' || c.behavior === 'fatal' || c.behavior === 'stall') {
                    violations.push(`caller ${i}: ${c.behavior} op resolved`);
                  }
                },
                (error: unknown) => {
                  const generic =
                    error === reason ||
                    error instanceof LockTimeoutError ||
                    error instanceof EngineUnavailableError;
                  const expected =
                    generic ||
                    (c.behavior === 'fail' && error instanceof FakeEngineError) ||
                    (c.behavior === 'fatal' && error instanceof FakeEngineConnectionError) ||
                    (c.behavior === 'stall' && error instanceof EngineStalledError);
                  if (!expected) {
                    violations.push(
                      `caller ${i} (${c.kind} ${c.behavior}): unexpected ${String(error)}`,
                    );
                  }
                },
              )
              .finally(() => {
                if (abortTimer !== undefined) clearTimeout(abortTimer);
                settled[i] = true;
                check('settle');
                resolve();
              });
          }, c.startAt);
          timers.add(start);
        }),
    );

    // Every caller promise settles.
    const deadline = new AbortController();
    const allSettled = await Promise.race([
      Promise.all(calls).then(() => true),
      sleep(20_000, false, { signal: deadline.signal }).catch(() => false),
    ]);
    deadline.abort();
    if (!allSettled) {
      violations.push(`callers never settled: ${settled.flatMap((ok, i) => (ok ? [] : [i]))}`);
      throw new Error(violations.join('\n'));
    }

    // The queue drains.
    await waitFor(
      () => queued(guard) === 0 && guard.status().running.length === 0,
      5_000,
      'the queue to drain',
    );

    // Faults stop: a read succeeds (new callers may fail fast until a background retry wins).
    creates.length = 0;
    setups.length = 0;
    destroys.length = 0;
    const until = performance.now() + 5_000;
    for (;;) {
      try {
        expect(await guard.read((e) => e.call('final'))).toBe('final');
        break;
      } catch (error) {
        if (!(error instanceof EngineUnavailableError) || performance.now() > until) {
          violations.push(`final read failed: ${String(error)}`);
          break;
        }
        await sleep(10);
      }
    }
  } finally {
    clearInterval(ticker);
    for (const timer of timers) clearTimeout(timer);
  }

  // close() is bounded and leaves nothing running.
  checking = false;
  const t0 = performance.now();
  await guard.close();
  const closeMs = performance.now() - t0;
  if (closeMs > CHURN.closeTimeout + 600) violations.push(`close() took ${closeMs} ms`);
  const status = guard.status();
  if (status.state !== 'closed') violations.push(`state after close: ${status.state}`);
  if (status.running.length > 0) violations.push(`running after close: ${status.running.length}`);
  if (queued(guard) > 0) violations.push(`queued after close: ${JSON.stringify(status.queue)}`);
  if (status.handles.total > 0) violations.push(`handles after close: ${status.handles.total}`);
  // Every handle the guard took into service was handed to destroy.
  const undestroyed = (): number[] =>
    [...engines.values()]
      .filter((meta) => !meta.destroyed && !meta.signal.aborted)
      .map((meta) => meta.generation);
  await waitFor(() => undestroyed().length === 0, 1_000, 'every handle destroyed').catch(() => {
    violations.push(`never destroyed after close: generations ${undestroyed()}`);
  });

  if (violations.length > 0) throw new Error(violations.join('\n'));
}

describe('b. waiter churn with create/setup/destroy ok, failing, slow or never settling', () => {
  it('keeps every invariant under random churn (fast-check)', async () => {
    await fc.assert(fc.asyncProperty(scenarioArb, churn), {
      numRuns: 25,
      endOnFailure: true,
    });
  }, 180_000);

  it('survives a hand-picked worst case', async () => {
    await churn({
      pool: 2,
      creates: ['never', 'fail', 300, 'fail', 'never', 'ok', 'fail'],
      setups: ['never', 'fail', 250, 'ok', 'never'],
      destroys: ['never', 'fail', 300, 'never'],
      callers: Array.from({ length: 20 }, (_, i) => ({
        kind: i % 4 === 3 ? ('write' as const) : ('read' as const),
        startAt: (i * 37) % 300,
        timeout: i % 3 === 0 ? undefined : 100 + ((i * 53) % 400),
        abortAt: i % 5 === 0 ? (i * 29) % 400 : undefined,
        behavior: (['ok', 'slow', 'stall', 'ignore-abort', 'fatal', 'fail'] as const)[i % 6]!,
      })),
    });
  }, 60_000);

  it('destroys the engine of a setup that never settles once connectTimeout gives up on it', async () => {
    const factory = new FakeEngineFactory();
    let setups = 0;
    const guard = new EngineGuard<FakeEngine>({
      create: ({ signal }) => factory.create({ signal }),
      destroy: (engine) => factory.destroy(engine),
      // The first setup hangs for good (a bootstrap query on a dead link), later ones work.
      setup: () => (++setups === 1 ? new Promise<void>(() => {}) : undefined),
      connectTimeout: 200,
      reconnect: { initialDelay: 10, jitter: 0 },
    });
    try {
      await expect(guard.read((e) => e.call('ok'), { timeout: 5_000 })).resolves.toBe('ok');
      expect(factory.created).toHaveLength(2);
      const orphan = factory.created[0]!;
      // The guard gave up on the first handle: it must not stay open for ever.
      await waitFor(() => factory.destroyed.includes(orphan), 3_000, 'the orphan destroyed');
    } finally {
      await guard.close();
    }
    expect(factory.live).toBe(0);
  }, 30_000);

  it('never opens more than pool handles for a burst of concurrent callers', async () => {
    const factory = new FakeEngineFactory({ createDuration: 50, callDuration: 30 });
    let maxLive = 0;
    const guard = fakeGuard(factory, {
      pool: 3,
      create: async ({ signal }) => {
        const engine = await factory.create({ signal });
        maxLive = Math.max(maxLive, factory.live);
        return engine;
      },
    });
    try {
      const results = await Promise.all(
        Array.from({ length: 40 }, (_, i) => guard.read((e) => e.call(i))),
      );
      expect(results).toEqual(Array.from({ length: 40 }, (_, i) => i));
      expect(factory.created).toHaveLength(3);
      expect(maxLive).toBeLessThanOrEqual(3);
    } finally {
      await guard.close();
    }
  }, 30_000);
});

// ---------------------------------------------------------------------------------------------

describe('c. event-loop pause', () => {
  it('a 2 s pause during a slow op convicts nothing healthy', async () => {
    const factory = new FakeEngineFactory({ slowDuration: 3_000 });
    const guard = fakeGuard(factory, { liveness: { interval: 200, timeout: 200, failures: 2 } });
    const stalls = record(guard, 'stall');
    try {
      await guard.read((e) => e.call('warm'));
      factory.created[0]!.nextCall('slow');
      const pause = setTimeout(() => busyWait(2_000), 600);
      const t0 = performance.now();
      try {
        await expect(guard.read((e, ctx) => e.call('done', { signal: ctx.signal }))).resolves.toBe(
          'done',
        );
      } finally {
        clearTimeout(pause);
      }
      expect(performance.now() - t0).toBeGreaterThan(2_500);
      expect(stalls).toEqual([]);
      expect(guard.status().counters).toMatchObject({ stalls: 0, replacements: 0 });
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('a pause that catches a probe in flight (reply via I/O) convicts nothing, even with failures 1', async () => {
    const factory = new FakeEngineFactory({ slowDuration: 3_000 });
    let probes = 0;
    const guard = fakeGuard(factory, {
      liveness: { interval: 200, timeout: 200, failures: 1 },
      probe: async (engine, { signal }) => {
        probes++;
        // The block starts while this probe waits on I/O, so its timeout fires ~2 s late.
        if (probes === 2) setImmediate(() => busyWait(2_000));
        await stat(import.meta.dirname);
        await engine.ping({ signal });
      },
    });
    const stalls = record(guard, 'stall');
    try {
      await guard.read((e) => e.call('warm'));
      factory.created[0]!.nextCall('slow');
      await expect(guard.read((e, ctx) => e.call('done', { signal: ctx.signal }))).resolves.toBe(
        'done',
      );
      expect(probes).toBeGreaterThanOrEqual(3);
      expect(stalls).toEqual([]);
      expect(guard.status().counters.stalls).toBe(0);
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('still convicts an engine that really died during the pause', async () => {
    const factory = new FakeEngineFactory({ slowDuration: 20_000 });
    const guard = fakeGuard(factory, { liveness: { interval: 200, timeout: 200, failures: 2 } });
    try {
      await guard.read((e) => e.call('warm'));
      const engine = factory.created[0]!;
      engine.nextCall('slow');
      let pauseEnded = 0;
      const pause = setTimeout(() => {
        engine.wedge(); // the engine dies while we are paused
        busyWait(2_000);
        pauseEnded = performance.now();
      }, 600);
      try {
        const error = await errorOf(guard.read((e, ctx) => e.call('x', { signal: ctx.signal })));
        expect(error).toBeInstanceOf(EngineStalledError);
        expect(pauseEnded).toBeGreaterThan(0);
        // Convicted on fresh evidence after the pause: 2 failed probes, not the pause itself.
        const after = performance.now() - pauseEnded;
        expect(after).toBeGreaterThan(150);
        expect(after).toBeLessThan(5_000);
      } finally {
        clearTimeout(pause);
      }
      expect(guard.status().counters.stalls).toBe(1);
    } finally {
      await guard.close();
    }
  }, 30_000);
});

// ---------------------------------------------------------------------------------------------

describe('d. engine down', () => {
  it('waitForReady callers wait within their own timeout, new ones fail fast, reads resume after', async () => {
    const factory = new FakeEngineFactory();
    let down = true;
    let attempts = 0;
    let lastThrown: Error | undefined;
    const guard = fakeGuard(factory, {
      pool: 1,
      create: ({ signal }) => {
        attempts++;
        if (down) {
          lastThrown = new FakeEngineConnectionError(`refused #${attempts}`, {
            code: 'ECONNREFUSED',
          });
          return Promise.reject(lastThrown);
        }
        return factory.create({ signal });
      },
      reconnect: { initialDelay: 20, maxDelay: 60, factor: 2, jitter: 0, failFastAfter: 3 },
    });
    const connectErrors = record(guard, 'connectError');
    try {
      const t0 = performance.now();
      // Short wait: gives up within its own timeout.
      const short = guard
        .read((e) => e.call('short'), { timeout: 400, waitForReady: true })
        .then(
          () => ({ error: undefined as unknown, last: undefined as unknown, at: 0 }),
          (error: unknown) => ({ error, last: lastThrown, at: performance.now() - t0 }),
        );
      // Long wait: still queued when the engine comes back.
      const long = guard.read((e) => e.call('long'), { timeout: 10_000, waitForReady: true });
      const shortOutcome = await short;
      expect(shortOutcome.error).toBeInstanceOf(EngineUnavailableError);
      expect((shortOutcome.error as Error).cause).toBe(shortOutcome.last);
      expect((shortOutcome.error as EngineUnavailableError).attempts).toBeGreaterThanOrEqual(3);
      expect(shortOutcome.at).toBeGreaterThanOrEqual(350);
      expect(shortOutcome.at).toBeLessThan(2_000);

      // Down: a new caller fails fast, with the last cause.
      await waitFor(() => guard.status().reconnect.failures >= 3, 5_000, '3 failures');
      const t1 = performance.now();
      const fast = await errorOf(guard.read((e) => e.call('fast')));
      expect(performance.now() - t1).toBeLessThan(50);
      expect(fast).toBeInstanceOf(EngineUnavailableError);
      expect((fast as Error).cause).toBeInstanceOf(FakeEngineConnectionError);
      expect((fast as Error).cause).toBe(lastThrown);
      expect(guard.status().state).toBe('degraded');
      expect(connectErrors.length).toBeGreaterThanOrEqual(3);
      expect(connectErrors[0]).toMatchObject({ attempts: 1, retryInMs: 20 });
      expect(connectErrors[1]).toMatchObject({ attempts: 2, retryInMs: 40 });

      // Back up: the background retry succeeds, the long waiter and new reads go through.
      down = false;
      await expect(long).resolves.toBe('long');
      await expect(guard.read((e) => e.call('again'))).resolves.toBe('again');
      expect(guard.status()).toMatchObject({ state: 'ready', reconnect: { failures: 0 } });
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('a background retry revives the guard while nobody waits', async () => {
    const factory = new FakeEngineFactory();
    factory.failNextCreates(5);
    const guard = fakeGuard(factory, {
      reconnect: { initialDelay: 10, maxDelay: 40, jitter: 0, failFastAfter: 2 },
    });
    try {
      const first = await errorOf(guard.read((e) => e.call(1), { timeout: 100 }));
      expect(first).toBeInstanceOf(EngineUnavailableError);
      expect((first as Error).cause).toBeInstanceOf(FakeEngineConnectionError);
      // Nobody waits now; retries continue in the background until the 6th create succeeds.
      await waitFor(() => factory.created.length === 1, 5_000, 'a background create');
      await expect(guard.read((e) => e.call(2))).resolves.toBe(2);
      expect(factory.attempts).toBe(6);
    } finally {
      await guard.close();
    }
  }, 30_000);
});

// ---------------------------------------------------------------------------------------------

describe('e. fatal errors', () => {
  it('retires the handle on a fatal error and gives the caller the original error', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory);
    const replaced = record(guard, 'replace');
    try {
      const generation = await guard.read((_e, ctx) => ctx.generation);
      let thrown: unknown;
      factory.created[0]!.nextCall('fatal');
      const error = await errorOf(
        guard.read((e) =>
          e.call('x').catch((err: unknown) => {
            thrown = err;
            throw err;
          }),
        ),
      );
      expect(error).toBeInstanceOf(FakeEngineConnectionError);
      expect(error).toBe(thrown);
      expect(replaced).toEqual([{ generation, reason: 'fatal', cause: error }]);
      const next = await guard.read((_e, ctx) => ctx.generation);
      expect(next).toBeGreaterThan(generation);
      expect(factory.created).toHaveLength(2);
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('keeps the handle on a non-fatal error', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory);
    try {
      const generation = await guard.read((_e, ctx) => ctx.generation);
      factory.created[0]!.nextCall('fail');
      await expect(guard.read((e) => e.call('x'))).rejects.toBeInstanceOf(FakeEngineError);
      await expect(guard.read((_e, ctx) => ctx.generation)).resolves.toBe(generation);
      expect(factory.created).toHaveLength(1);
      expect(guard.status().counters.replacements).toBe(0);
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('does not treat cancellation as fatal, even with an isFatal that says yes to anything', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { isFatal: () => true });
    try {
      const generation = await guard.read((_e, ctx) => ctx.generation);
      for (const reason of [undefined, new Error('custom reason')]) {
        const ac = new AbortController();
        const op = guard.read((e, ctx) => e.call('x', { signal: ctx.signal, duration: 10_000 }), {
          signal: ac.signal,
        });
        await waitFor(() => guard.status().running.length === 1, 5_000, 'the op');
        ac.abort(reason);
        const error = await errorOf(op);
        expect(error).toBe(ac.signal.reason);
        await waitFor(() => guard.status().running.length === 0, 5_000, 'the op to end');
      }
      await expect(guard.read((_e, ctx) => ctx.generation)).resolves.toBe(generation);
      expect(guard.status().counters.replacements).toBe(0);
      expect(factory.created).toHaveLength(1);
    } finally {
      await guard.close();
    }
  }, 30_000);
});

// ---------------------------------------------------------------------------------------------

describe('f. re-entrancy', () => {
  it('joins nested read-in-read, read-in-write and write-in-write on the same handle', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { pool: 2 });
    try {
      const rr = await guard.read(async (outer, octx) => {
        const inner = await guard.read((e, ctx) => ({ e, id: ctx.id, gen: ctx.generation }));
        return {
          same: inner.e === outer,
          id: inner.id === octx.id,
          gen: inner.gen === octx.generation,
        };
      });
      expect(rr).toEqual({ same: true, id: true, gen: true });
      const rw = await guard.write(async (outer, octx) => {
        const inner = await guard.read((e, ctx) => ({ e, id: ctx.id }));
        return { same: inner.e === outer, id: inner.id === octx.id };
      });
      expect(rw).toEqual({ same: true, id: true });
      const ww = await guard.write(async (outer, octx) => {
        const inner = await guard.write((e, ctx) => ({ e, id: ctx.id }));
        return { same: inner.e === outer, id: inner.id === octx.id };
      });
      expect(ww).toEqual({ same: true, id: true });
      // Sequential, each joined: one handle was ever needed.
      expect(factory.created).toHaveLength(1);
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('does not deadlock on a nested op with a writer queued behind the outer one', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { pool: 2 });
    try {
      for (const outerKind of ['read', 'write'] as const) {
        for (const innerKind of outerKind === 'read'
          ? (['read'] as const)
          : (['read', 'write'] as const)) {
          let release!: () => void;
          const gate = new Promise<void>((resolve) => {
            release = resolve;
          });
          const outerFn = async (engine: FakeEngine): Promise<string> => {
            await gate;
            const inner =
              innerKind === 'read'
                ? await guard.read((e) => e === engine)
                : await guard.write((e) => e === engine);
            return inner ? 'joined' : 'other handle';
          };
          const outer = outerKind === 'read' ? guard.read(outerFn) : guard.write(outerFn);
          await waitFor(() => guard.status().running.length === 1, 5_000, 'the outer op');
          // A writer from outside queues behind the outer op.
          const writer = guard.write((e) => e.call('queued writer'));
          expect(guard.status().queue.writers).toBe(1);
          release();
          const t0 = performance.now();
          await expect(outer).resolves.toBe('joined');
          expect(performance.now() - t0).toBeLessThan(1_000);
          await expect(writer).resolves.toBe('queued writer');
        }
      }
      expect(factory.created.length).toBeLessThanOrEqual(2);
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('rejects a write inside a read with DeadlockError at once', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory);
    try {
      const outcome = await guard.read(async () => {
        const t0 = performance.now();
        const error = await errorOf(guard.write((e) => e.call('never')));
        return { error, ms: performance.now() - t0 };
      });
      expect(outcome.error).toBeInstanceOf(DeadlockError);
      expect((outcome.error as DeadlockError).code).toBe('ERR_DEADLOCK');
      expect(outcome.ms).toBeLessThan(50);
      // The guard is fine afterwards.
      await expect(guard.write((e) => e.call('w'))).resolves.toBe('w');
    } finally {
      await guard.close();
    }
  }, 30_000);
});

// ---------------------------------------------------------------------------------------------

describe('g. caller abort', () => {
  it('removes a caller queued for the lock at once', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { pool: 1 });
    try {
      const holder = guard.write((e) => e.call('holder', { duration: 300 }));
      await waitFor(() => guard.status().running.length === 1, 5_000, 'the holder');
      const ac = new AbortController();
      const reason = new Error('not needed any more');
      const waiting = errorOf(guard.read((e) => e.call('r'), { signal: ac.signal }));
      expect(guard.status().queue.readers).toBe(1);
      ac.abort(reason);
      expect(guard.status().queue.readers).toBe(0);
      await expect(waiting).resolves.toBe(reason);
      expect(guard.status().counters.aborts).toBe(1);
      await expect(holder).resolves.toBe('holder');
      expect(factory.created[0]!.calls).toBe(1); // the aborted read never ran
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('removes a caller waiting for a handle at once', async () => {
    const factory = new FakeEngineFactory({ createDuration: 300 });
    const guard = fakeGuard(factory, { pool: 1 });
    try {
      const ac = new AbortController();
      const waiting = errorOf(guard.read((e) => e.call('r'), { signal: ac.signal }));
      await waitFor(() => guard.status().queue.forHandle === 1, 5_000, 'the handle waiter');
      ac.abort();
      expect(guard.status().queue.forHandle).toBe(0);
      expect(await waiting).toBe(ac.signal.reason);
      // The handle opened for it is not leaked: it serves the next caller.
      await expect(guard.read((e) => e.call('next'))).resolves.toBe('next');
      expect(factory.created).toHaveLength(1);
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('aborts ctx.signal and sends cancel for a running op; keeps the handle when the engine acknowledges', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { pool: 1 });
    const replaced = record(guard, 'replace');
    try {
      const generation = await guard.read((_e, ctx) => ctx.generation);
      const engine = factory.created[0]!;
      const ac = new AbortController();
      const reason = new Error('user pressed stop');
      let seenCtx: OpContext | undefined;
      let fnError: unknown;
      // The engine call does not take the signal: only the server-side cancel can stop it.
      const op = guard.read(
        (e, ctx) => {
          seenCtx = ctx;
          return e.call('x', { duration: 10_000 }).catch((err: unknown) => {
            fnError = err;
            throw err;
          });
        },
        { signal: ac.signal },
      );
      await waitFor(() => guard.status().running.length === 1, 5_000, 'the op');
      const t0 = performance.now();
      ac.abort(reason);
      await expect(op).rejects.toBe(reason);
      expect(performance.now() - t0).toBeLessThan(100);
      expect(seenCtx?.signal.aborted).toBe(true);
      expect(seenCtx?.signal.reason).toBe(reason);
      await waitFor(() => guard.status().running.length === 0, 5_000, 'the op to wind down');
      expect(fnError).toBeInstanceOf(FakeEngineCancelledError);
      expect(engine.cancels).toBe(1);
      expect(guard.status().counters).toMatchObject({ cancels: 1, aborts: 1, replacements: 0 });
      expect(replaced).toEqual([]);
      await expect(guard.read((_e, ctx) => ctx.generation)).resolves.toBe(generation);
      expect(factory.created).toHaveLength(1);
    } finally {
      await guard.close();
    }
  }, 30_000);

  it('abandons an op that ignores abort after cancelTimeout and replaces its handle', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { pool: 1, cancelTimeout: 200 });
    const abandoned = record(guard, 'abandon');
    const replaced = record(guard, 'replace');
    try {
      const generation = await guard.read((_e, ctx) => ctx.generation);
      const engine = factory.created[0]!;
      engine.nextCall('ignore-abort');
      const ac = new AbortController();
      const reason = new Error('stop');
      const op = guard.read((e, ctx) => e.call('x', { signal: ctx.signal, duration: 10_000 }), {
        signal: ac.signal,
        label: 'stubborn',
      });
      await waitFor(() => guard.status().running.length === 1, 5_000, 'the op');
      ac.abort(reason);
      await expect(op).rejects.toBe(reason);
      expect(guard.status().running[0]?.phase).toBe('cancelling');
      await waitFor(() => abandoned.length === 1, 3_000, 'the abandon event');
      expect(abandoned[0]).toMatchObject({
        op: { kind: 'read', label: 'stubborn', generation },
        reason,
      });
      expect(replaced).toEqual([{ generation, reason: 'abandoned', cause: reason }]);
      const next = await guard.read((_e, ctx) => ctx.generation);
      expect(next).toBeGreaterThan(generation);
      await waitFor(() => factory.destroyed.includes(engine), 3_000, 'the old engine destroyed');
    } finally {
      await guard.close();
    }
  }, 30_000);
});

// ---------------------------------------------------------------------------------------------

describe('h. close()', () => {
  it('rejects queued ops, aborts running ones, destroys handles and is idempotent', async () => {
    const before = activeTimeouts();
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, {
      pool: 1,
      closeTimeout: 1_000,
      destroyTimeout: 300,
      cancelTimeout: 300,
    });
    await guard.read((e) => e.call('warm'));
    // A running op that ignores its signal and never returns.
    factory.created[0]!.nextCall('ignore-abort');
    let runningCtx: OpContext | undefined;
    const running = guard.read((e, ctx) => {
      runningCtx = ctx;
      return e.call('x', { signal: ctx.signal, duration: 60_000 });
    });
    await waitFor(() => guard.status().running.length === 1, 5_000, 'the running op');
    const runningError = errorOf(running).then((error) => ({ error, at: performance.now() }));
    const queuedOps = [
      guard.read((e) => e.call('q1')),
      guard.write((e) => e.call('q2')),
      guard.read((e) => e.call('q3')),
    ].map(errorOf);
    expect(guard.status().queue).toMatchObject({ readers: 2, writers: 1 });

    const t0 = performance.now();
    const closing = guard.close();
    expect(guard.close()).toBe(closing);
    expect(guard[Symbol.asyncDispose]()).toBe(closing);
    expect(guard.closed).toBe(true);

    const { error, at } = await runningError;
    expect(error).toBeInstanceOf(GuardClosedError);
    expect(at - t0).toBeLessThan(100);
    expect(runningCtx?.signal.aborted).toBe(true);
    expect(runningCtx?.signal.reason).toBeInstanceOf(GuardClosedError);
    for (const queuedError of await Promise.all(queuedOps)) {
      expect(queuedError).toBeInstanceOf(GuardClosedError);
    }
    await closing;
    expect(performance.now() - t0).toBeLessThan(1_000 + 500);
    expect(factory.live).toBe(0);
    expect(guard.status()).toMatchObject({
      state: 'closed',
      running: [],
      queue: { readers: 0, writers: 0, forHandle: 0 },
      handles: { total: 0 },
    });
    await expect(guard.read((e) => e.call('late'))).rejects.toBeInstanceOf(GuardClosedError);
    await expect(guard.write((e) => e.call('late'))).rejects.toBeInstanceOf(GuardClosedError);
    await expect(guard.close()).resolves.toBeUndefined();
    // Nothing of the guard keeps the process alive.
    await waitFor(() => activeTimeouts() <= before, 2_000, 'the guard timers to be gone');
  }, 30_000);

  it('bounds a create that never settles', async () => {
    const before = activeTimeouts();
    let creates = 0;
    const guard = new EngineGuard<FakeEngine>({
      create: () => {
        creates++;
        return new Promise<FakeEngine>(() => {}); // ignores its signal too
      },
      closeTimeout: 300,
    });
    const waiting = errorOf(guard.read((e) => e.call('x')));
    await waitFor(() => creates === 1, 5_000, 'the create');
    expect(guard.status().handles.connecting).toBe(1);
    const t0 = performance.now();
    await guard.close();
    expect(performance.now() - t0).toBeLessThan(300 + 500);
    expect(await waiting).toBeInstanceOf(GuardClosedError);
    expect(guard.status().handles.connecting).toBe(0);
    await waitFor(() => activeTimeouts() <= before, 2_000, 'the guard timers to be gone');
  }, 30_000);

  it('bounds a destroy that never settles', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, {
      destroy: () => new Promise<void>(() => {}),
      destroyTimeout: 200,
      closeTimeout: 2_000,
    });
    await guard.read((e) => e.call('warm'));
    const t0 = performance.now();
    await guard.close();
    expect(performance.now() - t0).toBeLessThan(200 + 500);
  }, 30_000);
});

// ---------------------------------------------------------------------------------------------

describe('i. cached value', () => {
  it('serves without waiting, refreshes in the background, single-flight, keeps the last good value', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { liveness: { interval: 50, timeout: 50, failures: 2 } });
    try {
      let loads = 0;
      let failNext = false;
      const cache = guard.cache(
        (e, ctx) => {
          loads++;
          if (failNext) {
            failNext = false;
            e.nextCall('fail');
          }
          return e.call(loads, { signal: ctx.signal });
        },
        { maxAge: 100 },
      );
      // First get: nothing yet, a refresh starts, nothing waits.
      const first = cache.get();
      expect(first).toMatchObject({ value: undefined, stale: true, refreshing: true });
      await waitFor(() => cache.peek().value === 1, 5_000, 'the first load');
      expect(cache.get()).toMatchObject({ value: 1, stale: false, refreshing: false });
      expect(loads).toBe(1);

      // A failed refresh keeps the last good value and reports the error.
      await sleep(120);
      failNext = true;
      cache.get();
      await waitFor(() => !cache.peek().refreshing, 5_000, 'the failed refresh');
      expect(cache.peek()).toMatchObject({ value: 1, stale: true });
      expect(cache.peek().error).toBeInstanceOf(FakeEngineError);

      // Wedge the engine: get() still answers at once with the stale value.
      factory.created[0]!.wedge();
      const loadsBefore = loads;
      const t0 = performance.now();
      const snapshots = Array.from({ length: 20 }, () => cache.get());
      expect(performance.now() - t0).toBeLessThan(20);
      for (const snapshot of snapshots) {
        expect(snapshot).toMatchObject({ value: 1, stale: true, refreshing: true });
      }
      // Single-flight: 20 gets, one refresh; refresh() joins it.
      expect(cache.refresh()).toBe(cache.refresh());
      await waitFor(() => loads === loadsBefore + 1, 5_000, 'the refresh to start');
      await sleep(30);
      expect(loads).toBe(loadsBefore + 1);
      // The wedged refresh is convicted; the last good value stays.
      await waitFor(() => !cache.peek().refreshing, 5_000, 'the wedged refresh to end');
      expect(cache.peek().value).toBe(1);
      expect(cache.peek().error).toBeInstanceOf(EngineStalledError);

      // A new handle: the next refresh succeeds and clears the error.
      cache.get();
      await waitFor(
        () => cache.peek().value === loads && !cache.peek().refreshing,
        5_000,
        'recovery',
      );
      expect(cache.peek()).toMatchObject({ stale: false, error: undefined });
      expect(cache.peek().value).toBeGreaterThan(1);
    } finally {
      await guard.close();
    }
  }, 30_000);
});

// ---------------------------------------------------------------------------------------------

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
      expect(seen.connect).toEqual([{ generation }]);
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
      expect(events).toContainEqual({ guard: 'traced', type: 'connect', event: { generation: 2 } });

      const good = trace.filter((t) => t.ctx.label === 'good');
      expect(good.map((t) => t.phase)).toEqual(
        expect.arrayContaining(['start', 'end', 'asyncStart', 'asyncEnd']),
      );
      expect(good.map((t) => t.phase)).not.toContain('error');
      expect(good.find((t) => t.phase === 'start')?.ctx).toMatchObject({
        guard: 'traced',
        kind: 'read',
        label: 'good',
        id: expect.any(Number),
      });
      expect(good.find((t) => t.phase === 'asyncEnd')?.ctx.result).toBe('ok');
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

// ---------------------------------------------------------------------------------------------

describe('k. bad input', () => {
  const create = () => new FakeEngine();
  const cases: [string, unknown, ErrorConstructor, RegExp][] = [
    ['pool 0', { create, pool: 0 }, RangeError, /"pool"/],
    ['pool 1.5', { create, pool: 1.5 }, RangeError, /"pool"/],
    ['pool "2"', { create, pool: '2' }, TypeError, /"pool"/],
    [
      'liveness.interval -1',
      { create, liveness: { interval: -1 } },
      RangeError,
      /"liveness\.interval"/,
    ],
    ['liveness.timeout 0', { create, liveness: { timeout: 0 } }, RangeError, /"liveness\.timeout"/],
    [
      'liveness.failures 0',
      { create, liveness: { failures: 0 } },
      RangeError,
      /"liveness\.failures"/,
    ],
    ['liveness "fast"', { create, liveness: 'fast' }, TypeError, /"liveness"/],
    [
      'liveness.pauseThreshold NaN',
      { create, liveness: { pauseThreshold: Number.NaN } },
      TypeError,
      /"liveness\.pauseThreshold"/,
    ],
    [
      'liveness.idleCheckAfter -1 (with a probe)',
      { create, probe: async () => {}, liveness: { idleCheckAfter: -1 } },
      RangeError,
      /"liveness\.idleCheckAfter"/,
    ],
    [
      'liveness.idleCheckAfter -1 (without a probe)',
      { create, liveness: { idleCheckAfter: -1 } },
      RangeError,
      /"liveness\.idleCheckAfter"/,
    ],
    ['reconnect.jitter 2', { create, reconnect: { jitter: 2 } }, RangeError, /"reconnect\.jitter"/],
    [
      'reconnect.factor 0.5',
      { create, reconnect: { factor: 0.5 } },
      RangeError,
      /"reconnect\.factor"/,
    ],
    [
      'reconnect.initialDelay -5',
      { create, reconnect: { initialDelay: -5 } },
      RangeError,
      /"reconnect\.initialDelay"/,
    ],
    [
      'reconnect.failFastAfter 0',
      { create, reconnect: { failFastAfter: 0 } },
      RangeError,
      /"reconnect\.failFastAfter"/,
    ],
    ['reconnect 3', { create, reconnect: 3 }, TypeError, /"reconnect"/],
    ['create missing', {}, TypeError, /"create"/],
    ['create not a function', { create: 'connect' }, TypeError, /"create"/],
    ['destroy not a function', { create, destroy: 1 }, TypeError, /"destroy"/],
    ['setup not a function', { create, setup: {} }, TypeError, /"setup"/],
    ['probe not a function', { create, probe: true }, TypeError, /"probe"/],
    ['cancel not a function', { create, cancel: 'x' }, TypeError, /"cancel"/],
    ['isFatal not a function', { create, isFatal: 0 }, TypeError, /"isFatal"/],
    ['acquireTimeout NaN', { create, acquireTimeout: Number.NaN }, TypeError, /"acquireTimeout"/],
    ['acquireTimeout -1', { create, acquireTimeout: -1 }, RangeError, /"acquireTimeout"/],
    ['cancelTimeout 0', { create, cancelTimeout: 0 }, RangeError, /"cancelTimeout"/],
    ['closeTimeout Infinity', { create, closeTimeout: Infinity }, RangeError, /"closeTimeout"/],
    ['connectTimeout "1s"', { create, connectTimeout: '1s' }, TypeError, /"connectTimeout"/],
    ['destroyTimeout 2**31', { create, destroyTimeout: 2 ** 31 }, RangeError, /"destroyTimeout"/],
    ['maxQueue -1', { create, maxQueue: -1 }, RangeError, /"maxQueue"/],
    ['name 5', { create, name: 5 }, TypeError, /"name"/],
  ];
  for (const [title, options, type, message] of cases) {
    it(`throws ${type.name} for ${title}`, () => {
      expect(() => new EngineGuard(options as Options)).toThrow(type);
      expect(() => new EngineGuard(options as Options)).toThrow(message);
    });
  }

  it('throws TypeError for options that are not an object', () => {
    expect(() => new EngineGuard(null as unknown as Options)).toThrow(TypeError);
    expect(() => new EngineGuard(undefined as unknown as Options)).toThrow(/create/);
  });

  it('accepts valid edge values', async () => {
    const guard = new EngineGuard<FakeEngine>({
      create,
      pool: 1,
      liveness: false,
      maxQueue: Infinity,
      acquireTimeout: 0,
      reconnect: { jitter: 0, factor: 1, initialDelay: 0 },
    });
    await guard.close();
  });

  it('throws at the call for invalid read/write/cache/on arguments', async () => {
    const guard = new EngineGuard<FakeEngine>({ create });
    try {
      const bad: [string, () => unknown, ErrorConstructor, RegExp][] = [
        ['read(123)', () => guard.read(123 as never), TypeError, /"fn"/],
        ['write(undefined)', () => guard.write(undefined as never), TypeError, /"fn"/],
        ['read options "x"', () => guard.read(() => 1, 'x' as never), TypeError, /options/],
        [
          'read signal {}',
          () => guard.read(() => 1, { signal: {} as AbortSignal }),
          TypeError,
          /"signal"/,
        ],
        ['read timeout -1', () => guard.read(() => 1, { timeout: -1 }), RangeError, /"timeout"/],
        [
          'write timeout NaN',
          () => guard.write(() => 1, { timeout: Number.NaN }),
          TypeError,
          /"timeout"/,
        ],
        ['write label 7', () => guard.write(() => 1, { label: 7 as never }), TypeError, /"label"/],
        ['cache(null)', () => guard.cache(null as never), TypeError, /"loader"/],
        ['cache maxAge -1', () => guard.cache(() => 1, { maxAge: -1 }), RangeError, /"maxAge"/],
        ['on(stall, 1)', () => guard.on('stall', 1 as never), TypeError, /listener/],
      ];
      for (const [title, call, type, message] of bad) {
        let thrown: unknown;
        try {
          const result = call();
          // A rejected promise instead of a throw would be a failure too.
          if (result instanceof Promise) result.catch(() => {});
        } catch (error) {
          thrown = error;
        }
        expect(thrown, title).toBeInstanceOf(type);
        expect((thrown as Error).message, title).toMatch(message);
      }
      // Nothing was queued or run by the bad calls.
      expect(guard.status().counters.ops).toBe(0);
      expect(queued(guard)).toBe(0);
    } finally {
      await guard.close();
    }
  });
});
