/**
 * `execute`: DDL/DML as an exclusive guarded write, all statements in one transaction. While it
 * waits for running calls, its progress says which ones.
 */
import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { z } from 'zod';
import type { ToolContext } from './guarded.js';
import { ok, opLabel } from './text.js';

const executeOutput = {
  statements: z.number().int(),
  rowsAffected: z.number().nullable(),
  elapsedMs: z.number(),
};

export function registerExecuteTool<H>(server: McpServer, { app, guarded }: ToolContext<H>): void {
  const { engine, facts } = app;
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
    async ({ sql }, extra) =>
      guarded({
        tool: 'execute',
        kind: 'write',
        extra,
        // A write waits for the running calls: its progress says which ones.
        label: opLabel('execute', sql),
        run: (handle, ctx) => engine.execute(handle, ctx, sql),
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
      }),
  );
}
