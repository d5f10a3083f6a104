/**
 * `npm run demo`: the whole story in a terminal, in well under a minute, with nothing to install.
 *
 * It starts the example MCP server (embedded DuckDB with its sample data) as a subprocess,
 * connects to it with the MCP SDK client, and shows side by side:
 *   1. a long analytics query with live progress notifications,
 *   2. `status` answering at once meanwhile,
 *   3. a call whose engine connection goes silent (a demo-only injected fault), convicted by the
 *      guard's liveness watchdog and its connection replaced, while the long query carries on,
 *   4. normal service again.
 *
 * Exits 0 when done, 1 if anything went wrong (and then prints the server's log).
 */
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { longAnalyticsQuery } from './mcp-server/sample-data.js';
import { serverProcess } from './mcp-server/spawn.js';

const LIVENESS = { interval: 500, timeout: 500, failures: 2 };
const DEADLINE_MS = 55_000;

// ---------------------------------------------------------------------------------------------
// Output

const color = process.stdout.isTTY === true && !process.env.NO_COLOR;
const paint = (code: string) => (text: string) => (color ? `\x1b[${code}m${text}\x1b[0m` : text);
const bold = paint('1');
const dim = paint('2');
const green = paint('32');
const red = paint('31');
const yellow = paint('33');
const cyan = paint('36');

const t0 = performance.now();
const stamp = (): string => dim(`[+${((performance.now() - t0) / 1000).toFixed(1)}s]`);
const say = (message: string): void => console.log(`${stamp()} ${message}`);
const section = (title: string): void => console.log(`\n${bold(title)}`);

// ---------------------------------------------------------------------------------------------
// Server

const serverLog: string[] = [];
const transport = new StdioClientTransport({
  ...serverProcess([
    '--demo-faults',
    '--liveness-interval',
    String(LIVENESS.interval),
    '--liveness-timeout',
    String(LIVENESS.timeout),
    '--liveness-failures',
    String(LIVENESS.failures),
    '--progress-interval',
    '1000',
  ]),
  stderr: 'pipe',
});
transport.stderr?.on('data', (chunk: Buffer) => {
  serverLog.push(...chunk.toString().split('\n').filter(Boolean));
  if (serverLog.length > 200) serverLog.splice(0, serverLog.length - 200);
});
const client = new Client({ name: 'engine-guard-demo', version: '0.1.0' });

interface StatusView {
  engine: { version: string | null; tables: number | null; views: number | null };
  guard: {
    state: string;
    generation: number;
    handles: { total: number; busy: number };
    running: { id: number; label: string | null; ageMs: number; probeFailures: number }[];
    counters: Record<string, number>;
  };
}

function textOf(result: CallToolResult): string {
  return result.content
    .map((part) => (part.type === 'text' ? part.text : `[${part.type}]`))
    .join('\n');
}

async function call(
  name: string,
  args: Record<string, unknown> = {},
  onProgress?: (message: string) => void,
): Promise<CallToolResult> {
  return (await client.callTool(
    { name, arguments: args },
    undefined,
    onProgress === undefined
      ? { timeout: DEADLINE_MS }
      : { timeout: DEADLINE_MS, onprogress: (p) => onProgress(p.message ?? `${p.progress}`) },
  )) as CallToolResult;
}

async function status(): Promise<{ view: StatusView; ms: number }> {
  const started = performance.now();
  const result = await call('status');
  const ms = performance.now() - started;
  if (result.isError) throw new Error(`status failed: ${textOf(result)}`);
  return { view: result.structuredContent as unknown as StatusView, ms };
}

function describeRunning(view: StatusView): string {
  if (view.guard.running.length === 0) return 'nothing running';
  return view.guard.running
    .map((op) => {
      const name = (op.label ?? 'op').split(':')[0];
      const probes = op.probeFailures > 0 ? yellow(`, ${op.probeFailures} failed probe(s)`) : '';
      return `${name} ${(op.ageMs / 1000).toFixed(1)}s${probes}`;
    })
    .join(' | ');
}

function statusLine(view: StatusView, ms: number): string {
  const c = view.guard.counters;
  const state = view.guard.state === 'ready' ? green(view.guard.state) : yellow(view.guard.state);
  return (
    `${cyan('status')} answered in ${ms.toFixed(0)} ms: ${state}, running: ${describeRunning(view)}` +
    (c.stalls ? `; stalls ${c.stalls}, connections replaced ${c.replacements}` : '')
  );
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  console.log(bold('engine-guard demo: one embedded DuckDB engine behind an MCP server'));
  console.log(
    dim(
      `liveness: a silent call is probed after ${LIVENESS.interval} ms; each probe may take ` +
        `${LIVENESS.timeout} ms; ${LIVENESS.failures} failed probes in a row convict it.`,
    ),
  );

  say('Starting the example MCP server (DuckDB with generated sample data)...');
  await client.connect(transport);
  const { tools } = await client.listTools();
  say(`Connected over stdio. Tools: ${tools.map((t) => t.name).join(', ')}`);
  // The first status may come before the facts are cached; give them a moment.
  let first = await status();
  for (let i = 0; i < 20 && first.view.engine.tables === null; i++) {
    await new Promise((r) => setTimeout(r, 100));
    first = await status();
  }
  say(
    `${cyan('status')} answered in ${first.ms.toFixed(0)} ms: DuckDB ${first.view.engine.version}, ` +
      `${first.view.engine.tables} tables and ${first.view.engine.views} view(s)`,
  );

  // The long query takes seconds on a small machine; on a fast one it gets more work (fewer
  // buckets), so that it still outlasts the wedged call. Timed on a tenth of its work.
  const timing = performance.now();
  const sample = await call('query', { sql: longAnalyticsQuery(50, 0.1) });
  if (sample.isError) throw new Error(`the sample query failed: ${textOf(sample)}`);
  const tenthMs = performance.now() - timing;
  const buckets = tenthMs < 100 ? 10 : tenthMs < 200 ? 25 : 50;
  const pairCount = (200_000 * 200_000) / buckets;
  const pairs =
    pairCount >= 1e9
      ? `${(pairCount / 1e9).toFixed(1)} billion`
      : `${Math.round(pairCount / 1e6)} million`;

  section(`1. Agent A starts a long analytics query (~${pairs} order pairs), with progress`);
  const longStarted = performance.now();
  const longQuery = call('query', { sql: longAnalyticsQuery(buckets) }, (message) =>
    say(dim(`   agent A progress: ${message}`)),
  );

  await new Promise((r) => setTimeout(r, 700));
  section('2. Meanwhile, status answers at once (it never waits on the engine)');
  const s1 = await status();
  say(statusLine(s1.view, s1.ms));

  section('3. Agent B makes a call whose connection goes silent (injected fault)');
  say('agent B: demo_wedge (the call never answers; neither do liveness probes of its connection)');
  const wedgeStarted = performance.now();
  let wedgeDone = false;
  const wedge = call('demo_wedge').finally(() => {
    wedgeDone = true;
  });
  while (!wedgeDone) {
    await Promise.race([wedge, new Promise((r) => setTimeout(r, 450))]);
    if (wedgeDone) break;
    const s = await status();
    say(statusLine(s.view, s.ms));
  }
  const wedged = await wedge;
  const wedgeMs = performance.now() - wedgeStarted;
  if (!wedged.isError) throw new Error(`demo_wedge unexpectedly succeeded: ${textOf(wedged)}`);
  say(`agent B got a tool error after ${(wedgeMs / 1000).toFixed(1)} s:`);
  console.log(red(`      "${textOf(wedged)}"`));
  const s2 = await status();
  say(statusLine(s2.view, s2.ms));
  say(
    '   → the watchdog convicted the silent call and retired its connection (a new one opens ' +
      "on demand); agent A's query was untouched.",
  );

  section("4. Agent A's long query finishes normally (long is fine: it was never silent)");
  const longResult = await longQuery;
  const longMs = performance.now() - longStarted;
  if (longResult.isError) throw new Error(`the long query failed: ${textOf(longResult)}`);
  const rows = (longResult.structuredContent as { rows: Record<string, unknown>[] }).rows;
  say(`agent A: ${rows.length} rows after ${(longMs / 1000).toFixed(1)} s`);
  for (const row of rows) {
    console.log(
      `      ${String(row.category).padEnd(8)} ${Number(row.order_pairs).toLocaleString('en-US').padStart(13)} pairs`,
    );
  }

  section('5. Normal service');
  const normal = await call('query', {
    sql: 'SELECT region, round(sum(amount), 2) AS revenue FROM sales GROUP BY region ORDER BY revenue DESC LIMIT 3',
  });
  if (normal.isError) throw new Error(`query failed: ${textOf(normal)}`);
  const top = (normal.structuredContent as { rows: { region: string; revenue: unknown }[] }).rows;
  say(`query: top regions by revenue: ${top.map((r) => `${r.region} ${r.revenue}`).join(', ')}`);
  const s3 = await status();
  say(statusLine(s3.view, s3.ms));
  const c = s3.view.guard.counters;
  if (c.stalls !== 1) throw new Error(`expected exactly one stall, status says ${c.stalls}`);

  console.log(
    `\n${green('Done')} in ${((performance.now() - t0) / 1000).toFixed(1)} s: the silent call was ` +
      'detected by liveness (not by a timeout) and its connection replaced, the long query ran ' +
      'to the end, and status never waited.',
  );
}

const deadline = setTimeout(() => {
  console.error(red(`\nThe demo did not finish within ${DEADLINE_MS / 1000} s.`));
  console.error(dim(serverLog.slice(-40).join('\n')));
  process.exit(1);
}, DEADLINE_MS);
deadline.unref();

let code = 0;
try {
  await main();
} catch (error) {
  code = 1;
  console.error(red(`\nDemo failed: ${error instanceof Error ? error.message : String(error)}`));
  console.error(dim(`Server log (last lines):\n${serverLog.slice(-40).join('\n')}`));
} finally {
  await client.close().catch(() => {});
}
process.exit(code);
