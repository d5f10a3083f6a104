/**
 * The real OpenTelemetry SDK for the engine-guard/otel tests: a MeterProvider whose reader the
 * test collects from, and a tracer provider exporting to memory, with the async-hooks context
 * manager (what `@opentelemetry/sdk-node` installs) so `context.active()` follows the caller.
 */
import { context } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import {
  type DataPoint,
  DataPointType,
  type Histogram,
  MeterProvider,
  type MetricData,
  MetricReader,
} from '@opentelemetry/sdk-metrics';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  type ReadableSpan,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { onTestFinished } from 'vitest';

/** A reader that exports nothing by itself: the test calls `collect()`. */
class TestReader extends MetricReader {
  protected override async onShutdown(): Promise<void> {}
  protected override async onForceFlush(): Promise<void> {}
}

/** One metric as collected: its descriptor and its points. */
export interface Collected {
  name: string;
  unit: string;
  /** The instrument kind, as the data shows it: 'Counter', 'UpDownCounter', 'Histogram', 'Gauge'. */
  kind: string;
  points: DataPoint<number | Histogram>[];
}

function kindOf(metric: MetricData): string {
  switch (metric.dataPointType) {
    case DataPointType.SUM:
      return metric.isMonotonic ? 'Counter' : 'UpDownCounter';
    case DataPointType.HISTOGRAM:
      return 'Histogram';
    case DataPointType.GAUGE:
      return 'Gauge';
    default:
      return 'ExponentialHistogram';
  }
}

/** A MeterProvider with a reader; shut down when the test ends. */
export function meterHarness() {
  const reader = new TestReader();
  const meterProvider = new MeterProvider({ readers: [reader] });
  onTestFinished(() => meterProvider.shutdown());
  return {
    meterProvider,
    /** Every metric of the engine-guard scope, now. */
    async collect(): Promise<Map<string, Collected>> {
      const { resourceMetrics, errors } = await reader.collect();
      if (errors.length > 0) throw new AggregateError(errors, 'metric collection failed');
      const found = new Map<string, Collected>();
      for (const scope of resourceMetrics.scopeMetrics) {
        if (scope.scope.name !== 'engine-guard') continue;
        for (const metric of scope.metrics) {
          found.set(metric.descriptor.name, {
            name: metric.descriptor.name,
            unit: metric.descriptor.unit,
            kind: kindOf(metric),
            points: metric.dataPoints as DataPoint<number | Histogram>[],
          });
        }
      }
      return found;
    },
  };
}

/** The value of the one point of `metric` whose attributes include `attributes`. */
export function pointValue(
  metrics: Map<string, Collected>,
  name: string,
  attributes: Record<string, unknown> = {},
): number | Histogram | undefined {
  const metric = metrics.get(name);
  if (metric === undefined) return undefined;
  const matches = metric.points.filter((point) =>
    Object.entries(attributes).every(([key, value]) => point.attributes[key] === value),
  );
  if (matches.length > 1) throw new Error(`${name}: ${matches.length} points match`);
  return matches[0]?.value;
}

/** A tracer provider exporting to memory, and the async-hooks context manager; undone at the end. */
export function traceHarness() {
  const exporter = new InMemorySpanExporter();
  const tracerProvider = new BasicTracerProvider({
    spanProcessors: [new SimpleSpanProcessor(exporter)],
  });
  const contextManager = new AsyncLocalStorageContextManager().enable();
  context.setGlobalContextManager(contextManager);
  onTestFinished(async () => {
    context.disable();
    await tracerProvider.shutdown();
  });
  return {
    tracerProvider,
    /** A tracer of the test's own, for the callers' spans. */
    tracer: tracerProvider.getTracer('test'),
    spans(): ReadableSpan[] {
      return exporter.getFinishedSpans();
    },
  };
}
