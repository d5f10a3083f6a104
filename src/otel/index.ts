/**
 * engine-guard/otel: a guard's pool metrics and op spans in OpenTelemetry, in the names the
 * database semantic conventions give them (`db.client.connection.*`), plus the guard's own
 * (`engine_guard.*`: stalls, replacements, probe and reset failures, sessions, cluster lease
 * waits).
 *
 * `@opentelemetry/api` is an optional peer dependency: only this entry point loads it, and the
 * rest of engine-guard never loads this entry point.
 *
 * @example
 * ```ts
 * import { instrumentGuard } from 'engine-guard/otel';
 * using instrumentation = instrumentGuard(guard); // the global MeterProvider and TracerProvider
 * ```
 *
 * @packageDocumentation
 */
import { type MeterProvider, metrics, type TracerProvider, trace } from '@opentelemetry/api';
import { validateOptionsObject, validateUnknownKeys } from '../internal/validate.js';
import type { InstrumentableGuard } from './guard-like.js';
import { GuardMetrics } from './metrics.js';
import { listenToOps } from './op-feed.js';
import { GuardSpans } from './spans.js';

export type { InstrumentableGuard } from './guard-like.js';

/** Options of {@link instrumentGuard}. */
export interface InstrumentGuardOptions {
  /** Where the metrics go. Default: the global one (`metrics.getMeterProvider()`). */
  meterProvider?: MeterProvider | undefined;
  /** Where the spans go. Default: the global one (`trace.getTracerProvider()`). */
  tracerProvider?: TracerProvider | undefined;
}

/** What {@link instrumentGuard} returns: dispose it (or `using`) to stop recording. */
export interface GuardInstrumentation extends Disposable {
  /**
   * Stops the metrics and spans of the guard. Spans of calls not answered yet end at once, as
   * they are. Idempotent.
   */
  dispose(): void;
}

const OPTION_KEYS = ['meterProvider', 'tracerProvider'];
/** Instrumentation scope of the meters and tracers. */
const SCOPE = 'engine-guard';

/** Pool names in use, per meter provider: two guards reported under one name would blur. */
const poolNames = new WeakMap<object, Set<string>>();

function validateGuard(guard: unknown): asserts guard is InstrumentableGuard {
  const candidate = guard as Partial<InstrumentableGuard> | null;
  if (
    typeof candidate !== 'object' ||
    candidate === null ||
    typeof candidate.status !== 'function' ||
    typeof candidate.on !== 'function'
  ) {
    throw new TypeError('The "guard" argument must be an EngineGuard');
  }
}

function validateProvider<T>(value: unknown, name: string, method: string): T | undefined {
  if (value === undefined) return undefined;
  if (
    typeof value !== 'object' ||
    value === null ||
    typeof (value as Record<string, unknown>)[method] !== 'function'
  ) {
    throw new TypeError(`The "${name}" option must be an OpenTelemetry ${name} (with ${method}())`);
  }
  return value as T;
}

/**
 * Records `guard`'s metrics and a span per op (see the module documentation and
 * docs/recipes/observability.md). `db.client.connection.pool.name` is the guard's `name`
 * (`'engine-guard'` for a guard without one).
 *
 * Metrics: gauges are read from `guard.status()` (which never waits) at each collection;
 * histograms and counters are fed by the guard's ops and events from now on.
 *
 * Spans: one per call of `read`/`write` on the guard or its sessions, named
 * `engine_guard.read`/`engine_guard.write`, a child of the caller's active span; its events mark
 * the end of the wait, each failed probe and the conviction; `error.type` is the error's `code`.
 *
 * Subscribing to the guard's `engine-guard:op` tracing channel makes every guard of the process
 * publish on it while an instrumentation is live (see docs/benchmarks.md for the cost).
 *
 * @throws TypeError when `guard` is not a guard, an option is invalid or unknown, or another
 *   live instrumentation reports under the same pool name to the same meter provider.
 */
export function instrumentGuard(
  guard: InstrumentableGuard,
  options: InstrumentGuardOptions = {},
): GuardInstrumentation {
  validateGuard(guard);
  validateOptionsObject(options);
  validateUnknownKeys(options, OPTION_KEYS, '');
  const meterProvider =
    validateProvider<MeterProvider>(options.meterProvider, 'meterProvider', 'getMeter') ??
    metrics.getMeterProvider();
  const tracerProvider =
    validateProvider<TracerProvider>(options.tracerProvider, 'tracerProvider', 'getTracer') ??
    trace.getTracerProvider();
  const poolName = guard.name ?? SCOPE;
  let names = poolNames.get(meterProvider);
  if (names === undefined) {
    names = new Set();
    poolNames.set(meterProvider, names);
  }
  if (names.has(poolName)) {
    throw new TypeError(
      `A guard is already instrumented under the pool name "${poolName}" on this meter provider: give each guard its own "name" (and instrument it once)`,
    );
  }
  names.add(poolName);

  const meters = new GuardMetrics(meterProvider.getMeter(SCOPE), guard, poolName);
  const spans = new GuardSpans(tracerProvider.getTracer(SCOPE), guard, poolName);
  const stopListening = listenToOps(guard, {
    start: (ctx) => spans.open(ctx),
    end: (ctx) => {
      meters.record(ctx);
      spans.close(ctx);
    },
  });
  let disposed = false;
  const dispose = (): void => {
    if (disposed) return;
    disposed = true;
    stopListening();
    meters.dispose();
    spans.dispose();
    names.delete(poolName);
  };
  return { dispose, [Symbol.dispose]: dispose };
}
