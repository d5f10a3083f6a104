/**
 * The kit of the fault scenarios against the real PostgreSQL through a FaultProxy
 * (test/integration/pg-faults*.test.ts), guarded with the PostgreSQL recipe
 * (src/adapters/pg.ts, engine-guard/pg); its generic helpers (settle, waitFor, activity, viaProxy) also
 * serve test/adapters/pg*.test.ts.
 *
 *   const k = kit(); // everything it opens is closed when the test finishes
 *   const { proxy, guard } = await k.proxiedGuard();
 *   proxy.blackhole();
 *   const outcome = await settle(readOne(guard));
 *
 * Liveness is { interval: 250, timeout: 250, failures: 2 }: a silent op whose engine stopped
 * answering is convicted at most interval × failures + timeout = 750 ms after its last sign of
 * life. Assertions allow a generous margin on top for this noisy machine.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type pg from 'pg';
import { onTestFinished } from 'vitest';
import { type PgHandle, pgGuardOptions, pgQuery } from '../../src/adapters/pg.js';
import { EngineGuard, type EngineGuardOptions, type OpOptions } from '../../src/index.js';
import { FaultProxy } from '../../src/testing/index.js';
import { adminQuery, clientConfig, pgConfig, resumeBackend, suspendBackend } from './pg.js';
import { type PgCluster, startPgCluster } from './pg-cluster.js';

export type PgOptions = EngineGuardOptions<PgHandle>;

export const LIVENESS = { interval: 250, timeout: 250, failures: 2 } as const;
/** interval × failures + timeout */
export const BOUND = LIVENESS.interval * LIVENESS.failures + LIVENESS.timeout;
export const MARGIN = 3_000;
/**
 * A status() call must answer at once, whatever the engine does. status() is synchronous, so it
 * cannot wait on the engine at all; what the samplers prove is that it kept answering (many
 * samples) while a handle was wedged. This bound only catches a call that does real work per
 * sample; a single sample on a shared 2-core machine can take a few ms of GC or preemption
 * (6.6 ms seen under load), so the bound is generous. Its speed is measured in `npm run bench`.
 */
export const STATUS_MAX_MS = 50;
export const TEST_TIMEOUT = 30_000;

/** Everything a test opens, closed when it finishes, whatever happens. */
export interface Kit {
  proxy(target?: { host: string; port: number }): Promise<FaultProxy>;
  guard(options: PgOptions): EngineGuard<PgHandle>;
  /** A proxy to the shared cluster and a guard (the test recipe options) connecting through it. */
  proxiedGuard(
    overrides?: Partial<PgOptions>,
  ): Promise<{ proxy: FaultProxy; guard: EngineGuard<PgHandle> }>;
  /** The same through a cluster of the test's own (which it may stop, restart or freeze). */
  clusterGuard(
    overrides?: Partial<PgOptions>,
  ): Promise<{ cluster: PgCluster; proxy: FaultProxy; guard: EngineGuard<PgHandle> }>;
  /** Two proxies and a guard of `pool` handles: generation 1 through A, later ones through B. */
  twoRouteGuard(
    pool: number,
  ): Promise<{ proxyA: FaultProxy; proxyB: FaultProxy; guard: EngineGuard<PgHandle> }>;
  suspend(pid: number): void;
  cluster(): Promise<PgCluster>;
}

/** A new kit for the current test: call it inside the test. */
export function kit(): Kit {
  const proxies: FaultProxy[] = [];
  const guards: EngineGuard<PgHandle>[] = [];
  const suspended: number[] = [];
  const clusters: PgCluster[] = [];
  onTestFinished(async () => {
    for (const pid of suspended) resumeBackend(pid);
    // Proxies first: whatever still hangs on a blackholed link fails at once.
    await Promise.all(proxies.map((proxy) => proxy.close()));
    await Promise.all(guards.map((guard) => guard.close()));
    for (const cluster of clusters) await cluster.stop();
  });
  const k: Kit = {
    async proxy(target = pgConfig()) {
      const proxy = await FaultProxy.start({ target: { host: target.host, port: target.port } });
      proxies.push(proxy);
      return proxy;
    },
    guard(options) {
      const guard = new EngineGuard(options);
      guards.push(guard);
      return guard;
    },
    async proxiedGuard(overrides = {}) {
      const proxy = await k.proxy();
      return { proxy, guard: k.guard(pgOptions(viaProxy(proxy), overrides)) };
    },
    async clusterGuard(overrides = {}) {
      const cluster = await k.cluster();
      const proxy = await k.proxy(cluster);
      return { cluster, proxy, guard: k.guard(pgOptions(viaProxy(proxy), overrides)) };
    },
    async twoRouteGuard(pool) {
      const proxyA = await k.proxy();
      const proxyB = await k.proxy();
      return { proxyA, proxyB, guard: k.guard({ ...twoRoutes(proxyA, proxyB), pool }) };
    },
    suspend(pid) {
      suspended.push(pid);
      suspendBackend(pid);
    },
    async cluster() {
      const cluster = await startPgCluster();
      clusters.push(cluster);
      return cluster;
    },
  };
  return k;
}

/** Client options for the shared cluster, reached through `proxy`. */
export const viaProxy = (proxy: FaultProxy, extra: pg.ClientConfig = {}): pg.ClientConfig =>
  clientConfig({ host: proxy.host, port: proxy.port, ...extra });

/** The recipe with the test liveness settings and short connect/reconnect bounds. */
export function pgOptions(config: pg.ClientConfig, overrides: Partial<PgOptions> = {}): PgOptions {
  return pgGuardOptions(
    { config },
    {
      liveness: LIVENESS,
      connectTimeout: 1_000,
      reconnect: { initialDelay: 50, maxDelay: 500 },
      ...overrides,
    },
  );
}

/** Generation 1 through proxy A, every later generation through proxy B. */
function twoRoutes(a: FaultProxy, b: FaultProxy, overrides: Partial<PgOptions> = {}): PgOptions {
  const viaA = pgOptions(viaProxy(a), overrides);
  const viaB = pgOptions(viaProxy(b));
  return {
    ...viaA,
    create: (ctx) => (ctx.generation === 1 ? viaA.create(ctx) : viaB.create(ctx)),
  };
}

/** A read of one value; returns it with the op's generation. */
export async function readOne(
  guard: EngineGuard<PgHandle>,
  sql = 'SELECT 1 AS v',
  options?: OpOptions,
): Promise<{ v: unknown; generation: number; pid: number }> {
  return guard.read(async (handle, ctx) => {
    const { rows } = await pgQuery<{ v: unknown }>(handle, ctx, sql);
    return { v: rows[0]?.v, generation: ctx.generation, pid: handle.pid };
  }, options);
}

/** The same read on two handles at once (each query must keep its handle busy a while). */
export function readTwice(guard: EngineGuard<PgHandle>, sql: string) {
  return Promise.all([readOne(guard, sql), readOne(guard, sql)]);
}

/** A promise's outcome, never a rejection, with the moment it settled. */
export function settle<T>(
  promise: Promise<T>,
): Promise<{ ok: true; value: T; at: number } | { ok: false; error: unknown; at: number }> {
  return promise.then(
    (value) => ({ ok: true as const, value, at: performance.now() }),
    (error: unknown) => ({ ok: false as const, error, at: performance.now() }),
  );
}

/** Calls status() every few ms and records how long each call took. */
export function sampleStatus(guard: EngineGuard<PgHandle>, everyMs = 5) {
  const durations: number[] = [];
  const timer = setInterval(() => {
    const started = performance.now();
    guard.status();
    durations.push(performance.now() - started);
  }, everyMs);
  return {
    stop() {
      clearInterval(timer);
      return { samples: durations.length, maxMs: Math.max(0, ...durations) };
    },
  };
}

/** Checks `condition` every `everyMs` until it holds; throws after `timeoutMs`. */
export async function waitFor(
  condition: () => Promise<boolean> | boolean,
  timeoutMs: number,
  what: string,
  everyMs = 20,
): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await condition())) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}

/** Rejects if `promise` has not settled within `ms`: every promise must settle. */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
  });
  return Promise.race([promise, hung]).finally(() => clearTimeout(timer));
}

/** State of a backend in pg_stat_activity (undefined when it is gone). */
export async function activity(
  pid: number,
): Promise<{ state: string | null; query: string } | undefined> {
  const { rows } = await adminQuery<{ state: string | null; query: string }>(
    'SELECT state, query FROM pg_stat_activity WHERE pid = $1',
    [pid],
  );
  return rows[0];
}

/** A table for the current test, dropped when it finishes. */
export async function scratchTable(prefix: string): Promise<string> {
  const name = `${prefix}_${process.pid}_${Date.now()}_${Math.floor(Math.random() * 1e6)}`;
  await adminQuery(`CREATE TABLE ${name} (id int PRIMARY KEY)`);
  onTestFinished(async () => {
    await adminQuery(`DROP TABLE IF EXISTS ${name}`);
  });
  return name;
}
