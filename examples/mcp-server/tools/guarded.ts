/**
 * One tool call as one guarded op: in the client's session (or stateless with
 * `--max-sessions 0`), with progress notifications while it waits or runs, the outcome logged,
 * failures turned into tool errors, and the client told when its session's state went away.
 */
import type { RequestHandlerExtra } from '@modelcontextprotocol/sdk/shared/protocol.js';
import type {
  CallToolResult,
  ServerNotification,
  ServerRequest,
} from '@modelcontextprotocol/sdk/types.js';
import type { EngineGuard, OpContext, SessionStatus } from 'engine-guard';
import type { App } from '../app.js';
import type { ClientSession, SessionNews } from '../client-session.js';
import { newProgress, type QueryProgress } from '../engine.js';
import { isAbort, toolFailure } from './failures.js';
import { startProgress } from './progress.js';
import {
  describeBlockers,
  describeState,
  formatAge,
  messageOf,
  textOf,
  toolError,
  uniqueLabel,
  withNote,
} from './text.js';

/** What the SDK hands a tool's callback beside its arguments (cancel signal, progress token). */
export type Extra = RequestHandlerExtra<ServerRequest, ServerNotification>;

/** What {@link Guarded} runs: one tool call as one guarded op. */
export interface GuardedCall<H, T> {
  tool: string;
  kind: 'read' | 'write';
  extra: Extra;
  /** Shown in `status()` and logs (made unique per call); defaults to the tool's name. */
  label?: string;
  /** What the engine reports while the call runs (rows, estimate), for its progress messages. */
  progress?: QueryProgress;
  run: (handle: H, ctx: OpContext) => Promise<T>;
  /** Builds the tool result from the op's value. */
  done: (value: T, elapsedMs: number) => CallToolResult;
}

/** Runs one tool call as a guarded op and always answers with a tool result. */
export type Guarded<H> = <T>(call: GuardedCall<H, T>) => Promise<CallToolResult>;

/** What the tools of one MCP server share: the app, and its runner of guarded calls. */
export interface ToolContext<H> {
  readonly app: App<H>;
  readonly guarded: Guarded<H>;
  /** The calling client's engine session; `undefined` with `--max-sessions 0`. */
  readonly client: ClientSession<H> | undefined;
}

/** What a client is told when its session's state went away (see client-session.ts). */
function sessionNote(news: SessionNews, idleTimeout: number): string {
  if (news.kind === 'lost') {
    return (
      `Your session's state is LOST: its engine connection (generation ${news.generation}) is ` +
      'gone, and with it your temporary tables, settings (SET), prepared statements and ' +
      'advisory locks. Your next call runs in a fresh session: re-create what you need first.'
    );
  }
  return (
    `Your session expired after ${formatAge(idleTimeout)} without a call ` +
    '(--session-idle-timeout): its temporary tables and settings are gone. Call again: the ' +
    'next call opens a new session.'
  );
}

/** Said before the result of the first call after the client's session expired while idle. */
function expiredNote(expired: SessionStatus | undefined, idleTimeout: number): string | undefined {
  if (expired === undefined) return undefined;
  return (
    `Note: your previous session (#${expired.id}) expired after ${formatAge(idleTimeout)} ` +
    'without a call (--session-idle-timeout); its temporary tables and settings are gone. ' +
    'This call ran in a new session.'
  );
}

/**
 * While the call labelled `label` waits, what it waits for (from `guard.status()`, which never
 * waits); `undefined` once it runs. A call queued in the client's own pinned session is told why
 * it waits for the client's other call: the connection state that pins the session.
 */
function waitingText<H>(
  guard: EngineGuard<H>,
  label: string,
  sessionId: number | undefined,
): string | undefined {
  const status = guard.status();
  const me = status.queued.find((op) => op.label === label);
  if (me === undefined) return undefined;
  const waited = `waiting ${formatAge(me.waitingMs)}`;
  const own = me.sessionId !== undefined && me.sessionId === sessionId;
  const session = own ? status.sessions.find((s) => s.id === sessionId) : undefined;
  if (session?.pinned === true && me.waitingFor.some((op) => op.sessionId === sessionId)) {
    return (
      `${waited} for your other call ${describeBlockers(me.waitingFor)}: your session holds ` +
      `${describeState(session.heldState)} on its connection, so your calls run there one at ` +
      'a time. Drop it (and RESET what you SET) to run calls side by side again.'
    );
  }
  if (me.waitingFor.length > 0) return `${waited} for ${describeBlockers(me.waitingFor)}`;
  return `${waited} for a free engine connection`;
}

/** The runner of guarded calls for one MCP server, in `client`'s session when there is one. */
export function guardedRunner<H>(app: App<H>, client: ClientSession<H> | undefined): Guarded<H> {
  const { guard, settings, log } = app;
  return async <T>(call: GuardedCall<H, T>): Promise<CallToolResult> => {
    const { tool, kind, extra, run, done } = call;
    const started = performance.now();
    // Unique, so a waiting call finds itself in `guard.status().queued`.
    const label = uniqueLabel(call.label ?? tool);
    const options = { signal: extra.signal, label };
    // Every call that outlasts a progress period says how it is doing, waiting or running:
    // clients reset their request timeout on progress (see the README).
    const stopProgress = startProgress(
      extra,
      settings.progressInterval,
      call.progress ?? newProgress(),
      () => waitingText(guard, label, client?.id),
    );
    let expired: SessionStatus | undefined;
    try {
      let value: T;
      if (client === undefined) {
        value = await (kind === 'read' ? guard.read(run, options) : guard.write(run, options));
      } else {
        const inSession = client.run(kind, run, options);
        expired = inSession.expired;
        value = await inSession.result;
      }
      const elapsed = Math.round(performance.now() - started);
      log.debug(`${tool} ok`, { ms: elapsed });
      return withNote(done(value, elapsed), expiredNote(expired, settings.sessionIdleTimeout));
    } catch (error) {
      let result = toolFailure(app, tool, error, extra.signal);
      const news = client?.afterFailure(error);
      if (news !== undefined) {
        result = toolError(`${textOf(result)}\n${sessionNote(news, settings.sessionIdleTimeout)}`);
      }
      const ms = Math.round(performance.now() - started);
      // A cancel is the client's choice, not a failure: logged as what it is.
      if (isAbort(error, extra.signal)) log.info(`${tool} cancelled`, { ms, label: options.label });
      else {
        log.info(`${tool} failed`, {
          ms,
          label: options.label,
          error: messageOf(error),
          session: news?.kind,
        });
      }
      return withNote(result, expiredNote(expired, settings.sessionIdleTimeout));
    } finally {
      stopProgress();
    }
  };
}
