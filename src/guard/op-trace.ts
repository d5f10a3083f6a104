/**
 * Tracing of guarded calls on the `engine-guard:op` tracing channel (see `OpTraceContext`).
 *
 * A call is traced from where its caller made it (`guard.read`, `session.write`...), so `start`
 * is published synchronously in the caller's async context: a subscriber that opens a span
 * there parents it on the caller's active span, however long the op then waits and in whatever
 * context its turn comes. The op, made then or later (a session's call waits for its turn),
 * reaches its trace through its settings (`OpSettings.trace`); the trace reads the op's times
 * when the caller is answered and lets go of it then.
 *
 * Costs nothing while nobody subscribes: the callers check `opTracing.hasSubscribers` first, and
 * the untraced path never reaches this module.
 */
import { type OpOutcome, type OpTraceContext, opTracing } from '../diagnostics.js';
import { EngineGuardError } from '../errors.js';
import type { OpKind } from './types.js';

/** How an engine-guard error that answered a call before its op ran reads as an outcome. */
const OUTCOME_BEFORE_RUN: Readonly<Record<string, OpOutcome>> = {
  ERR_LOCK_TIMEOUT: 'timeout',
  ERR_SESSION_LIMIT: 'timeout',
  ERR_GUARD_CLOSED: 'closed',
  ERR_SESSION_CLOSED: 'closed',
  ERR_QUEUE_FULL: 'refused',
  ERR_ENGINE_UNAVAILABLE: 'refused',
  ERR_SESSION_LOST: 'refused',
  ERR_DEADLOCK: 'refused',
};

/** What a trace reads from the call's settings (`OpSettings`, which carries the trace itself). */
interface CallSettings {
  readonly signal: AbortSignal | undefined;
  readonly label: string | undefined;
  readonly key?: string | number | undefined;
  readonly trace?: OpTrace | undefined;
}

/** What a trace reads from the op the call became (an `Op`). */
interface TracedOp {
  readonly id: number;
  /** `performance.now()` when it started running; 0 while it has not. */
  readonly startedAt: number;
  readonly generation: number;
  readonly clusterWaitMs: number | undefined;
  readonly state: { readonly tag: string };
}

/** The trace of one call: its published context, and the op it became once there is one. */
export class OpTrace {
  readonly context: OpTraceContext;
  readonly #calledAt = performance.now();
  readonly #signal: AbortSignal | undefined;
  #op: TracedOp | undefined = undefined;

  constructor(
    source: object,
    guard: string | undefined,
    kind: OpKind,
    settings: CallSettings,
    sessionId: number | undefined,
  ) {
    this.#signal = settings.signal;
    // Every field from the start, so the object keeps one shape through its five events.
    this.context = {
      guard,
      source,
      id: undefined,
      kind,
      label: settings.label,
      sessionId,
      key: sessionId === undefined ? settings.key : undefined,
      waitMs: undefined,
      runMs: undefined,
      clusterWaitMs: undefined,
      generation: undefined,
      outcome: undefined,
    };
  }

  /** The call became `op`. */
  attach(op: TracedOp): void {
    this.#op = op;
    this.context.id = op.id;
  }

  /** The caller is answered: fills in the times and the outcome. Only the first call counts. */
  settle(ok: boolean, value: unknown): void {
    const context = this.context;
    if (context.outcome !== undefined) return;
    const now = performance.now();
    const op = this.#op;
    // Not kept past its caller's answer: a subscriber may hold the context for long.
    this.#op = undefined;
    const ran = op !== undefined && op.startedAt > 0;
    context.waitMs = (ran ? op.startedAt : now) - this.#calledAt;
    if (ran) {
      context.runMs = now - op.startedAt;
      context.generation = op.generation;
      context.clusterWaitMs = op.clusterWaitMs;
    }
    context.outcome = ok ? 'ok' : this.#outcomeOf(value, ran ? op : undefined);
  }

  #outcomeOf(error: unknown, ran: TracedOp | undefined): OpOutcome {
    const signal = this.#signal;
    if (signal?.aborted === true && error === signal.reason) return 'aborted';
    if (ran !== undefined) {
      // Whatever fn threw (another guard's timeout included) is fn's error; only the guard's own
      // ends of a running op say otherwise.
      const tag = ran.state.tag;
      if (tag === 'stalled') return 'stalled';
      if (tag === 'closed') return 'closed';
      return 'error';
    }
    if (error instanceof EngineGuardError) return OUTCOME_BEFORE_RUN[error.code] ?? 'error';
    return 'error';
  }
}

/**
 * Runs `call` traced: `start` now, in the caller's context; the rest as the call goes. `call`
 * gets the trace, to hand to the op it makes (through its settings, see `withTrace`).
 */
export function traceCall(
  source: object,
  guard: string | undefined,
  kind: OpKind,
  settings: CallSettings,
  sessionId: number | undefined,
  call: (trace: OpTrace) => Promise<unknown>,
): Promise<unknown> {
  const trace = new OpTrace(source, guard, kind, settings, sessionId);
  return opTracing.tracePromise(() => {
    let promise: Promise<unknown>;
    try {
      promise = call(trace);
    } catch (error) {
      trace.settle(false, error);
      throw error;
    }
    // Registered before the channel's own reactions to the same promise, so the context is
    // complete when `error` and `asyncEnd` are published.
    promise.then(
      (value) => trace.settle(true, value),
      (error: unknown) => trace.settle(false, error),
    );
    return promise;
  }, trace.context);
}

/**
 * A call answered at once, without an op: its trace (if traced) gets its outcome before the
 * channel's `end`.
 */
export function refuse(settings: CallSettings, error: unknown): Promise<never> {
  settings.trace?.settle(false, error);
  return Promise.reject(error);
}
