/**
 * engine-guard/otel spans, exported by the real OpenTelemetry SDK (`@opentelemetry/sdk-trace-base`,
 * InMemorySpanExporter, the async-hooks context manager): one span per op, a child of its
 * caller's active span whatever context its turn comes in, with the wait's end, failed probes and
 * the conviction as events and `error.type` from the error's code; the conviction on a real
 * PostgreSQL whose link goes silent (FaultProxy blackhole).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Span } from '@opentelemetry/api';
import type { ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { describe, expect, it } from 'vitest';
import { pgQuery } from '../../src/adapters/pg.js';
import { EngineGuard, EngineStalledError, GuardClosedError } from '../../src/index.js';
import { instrumentGuard } from '../../src/otel/index.js';
import { errorOf, gate, waitFor } from '../support/guard.js';
import { kit, LIVENESS, readOne, settle, TEST_TIMEOUT } from '../support/pg-faults-kit.js';
import { meterHarness, pointValue, traceHarness } from './support.js';

const SPAN_STATUS_ERROR = 2;

/** Runs `body` inside a span of the test's own tracer, the op's would-be parent. */
function inSpan<T>(
  tracer: ReturnType<typeof traceHarness>['tracer'],
  name: string,
  body: (span: Span) => Promise<T>,
): Promise<T> {
  return tracer.startActiveSpan(name, async (span) => {
    try {
      return await body(span);
    } finally {
      span.end();
    }
  });
}

function opSpans(spans: readonly ReadableSpan[]): ReadableSpan[] {
  return spans.filter((span) => span.name.startsWith('engine_guard.'));
}

function byLabel(spans: readonly ReadableSpan[], label: string): ReadableSpan {
  const found = opSpans(spans).filter((span) => span.attributes['engine_guard.op.label'] === label);
  expect(found, `spans labelled ${label}`).toHaveLength(1);
  return found[0] as ReadableSpan;
}

function eventNames(span: ReadableSpan): string[] {
  return span.events.map((event) => event.name);
}

describe('engine-guard/otel spans', () => {
  it('one span per op under contention (pool 2, 6 callers), each a child of its caller', async () => {
    const { tracerProvider, tracer, spans } = traceHarness();
    const guard = new EngineGuard<object>({ name: 'orders', create: () => ({}), pool: 2 });
    using _instrumentation = instrumentGuard(guard, { tracerProvider });
    const hold = gate();
    const callers: Promise<unknown>[] = [];
    const parents = new Map<string, string>();
    const call = (label: string, kind: 'read' | 'write', held: boolean) => {
      callers.push(
        inSpan(tracer, `request ${label}`, (span) => {
          parents.set(label, span.spanContext().spanId);
          const fn = () => (held ? hold.promise : sleep(5));
          return kind === 'read' ? guard.read(fn, { label }) : guard.write(fn, { label });
        }),
      );
    };
    try {
      call('r1', 'read', true);
      call('r2', 'read', true);
      await waitFor(() => guard.status().running.length === 2, 5_000, 'two running reads');
      call('w1', 'write', false);
      call('r3', 'read', false);
      call('w2', 'write', false);
      call('r4', 'read', false);
      await waitFor(() => guard.status().queued.length === 4, 5_000, 'four queued');
      await sleep(20);
      hold.open();
      await Promise.all(callers);
    } finally {
      hold.open();
      await guard.close();
    }
    const ops = opSpans(spans());
    expect(ops).toHaveLength(6);
    const ids = new Set(ops.map((span) => span.attributes['engine_guard.op.id']));
    expect(ids.size).toBe(6);
    for (const [label, parentId] of parents) {
      const span = byLabel(spans(), label);
      const kind = label.startsWith('w') ? 'write' : 'read';
      expect(span.name).toBe(`engine_guard.${kind}`);
      expect(span.parentSpanContext?.spanId, label).toBe(parentId);
      expect(span.attributes).toMatchObject({
        'db.client.connection.pool.name': 'orders',
        'engine_guard.op.kind': kind,
        'engine_guard.op.outcome': 'ok',
        'engine_guard.handle.generation': expect.any(Number),
      });
      expect(span.attributes['error.type']).toBeUndefined();
      expect(eventNames(span)).toEqual(['engine_guard.wait.end']);
    }
    // A queued op's wait ends inside its span, after the 20 ms it was held back.
    const queued = byLabel(spans(), 'w1');
    const waitEnd = queued.events[0]?.time ?? [0, 0];
    const toMs = ([s, ns]: readonly [number, number]) => s * 1e3 + ns / 1e6;
    expect(toMs(waitEnd) - toMs(queued.startTime)).toBeGreaterThanOrEqual(15);
    expect(toMs(queued.endTime)).toBeGreaterThanOrEqual(toMs(waitEnd));
    expect(queued.attributes['engine_guard.op.wait_time']).toBeGreaterThanOrEqual(0.015);
  });

  it("a session's queued op is a child of its own caller, not of the op before it", async () => {
    const { tracerProvider, tracer, spans } = traceHarness();
    const guard = new EngineGuard<object>({ name: 'orders', create: () => ({}), maxSessions: 1 });
    using _instrumentation = instrumentGuard(guard, { tracerProvider });
    const hold = gate();
    try {
      const session = guard.session({ label: 'client 7' });
      let parentA = '';
      let parentB = '';
      const a = inSpan(tracer, 'caller A', (span) => {
        parentA = span.spanContext().spanId;
        return session.write(() => hold.promise, { label: 'first' });
      });
      const b = inSpan(tracer, 'caller B', (span) => {
        parentB = span.spanContext().spanId;
        return session.read(() => 'two', { label: 'second' });
      });
      hold.open();
      await Promise.all([a, b]);
      expect(byLabel(spans(), 'first').parentSpanContext?.spanId).toBe(parentA);
      const second = byLabel(spans(), 'second');
      expect(second.parentSpanContext?.spanId).toBe(parentB);
      expect(second.attributes['engine_guard.session.id']).toBe(session.id);
    } finally {
      hold.open();
      await guard.close();
    }
  });

  it("spans made inside a queued session op's fn join its own caller's trace", async () => {
    const { tracerProvider, tracer, spans } = traceHarness();
    const guard = new EngineGuard<object>({ name: 'orders', create: () => ({}), maxSessions: 1 });
    using _instrumentation = instrumentGuard(guard, { tracerProvider });
    const hold = gate();
    // What a database client's instrumentation does inside fn: a span under the active one.
    const query = (name: string) => tracer.startSpan(name).end();
    try {
      const session = guard.session();
      const traces: Record<string, string> = {};
      const a = inSpan(tracer, 'caller A', (span) => {
        traces.A = span.spanContext().traceId;
        return session.write(async () => {
          query('query of A');
          await hold.promise;
        });
      });
      const b = inSpan(tracer, 'caller B', (span) => {
        traces.B = span.spanContext().traceId;
        return session.read(() => query('query of B'));
      });
      hold.open();
      await Promise.all([a, b]);
      const traceOf = (name: string) =>
        spans()
          .find((span) => span.name === name)
          ?.spanContext().traceId;
      expect(traceOf('query of A')).toBe(traces.A);
      // Its turn came when A's op ended, in A's context: it still runs in B's.
      expect(traceOf('query of B')).toBe(traces.B);
    } finally {
      hold.open();
      await guard.close();
    }
  });

  it("a tracer that throws costs the caller nothing: the op's answer stands, a warning says why", async () => {
    // A broken tracer (no real SDK breaks on purpose): startSpan throws.
    const tracerProvider = {
      getTracer: () => ({
        startSpan: () => {
          throw new Error('exporter misconfigured');
        },
        startActiveSpan: () => {
          throw new Error('unused');
        },
      }),
    };
    const guard = new EngineGuard<object>({ name: 'orders', create: () => ({}) });
    using _instrumentation = instrumentGuard(guard, { tracerProvider });
    const warnings: Error[] = [];
    const onWarning = (warning: Error) => warnings.push(warning);
    process.on('warning', onWarning);
    try {
      await expect(guard.read(() => 'fine')).resolves.toBe('fine');
      await waitFor(() => warnings.length > 0, 5_000, 'the warning');
      expect(warnings[0]).toMatchObject({
        code: 'ENGINE_GUARD_OTEL_ERROR',
        message: expect.stringContaining('exporter misconfigured'),
      });
    } finally {
      process.off('warning', onWarning);
      await guard.close();
    }
  });

  it('a failed or refused op: error status and error.type from its code', async () => {
    const { tracerProvider, spans } = traceHarness();
    const guard = new EngineGuard<object>({ name: 'orders', create: () => ({}) });
    using _instrumentation = instrumentGuard(guard, { tracerProvider });
    await errorOf(
      guard.read(
        () => {
          throw Object.assign(new Error('relation "x" does not exist'), { code: '42P01' });
        },
        { label: 'fails' },
      ),
    );
    await guard.close();
    expect(await errorOf(guard.write(() => 1, { label: 'refused' }))).toBeInstanceOf(
      GuardClosedError,
    );
    const fails = byLabel(spans(), 'fails');
    expect(fails.status).toMatchObject({
      code: SPAN_STATUS_ERROR,
      message: 'relation "x" does not exist',
    });
    expect(fails.attributes).toMatchObject({
      'error.type': '42P01',
      'engine_guard.op.outcome': 'error',
    });
    const refused = byLabel(spans(), 'refused');
    expect(refused.attributes).toMatchObject({
      'error.type': 'ERR_GUARD_CLOSED',
      'engine_guard.op.outcome': 'closed',
    });
    // It never ran: no wait end, no run time, no op id.
    expect(eventNames(refused)).toEqual([]);
    expect(refused.attributes['engine_guard.op.run_time']).toBeUndefined();
    expect(refused.attributes['engine_guard.op.id']).toBeUndefined();
  });

  it(
    'a conviction on real PostgreSQL behind a silent link: probe failures, conviction, error.type',
    async () => {
      const { tracerProvider, tracer, spans } = traceHarness();
      const { meterProvider, collect } = meterHarness();
      const { proxy, guard } = await kit().proxiedGuard({ name: 'pg-orders', pool: 1 });
      using _instrumentation = instrumentGuard(guard, { tracerProvider, meterProvider });
      expect((await readOne(guard)).v).toBe(1);
      let parent = '';
      const long = settle(
        inSpan(tracer, 'report request', (span) => {
          parent = span.spanContext().spanId;
          return guard.read((handle, ctx) => pgQuery(handle, ctx, 'SELECT pg_sleep(20)'), {
            label: 'long report',
          });
        }),
      );
      await waitFor(() => guard.status().running.length === 1, 5_000, 'the long read');
      await sleep(LIVENESS.interval); // its query is on the server
      proxy.blackhole();
      const outcome = await long;
      expect(outcome.ok).toBe(false);
      if (outcome.ok) return;
      expect(outcome.error).toBeInstanceOf(EngineStalledError);

      const span = byLabel(spans(), 'long report');
      expect(span.parentSpanContext?.spanId).toBe(parent);
      const failures = span.events.filter((e) => e.name === 'engine_guard.probe.failure');
      expect(failures.map((e) => e.attributes?.['engine_guard.probe.consecutive'])).toEqual(
        Array.from({ length: LIVENESS.failures }, (_, i) => i + 1),
      );
      // In time order (the wait's end is added when the span ends, with the time it happened):
      // the wait ended, the probes failed one after the other, then the conviction.
      const inTime = [...span.events].sort(
        (x, y) => x.time[0] - y.time[0] || x.time[1] - y.time[1],
      );
      expect(inTime.map((e) => e.name)).toEqual([
        'engine_guard.wait.end',
        ...failures.map(() => 'engine_guard.probe.failure'),
        'engine_guard.conviction',
      ]);
      expect(inTime.at(-1)?.attributes).toMatchObject({
        'engine_guard.probe.failures': LIVENESS.failures,
        'engine_guard.stall.indeterminate': false,
      });
      expect(span.status.code).toBe(SPAN_STATUS_ERROR);
      expect(span.attributes).toMatchObject({
        'error.type': 'ERR_ENGINE_STALLED',
        'engine_guard.op.outcome': 'stalled',
        'db.client.connection.pool.name': 'pg-orders',
      });

      const metrics = await collect();
      expect(pointValue(metrics, 'engine_guard.stalls', { 'engine_guard.op.kind': 'read' })).toBe(
        1,
      );
      expect(
        pointValue(metrics, 'engine_guard.probe.failures', { 'engine_guard.probe.target': 'op' }),
      ).toBe(LIVENESS.failures);
    },
    TEST_TIMEOUT,
  );
});
