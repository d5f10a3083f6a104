/**
 * What observability costs per op: the `engine-guard:op` tracing channel with a subscriber,
 * `instrumentGuard` with the real OpenTelemetry SDK, and, for scale, what
 * `@opentelemetry/instrumentation-pg` costs `pg.Pool` on the same PostgreSQL. Every contender
 * runs alone in a fresh process (bench/otel-worker.ts): a subscriber, a context manager or a
 * patched `pg` is process-wide and would leak into the others' figures. Run through
 * `npm run bench` (`npm run bench -- otel` for these sections only); see bench/run.ts.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { BENCH_IMPORT, type Check, fmtInt, fmtRatio, type Section } from './harness.js';
import type { OtelJob, OtelResult, Variant } from './otel-worker.js';
import { withCluster } from './pg.bench.js';

const WORKER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'otel-worker.ts');
const WARMUP_MS = 600;
const ROUND_MS = 300;
const ROUNDS = 5;

/** Runs one contender in a fresh process; its figures. */
function runWorker(job: OtelJob): Promise<OtelResult> {
  const child = spawn(process.execPath, ['--import', BENCH_IMPORT, WORKER], {
    env: { ...process.env, OTEL_BENCH: JSON.stringify(job) },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    out += chunk;
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
  return new Promise<OtelResult>((resolve, reject) => {
    child.once('exit', (code) => {
      clearTimeout(timer);
      if (code !== 0) reject(new Error(`${job.mode} ${job.variant} worker exited with ${code}`));
      else resolve(JSON.parse(out) as OtelResult);
    });
  });
}

function job(mode: OtelJob['mode'], target: OtelJob['target'], variant: Variant, callers: number) {
  return {
    mode,
    target,
    variant,
    callers,
    warmupMs: WARMUP_MS,
    roundMs: ROUND_MS,
    rounds: ROUNDS,
  } satisfies OtelJob;
}

const fmtCpu = (us: number) => `${us.toFixed(us < 10 ? 2 : 1)} µs`;

/** Each op was recorded: in `wait_time` once, and as `spansPerOp` spans. */
function recordedCheck(name: string, results: readonly OtelResult[], spansPerOp: number): Check {
  const missing = results.filter(
    (r) => r.recordedWaits !== r.ops || (r.spans ?? 0) < r.ops * spansPerOp,
  );
  const shown = results.map(
    (r) =>
      `${fmtInt(r.ops)} ops: ${fmtInt(r.recordedWaits ?? 0)} waits, ${fmtInt(r.spans ?? 0)} spans`,
  );
  return {
    name,
    target: `every op in wait_time, ${spansPerOp} span${spansPerOp === 1 ? '' : 's'} per op`,
    actual: missing.length === 0 ? 'all recorded' : `missing in: ${shown.join('; ')}`,
    pass: missing.length === 0,
  };
}

// ---------------------------------------------------------------------------------------------
// In memory: the guard's own cost
// ---------------------------------------------------------------------------------------------

const MEMORY_CALLERS = [1, 16] as const;
const MEMORY_VARIANTS: { variant: Variant; name: string }[] = [
  { variant: 'none', name: 'no subscriber (tracing off)' },
  { variant: 'channel', name: '`engine-guard:op` subscribed (no-op handlers)' },
  {
    variant: 'sdk',
    name: 'OpenTelemetry SDK set up (context manager, providers), guard not instrumented',
  },
  { variant: 'otel-metrics', name: '`instrumentGuard`, metrics only (spans to the no-op tracer)' },
  { variant: 'otel', name: '`instrumentGuard`, metrics and spans (BatchSpanProcessor)' },
];

const inMemory: Section = {
  title: 'Observability: CPU per op of tracing and instrumentGuard',
  description:
    'A guard (pool 4) over an in-memory engine, `read(fn)` in a closed loop: 1 caller with ' +
    '`fn = async () => {}`, and 16 callers whose `fn` yields a turn (so ops queue and wait). ' +
    'Each row runs alone in a fresh process with only what it names switched on; the SDK is ' +
    '`@opentelemetry/sdk-metrics` (a MetricReader, collected at the end) and ' +
    '`@opentelemetry/sdk-trace-base` (BatchSpanProcessor to an exporter that drops the spans) ' +
    `with the async-hooks context manager. ${ROUNDS} rounds of ${ROUND_MS} ms after ` +
    `${WARMUP_MS} ms of warm-up; figure = median round; CPU = Node user + system time per op.`,
  async run() {
    const table = [
      [
        'contender',
        ...MEMORY_CALLERS.flatMap((c) => [
          `${c} caller${c === 1 ? '' : 's'}: CPU/op`,
          'ops/s',
          'CPU vs off',
        ]),
      ],
    ];
    const instrumented: OtelResult[] = [];
    const byVariant = new Map<Variant, OtelResult[]>();
    for (const { variant } of MEMORY_VARIANTS) {
      const results: OtelResult[] = [];
      for (const callers of MEMORY_CALLERS) {
        results.push(await runWorker(job('memory', 'guard', variant, callers)));
      }
      byVariant.set(variant, results);
      if (variant === 'otel') instrumented.push(...results);
    }
    const off = byVariant.get('none') ?? [];
    for (const { variant, name } of MEMORY_VARIANTS) {
      const results = byVariant.get(variant) ?? [];
      table.push([
        name,
        ...results.flatMap((r, i) => [
          fmtCpu(r.cpuUs),
          fmtInt(r.rate),
          fmtRatio(r.cpuUs / (off[i]?.cpuUs ?? r.cpuUs)),
        ]),
      ]);
    }
    const metricsOnly = byVariant.get('otel-metrics') ?? [];
    return {
      table,
      notes: [
        'Without a subscriber a call checks `hasSubscribers` and takes the untraced path: no context object, no promise of its own.',
        "A subscriber to the channel costs every guard of the process: each call then builds its context and Node's `tracePromise` publishes its events.",
        "instrumentGuard's cost is mostly the SDK's: each op records two histograms and a counter (the SDK hashes each attribute set) and, with spans, starts and ends one span.",
      ],
      checks: [
        recordedCheck('instrumentGuard (metrics and spans) recorded every op', instrumented, 1),
        {
          name: 'instrumentGuard (metrics only) recorded every op in wait_time',
          target: 'every op',
          actual: metricsOnly.every((r) => r.recordedWaits === r.ops)
            ? 'all recorded'
            : metricsOnly.map((r) => `${r.recordedWaits} of ${r.ops}`).join('; '),
          pass: metricsOnly.every((r) => r.recordedWaits === r.ops),
        },
      ],
    };
  },
};

// ---------------------------------------------------------------------------------------------
// On PostgreSQL, next to instrumentation-pg
// ---------------------------------------------------------------------------------------------

const PG_CALLERS = [4, 32] as const;
const PG_CONTENDERS: { target: OtelJob['target']; variant: Variant; name: string }[] = [
  { target: 'pool', variant: 'none', name: '`pg.Pool` (max 4)' },
  {
    target: 'pool',
    variant: 'pg-instrumentation',
    name: '`pg.Pool` + `@opentelemetry/instrumentation-pg`',
  },
  { target: 'guard', variant: 'none', name: 'EngineGuard + `pgQuery` (pool 4)' },
  { target: 'guard', variant: 'otel', name: 'EngineGuard + `pgQuery` + `instrumentGuard`' },
  {
    target: 'guard',
    variant: 'otel+pg-instrumentation',
    name: 'EngineGuard + `pgQuery` + `instrumentGuard` + instrumentation-pg',
  },
];

const onPostgres: Section = {
  title: 'Observability on PostgreSQL: instrumentGuard next to instrumentation-pg',
  description:
    '`select 1` in a closed loop on a throwaway PostgreSQL, through `pg.Pool` and through the ' +
    'guard (engine-guard/pg, reset off), each bare and with OpenTelemetry: ' +
    '`@opentelemetry/instrumentation-pg` (enabled before `pg` loads, so it patches `pg` and ' +
    '`pg-pool`: a span per query and per pool checkout, its pool metrics) and `instrumentGuard` ' +
    '(its metrics and a span per op). Same SDK set-up as above, each contender alone in a fresh ' +
    `process; ${ROUNDS} rounds of ${ROUND_MS} ms after ${WARMUP_MS} ms of warm-up; figure = ` +
    'median round; CPU = Node user + system time per query (the server runs on the same 2 cores).',
  async run() {
    return withCluster(async (config: pg.ClientConfig) => {
      const table = [['contender', 'callers', 'queries/s', 'Node CPU/query', 'added CPU/query']];
      const results = new Map<string, OtelResult>();
      for (const callers of PG_CALLERS) {
        for (const c of PG_CONTENDERS) {
          const r = await runWorker({ ...job('pg', c.target, c.variant, callers), config });
          results.set(`${c.target}/${c.variant}/${callers}`, r);
        }
      }
      const checks: Check[] = [];
      for (const callers of PG_CALLERS) {
        const get = (target: string, variant: string) =>
          results.get(`${target}/${variant}/${callers}`);
        for (const c of PG_CONTENDERS) {
          const r = get(c.target, c.variant);
          const bare = get(c.target, 'none');
          if (r === undefined || bare === undefined) continue;
          table.push([
            c.name,
            fmtInt(callers),
            fmtInt(r.rate),
            fmtCpu(r.cpuUs),
            c.variant === 'none' ? '' : `+${fmtCpu(r.cpuUs - bare.cpuUs)}`,
          ]);
        }
        const poolBare = get('pool', 'none');
        const poolTraced = get('pool', 'pg-instrumentation');
        const guardBare = get('guard', 'none');
        const guardTraced = get('guard', 'otel');
        if (poolBare && poolTraced && guardBare && guardTraced) {
          const ours = guardTraced.cpuUs - guardBare.cpuUs;
          const theirs = poolTraced.cpuUs - poolBare.cpuUs;
          checks.push({
            name: `${callers} callers: CPU instrumentGuard adds to the guard vs what instrumentation-pg adds to pg.Pool`,
            target: '<= instrumentation-pg',
            actual: `${fmtCpu(ours)} vs ${fmtCpu(theirs)} per query`,
            pass: ours <= theirs,
          });
        }
      }
      const traced = PG_CALLERS.flatMap((callers) => {
        const r = results.get(`guard/otel/${callers}`);
        return r === undefined ? [] : [r];
      });
      checks.push(recordedCheck('instrumentGuard recorded every query', traced, 1));
      return {
        table,
        checks,
        notes: [
          'instrumentation-pg makes two spans per `pool.query` (the checkout and the query) and records `db.client.operation.duration` and three pool metrics; instrumentGuard one span per op and the metrics of recipes/observability.md.',
          "With both, the guard's queries have their pg spans too (the guard runs `pg.Client` queries, which instrumentation-pg patches), beside the op span.",
        ],
      };
    });
  },
};

/** After the other sections: each of these starts processes of its own and needs a quiet machine. */
export const order = 900;
export const sections: Section[] = [inMemory, onPostgres];
