/**
 * Every failure of a guarded call as a tool error a person or an agent can act on: what
 * happened, and what to do about it.
 */
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import type {
  EngineGuardErrorCode,
  EngineStalledError,
  EngineUnavailableError,
  LockTimeoutError,
  SessionLimitError,
  SessionStateDiscardedError,
} from 'engine-guard';
import type { App } from '../app.js';
import { InputError } from '../engine.js';
import { describeBlockers, describeState, formatAge, messageOf, toolError } from './text.js';

/** Whether `error` is the call's own cancellation (the client sent `notifications/cancelled`). */
export function isAbort(error: unknown, signal: AbortSignal): boolean {
  return signal.aborted && (error === signal.reason || (error as Error)?.name === 'AbortError');
}

/** The tool error for `error`, thrown by `tool`'s guarded call (`signal`: the call's own). */
export function toolFailure<H>(
  app: App<H>,
  tool: string,
  error: unknown,
  signal: AbortSignal,
): CallToolResult {
  const { engine, settings, log } = app;
  if (error instanceof InputError) return toolError(error.message);
  // engine-guard's errors carry a stable `code`: switch on it (an `instanceof` check fails
  // across two copies of the library, e.g. its ESM and CJS builds).
  switch ((error as { code?: unknown } | null)?.code as EngineGuardErrorCode | undefined) {
    case 'ERR_ENGINE_STALLED': {
      const stalled = error as EngineStalledError;
      const { interval, timeout, failures } = app.liveness;
      log.warn(`${tool}: engine stalled`, { op: stalled.opId });
      return toolError(
        `Engine stalled: ${tool} got no answer from the engine, and ${stalled.probeFailures} ` +
          `liveness probes in a row failed (one after every ${interval} ms without progress, ` +
          `each allowed ${timeout} ms; ${failures} convict). The call was abandoned (op ` +
          `${stalled.opId}) and the engine connection was replaced; the server keeps serving, ` +
          'so you can retry.' +
          (stalled.indeterminate
            ? ' The write is INDETERMINATE: it may or may not have been applied; check before retrying.'
            : ''),
      );
    }
    case 'ERR_ENGINE_UNAVAILABLE': {
      const unavailable = error as EngineUnavailableError;
      return toolError(
        `Engine unavailable: ${unavailable.attempts} connection attempts in a row failed (last: ` +
          `${messageOf(unavailable.cause)}). The server keeps trying to reconnect in the background; ` +
          'try again later (the status tool shows the state).',
      );
    }
    case 'ERR_LOCK_TIMEOUT': {
      const timedOut = error as LockTimeoutError;
      if (timedOut.waitingFor.some((op) => op.sessionId !== undefined)) {
        return toolError(
          `Busy: ${tool} waited ${timedOut.timeout} ms for your own other call ` +
            `${describeBlockers(timedOut.waitingFor)} and gave up. Your session holds ` +
            'connection state (temporary tables, settings...), so your calls run one at a time ' +
            'on its connection: drop that state (and RESET what you SET) to run calls side by ' +
            'side again.',
        );
      }
      if (timedOut.waitingFor.length > 0) {
        return toolError(
          `Engine busy: ${tool} waited ${timedOut.timeout} ms for ` +
            `${describeBlockers(timedOut.waitingFor)} and gave up. Try again later; the ` +
            'status tool shows what is running.',
        );
      }
      return toolError(
        `Engine busy: no engine connection became free within ${timedOut.timeout} ms (all ` +
          `${settings.pool} are in use, or a write holds the engine). Try again later; the ` +
          'status tool shows what is running.',
      );
    }
    case 'ERR_QUEUE_FULL':
      return toolError('Engine busy: too many calls are waiting. Try again later.');
    case 'ERR_GUARD_CLOSED':
      return toolError('The server is shutting down.');
    case 'ERR_SESSION_LIMIT': {
      const limit = error as SessionLimitError;
      return toolError(
        `No free session: all ${limit.maxSessions} engine sessions of this server are held ` +
          `by other clients (--max-sessions), and none was freed within ${limit.timeout} ms, ` +
          `so ${tool} did not run. Try again later: a session is freed when its client ` +
          `disconnects or after ${formatAge(settings.sessionIdleTimeout)} without a call ` +
          '(--session-idle-timeout). The status tool lists the sessions.',
      );
    }
    case 'ERR_SESSION_STATE_DISCARDED': {
      const discarded = error as SessionStateDiscardedError;
      const what =
        discarded.discarded === undefined
          ? 'the connection state it left'
          : describeState(discarded.discarded);
      const why =
        discarded.reason === 'no-slot'
          ? `all ${settings.maxSessions} connections that may keep a client's state are ` +
            'taken by other clients (--max-sessions)'
          : discarded.reason === 'split'
            ? 'your session already keeps state on another connection (made by a call that ran ' +
              'at the same time): send calls that make state one at a time'
            : `it could not be checked (${messageOf(discarded.cause)})`;
      return toolError(
        `${tool} ran, and what it committed stays committed, but ${what} could not be kept ` +
          `for your later calls and was discarded: ${why}.`,
      );
    }
    case 'ERR_SESSION_LOST':
      // The note on the lost state follows (see `guarded`).
      return toolError(`${tool} did not run.`);
    case 'ERR_SESSION_CLOSED': {
      const reason = (error as { reason?: unknown }).reason;
      if (reason === 'guard-closed') return toolError('The server is shutting down.');
      if (reason === 'idle') return toolError(`${tool} did not run.`);
      return toolError('This MCP session is closed.');
    }
    default:
      break;
  }
  if ((error as { code?: unknown } | null)?.code === 'ERR_PG_TRANSACTION_ENDED') {
    return toolError(
      `${messageOf(error)}. The ${tool} tool manages the transaction itself: leave out ` +
        'BEGIN, COMMIT and ROLLBACK.',
    );
  }
  if (isAbort(error, signal)) return toolError(`${tool} was cancelled.`);
  const message = messageOf(error);
  if (engine.isFatal(error)) {
    return toolError(
      `The engine connection failed during ${tool}: ${message}. That connection is being ` +
        'replaced; the server keeps serving, so you can retry.',
    );
  }
  const code = (error as { code?: unknown }).code;
  let text = `SQL error: ${message}`;
  if (typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code)) text += ` (SQLSTATE ${code})`;
  if (tool === 'query' && (code === '25006' || /read-only/i.test(message))) {
    text +=
      '. The query tool is read-only: the engine refused the write. Use the execute tool for DDL/DML.';
  } else if (tool === 'query' && /multiple commands/i.test(message)) {
    text += '. The query tool runs exactly one statement per call.';
  }
  return toolError(text);
}
