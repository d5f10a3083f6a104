/**
 * `status`: `guard.status()` and a `guard.cache()` snapshot of engine facts. Synchronous, takes
 * no lock and touches no engine, so it answers even while every connection is wedged.
 */
import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { z } from 'zod';
import type { ToolContext } from './guarded.js';
import { messageOf, ok } from './text.js';

const opShape = z.object({
  id: z.number(),
  kind: z.enum(['read', 'write']),
  label: z.string().nullable(),
  generation: z.number(),
  ageMs: z.number(),
  sinceHeartbeatMs: z.number(),
  probeFailures: z.number(),
  phase: z.enum(['running', 'cancelling']),
  /** The client session it runs in; null outside one. */
  session: z.number().nullable(),
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
      /** Connections held by client sessions that keep state on them (pinned), beside the shared ones. */
      sessions: z.number(),
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
        /** The client session it was called in; null outside one. */
        session: z.number().nullable(),
        waitingFor: z.array(
          z.object({
            id: z.number(),
            kind: z.enum(['read', 'write']),
            label: z.string().nullable(),
            ageMs: z.number(),
            session: z.number().nullable(),
          }),
        ),
      }),
    ),
    lastProbe: z.object({ ok: z.boolean(), ageMs: z.number(), durationMs: z.number() }).nullable(),
    lastError: z.object({ message: z.string(), ageMs: z.number() }).nullable(),
    counters: z.record(z.string(), z.number()),
  }),
  /**
   * The client sessions (one per MCP client that made a call), oldest first. A session holds a
   * connection of its own (is pinned) only while it keeps connection state there.
   */
  sessions: z.object({
    /** Most sessions pinned at once (--max-sessions). */
    max: z.number(),
    /** Sessions pinned now. */
    pinned: z.number(),
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
        pinned: z.boolean(),
        /** What keeps it pinned: its temporary tables, settings... */
        heldState: z.array(z.object({ kind: z.string(), name: z.string() })),
      }),
    ),
  }),
  liveness: z.object({ interval: z.number(), timeout: z.number(), failures: z.number() }),
  uptimeMs: z.number(),
  answeredInMs: z.number(),
};

export function registerStatusTool<H>(server: McpServer, { app, client }: ToolContext<H>): void {
  const { guard, engine, facts, settings } = app;
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
            session: op.sessionId ?? null,
          })),
          queue: s.queue,
          queued: s.queued.map((op) => ({
            id: op.id,
            kind: op.kind,
            label: op.label ?? null,
            waitingMs: Math.round(op.waitingMs),
            session: op.sessionId ?? null,
            waitingFor: op.waitingFor.map((b) => ({
              id: b.id,
              kind: b.kind,
              label: b.label ?? null,
              ageMs: Math.round(b.ageMs),
              session: b.sessionId ?? null,
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
          pinned: s.sessions.filter((session) => session.pinned).length,
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
            pinned: session.pinned,
            heldState: session.heldState.map(({ kind, name }) => ({ kind, name })),
          })),
        },
        liveness: { ...app.liveness },
        uptimeMs: now - app.startedAt,
        answeredInMs: Math.round((performance.now() - t0) * 1000) / 1000,
      };
      const facts1 = f.value === undefined ? 'facts pending' : `${f.value.tables} tables`;
      const plural = (n: number, word: string): string => `${n} ${word}${n === 1 ? '' : 's'}`;
      // Calls waiting in the lock or for a connection, and calls waiting in their own session.
      const queued = s.queued.length;
      const inSessions = s.queued.filter((op) => op.sessionId !== undefined).length;
      const summary =
        `${s.state}: ${plural(s.handles.total, 'shared connection')} (${s.handles.busy} busy)` +
        ` + ${s.handles.sessions} held by sessions, ${s.running.length} running, ` +
        `${queued} queued${inSessions > 0 ? ` (${inSessions} in their sessions)` : ''}, ` +
        `${plural(s.counters.stalls, 'stall')}, ${plural(s.sessions.length, 'session')} ` +
        `(${structured.sessions.pinned} pinned, max ${settings.maxSessions}), ${facts1}; ` +
        `answered in ${structured.answeredInMs} ms.`;
      return ok(structured, summary);
    },
  );
}
