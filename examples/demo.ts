/**
 * `npm run demo`: the whole story in a terminal, in well under a minute, with nothing to install.
 *
 * It starts the example MCP server (embedded DuckDB with its sample data) as a subprocess on
 * Streamable HTTP, connects two agents to it with the MCP SDK client (each its own MCP session,
 * hence its own engine session), and shows side by side:
 *   1. agent A's long analytics query with live progress notifications,
 *   2. `status` answering at once meanwhile, and agent A's own short query too: A holds no
 *      connection state, so its calls run side by side,
 *   3. agent B's call whose engine connection goes silent (a demo-only injected fault), convicted
 *      by the guard's liveness watchdog and its connection replaced, while the long query carries
 *      on; B is told what its session lost with the connection (nothing: it had made no state),
 *   4. the long query finishing,
 *   5. sessions that pin on state: B's temporary table pins B's session to its connection, where
 *      all of B's reads see it and none of A's do; a call B sends while its own query runs there
 *      is told what it waits for and why; dropping the table unpins B,
 *   6. normal service again,
 *   7. a few lines of the guard's metrics, as Prometheus scrapes them from `/metrics`
 *      (`--metrics`: engine-guard/otel and the OpenTelemetry Prometheus exporter).
 *
 * Exits 0 when done, 1 if anything went wrong (and then prints the server's log).
 */
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { longAnalyticsQuery } from './mcp-server/sample-data.js';
import { type HttpServerProcess, spawnHttpServer } from './mcp-server/spawn.js';

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
const SERVER_FLAGS = [
  '--demo-faults',
  '--metrics',
  '--liveness-interval',
  String(LIVENESS.interval),
  '--liveness-timeout',
  String(LIVENESS.timeout),
  '--liveness-failures',
  String(LIVENESS.failures),
  '--progress-interval',
  '1000',
];
let server: HttpServerProcess | undefined;
const agents: Client[] = [];

/** A new MCP client: its own MCP session on the server, hence its own engine session. */
async function connectAgent(name: string, url: URL): Promise<Client> {
  const client = new Client({ name, version: '0.1.0' });
  await client.connect(new StreamableHTTPClientTransport(url));
  agents.push(client);
  return client;
}

interface StatusView {
  engine: { version: string | null; tables: number | null; views: number | null };
  guard: {
    state: string;
    generation: number;
    handles: { total: number; busy: number };
    running: { id: number; label: string | null; ageMs: number; probeFailures: number }[];
    counters: Record<string, number>;
  };
  /** How long the server took to build the answer (the round trip adds the transport's). */
  answeredInMs: number;
  sessions: {
    yours: number | null;
    pinned: number;
    list: {
      id: number;
      label: string | null;
      ops: number;
      pinned: boolean;
      heldState: { kind: string; name: string }[];
    }[];
  };
}

function textOf(result: CallToolResult): string {
  return result.content
    .map((part) => (part.type === 'text' ? part.text : `[${part.type}]`))
    .join('\n');
}

async function call(
  client: Client,
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

async function status(client: Client): Promise<{ view: StatusView; ms: number }> {
  const started = performance.now();
  const result = await call(client, 'status');
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

/** `0.04 ms on the server, 3 ms round trip`: what the server spent, and what the agent waited. */
function answered(view: StatusView, roundTripMs: number): string {
  return `${view.answeredInMs.toFixed(2)} ms on the server, ${roundTripMs.toFixed(0)} ms round trip`;
}

function statusLine(view: StatusView, ms: number): string {
  const c = view.guard.counters;
  const state = view.guard.state === 'ready' ? green(view.guard.state) : yellow(view.guard.state);
  return (
    `${cyan('status')} answered (${answered(view, ms)}): ${state}, running: ${describeRunning(view)}` +
    (c.stalls ? `; stalls ${c.stalls}, connections replaced ${c.replacements}` : '')
  );
}

/** The metric families shown by the demo, in this order. */
const SHOWN_METRICS = [
  'db_client_connection_count{',
  'db_client_connection_pending_requests{',
  'db_client_connection_wait_time_count{',
  'engine_guard_stalls_total{',
  'engine_guard_replacements_total{',
  'engine_guard_session_count{',
];

/** Scrapes `/metrics`: a few lines worth showing, the stall count, and how many samples. */
async function scrape(url: URL): Promise<{ shown: string[]; stalls: number; total: number }> {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`GET ${url.pathname}: ${response.status}`);
  const samples = (await response.text()).split('\n').filter((l) => l !== '' && !l.startsWith('#'));
  const shown = SHOWN_METRICS.flatMap((prefix) =>
    samples
      .filter((l) => l.startsWith(prefix))
      // The scope label is the same on every line: left out to keep them short.
      .map((l) => l.replace(/,?otel_scope_name="[^"]*"/, '')),
  );
  const stalls = samples.find((l) => l.startsWith('engine_guard_stalls_total{'));
  return { shown, stalls: Number(stalls?.split(' ').at(-1) ?? 0), total: samples.length };
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

  say('Starting the example MCP server (DuckDB with generated sample data) on HTTP...');
  server = await spawnHttpServer(SERVER_FLAGS, (chunk) => {
    serverLog.push(...chunk.split('\n').filter(Boolean));
    if (serverLog.length > 200) serverLog.splice(0, serverLog.length - 200);
  });
  const a = await connectAgent('agent A', server.url);
  const b = await connectAgent('agent B', server.url);
  const { tools } = await a.listTools();
  say(`Agents A and B connected to ${server.url}. Tools: ${tools.map((t) => t.name).join(', ')}`);
  // The first status may come before the facts are cached; give them a moment.
  let first = await status(a);
  for (let i = 0; i < 20 && first.view.engine.tables === null; i++) {
    await new Promise((r) => setTimeout(r, 100));
    first = await status(a);
  }
  say(
    `${cyan('status')} answered (${answered(first.view, first.ms)}): DuckDB ${first.view.engine.version}, ` +
      `${first.view.engine.tables} tables and ${first.view.engine.views} view(s)`,
  );

  // The long query takes seconds on a small machine; on a fast one it gets more work (fewer
  // buckets), so that it still outlasts the wedged call. Timed on a tenth of its work.
  const timing = performance.now();
  const sample = await call(a, 'query', { sql: longAnalyticsQuery(50, 0.1) });
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
  const longQuery = call(a, 'query', { sql: longAnalyticsQuery(buckets) }, (message) =>
    say(dim(`   agent A progress: ${message}`)),
  );

  await new Promise((r) => setTimeout(r, 700));
  section("2. Meanwhile, status answers at once, and so does agent A's own short query");
  const s1 = await status(b);
  say(statusLine(s1.view, s1.ms));
  const shortStarted = performance.now();
  const own = await call(a, 'query', { sql: 'SELECT count(*) AS n FROM products' });
  if (own.isError) throw new Error(`agent A's short query failed: ${textOf(own)}`);
  const ownRows = (own.structuredContent as { rows: { n: number }[] }).rows;
  say(
    `agent A: its own "SELECT count(*) FROM products" → ${ownRows[0]?.n} in ` +
      `${(performance.now() - shortStarted).toFixed(0)} ms, beside its long query (A holds no ` +
      'connection state, so its calls run side by side on shared connections)',
  );

  section('3. Agent B makes a call whose connection goes silent (injected fault)');
  say('agent B: demo_wedge (the call never answers; neither do liveness probes of its connection)');
  const wedgeStarted = performance.now();
  let wedgeDone = false;
  const wedge = call(b, 'demo_wedge').finally(() => {
    wedgeDone = true;
  });
  while (!wedgeDone) {
    await Promise.race([wedge, new Promise((r) => setTimeout(r, 450))]);
    if (wedgeDone) break;
    const s = await status(a);
    say(statusLine(s.view, s.ms));
  }
  const wedged = await wedge;
  const wedgeMs = performance.now() - wedgeStarted;
  if (!wedged.isError) throw new Error(`demo_wedge unexpectedly succeeded: ${textOf(wedged)}`);
  // B's session held no state (it was not pinned): nothing of B's was lost, and B is told none.
  if (textOf(wedged).includes('LOST')) {
    throw new Error(`agent B was told of a loss it did not have: ${textOf(wedged)}`);
  }
  say(`agent B got a tool error after ${(wedgeMs / 1000).toFixed(1)} s:`);
  for (const line of textOf(wedged).split('\n')) console.log(red(`      "${line}"`));
  const s2 = await status(a);
  say(statusLine(s2.view, s2.ms));
  say(
    '   → the watchdog convicted the silent call and retired its connection (a new one opens ' +
      "on demand); B's session held no state there (it was not pinned), so B lost none; " +
      "agent A's query was untouched.",
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

  section('5. Sessions: an agent keeps a connection of its own only while it holds state');
  const created = await call(b, 'execute', {
    sql: 'CREATE TEMP TABLE shortlist AS SELECT id, name FROM products ORDER BY price DESC LIMIT 5',
  });
  if (created.isError) throw new Error(`execute failed: ${textOf(created)}`);
  say('agent B: execute "CREATE TEMP TABLE shortlist AS ... LIMIT 5"');
  const count = 'SELECT count(*) AS n FROM shortlist';
  const reads = await Promise.all([1, 2, 3].map(() => call(b, 'query', { sql: count })));
  const counts = reads.map((r) =>
    r.isError ? textOf(r) : (r.structuredContent as { rows: { n: number }[] }).rows[0]?.n,
  );
  if (counts.some((n) => n !== 5)) throw new Error(`agent B's reads saw ${counts.join(', ')}`);
  say(`agent B: 3 concurrent "${count}": ${counts.join(', ')} (every read on B's connection)`);
  const other = await call(a, 'query', { sql: count });
  if (!other.isError) throw new Error(`agent A saw B's temporary table: ${textOf(other)}`);
  say(`agent A: "${count}" → ${red(textOf(other).split('\n')[0] ?? '')}`);
  const s3 = await status(a);
  say(
    `${cyan('status')} sessions: ` +
      s3.view.sessions.list
        .map(
          (row) =>
            `#${row.id} ${row.label} (${row.ops} ops${
              row.pinned
                ? `, pinned by ${row.heldState.map((h) => `${h.kind} ${h.name}`).join(', ')}`
                : ''
            })`,
        )
        .join(', '),
  );
  // Pinned: B's calls run one at a time on its connection, and a waiting one says why.
  say('agent B: a slower query on its pinned connection, and right after it a short one');
  const slow = call(b, 'query', { sql: longAnalyticsQuery(buckets, 0.15) });
  let told: string | undefined;
  const waited = await call(b, 'query', { sql: count }, (message) => {
    if (told === undefined && message.startsWith('waiting')) {
      told = message;
      say(yellow(`   agent B progress: ${message}`));
    }
  });
  await slow;
  if (waited.isError) throw new Error(`agent B's short query failed: ${textOf(waited)}`);
  if (told === undefined || !told.includes('temp table shortlist')) {
    throw new Error(`agent B's waiting call did not say why it waits: ${told ?? '(nothing)'}`);
  }
  const dropped = await call(b, 'execute', { sql: 'DROP TABLE shortlist' });
  if (dropped.isError) throw new Error(`drop failed: ${textOf(dropped)}`);
  const s3b = await status(a);
  if (s3b.view.sessions.pinned !== 0) throw new Error('agent B is still pinned after the drop');
  say(
    'agent B: execute "DROP TABLE shortlist" → unpinned: its connection went back to the pool ' +
      'and its calls run side by side again',
  );

  section('6. Normal service');
  const normal = await call(a, 'query', {
    sql: 'SELECT region, round(sum(amount), 2) AS revenue FROM sales GROUP BY region ORDER BY revenue DESC LIMIT 3',
  });
  if (normal.isError) throw new Error(`query failed: ${textOf(normal)}`);
  const top = (normal.structuredContent as { rows: { region: string; revenue: unknown }[] }).rows;
  say(`query: top regions by revenue: ${top.map((r) => `${r.region} ${r.revenue}`).join(', ')}`);
  const s4 = await status(a);
  say(statusLine(s4.view, s4.ms));
  const c = s4.view.guard.counters;
  if (c.stalls !== 1) throw new Error(`expected exactly one stall, status says ${c.stalls}`);

  section('7. Metrics: what a Prometheus scrape of /metrics sees (--metrics)');
  const scraped = await scrape(new URL('/metrics', server?.url));
  for (const line of scraped.shown) console.log(`      ${dim(line)}`);
  if (scraped.stalls !== 1) {
    throw new Error(`expected one stall in the metrics, they say ${scraped.stalls}`);
  }
  say(
    `${scraped.total} samples in all; dashboards and alerts on them: docs/recipes/observability.md`,
  );

  console.log(
    `\n${green('Done')} in ${((performance.now() - t0) / 1000).toFixed(1)} s: the silent call was ` +
      'detected by liveness (not by a timeout) and its connection replaced, the long query ran ' +
      "to the end, status never waited, and each agent's temporary state stayed its own.",
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
  await Promise.all(agents.map((agent) => agent.close().catch(() => {})));
  server?.child.kill('SIGTERM');
  await server?.exited;
}
process.exit(code);
