/**
 * EngineGuard on a real PostgreSQL, side by side with `pg.Pool` and with the design it replaces
 * (one `pg.Client` behind one async-mutex `Mutex`). Each section starts its own throwaway cluster
 * on a free loopback port, as the tests do (test/support/pg-cluster.ts), and stops it at the end.
 * Run through `npm run bench` (`npm run bench -- pg` for these sections only); see bench/run.ts.
 */
import { Mutex } from 'async-mutex';
import pg from 'pg';
import { type PgHandle, pgGuardOptions, pgQuery, pgReadOnly } from '../src/adapters/pg.js';
import { DEFAULT_LIVENESS, EngineGuard, type OpContext } from '../src/index.js';
import { type PgCluster, startPgCluster } from '../test/support/pg-cluster.js';
import {
  type Check,
  driveClosedLoop,
  fmtInt,
  fmtMs,
  fmtRatio,
  fmtSpread,
  fmtUs,
  median,
  nowNs,
  percentile,
  type Section,
  sleep,
} from './harness.js';

/** Engine handles of the guard, connections of `pg.Pool`. */
export const POOL = 4;
export const SHORT_SQL = 'select 1';

/** What a contender hands the timing loops: one query, and how to let go of its connections. */
export interface Client {
  query(sql: string): Promise<unknown>;
  close(): Promise<void>;
}

/** One way of sending queries from many callers to one PostgreSQL. */
export interface PgContender {
  name: string;
  open(config: pg.ClientConfig): Promise<Client>;
}

/**
 * The guard built from engine-guard/pg, each query run on a handle by `run`. The adapter's
 * `reset` is off unless `reset` says otherwise: `pg.Pool` resets nothing either, and the cost of
 * the reset has its own section.
 */
function guardWith(
  name: string,
  run: (handle: PgHandle, ctx: OpContext, sql: string) => Promise<unknown>,
  reset: 'default' | 'off' = 'off',
): PgContender {
  return {
    name,
    async open(config) {
      const guard = new EngineGuard(
        pgGuardOptions(
          { config },
          { pool: POOL, name: 'bench-pg', ...(reset === 'off' ? { reset: undefined } : {}) },
        ),
      );
      return {
        query: (sql) => guard.read((handle, ctx) => run(handle, ctx, sql)),
        close: () => guard.close(),
      };
    },
  };
}

const guardContender = guardWith(
  `EngineGuard \`read\` + \`pgQuery\` (pool ${POOL}, liveness on: adapter defaults, reset off)`,
  (handle, ctx, sql) => pgQuery(handle, ctx, sql),
);

/** The same guard without the adapter's `pgQuery`: what the guard costs on its own. */
const bareGuardContender = guardWith(
  'same guard, `handle.client.query` instead of `pgQuery` (no abort race, no heartbeat)',
  (handle, _ctx, sql) => handle.client.query(sql),
);

function noop(): void {}

/**
 * The bare guard plus what `pgQuery` does to honour the abort: one listener on `ctx.signal`,
 * added before the query and removed after it. Each op has a fresh signal, so this is the first
 * listener on it every time.
 */
const listenerGuardContender = guardWith(
  'same guard, `handle.client.query` + one abort listener on `ctx.signal` (added, removed)',
  async (handle, ctx, sql) => {
    ctx.signal.addEventListener('abort', noop, { once: true });
    try {
      return await handle.client.query(sql);
    } finally {
      ctx.signal.removeEventListener('abort', noop);
    }
  },
);

export const poolContender: PgContender = {
  name: `\`pg.Pool\` (max ${POOL}) \`pool.query\``,
  async open(config) {
    const pool = new pg.Pool({ ...config, max: POOL });
    return { query: (sql) => pool.query(sql), close: () => pool.end() };
  },
};

const mutexContender: PgContender = {
  name: 'original design: one `pg.Client` behind one async-mutex `Mutex`',
  async open(config) {
    const client = new pg.Client(config);
    await client.connect();
    const mutex = new Mutex();
    return {
      query: (sql) => mutex.runExclusive(() => client.query(sql)),
      close: () => client.end(),
    };
  },
};

/** The liveness probe interval the adapter's guard runs with (its own, or the guard's default). */
function adapterLivenessInterval(config: pg.ClientConfig): number {
  const { liveness } = pgGuardOptions({ config });
  return (liveness === false ? undefined : liveness?.interval) ?? DEFAULT_LIVENESS.interval;
}

/** Starts a throwaway cluster, runs `body` against it, and always stops it. */
export async function withCluster<T>(body: (config: pg.ClientConfig) => Promise<T>): Promise<T> {
  const cluster: PgCluster = await startPgCluster();
  try {
    const { host, port, user, database } = cluster;
    return await body({ host, port, user, database });
  } finally {
    await cluster.stop();
  }
}

/** Opens every contender and fills its connections (`POOL` concurrent queries) before timing. */
async function openAll(contenders: readonly PgContender[], config: pg.ClientConfig) {
  const clients: Client[] = [];
  try {
    for (const c of contenders) {
      const client = await c.open(config);
      clients.push(client);
      await Promise.all(Array.from({ length: POOL }, () => client.query(SHORT_SQL)));
    }
    return clients;
  } catch (error) {
    await Promise.allSettled(clients.map((c) => c.close()));
    throw error;
  }
}

/** A target on a throughput ratio: at least `target` times. */
export function ratioCheck(name: string, ratio: number, target: number): Check {
  return { name, target: `>= ${target}x`, actual: fmtRatio(ratio), pass: ratio >= target };
}

// ---------------------------------------------------------------------------------------------
// Throughput of `select 1` by concurrency
// ---------------------------------------------------------------------------------------------

const CONCURRENCY = [1, 4, 32, 256] as const;
const THROUGHPUT_ROUNDS = 5;
const ROUND_MS = 400;
const WARMUP_MS = 300;
/** guard ÷ pg.Pool throughput wanted at every concurrency. */
const THROUGHPUT_TARGET = 0.97;

/**
 * `THROUGHPUT_ROUNDS` closed-loop rounds of `SHORT_SQL` from `callers` callers on each client,
 * after a warm-up, clients rotated each round: queries/s and Node CPU per query, per client.
 */
async function roundsOf(
  clients: readonly Client[],
  callers: number,
  rounds = THROUGHPUT_ROUNDS,
): Promise<{ rate: number[][]; cpu: number[][] }> {
  const ops = (i: number) => () => clients[i]!.query(SHORT_SQL);
  for (const [i] of clients.entries()) await driveClosedLoop(ops(i), callers, WARMUP_MS);
  const rate = clients.map(() => [] as number[]);
  const cpu = clients.map(() => [] as number[]);
  for (let round = 0; round < rounds; round++) {
    const order = clients.map((_, i) => (i + round) % clients.length);
    for (const i of order) {
      const r = await driveClosedLoop(ops(i), callers, ROUND_MS);
      rate[i]!.push(r.ops / (r.wallNs / 1e9));
      cpu[i]!.push(r.cpuUs / r.ops);
    }
  }
  return { rate, cpu };
}

/**
 * On a throwaway cluster: the rounds of {@link roundsOf} at each of `concurrency`, one table row
 * per contender (queries/s, spread, Node CPU, ratio to `pg.Pool`), and the checks `checksAt`
 * makes of each concurrency's figures: `of(contender)`, its median queries/s, and
 * `ratio(contender)`, the median over rounds of its queries/s ÷ `pg.Pool`'s in the same round
 * (paired rounds: the machine's drift between rounds cancels out, which the ratio of two
 * medians does not do). `rounds` per concurrency: {@link THROUGHPUT_ROUNDS} unless given.
 */
export function throughputTable(
  contenders: readonly PgContender[],
  concurrency: readonly number[],
  checksAt: (
    callers: number,
    of: (c: PgContender) => number,
    ratio: (c: PgContender) => number,
  ) => Check[],
  rounds = THROUGHPUT_ROUNDS,
): Promise<{ table: string[][]; checks: Check[] }> {
  return withCluster(async (config) => {
    const clients = await openAll(contenders, config);
    try {
      const table: string[][] = [
        [
          'Callers',
          'Contender',
          'queries/s (median)',
          'rounds min–max',
          'Node CPU per query',
          'vs pg.Pool',
        ],
      ];
      const checks: Check[] = [];
      for (const callers of concurrency) {
        const { rate, cpu } = await roundsOf(clients, callers, rounds);
        const medians = rate.map((xs) => median(xs));
        const of = (c: PgContender) => medians[contenders.indexOf(c)]!;
        const poolRates = rate[contenders.indexOf(poolContender)];
        const ratio = (c: PgContender): number => {
          const mine = rate[contenders.indexOf(c)]!;
          if (poolRates === undefined) return Number.NaN;
          return median(mine.map((r, round) => r / poolRates[round]!));
        };
        contenders.forEach((c, i) => {
          table.push([
            fmtInt(callers),
            c.name,
            fmtInt(medians[i]!),
            fmtSpread(rate[i]!),
            fmtUs(median(cpu[i]!) * 1e3),
            fmtRatio(ratio(c)),
          ]);
        });
        checks.push(...checksAt(callers, of, ratio));
      }
      return { table, checks };
    } finally {
      await Promise.allSettled(clients.map((c) => c.close()));
    }
  });
}

const throughput: Section = {
  title: 'PostgreSQL: `select 1` through `guard.read` vs `pg.Pool`',
  description:
    `A throwaway PostgreSQL cluster on loopback; \`${SHORT_SQL}\` from N concurrent callers ` +
    '(closed loop: each awaits its query, then sends the next) through an EngineGuard built ' +
    `from engine-guard/pg (\`pgGuardOptions\`, \`pgQuery\`, pool ${POOL}) and through ` +
    `\`pg.Pool\` with \`max\` ${POOL}, plus two rows of the same guard that take the adapter's ` +
    "per-query cost apart (see the notes). The guard's `reset` is off here (`reset: undefined`), " +
    'as `pg.Pool` resets nothing: its cost is measured in the next section. ' +
    `Each contender runs ${ROUND_MS} ms per round, ` +
    `${THROUGHPUT_ROUNDS} rounds per concurrency after a ${WARMUP_MS} ms warm-up, contenders ` +
    'rotated each round; figure = median round; "vs pg.Pool" = the median over rounds of the ' +
    "contender's queries/s ÷ `pg.Pool`'s in the same round. " +
    '"Node CPU per query" = `process.cpuUsage()` ' +
    '(user + system) of the bench process over the round ÷ queries: the driver, the guard and ' +
    'GC, not the server.',
  run: async () => {
    const { table, checks } = await throughputTable(
      [guardContender, listenerGuardContender, bareGuardContender, poolContender],
      CONCURRENCY,
      (callers, _of, ratio) =>
        (
          [
            [guardContender, 'guard + pgQuery (engine-guard/pg)'],
            [bareGuardContender, 'guard alone (bare client.query)'],
          ] as const
        ).map(([c, what]) =>
          ratioCheck(
            `${what} vs pg.Pool throughput, ${callers} caller${callers === 1 ? '' : 's'}`,
            ratio(c),
            THROUGHPUT_TARGET,
          ),
        ),
    );
    return {
      table,
      checks,
      notes: [
        '"vs pg.Pool" > 1 means more queries per second than `pg.Pool` at the same ' +
          'concurrency. Both hold 4 connections; a query waits for a free one in either.',
        "The guard's liveness watchdog is on as the adapter sets it (probe interval " +
          `${fmtInt(adapterLivenessInterval({}))} ms): every query is watched, none is ` +
          'probed (each ends long before).',
        'The target is checked twice: on the adapter path (`pgQuery`), what users run, and ' +
          'on the same guard running `handle.client.query` bare, which is what the guard ' +
          "itself costs. The gap between those two rows is the adapter's per-query cost; the " +
          'row in between shows how much of it is the one abort listener `pgQuery` adds to ' +
          "each op's fresh `ctx.signal` (the rest is its `data` listener on the socket, for " +
          'heartbeats).',
        'Shortfall on the adapter path, explained by a CPU profile of this section ' +
          '(`node --expose-gc --cpu-prof --import ./bench/built.mjs bench/run.ts "guard.read` vs"`, top ' +
          'self time): socket writes (`writeBuffer`) take about 40% of the samples for every ' +
          "contender alike; what `pgQuery` adds is the op's `AbortSignal`, made when it reads " +
          '`ctx.signal` (`createAbortSignal`, the largest frame of ours at about 2%), the ' +
          'listener it adds and removes on it, the promise that races the query against it, ' +
          'and the garbage they leave. `pg.Pool` offers no cancellation at all. A way for ' +
          "an op to be told of its abort without an `AbortSignal` (backed by the guard's own " +
          'op state) is the planned fix; the guard itself meets the target.',
      ],
    };
  },
};

// ---------------------------------------------------------------------------------------------
// What the reset between callers costs
// ---------------------------------------------------------------------------------------------

const RESET_CONCURRENCY = [1, 4, 32] as const;
/** pgReadOnly with the default reset (skipped) ÷ pgReadOnly with the reset off, wanted. */
const SKIP_TARGET = 0.9;

const onPgQuery = (handle: PgHandle, ctx: OpContext, sql: string) => pgQuery(handle, ctx, sql);
const onReadOnly = (handle: PgHandle, ctx: OpContext, sql: string) => pgReadOnly(handle, ctx, sql);
const resetPgQuery = guardWith(
  '`guard.read` + `pgQuery`, default reset (`pgReset`: one round trip after each op)',
  onPgQuery,
  'default',
);
const noResetPgQuery = guardWith('`guard.read` + `pgQuery`, `reset: undefined`', onPgQuery);
const resetReadOnly = guardWith(
  '`guard.read` + `pgReadOnly`, default reset (skipped: the ROLLBACK round trip cleans)',
  onReadOnly,
  'default',
);
const noResetReadOnly = guardWith('`guard.read` + `pgReadOnly`, `reset: undefined`', onReadOnly);

/** `pg.Pool` with a `DISCARD ALL` before each release, as PgBouncer's `server_reset_query` does. */
const discardPoolContender: PgContender = {
  name: `\`pg.Pool\` (max ${POOL}), query then \`DISCARD ALL\` before release`,
  async open(config) {
    const pool = new pg.Pool({ ...config, max: POOL });
    return {
      async query(sql) {
        const client = await pool.connect();
        try {
          const result = await client.query(sql);
          await client.query('DISCARD ALL');
          return result;
        } finally {
          client.release();
        }
      },
      close: () => pool.end(),
    };
  },
};

const resetCost: Section = {
  title: 'PostgreSQL: what the reset between callers costs',
  description:
    `\`${SHORT_SQL}\` from N concurrent callers (closed loop), as in the section above, through ` +
    `guards built from engine-guard/pg (pool ${POOL}) with the adapter's default \`reset\` ` +
    '(`pgReset`) and with `reset: undefined`, on `pgQuery` (the handle is dirty after each op: ' +
    "the reset runs, carried at the head of the next query's batch) and on `pgReadOnly` (one " +
    'batch: BEGIN READ ONLY, the statement, ROLLBACK; with the reset on, the same batch also ' +
    'drops advisory locks and prepared statements, the only state a rolled-back read-only ' +
    'transaction leaves, and the reset is skipped), next to `pg.Pool` ' +
    'and to `pg.Pool` sending `DISCARD ALL` before each release. Same rounds and figures as above.',
  run: async () => {
    const { table, checks } = await throughputTable(
      [
        resetPgQuery,
        noResetPgQuery,
        resetReadOnly,
        noResetReadOnly,
        poolContender,
        discardPoolContender,
      ],
      RESET_CONCURRENCY,
      (callers, of) => {
        const skip = of(resetReadOnly) / of(noResetReadOnly);
        const always = of(resetPgQuery) / of(noResetPgQuery);
        return [
          {
            name: `pgReadOnly: reset on (skipped) vs off, ${callers} caller${callers === 1 ? '' : 's'}`,
            target: `>= ${SKIP_TARGET}x`,
            actual: `${fmtRatio(skip)} (pgQuery: reset on vs off ${fmtRatio(always)})`,
            pass: skip >= SKIP_TARGET,
          },
        ];
      },
    );
    return {
      table,
      checks,
      notes: [
        'The reset after a `pgQuery` op costs no round trip of its own: `pgReset` marks the ' +
          "handle as owing it, and it travels at the head of the handle's next query, in the " +
          'same write (`DISCARD ALL`, a new seed, then the query; one Sync). What it costs here ' +
          'is the server running those statements, on the same two cores as the client.',
        'The skip after `pgReadOnly` costs no round trip of its own either: what it adds is ' +
          '`DEALLOCATE ALL` and `SELECT pg_advisory_unlock_all(), setseed($1)` in the ' +
          "read's own batch.",
      ],
    };
  },
};

// ---------------------------------------------------------------------------------------------
// Short reads while one long query runs
// ---------------------------------------------------------------------------------------------

const LONG_MS = 2_000;
/** Open loop: a short read is sent every this many ms, whatever happened to the earlier ones. */
const SHORT_EVERY_MS = 5;
/** Short reads start this long after the long query, so that it holds its connection. */
const SHORT_START_MS = 100;
/** ...and stop this long before it ends, so that every one of them was sent while it ran. */
const SHORT_STOP_BEFORE_MS = 200;
/** Wanted p99 of the guard's short reads while the long query runs. */
const P99_TARGET_MS = 100;

interface LatencyRun {
  sorted: Float64Array;
  longMs: number;
  errors: number;
}

/**
 * One long query, and short reads sent at a fixed rate while it runs (open loop, so a read stuck
 * behind the long one is counted at its full wait rather than holding back the next sends).
 */
async function shortReadsDuringLongQuery(client: Client): Promise<LatencyRun> {
  const t0 = nowNs();
  const long = client.query(`select pg_sleep(${LONG_MS / 1_000})`).then(() => nowNs() - t0);
  await sleep(SHORT_START_MS);
  const latencies: number[] = [];
  const pending: Promise<void>[] = [];
  let errors = 0;
  const stopAt = t0 + (LONG_MS - SHORT_STOP_BEFORE_MS) * 1e6;
  while (nowNs() < stopAt) {
    const sent = nowNs();
    pending.push(
      client.query(SHORT_SQL).then(
        () => {
          latencies.push(nowNs() - sent);
        },
        () => {
          errors++;
        },
      ),
    );
    await sleep(SHORT_EVERY_MS);
  }
  const [longNs] = await Promise.all([long, Promise.all(pending)]);
  return { sorted: Float64Array.from(latencies).sort(), longMs: longNs / 1e6, errors };
}

const longQuery: Section = {
  title: 'PostgreSQL: short reads while one long query runs',
  description:
    `One \`select pg_sleep(${LONG_MS / 1_000})\` is sent first; from ${SHORT_START_MS} ms ` +
    `after it until ${SHORT_STOP_BEFORE_MS} ms before it ends, a \`${SHORT_SQL}\` is sent every ` +
    `${SHORT_EVERY_MS} ms (open loop), and each one's latency is taken from its send to its ` +
    'result. Contenders: the guard and `pg.Pool` as in the section above, and the original ' +
    'design, one `pg.Client` behind one async-mutex `Mutex`. One run each, one after another.',
  run: () =>
    withCluster(async (config) => {
      const contenders = [mutexContender, guardContender, poolContender];
      const clients = await openAll(contenders, config);
      try {
        const table: string[][] = [
          ['Contender', 'short reads', 'p50', 'p99', 'max', 'long query took', 'errors'],
        ];
        const runs: LatencyRun[] = [];
        for (const [i, c] of contenders.entries()) {
          const run = await shortReadsDuringLongQuery(clients[i]!);
          runs.push(run);
          const ms = (p: number) => fmtMs(percentile(run.sorted, p) / 1e6);
          table.push([
            c.name,
            fmtInt(run.sorted.length),
            ms(0.5),
            ms(0.99),
            ms(1),
            fmtMs(run.longMs),
            fmtInt(run.errors),
          ]);
        }
        const p99 = (c: PgContender) => percentile(runs[contenders.indexOf(c)]!.sorted, 0.99) / 1e6;
        const guardP99 = p99(guardContender);
        const errors = runs.reduce((acc, r) => acc + r.errors, 0);
        return {
          table,
          checks: [
            {
              name: `guard: p99 of short reads while a ${fmtInt(LONG_MS)} ms query runs`,
              target: `<= ${P99_TARGET_MS} ms`,
              actual: `${fmtMs(guardP99)} (original design: ${fmtMs(p99(mutexContender))})`,
              pass: guardP99 <= P99_TARGET_MS,
            },
            {
              name: 'every short read and every long query succeeded',
              target: '0 errors',
              actual: `${fmtInt(errors)} errors`,
              pass: errors === 0,
            },
          ],
          notes: [
            'With one connection behind one mutex, every short read waits for the long query ' +
              'to end: its latency is the time left on the long query. The guard and `pg.Pool` ' +
              `run the long query on one of their ${POOL} connections and the short reads on ` +
              'the others.',
          ],
        };
      } finally {
        await Promise.allSettled(clients.map((c) => c.close()));
      }
    }),
};

export const sections: Section[] = [throughput, resetCost, longQuery];
