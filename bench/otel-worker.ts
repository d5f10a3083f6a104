/**
 * One contender of the observability benchmarks (bench/otel.bench.ts), alone in a fresh process:
 * what a subscriber, the OpenTelemetry SDK or an instrumentation patches stays out of the
 * others' figures. The job comes in `OTEL_BENCH` (JSON); the figures go to stdout (JSON).
 *
 * The SDK is set up as an app would: a MeterProvider with a reader (collected once, at the end),
 * a tracer provider with a BatchSpanProcessor whose exporter drops what it gets, and the
 * async-hooks context manager. `@opentelemetry/instrumentation-pg` is enabled before `pg` is
 * first required, so require-in-the-middle patches `pg` and `pg-pool` as they load: no NodeSDK
 * needed.
 */
import diagnosticsChannel from 'node:diagnostics_channel';
import { createRequire } from 'node:module';
import { context, ProxyTracerProvider } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { type Histogram, MeterProvider, MetricReader } from '@opentelemetry/sdk-metrics';
import {
  BasicTracerProvider,
  BatchSpanProcessor,
  type ReadableSpan,
  type SpanExporter,
} from '@opentelemetry/sdk-trace-base';
import type pg from 'pg';
import { EngineGuard } from '../src/index.js';
import { type InstrumentableGuard, instrumentGuard } from '../src/otel/index.js';
import { driveClosedLoop, median } from './harness.js';

/** What the parent asks for. */
export interface OtelJob {
  /** `memory`: a guard over an in-memory engine; `pg`: `select 1` on PostgreSQL. */
  mode: 'memory' | 'pg';
  /** On PostgreSQL: the guard (engine-guard/pg) or `pg.Pool`. */
  target: 'guard' | 'pool';
  /** What is switched on besides the plain guard or pool (see {@link VARIANTS}). */
  variant: Variant;
  callers: number;
  warmupMs: number;
  roundMs: number;
  rounds: number;
  /** PostgreSQL to talk to (mode `pg`). */
  config?: pg.ClientConfig;
}

/** What the worker prints. */
export interface OtelResult {
  /** Ops per second, median round. */
  rate: number;
  /** Node CPU (user + system) per op, µs, median round. */
  cpuUs: number;
  /** Ops run in all (warm-up included). */
  ops: number;
  /** Ops in `db.client.connection.wait_time` (when instrumented). */
  recordedWaits: number | undefined;
  /** Spans the exporter got, engine-guard's and instrumentation-pg's (when traced). */
  spans: number | undefined;
}

export const VARIANTS = [
  'none',
  'channel',
  'sdk',
  'otel-metrics',
  'otel',
  'pg-instrumentation',
  'otel+pg-instrumentation',
] as const;
export type Variant = (typeof VARIANTS)[number];

/** Counts what it is given and drops it. */
class DropExporter implements SpanExporter {
  spans = 0;
  export(spans: ReadableSpan[], done: (result: { code: 0 }) => void): void {
    this.spans += spans.length;
    done({ code: 0 });
  }
  async shutdown(): Promise<void> {}
  async forceFlush(): Promise<void> {}
}

class Reader extends MetricReader {
  protected override async onShutdown(): Promise<void> {}
  protected override async onForceFlush(): Promise<void> {}
}

interface Sdk {
  meterProvider: MeterProvider;
  tracerProvider: BasicTracerProvider;
  reader: Reader;
  exporter: DropExporter;
}

function startSdk(): Sdk {
  const reader = new Reader();
  const meterProvider = new MeterProvider({ readers: [reader] });
  const exporter = new DropExporter();
  const tracerProvider = new BasicTracerProvider({
    spanProcessors: [
      new BatchSpanProcessor(exporter, {
        // Room for every span of a round: a full queue drops spans, which would flatter us.
        maxQueueSize: 262_144,
        maxExportBatchSize: 8_192,
        scheduledDelayMillis: 100,
      }),
    ],
  });
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  return { meterProvider, tracerProvider, reader, exporter };
}

/** Enables instrumentation-pg (before `pg` loads) on the SDK's providers. */
async function enablePgInstrumentation(sdk: Sdk): Promise<void> {
  const { PgInstrumentation } = await import('@opentelemetry/instrumentation-pg');
  const instrumentation = new PgInstrumentation();
  instrumentation.setTracerProvider(sdk.tracerProvider);
  instrumentation.setMeterProvider(sdk.meterProvider);
  instrumentation.enable();
}

/** Ops in every point of `db.client.connection.wait_time` of the engine-guard scope. */
async function recordedWaits(sdk: Sdk): Promise<number> {
  const { resourceMetrics } = await sdk.reader.collect();
  let count = 0;
  for (const scope of resourceMetrics.scopeMetrics) {
    if (scope.scope.name !== 'engine-guard') continue;
    for (const metric of scope.metrics) {
      if (metric.descriptor.name !== 'db.client.connection.wait_time') continue;
      for (const point of metric.dataPoints) count += (point.value as Histogram).count;
    }
  }
  return count;
}

interface Target {
  op: () => Promise<unknown>;
  close(): Promise<void>;
}

/** The guard over an in-memory engine, or the guard or `pg.Pool` on PostgreSQL. */
async function open(job: OtelJob, sdk: Sdk | undefined): Promise<Target> {
  const instrument = (guard: InstrumentableGuard): void => {
    if (sdk === undefined || !job.variant.startsWith('otel')) return;
    instrumentGuard(guard, {
      meterProvider: sdk.meterProvider,
      // Metrics only: spans go to the API's no-op tracer.
      tracerProvider:
        job.variant === 'otel-metrics' ? new ProxyTracerProvider() : sdk.tracerProvider,
    });
  };
  if (job.mode === 'memory') {
    const guard = new EngineGuard<object>({ name: 'bench', create: () => ({}), pool: 4 });
    instrument(guard);
    // Alone, an op is over at once; among several callers, each lets the others in.
    const fn =
      job.callers === 1
        ? async () => {}
        : () => new Promise<void>((resolve) => setImmediate(resolve));
    return { op: () => guard.read(fn), close: () => guard.close() };
  }
  const config = job.config ?? {};
  // Through require: the path require-in-the-middle patches (instrumentation-pg).
  const { Pool } = createRequire(import.meta.url)('pg') as typeof pg;
  if (job.target === 'pool') {
    const pool = new Pool({ ...config, max: 4 });
    return { op: () => pool.query('select 1'), close: () => pool.end() };
  }
  const { pgGuardOptions, pgQuery } = await import('../src/adapters/pg.js');
  const guard = new EngineGuard(
    pgGuardOptions({ config }, { pool: 4, name: 'bench-pg', reset: undefined }),
  );
  instrument(guard);
  return {
    op: () => guard.read((handle, ctx) => pgQuery(handle, ctx, 'select 1')),
    close: () => guard.close(),
  };
}

async function main(): Promise<void> {
  const job = JSON.parse(process.env.OTEL_BENCH ?? '') as OtelJob;
  if (job.variant === 'channel') {
    const noop = () => {};
    diagnosticsChannel.tracingChannel('engine-guard:op').subscribe({
      start: noop,
      end: noop,
      asyncStart: noop,
      asyncEnd: noop,
      error: noop,
    });
  }
  const sdk = job.variant === 'none' || job.variant === 'channel' ? undefined : startSdk();
  if (sdk !== undefined && job.variant.endsWith('pg-instrumentation')) {
    await enablePgInstrumentation(sdk);
  }
  const target = await open(job, sdk);
  let ops = 0;
  const counted = async () => {
    await target.op();
    ops++;
  };
  await driveClosedLoop(counted, job.callers, job.warmupMs);
  const rate: number[] = [];
  const cpu: number[] = [];
  for (let round = 0; round < job.rounds; round++) {
    const r = await driveClosedLoop(counted, job.callers, job.roundMs);
    rate.push(r.ops / (r.wallNs / 1e9));
    cpu.push(r.cpuUs / r.ops);
  }
  await target.close();
  let waits: number | undefined;
  let spans: number | undefined;
  if (sdk !== undefined) {
    await sdk.tracerProvider.forceFlush();
    waits = job.variant.startsWith('otel') ? await recordedWaits(sdk) : undefined;
    spans = sdk.exporter.spans;
    await Promise.all([sdk.meterProvider.shutdown(), sdk.tracerProvider.shutdown()]);
  }
  const result: OtelResult = {
    rate: median(rate),
    cpuUs: median(cpu),
    ops,
    recordedWaits: waits,
    spans,
  };
  process.stdout.write(JSON.stringify(result));
}

await main();
