/**
 * The MCP tools, on top of an {@link App} (one engine behind one `EngineGuard`).
 *
 * How the tools map to the library:
 * - Each MCP client has its own engine session (`guard.session()`, see client-session.ts): its
 *   tool calls run on its own connection, one at a time in call order, so what it creates
 *   (temporary tables, `SET`s, prepared statements, advisory locks) is its own and the same in
 *   every call. With `--max-sessions 0`, calls run stateless on the shared pool instead.
 * - `status`     → `guard.status()` + a `guard.cache()` snapshot: synchronous, no lock, no engine.
 * - `query`      → `session.read()`: beside other clients' reads; read-only by the engine.
 * - `execute`    → `session.write()`: exclusive, one transaction.
 * - `list_tables`, `describe_table` → `session.read()` (a client sees its temporary tables).
 * - MCP cancellation (`extra.signal`) → the op's `signal`: a queued call leaves the queue, a
 *   running one gets a server-side cancel.
 * - Progress: while a query runs, `notifications/progress` every `progressInterval` ms (when the
 *   client sent a progress token); the engine adapter heartbeats the guard as the engine reports
 *   progress, so a busy query is never even probed.
 * - A stall (`EngineStalledError`) comes back as a tool error saying so; the guard has already
 *   replaced the handle and the server keeps serving.
 */
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import type { RequestHandlerExtra } from '@modelcontextprotocol/sdk/shared/protocol.js';
import type {
  CallToolResult,
  ServerNotification,
  ServerRequest,
} from '@modelcontextprotocol/sdk/types.js';
import type {
  BlockingOp,
  EngineGuardErrorCode,
  EngineStalledError,
  EngineUnavailableError,
  LockTimeoutError,
  OpContext,
  SessionLimitError,
  SessionStatus,
} from 'engine-guard';
import { z } from 'zod';
import type { App } from './app.js';
import { ClientSession, type SessionNews } from './client-session.js';
import { InputError, newProgress, type QueryProgress, type TableColumns } from './engine.js';

export const SERVER_NAME = 'engine-guard-mcp';
export const SERVER_VERSION = '0.1.0';

type Extra = RequestHandlerExtra<ServerRequest, ServerNotification>;

// ---------------------------------------------------------------------------------------------
// Output schemas (also advertised in tools/list)

const opShape = z.object({
  id: z.number(),
  kind: z.enum(['read', 'write']),
  label: z.string().nullable(),
  generation: z.number(),
  ageMs: z.number(),
  sinceHeartbeatMs: z.number(),
  probeFailures: z.number(),
  phase: z.enum(['running', 'cancelling']),
});

const statusOutput = {
  engine: z.object({
    kind: z.enum(['duckdb', 'postgres']),
    description: z.string(),
    readOnlyQueries: z.string(),
    version: z.string().nullable(),
    database: z.string().nullable(),
    tables: z.number().nullable(),
    views: z.number().nullable(),
    factsAgeMs: z.number().nullable(),
    factsRefreshing: z.boolean(),
    factsError: z.string().nullable(),
  }),
  guard: z.object({
    state: z.enum(['idle', 'connecting', 'ready', 'degraded', 'closed']),
    generation: z.number(),
    handles: z.object({
      total: z.number(),
      busy: z.number(),
      idle: z.number(),
      connecting: z.number(),
      retiring: z.number(),
    }),
    running: z.array(opShape),
    queue: z.object({ readers: z.number(), writers: z.number(), forHandle: z.number() }),
    /** Each queued call and the running calls it waits for. */
    queued: z.array(
      z.object({
        id: z.number(),
        kind: z.enum(['read', 'write']),
        label: z.string().nullable(),
        waitingMs: z.number(),
        waitingFor: z.array(
          z.object({
            id: z.number(),
            kind: z.enum(['read', 'write']),
            label: z.string().nullable(),
            ageMs: z.number(),
          }),
        ),
      }),
    ),
    lastProbe: z.object({ ok: z.boolean(), ageMs: z.number(), durationMs: z.number() }).nullable(),
    lastError: z.object({ message: z.string(), ageMs: z.number() }).nullable(),
    counters: z.record(z.string(), z.number()),
  }),
  /** The client sessions (one per MCP client that made a call), oldest first. */
  sessions: z.object({
    max: z.number(),
    idleTimeoutMs: z.number(),
    /** Id of the calling client's own session; null before its first call or without sessions. */
    yours: z.number().nullable(),
    list: z.array(
      z.object({
        id: z.number(),
        label: z.string().nullable(),
        state: z.enum(['new', 'open', 'lost', 'closed']),
        ageMs: z.number(),
        idleMs: z.number(),
        ops: z.number(),
        queued: z.number(),
        running: z.boolean(),
        losses: z.number(),
      }),
    ),
  }),
  liveness: z.object({ interval: z.number(), timeout: z.number(), failures: z.number() }),
  uptimeMs: z.number(),
  answeredInMs: z.number(),
};

const queryOutput = {
  columns: z.array(z.object({ name: z.string(), type: z.string() })),
  rows: z.array(z.record(z.string(), z.unknown())),
  rowCount: z.number().int(),
  truncated: z.boolean(),
  truncatedBy: z.enum(['max_rows', 'max_result_bytes']).nullable(),
  elapsedMs: z.number(),
};

const executeOutput = {
  statements: z.number().int(),
  rowsAffected: z.number().nullable(),
  elapsedMs: z.number(),
};

const listTablesOutput = {
  tables: z.array(z.object({ schema: z.string(), name: z.string(), type: z.string() })),
};

const describeOutput = {
  schema: z.string(),
  table: z.string(),
  columns: z.array(
    z.object({
      name: z.string(),
      type: z.string(),
      nullable: z.boolean(),
      default: z.string().nullable(),
    }),
  ),
};

// ---------------------------------------------------------------------------------------------
// Helpers

/** Most characters of the JSON preview in a result's text block. */
const PREVIEW_CHARS = 2_000;

/**
 * A tool result: the data in `structuredContent`, and a short text block (the one-line summary
 * and a bounded preview of the JSON) for clients that only show text, so a large result is not
 * sent twice.
 */
function ok(structured: Record<string, unknown>, summary: string): CallToolResult {
  const json = JSON.stringify(structured);
  const preview =
    json.length <= PREVIEW_CHARS
      ? json
      : `${json.slice(0, PREVIEW_CHARS)}... (${json.length - PREVIEW_CHARS} more characters in structuredContent)`;
  return {
    content: [{ type: 'text', text: `${summary}\n${preview}` }],
    structuredContent: structured,
  };
}

function toolError(message: string): CallToolResult {
  return { content: [{ type: 'text', text: message }], isError: true };
}

/** The text of a result's text blocks. */
function textOf(result: CallToolResult): string {
  return result.content.map((c) => (c.type === 'text' ? c.text : '')).join('\n');
}

/** `result` with `note` as its first text block (an error's message keeps one block). */
function withNote(result: CallToolResult, note: string | undefined): CallToolResult {
  if (note === undefined) return result;
  if (result.isError) return toolError(`${note}\n${textOf(result)}`);
  return { ...result, content: [{ type: 'text', text: note }, ...result.content] };
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function isAbort(error: unknown, signal: AbortSignal): boolean {
  return signal.aborted && (error === signal.reason || (error as Error)?.name === 'AbortError');
}

function label(tool: string, sql?: string): string {
  if (sql === undefined) return tool;
  const flat = sql.replace(/\s+/g, ' ').trim();
  return `${tool}: ${flat.length > 60 ? `${flat.slice(0, 57)}...` : flat}`;
}

let callSequence = 0;
/** A label no other call has: a waiting call finds itself in `guard.status().queued` by it. */
function uniqueLabel(tool: string, sql: string): string {
  return `${label(tool, sql)} [call ${++callSequence}]`;
}

/**
 * Sends `notifications/progress` every `intervalMs` while an op runs, when the client asked for
 * progress (sent a progress token). `progress` is the elapsed time in ms, always increasing; the
 * message says what the engine reports.
 */
function startProgress(
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

/** "4 min", "12.5 s", "80 ms": how long an op has been running or waiting. */
function formatAge(ms: number): string {
  if (ms < 1_000) return `${Math.round(ms)} ms`;
  if (ms < 120_000) return `${(ms / 1_000).toFixed(1)} s`;
  return `${Math.round(ms / 60_000)} min`;
}

/** `query #12 "query: select ..." (running 4 min)`, for each op a queued call waits for. */
function describeBlockers(blockers: readonly BlockingOp[]): string {
  return blockers
    .map((op) => {
      const tool = op.label?.split(':')[0] ?? op.kind;
      const what = op.label === undefined ? '' : ` "${op.label}"`;
      return `${tool} #${op.id}${what} (running ${formatAge(op.ageMs)})`;
    })
    .join(', ');
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

/** Keeps the longest prefix of `rows` whose JSON fits in `maxBytes`. */
function fitRows(rows: Record<string, unknown>[], maxBytes: number): number {
  let total = 2; // []
  for (let i = 0; i < rows.length; i++) {
    total += Buffer.byteLength(JSON.stringify(rows[i])) + 1;
    if (total > maxBytes) return i;
  }
  return rows.length;
}

// ---------------------------------------------------------------------------------------------

/**
 * An McpServer with the tools, on the shared app. One per MCP session (HTTP) or one for stdio;
 * each has its own engine session (unless `maxSessions` is 0), closed when the McpServer closes.
 */
export function createMcpServer<H>(app: App<H>): McpServer {
  const { guard, engine, facts, settings, log } = app;
  const server: McpServer = new McpServer(
    { name: SERVER_NAME, version: SERVER_VERSION },
    {
      capabilities: { tools: {} },
      instructions:
        `SQL access to ${engine.description} through engine-guard. Use list_tables and ` +
        'describe_table to explore, query for read-only SQL (one statement), execute for ' +
        'DDL/DML, and status for a health check that never waits on the engine.' +
        (settings.maxSessions === 0
          ? ''
          : ' Your calls run in a session of your own, one at a time in the order sent: ' +
            'temporary tables and settings you create last across your calls and are seen by ' +
            'no other client, until you disconnect or stay idle for ' +
            `${Math.round(settings.sessionIdleTimeout / 1000)} s.`),
    },
  );

  const client =
    settings.maxSessions === 0
      ? undefined
      : new ClientSession(guard, settings.sessionIdleTimeout, () => {
          const name = server.server.getClientVersion()?.name ?? 'client';
          const mcpSession = server.server.transport?.sessionId;
          return mcpSession === undefined
            ? name
            : `${name} (MCP session ${mcpSession.slice(0, 8)})`;
        });
  if (client !== undefined) {
    // The MCP session is over (client gone, stdio closed, HTTP DELETE, shutdown): its
    // engine session goes with it, freeing its slot and dropping its state.
    server.server.onclose = () => {
      client.close().catch((error: unknown) => log.debug('session close failed', { error }));
    };
  }

  /** Turns any failure of a guarded call into a tool error a person or an agent can act on. */
  const failure = (tool: string, error: unknown, extra: Extra): CallToolResult => {
    if (error instanceof InputError) return toolError(error.message);
    // engine-guard's errors carry a stable `code`: switch on it (an `instanceof` check fails
    // across two copies of the library, e.g. its ESM and CJS builds).
    switch ((error as { code?: unknown } | null)?.code as EngineGuardErrorCode | undefined) {
      case 'ERR_ENGINE_STALLED': {
        const stalled = error as EngineStalledError;
        const { interval, timeout, failures } = settings.liveness;
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
    if (isAbort(error, extra.signal)) return toolError(`${tool} was cancelled.`);
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
  };

  /** What {@link guarded} runs: one tool call as one guarded op. */
  interface GuardedCall<T> {
    tool: string;
    kind: 'read' | 'write';
    extra: Extra;
    /** Shown in `status()` and logs; defaults to the tool's name. */
    label?: string;
    run: (handle: H, ctx: OpContext) => Promise<T>;
    /** Builds the tool result from the op's value. */
    done: (value: T, elapsedMs: number) => CallToolResult;
  }

  /**
   * Runs a guarded op for a tool (in the client's session, or stateless with `--max-sessions
   * 0`), mapping failures to tool errors and logging the outcome.
   */
  const guarded = async <T>(call: GuardedCall<T>): Promise<CallToolResult> => {
    const { tool, kind, extra, run, done } = call;
    const started = performance.now();
    const options = { signal: extra.signal, label: call.label ?? tool };
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
      let result = failure(tool, error, extra);
      const news = client?.afterFailure(error);
      if (news !== undefined) {
        result = toolError(`${textOf(result)}\n${sessionNote(news, settings.sessionIdleTimeout)}`);
      }
      log.info(`${tool} failed`, {
        ms: Math.round(performance.now() - started),
        error: messageOf(error),
        session: news?.kind,
      });
      return withNote(result, expiredNote(expired, settings.sessionIdleTimeout));
    }
  };

  // -------------------------------------------------------------------------------------------
  server.registerTool(
    'status',
    {
      title: 'Engine status',
      description:
        'Health of the engine guard (state, connections, running calls with their age and ' +
        'liveness, queue, counters of stalls and replacements) and cached engine facts (version, ' +
        'table count). Answers from memory in milliseconds and never waits on the engine, even ' +
        'while every connection is stuck.',
      inputSchema: {},
      outputSchema: statusOutput,
      annotations: { readOnlyHint: true, idempotentHint: true, openWorldHint: false },
    },
    () => {
      const t0 = performance.now();
      const s = guard.status();
      const f = facts.get(); // never waits: refreshes in the background when stale
      const now = Date.now();
      const structured = {
        engine: {
          kind: engine.kind,
          description: engine.description,
          readOnlyQueries: engine.readOnlyMode,
          version: f.value?.version ?? null,
          database: f.value?.database ?? null,
          tables: f.value?.tables ?? null,
          views: f.value?.views ?? null,
          factsAgeMs: f.value === undefined ? null : Math.round(f.ageMs),
          factsRefreshing: f.refreshing,
          factsError: f.error === undefined ? null : messageOf(f.error),
        },
        guard: {
          state: s.state,
          generation: s.generation,
          handles: s.handles,
          running: s.running.map((op) => ({
            id: op.id,
            kind: op.kind,
            label: op.label ?? null,
            generation: op.generation,
            ageMs: Math.round(op.ageMs),
            sinceHeartbeatMs: Math.round(op.sinceHeartbeatMs),
            probeFailures: op.probeFailures,
            phase: op.phase,
          })),
          queue: s.queue,
          queued: s.queued.map((op) => ({
            id: op.id,
            kind: op.kind,
            label: op.label ?? null,
            waitingMs: Math.round(op.waitingMs),
            waitingFor: op.waitingFor.map((b) => ({
              id: b.id,
              kind: b.kind,
              label: b.label ?? null,
              ageMs: Math.round(b.ageMs),
            })),
          })),
          lastProbe:
            s.lastProbe === null
              ? null
              : {
                  ok: s.lastProbe.ok,
                  ageMs: now - s.lastProbe.at,
                  durationMs: Math.round(s.lastProbe.durationMs),
                },
          lastError:
            s.lastError === null
              ? null
              : { message: s.lastError.message, ageMs: now - s.lastError.at },
          counters: { ...s.counters },
        },
        sessions: {
          max: settings.maxSessions,
          idleTimeoutMs: settings.sessionIdleTimeout,
          yours: client?.id ?? null,
          list: s.sessions.map((session) => ({
            id: session.id,
            label: session.label ?? null,
            state: session.state,
            ageMs: Math.round(session.ageMs),
            idleMs: Math.round(session.idleMs),
            ops: session.ops,
            queued: session.queued,
            running: session.running,
            losses: session.losses,
          })),
        },
        liveness: { ...settings.liveness },
        uptimeMs: now - app.startedAt,
        answeredInMs: Math.round((performance.now() - t0) * 1000) / 1000,
      };
      const facts1 = f.value === undefined ? 'facts pending' : `${f.value.tables} tables`;
      const summary =
        `${s.state}: ${s.handles.total} connection${s.handles.total === 1 ? '' : 's'} ` +
        `(${s.handles.busy} busy), ${s.running.length} running, ` +
        `${s.queue.readers + s.queue.writers} queued, ${s.counters.stalls} stalls, ` +
        `${s.sessions.length} session${s.sessions.length === 1 ? '' : 's'}, ${facts1}; ` +
        `answered in ${structured.answeredInMs} ms.`;
      return ok(structured, summary);
    },
  );

  // -------------------------------------------------------------------------------------------
  server.registerTool(
    'query',
    {
      title: 'Read-only SQL query',
      description:
        'Runs ONE read-only SQL statement (SELECT, WITH, SHOW, EXPLAIN, ...) and returns its ' +
        'rows. The engine itself refuses writes (read-only transaction); use execute for ' +
        `DDL/DML. At most ${settings.maxRows} rows (or max_rows) come back; "truncated" says ` +
        'when there were more. Long queries are fine: they report progress and are only ' +
        'abandoned when the engine stops answering, never for taking long.',
      inputSchema: {
        sql: z.string().min(1).describe('One read-only SQL statement'),
        max_rows: z
          .number()
          .int()
          .min(1)
          .max(settings.maxRows)
          .optional()
          .describe(`Most rows to return (default and maximum ${settings.maxRows})`),
      },
      outputSchema: queryOutput,
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    async ({ sql, max_rows }, extra) => {
      const maxRows = max_rows ?? settings.maxRows;
      const progress = newProgress();
      const stopProgress = startProgress(extra, settings.progressInterval, progress);
      try {
        return await guarded({
          tool: 'query',
          kind: 'read',
          extra,
          label: label('query', sql),
          run: (handle, ctx) => engine.query(handle, ctx, sql, { maxRows, progress }),
          done: (out, elapsedMs) => {
            let rows = out.rows;
            let truncatedBy: 'max_rows' | 'max_result_bytes' | null = out.truncated
              ? 'max_rows'
              : null;
            const fit = fitRows(rows, settings.maxResultBytes);
            if (fit < rows.length) {
              if (fit === 0) {
                return toolError(
                  `Result too large: a single row is over the ${settings.maxResultBytes}-byte ` +
                    'limit of one result. Select fewer or shorter columns (e.g. left(col, 200)).',
                );
              }
              rows = rows.slice(0, fit);
              truncatedBy = 'max_result_bytes';
            }
            const structured = {
              columns: out.columns,
              rows,
              rowCount: rows.length,
              truncated: truncatedBy !== null,
              truncatedBy,
              elapsedMs,
            };
            const summary =
              truncatedBy === null
                ? `${rows.length} row${rows.length === 1 ? '' : 's'} in ${elapsedMs} ms.`
                : `${rows.length} rows in ${elapsedMs} ms; TRUNCATED: the result has more rows ` +
                  `(limit: ${truncatedBy === 'max_rows' ? `${maxRows} rows` : `${settings.maxResultBytes} bytes`}).`;
            return ok(structured, summary);
          },
        });
      } finally {
        stopProgress();
      }
    },
  );

  // -------------------------------------------------------------------------------------------
  server.registerTool(
    'execute',
    {
      title: 'Execute DDL/DML',
      description:
        'Runs DDL/DML (CREATE, INSERT, UPDATE, DELETE, ...). Several statements separated by ' +
        '";" run in ONE transaction: all or nothing. Runs alone on the engine (waits for ' +
        'running queries to finish). If the engine stalls meanwhile, the outcome is reported ' +
        'as indeterminate.',
      inputSchema: { sql: z.string().min(1).describe('DDL/DML statement(s)') },
      outputSchema: executeOutput,
      annotations: { readOnlyHint: false, destructiveHint: true, openWorldHint: false },
    },
    async ({ sql }, extra) => {
      const progress = newProgress();
      // A write waits for the running queries; until it starts, progress says which ones.
      const myLabel = uniqueLabel('execute', sql);
      let started = false;
      const waiting = (): string | undefined => {
        if (started) return undefined;
        const me = guard.status().queued.find((op) => op.label === myLabel);
        if (me === undefined || me.waitingFor.length === 0) return undefined;
        return `waiting ${formatAge(me.waitingMs)} for ${describeBlockers(me.waitingFor)}`;
      };
      const stopProgress = startProgress(extra, settings.progressInterval, progress, waiting);
      try {
        return await guarded({
          tool: 'execute',
          kind: 'write',
          extra,
          label: myLabel,
          run: (handle, ctx) => {
            started = true;
            return engine.execute(handle, ctx, sql);
          },
          done: (out, elapsedMs) => {
            // The catalog may have changed: refresh the cached facts in the background.
            facts.refresh().catch(() => {});
            return ok(
              { ...out, elapsedMs },
              `OK: ${out.statements} statement${out.statements === 1 ? '' : 's'} committed` +
                (out.rowsAffected === null ? '' : `, ${out.rowsAffected} rows affected`) +
                ` in ${elapsedMs} ms.`,
            );
          },
        });
      } finally {
        stopProgress();
      }
    },
  );

  // -------------------------------------------------------------------------------------------
  server.registerTool(
    'list_tables',
    {
      title: 'List tables',
      description: 'Tables and views of the database, with their schema and type.',
      inputSchema: {},
      outputSchema: listTablesOutput,
      annotations: { readOnlyHint: true, idempotentHint: true, openWorldHint: false },
    },
    (_args, extra) =>
      guarded({
        tool: 'list_tables',
        kind: 'read',
        extra,
        label: 'list_tables',
        run: (handle, ctx) => engine.listTables(handle, ctx),
        done: (tables) =>
          ok(
            { tables },
            tables.length === 0
              ? 'No tables.'
              : `${tables.length} table${tables.length === 1 ? '' : 's'}: ` +
                  tables.map((t) => `${t.schema}.${t.name}`).join(', '),
          ),
      }),
  );

  // -------------------------------------------------------------------------------------------
  server.registerTool(
    'describe_table',
    {
      title: 'Describe a table',
      description: 'Columns of one table or view: name, type, nullability, default.',
      inputSchema: {
        table: z.string().min(1).describe('Table name, optionally schema-qualified (schema.table)'),
        schema: z.string().min(1).optional().describe('Schema, when not in "table"'),
      },
      outputSchema: describeOutput,
      annotations: { readOnlyHint: true, idempotentHint: true, openWorldHint: false },
    },
    async ({ table, schema }, extra) => {
      let name = table.trim();
      let inSchema = schema?.trim();
      const dot = name.indexOf('.');
      if (inSchema === undefined && dot > 0) {
        inSchema = name.slice(0, dot);
        name = name.slice(dot + 1);
      }
      const unquote = (s: string): string => s.replace(/^"(.*)"$/, '$1');
      name = unquote(name);
      inSchema = inSchema === undefined ? undefined : unquote(inSchema);
      const where = inSchema === undefined ? `"${name}"` : `"${inSchema}.${name}"`;
      return guarded({
        tool: 'describe_table',
        kind: 'read',
        extra,
        label: `describe_table: ${inSchema === undefined ? '' : `${inSchema}.`}${name}`,
        run: async (handle, ctx) => {
          const found = await engine.describeTable(handle, ctx, name, inSchema);
          if (found.size === 0) {
            const tables = await engine.listTables(handle, ctx);
            const known = tables.map((t) => `${t.schema}.${t.name}`);
            throw new InputError(
              `Unknown table ${where}. ` +
                (known.length === 0
                  ? 'The database has no tables.'
                  : `Known tables: ${known.slice(0, 50).join(', ')}${known.length > 50 ? ', ...' : ''}.`),
            );
          }
          if (found.size > 1) {
            throw new InputError(
              `Table ${where} exists in several schemas (${[...found.keys()].join(', ')}); ` +
                'pass "schema" or a schema-qualified name.',
            );
          }
          const [[foundSchema, { table: foundTable, columns }]] = [...found] as [
            [string, TableColumns],
          ];
          return { schema: foundSchema, table: foundTable, columns };
        },
        done: (out) =>
          ok(
            out,
            `${out.schema}.${out.table}: ${out.columns.map((c) => `${c.name} ${c.type}`).join(', ')}`,
          ),
      });
    },
  );

  // -------------------------------------------------------------------------------------------
  const faults = app.faults;
  if (faults !== undefined) {
    server.registerTool(
      'demo_wedge',
      {
        title: 'DEMO ONLY: a call that wedges its connection',
        description:
          'Demo fault injection (only with --demo-faults): runs a read whose engine connection ' +
          'goes silent, like a half-open TCP connection. Its liveness probes get no answer, ' +
          'so the guard convicts it and replaces the connection.',
        inputSchema: {},
        annotations: { readOnlyHint: true, openWorldHint: false },
      },
      (_args, extra) =>
        guarded({
          tool: 'demo_wedge',
          kind: 'read',
          extra,
          label: 'demo_wedge: a call on a connection that went half-open',
          run: (handle) => faults.wedge(handle),
          done: () => toolError('unreachable: a wedged call never returns'),
        }),
    );
  }

  return server;
}
