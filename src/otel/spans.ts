/**
 * A span per op of the guard. It is opened when the call is made, in the caller's context (the
 * tracing channel's `start` runs synchronously in the caller's call), so its parent is the
 * caller's active span whatever context the op's turn later comes in. It ends when the caller is
 * answered, with an event at the end of the wait, one per failed probe of the op and one at its
 * conviction (from the guard's events, matched by op id), and `error.type` when it failed.
 */
import {
  type Attributes,
  context,
  type Span,
  SpanKind,
  SpanStatusCode,
  type Tracer,
} from '@opentelemetry/api';
import type { OpTraceContext } from '../diagnostics.js';
import type { OpInfo, Subscription } from '../guard/types.js';
import type { InstrumentableGuard } from './guard-like.js';
import { ATTR, errorType, SPAN_EVENTS } from './names.js';

interface LiveSpan {
  readonly span: Span;
  /** `performance.now()` when it was opened. */
  readonly openedAt: number;
}

function describe(error: unknown): string {
  try {
    return error instanceof Error ? error.message : String(error);
  } catch {
    return 'unprintable error';
  }
}

/** The spans of one guard's ops; `dispose()` ends the ones still open. */
export class GuardSpans {
  readonly #tracer: Tracer;
  readonly #poolName: string;
  /** Spans of calls not answered yet, by their trace context. */
  readonly #live = new Map<OpTraceContext, LiveSpan>();
  readonly #subscriptions: Subscription[];

  constructor(tracer: Tracer, guard: InstrumentableGuard, poolName: string) {
    this.#tracer = tracer;
    this.#poolName = poolName;
    this.#subscriptions = [
      guard.on('probeFailure', ({ op, consecutive, error }) => {
        if (op === undefined) return;
        this.#spanOf(op)?.addEvent(SPAN_EVENTS.probeFailure, {
          [ATTR.probeConsecutive]: consecutive,
          [ATTR.errorType]: errorType(error),
          'exception.message': describe(error),
        });
      }),
      guard.on('stall', ({ op, error, probeFailures }) => {
        this.#spanOf(op)?.addEvent(SPAN_EVENTS.conviction, {
          [ATTR.probeFailures]: probeFailures,
          [ATTR.indeterminate]: error.indeterminate,
          'exception.message': error.message,
        });
      }),
    ];
  }

  /** The call was made: opens its span under the caller's active span. */
  open(ctx: OpTraceContext): void {
    const attributes: Attributes = {
      [ATTR.poolName]: this.#poolName,
      [ATTR.opKind]: ctx.kind,
    };
    if (ctx.label !== undefined) attributes[ATTR.opLabel] = ctx.label;
    if (ctx.sessionId !== undefined) attributes[ATTR.sessionId] = ctx.sessionId;
    if (ctx.key !== undefined) attributes[ATTR.opKey] = String(ctx.key);
    const openedAt = performance.now();
    const span = this.#tracer.startSpan(
      `engine_guard.${ctx.kind}`,
      { kind: SpanKind.INTERNAL, attributes, startTime: openedAt },
      context.active(),
    );
    this.#live.set(ctx, { span, openedAt });
  }

  /** The call was answered: its times, outcome and error go on its span, which ends. */
  close(ctx: OpTraceContext): void {
    const live = this.#live.get(ctx);
    if (live === undefined) return;
    this.#live.delete(ctx);
    const { span, openedAt } = live;
    const attributes: Attributes = {};
    if (ctx.id !== undefined) attributes[ATTR.opId] = ctx.id;
    if (ctx.outcome !== undefined) attributes[ATTR.opOutcome] = ctx.outcome;
    if (ctx.waitMs !== undefined) attributes[ATTR.opWaitTime] = ctx.waitMs / 1000;
    if (ctx.runMs !== undefined) {
      attributes[ATTR.opRunTime] = ctx.runMs / 1000;
      // The run started when the wait ended.
      span.addEvent(SPAN_EVENTS.waitEnd, openedAt + (ctx.waitMs ?? 0));
    }
    if (ctx.clusterWaitMs !== undefined) {
      attributes[ATTR.clusterLeaseWait] = ctx.clusterWaitMs / 1000;
    }
    if (ctx.generation !== undefined) attributes[ATTR.generation] = ctx.generation;
    if (ctx.outcome !== 'ok') {
      attributes[ATTR.errorType] = errorType(ctx.error);
      span.setStatus({ code: SpanStatusCode.ERROR, message: describe(ctx.error) });
    }
    span.setAttributes(attributes);
    span.end();
  }

  /** Stops listening; spans still open end now, as they are. */
  dispose(): void {
    for (const subscription of this.#subscriptions) subscription.dispose();
    for (const { span } of this.#live.values()) span.end();
    this.#live.clear();
  }

  /** The open span of the op `op` (the live ops are few: a scan is enough). */
  #spanOf(op: OpInfo): Span | undefined {
    for (const [ctx, live] of this.#live) if (ctx.id === op.id) return live.span;
    return undefined;
  }
}
