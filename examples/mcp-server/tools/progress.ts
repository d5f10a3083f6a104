/** `notifications/progress` while a tool call runs (or waits), for clients that ask for it. */
import type { QueryProgress } from '../engine.js';
import type { Extra } from './guarded.js';

/**
 * Sends `notifications/progress` every `intervalMs` while an op runs, when the client asked for
 * progress (sent a progress token). `progress` is the elapsed time in ms, always increasing; the
 * message says what the engine reports, or, while `waiting` returns a text, what the call waits
 * for. Returns the function that stops it.
 */
export function startProgress(
  extra: Extra,
  intervalMs: number,
  progress: QueryProgress,
  waiting?: () => string | undefined,
): () => void {
  const token = extra._meta?.progressToken;
  if (token === undefined) return () => {};
  const started = performance.now();
  let last = -1;
  const timer = setInterval(() => {
    const elapsed = Math.round(performance.now() - started);
    if (elapsed <= last) return;
    last = elapsed;
    // While the op is still queued, say what it waits for rather than what the engine reports.
    const waitingFor = waiting?.();
    const parts =
      waitingFor !== undefined ? [waitingFor] : [`running for ${(elapsed / 1000).toFixed(1)} s`];
    if (waitingFor === undefined && progress.percentage !== undefined && progress.percentage >= 1) {
      parts.push(`engine estimate ${progress.percentage.toFixed(0)}%`);
    }
    if (waitingFor === undefined && progress.rowsProcessed !== undefined) {
      parts.push(`${progress.rowsProcessed.toLocaleString('en-US')} rows scanned`);
    }
    if (waitingFor === undefined && progress.rowsReceived > 0) {
      parts.push(`${progress.rowsReceived.toLocaleString('en-US')} rows received`);
    }
    extra
      .sendNotification({
        method: 'notifications/progress',
        params: { progressToken: token, progress: elapsed, message: parts.join(', ') },
      })
      .catch(() => {
        // The client went away; the op's signal tells the guard.
      });
  }, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}
