/**
 * `describe_table`: the columns of one table or view. An unknown or ambiguous name is a tool
 * error that lists what the client can pick from.
 */
import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { z } from 'zod';
import { InputError, type TableColumns } from '../engine.js';
import type { ToolContext } from './guarded.js';
import { ok } from './text.js';

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

export function registerDescribeTableTool<H>(
  server: McpServer,
  { app, guarded }: ToolContext<H>,
): void {
  const { engine } = app;
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
}
