/**
 * `--metrics`: the guard's OpenTelemetry metrics (engine-guard/otel) as Prometheus text, served at
 * `/metrics` by the example's HTTP server under the same loopback and token rules as `/mcp`.
 *
 * The OpenTelemetry SDK and its Prometheus exporter belong to this example, not to the library:
 * an app wires its own (see docs/recipes/observability.md).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { MeterProvider } from '@opentelemetry/sdk-metrics';
import type { EngineGuard } from 'engine-guard';
import { instrumentGuard } from 'engine-guard/otel';

export interface MetricsEndpoint {
  /** Answers a `GET /metrics` with the current metrics in the Prometheus text format. */
  handle(req: IncomingMessage, res: ServerResponse): void;
  /** Stops recording. */
  close(): Promise<void>;
}

/** Records `guard`'s metrics from now on, for {@link MetricsEndpoint.handle} to serve. */
export function startMetrics(guard: EngineGuard<unknown>): MetricsEndpoint {
  // No server of its own: the example's HTTP server serves it, with its checks.
  const exporter = new PrometheusExporter({ preventServerStart: true });
  const meterProvider = new MeterProvider({
    resource: resourceFromAttributes({ 'service.name': 'engine-guard-mcp-example' }),
    readers: [exporter],
  });
  // Metrics only: spans go to the API's no-op tracer (no tracer provider is registered).
  const instrumentation = instrumentGuard(guard, { meterProvider });
  return {
    handle: (req, res) => exporter.getMetricsRequestHandler(req, res),
    async close() {
      instrumentation.dispose();
      await meterProvider.shutdown();
    },
  };
}
