/**
 * The context the guard hands its `reset` and `state` hooks, for tests that call an adapter's
 * hooks directly on a handle (no guard around them).
 */
import type { OpInfo, ResetContext, StateContext } from 'engine-guard';

/** The op the hook is told about: a read that just ended. */
function opInfo(): OpInfo {
  return { id: 1, kind: 'read', label: undefined, generation: 1, startedAt: performance.now() };
}

/** A `reset` hook's context, bounded by `signal` (5 s by default). */
export function resetCtx(signal: AbortSignal = AbortSignal.timeout(5_000)): ResetContext {
  return { signal, ok: true, op: opInfo() };
}

/** A `state` hook's context (session 1), bounded by `signal` (5 s by default). */
export function stateCtx(signal: AbortSignal = AbortSignal.timeout(5_000)): StateContext {
  return { signal, ok: true, sessionId: 1, op: opInfo() };
}
