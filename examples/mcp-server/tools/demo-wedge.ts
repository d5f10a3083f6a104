/**
 * `demo_wedge` (only with `--demo-faults`): a read whose connection goes silent, like a
 * half-open TCP connection, so the demo can show a real conviction and replacement.
 */
import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import type { DemoFaults } from '../demo-faults.js';
import type { ToolContext } from './guarded.js';
import { toolError } from './text.js';

export function registerDemoWedgeTool<H>(
  server: McpServer,
  { guarded }: ToolContext<H>,
  faults: DemoFaults<H>,
): void {
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
