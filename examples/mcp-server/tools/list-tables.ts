/** `list_tables`: the tables and views the client sees (its temporary tables included). */
import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { z } from 'zod';
import type { ToolContext } from './guarded.js';
import { ok } from './text.js';

const listTablesOutput = {
  tables: z.array(z.object({ schema: z.string(), name: z.string(), type: z.string() })),
};

export function registerListTablesTool<H>(
  server: McpServer,
  { app, guarded }: ToolContext<H>,
): void {
  const { engine } = app;
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
}
