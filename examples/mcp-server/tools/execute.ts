/**
 * `execute`: DDL/DML as an exclusive guarded write, all statements in one transaction. While it
 * waits for running calls, its progress says which ones.
 */
import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { z } from 'zod';
import { newProgress } from '../engine.js';
import type { ToolContext } from './guarded.js';
import { startProgress } from './progress.js';
import { describeBlockers, formatAge, ok, uniqueLabel } from './text.js';

const executeOutput = {
  statements: z.number().int(),
  rowsAffected: z.number().nullable(),
  elapsedMs: z.number(),
};

export function registerExecuteTool<H>(server: McpServer, { app, guarded }: ToolContext<H>): void {
  const { guard, engine, facts, settings } = app;
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
}
