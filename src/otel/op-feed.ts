/**
 * The ops of instrumented guards, from the `engine-guard:op` tracing channel. One subscription
 * for the process, however many guards are instrumented: each op is handed to the listeners of
 * its own guard (`ctx.source`), and the channel is left (so guards publish nothing again) when
 * the last listener goes.
 */
import diagnosticsChannel from 'node:diagnostics_channel';
import { channelNames, type OpTraceContext } from '../diagnostics.js';

/** What an instrumentation hears about its guard's ops. */
export interface OpListener {
  /** The call was made: synchronously in the caller's call, in its async context. */
  start(ctx: OpTraceContext): void;
  /** The call was answered: times and outcome are in `ctx`. Called once per started call. */
  end(ctx: OpTraceContext): void;
}

const listeners = new Map<object, Set<OpListener>>();

/** Hands `ctx` to the `start` or `end` of each listener of its guard. */
function dispatch(ctx: OpTraceContext, event: keyof OpListener): void {
  const set = listeners.get(ctx.source);
  if (set === undefined) return;
  for (const listener of set) {
    try {
      listener[event](ctx);
    } catch (error) {
      // A telemetry failure must never reach the guard's caller.
      process.emitWarning(
        `engine-guard/otel: recording an op failed: ${error instanceof Error ? error.message : String(error)}`,
        { code: 'ENGINE_GUARD_OTEL_ERROR' },
      );
    }
  }
}

/**
 * The three events used, subscribed one by one (a `tracingChannel` subscriber must take all five):
 * `start`, `end`, and `asyncEnd`.
 */
const handlers: readonly (readonly [string, (message: unknown) => void])[] = [
  [`tracing:${channelNames.op}:start`, (ctx) => dispatch(ctx as OpTraceContext, 'start')],
  [
    // A call that threw instead of returning its promise has no asyncEnd: only then is `error`
    // set by `end` (a rejection sets it later, before asyncEnd).
    `tracing:${channelNames.op}:end`,
    (ctx) => {
      if (Object.hasOwn(ctx as object, 'error')) dispatch(ctx as OpTraceContext, 'end');
    },
  ],
  [`tracing:${channelNames.op}:asyncEnd`, (ctx) => dispatch(ctx as OpTraceContext, 'end')],
];

function subscribe(): void {
  for (const [name, handler] of handlers) diagnosticsChannel.subscribe(name, handler);
}

function unsubscribe(): void {
  for (const [name, handler] of handlers) diagnosticsChannel.unsubscribe(name, handler);
}

/** Hands `source`'s ops to `listener` until the returned function is called. */
export function listenToOps(source: object, listener: OpListener): () => void {
  if (listeners.size === 0) subscribe();
  let set = listeners.get(source);
  if (set === undefined) {
    set = new Set();
    listeners.set(source, set);
  }
  set.add(listener);
  return () => {
    if (!set.delete(listener)) return;
    if (set.size === 0) listeners.delete(source);
    if (listeners.size === 0) unsubscribe();
  };
}
