/**
 * Entry point of the example MCP server.
 *
 *   npm run --silent mcp -- [flags]            # stdio (for an MCP client to spawn)
 *   npm run --silent mcp -- --http 8808        # Streamable HTTP on http://127.0.0.1:8808/mcp
 *
 * Over stdio, stdout carries the protocol and nothing else: every log line goes to stderr.
 * Shuts down cleanly, closing the guard, within SHUTDOWN_BOUND_MS: on SIGINT, SIGTERM, (stdio)
 * when stdin closes, and when the process that started it exits. The last one matters for
 * `npm run mcp`: npm passes a SIGTERM to the shell it started, the shell dies without passing
 * it on, and a SIGKILL of npm leaves the shell waiting: either way the server would be left
 * running (and listening) on its own (see lifeline.ts).
 */
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import { createApp } from './app.js';
import { type CliOptions, describeLiveness, parseCli, USAGE, UsageError } from './cli.js';
import type { Engine } from './engine.js';
import { startHttp } from './http.js';
import { watchStarters } from './lifeline.js';
import { createLogger } from './log.js';
import { type MetricsEndpoint, startMetrics } from './metrics.js';
import { createMcpServer } from './server.js';

// Nothing but protocol on stdout: a stray console.log from a dependency must not corrupt it.
console.log = console.error;
console.info = console.error;
console.debug = console.error;

let options: CliOptions;
try {
  options = parseCli(process.argv.slice(2));
} catch (error) {
  if (!(error instanceof UsageError)) throw error;
  process.stderr.write(`${error.message}\n\n${USAGE}`);
  process.exit(2);
}
if (options.help) {
  // Not serving: the help goes where a person expects it.
  process.stdout.write(USAGE);
  process.exit(0);
}

const log = createLogger(options.logLevel);

/** Loaded on demand: a PostgreSQL server never loads DuckDB's native module, and vice versa. */
async function openEngine(): Promise<Engine<unknown>> {
  if (options.pg !== undefined) {
    const { createPostgresEngine } = await import('./engines/postgres.js');
    return createPostgresEngine({ url: options.pg }) as Engine<unknown>;
  }
  const { createDuckDbEngine } = await import('./engines/duckdb.js');
  return (await createDuckDbEngine()) as Engine<unknown>;
}

let engine: Engine<unknown>;
try {
  engine = await openEngine();
} catch (error) {
  log.error('could not open the engine', { error });
  process.exit(1);
}

// DuckDB runs each call on a libuv thread (4 by default): keep one free for liveness probes.
const pool = options.pool ?? (engine.kind === 'duckdb' ? 3 : 4);
// DuckDB: each session's running call takes a libuv thread too, so the same bound applies.
const maxSessions = options.maxSessions ?? (engine.kind === 'duckdb' ? 3 : 10);
const app = createApp(engine, { ...options, pool, maxSessions }, log);
// Warm the status cache; an engine that is down now only makes `status` say so.
app.facts.refresh().catch((error: unknown) => log.warn('engine facts not loaded yet', { error }));

let stopTransport: () => Promise<void> = async () => {};
let shuttingDown = false;

/** Longest a shutdown may take before the process exits anyway. */
const SHUTDOWN_BOUND_MS = 12_000;

async function shutdown(why: string, code = 0): Promise<void> {
  if (shuttingDown) return;
  shuttingDown = true;
  log.info('shutting down', { why });
  const force = setTimeout(() => {
    log.error('shutdown took too long; exiting');
    process.exit(1);
  }, SHUTDOWN_BOUND_MS);
  force.unref();
  try {
    await stopTransport();
    await app.close();
  } catch (error) {
    log.error('shutdown failed', { error });
    code = 1;
  }
  process.exit(code);
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (shuttingDown) process.exit(1); // a second signal: stop now
    void shutdown(signal);
  });
}

// The process that started us exited (npm, through the shell it runs scripts in): nobody is
// left to stop us, so stop.
watchStarters((why) => void shutdown(why));

const settings = {
  pid: process.pid,
  engine: engine.kind,
  pool,
  maxSessions,
  sessionIdleTimeout: options.sessionIdleTimeout,
  liveness: describeLiveness(app.liveness),
  demoFaults: options.demoFaults || undefined,
};

if (options.http !== undefined) {
  try {
    const metrics: MetricsEndpoint | undefined = options.metrics
      ? startMetrics(app.guard)
      : undefined;
    const http = await startHttp(app, {
      port: options.http,
      token: options.token,
      metrics: metrics?.handle,
    });
    stopTransport = async () => {
      await http.close();
      await metrics?.close();
    };
    log.info(`listening on ${http.url}`, {
      ...settings,
      token: options.token !== undefined,
      metrics: metrics === undefined ? undefined : new URL('/metrics', http.url).href,
    });
  } catch (error) {
    log.error('could not start the HTTP server', { error });
    await app.close();
    process.exit(1);
  }
} else {
  const server = createMcpServer(app);
  const transport = new StdioServerTransport();
  stopTransport = () => server.close();
  transport.onclose = () => void shutdown('transport closed');
  process.stdin.once('end', () => void shutdown('stdin closed'));
  await server.connect(transport);
  log.info(`ready on stdio: ${engine.description}`, settings);
}
