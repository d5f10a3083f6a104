/**
 * `query`: one read-only SQL statement as a guarded read (in the client's session), read-only
 * because the engine refuses writes, with progress while it runs and its result capped in rows
 * and bytes.
 */
import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { z } from 'zod';
import { newProgress } from '../engine.js';
import type { ToolContext } from './guarded.js';
import { ok, opLabel, toolError } from './text.js';

const queryOutput = {
  columns: z.array(z.object({ name: z.string(), type: z.string() })),
  rows: z.array(z.record(z.string(), z.unknown())),
  rowCount: z.number().int(),
  truncated: z.boolean(),
  truncatedBy: z.enum(['max_rows', 'max_result_bytes']).nullable(),
  elapsedMs: z.number(),
};

/** Keeps the longest prefix of `rows` whose JSON fits in `maxBytes`. */
function fitRows(rows: Record<string, unknown>[], maxBytes: number): number {
  let total = 2; // []
  for (let i = 0; i < rows.length; i++) {
    total += Buffer.byteLength(JSON.stringify(rows[i])) + 1;
    if (total > maxBytes) return i;
  }
  return rows.length;
}

export function registerQueryTool<H>(server: McpServer, { app, guarded }: ToolContext<H>): void {
  const { engine, settings } = app;
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
      return guarded({
        tool: 'query',
        kind: 'read',
        extra,
        label: opLabel('query', sql),
        progress,
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
    },
  );
}
