/**
 * EngineGuard on the FakeEngine (no real server). Waiter churn under random create/setup/destroy faults (fast-check).
 * Timing margins are generous on purpose (noisy 2-core machines); assertions are on behaviour.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  EngineGuard,
  EngineStalledError,
  EngineUnavailableError,
  LockTimeoutError,
  type OpContext,
} from '../../src/index.js';
import {
  FakeEngine,
  FakeEngineConnectionError,
  FakeEngineError,
  FakeEngineFactory,
} from '../../src/testing/index.js';
import { fakeGuard, type FakeGuard as Guard, queued, waitFor } from '../support/guard.js';

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

  it('destroys the engine of a setup that never settles, destroyTimeout after connectTimeout gave up on it', async () => {
    const factory = new FakeEngineFactory();
    let setups = 0;
    const guard = new EngineGuard<FakeEngine>({
      create: ({ signal }) => factory.create({ signal }),
      destroy: (engine) => factory.destroy(engine),
      // The first setup hangs for good (a bootstrap query on a dead link), later ones work.
      setup: () => (++setups === 1 ? new Promise<void>(() => {}) : undefined),
      connectTimeout: 200,
      // How long the destroy waits for a given-up setup still running on the engine.
      destroyTimeout: 500,
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
