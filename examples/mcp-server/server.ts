/**
 * The MCP server: one `McpServer` with the tools, on top of an {@link App} (one engine behind
 * one `EngineGuard`). Each tool is a file of its own under `tools/`, to read or copy alone.
 *
 * How the tools map to the library:
 * - Each MCP client has its own engine session (`guard.session()`, see client-session.ts) that
 *   pins on state: its calls run side by side on shared connections until one leaves connection
 *   state (a temporary table, a `SET`, a prepared statement, an advisory lock); from then on the
 *   client's calls run on that connection, one at a time, so its state is its own and the same
 *   in every call, until it drops the state. With `--max-sessions 0`, no client may keep state:
 *   a call that leaves some is told it was discarded.
 * - `status`     → `guard.status()` + a `guard.cache()` snapshot: synchronous, no lock, no engine
 *   (tools/status.ts).
 * - `query`      → `session.read()`: beside other clients' reads; read-only by the engine
 *   (tools/query.ts).
 * - `execute`    → `session.write()`: exclusive, one transaction (tools/execute.ts).
 * - `list_tables`, `describe_table` → `session.read()` (a client sees its temporary tables).
 * - MCP cancellation (`extra.signal`) → the op's `signal`: a queued call leaves the queue, a
 *   running one gets a server-side cancel (tools/guarded.ts).
 * - Progress: while a query runs, `notifications/progress` every `progressInterval` ms (when the
 *   client sent a progress token); the engine adapter heartbeats the guard as the engine reports
 *   progress, so a busy query is never even probed (tools/progress.ts).
 * - A stall (`EngineStalledError`) comes back as a tool error saying so; the guard has already
 *   replaced the handle and the server keeps serving (tools/failures.ts).
 */
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import type { App } from './app.js';
import { ClientSession } from './client-session.js';
import { registerDemoWedgeTool } from './tools/demo-wedge.js';
import { registerDescribeTableTool } from './tools/describe-table.js';
import { registerExecuteTool } from './tools/execute.js';
import { guardedRunner, type ToolContext } from './tools/guarded.js';
import { registerListTablesTool } from './tools/list-tables.js';
import { registerQueryTool } from './tools/query.js';
import { registerStatusTool } from './tools/status.js';

export const SERVER_NAME = 'engine-guard-mcp';
export const SERVER_VERSION = '0.1.0';

/**
 * An McpServer with the tools, on the shared app. One per MCP session (HTTP) or one for stdio;
 * each has its own engine session (unless `maxSessions` is 0 and the engine cannot report state),
 * closed when the McpServer closes.
 */
export function createMcpServer<H>(app: App<H>): McpServer {
  const { guard, engine, settings, log } = app;
  const server: McpServer = new McpServer(
    { name: SERVER_NAME, version: SERVER_VERSION },
    {
      capabilities: { tools: {} },
      instructions:
        `SQL access to ${engine.description} through engine-guard. Use list_tables and ` +
        'describe_table to explore, query for read-only SQL (one statement), execute for ' +
        'DDL/DML, and status for a health check that never waits on the engine.' +
        (settings.maxSessions === 0
          ? ' Connection state (temporary tables, SET) does not last between calls.'
          : ' Your calls run side by side. Temporary tables and settings you create last ' +
            'across your calls and are seen by no other client; while you keep such state, ' +
            'your calls run one at a time on its connection (drop it to run side by side ' +
            'again), until you disconnect or stay idle for ' +
            `${Math.round(settings.sessionIdleTimeout / 1000)} s.`),
    },
  );

  const client =
    settings.maxSessions === 0 && !app.pinsOnState
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

  const tools: ToolContext<H> = { app, client, guarded: guardedRunner(app, client) };
  registerStatusTool(server, tools);
  registerQueryTool(server, tools);
  registerExecuteTool(server, tools);
  registerListTablesTool(server, tools);
  registerDescribeTableTool(server, tools);
  if (app.faults !== undefined) registerDemoWedgeTool(server, tools, app.faults);
  return server;
}
