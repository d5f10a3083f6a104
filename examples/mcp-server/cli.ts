/**
 * Command-line flags of the example MCP server. Parsing is pure (no I/O) so it can be tested and
 * reused; `main.ts` turns a {@link UsageError} into a message on stderr and exit code 2.
 */
import { parseArgs } from 'node:util';
import { DEFAULT_LIVENESS } from 'engine-guard';
import { LOG_LEVELS, type LogLevel } from './log.js';

export interface CliOptions {
  /** PostgreSQL (or any PostgreSQL-wire server) connection URL; DuckDB when absent. */
  pg: string | undefined;
  /** Serve Streamable HTTP on 127.0.0.1 at this port (0: any free port) instead of stdio. */
  http: number | undefined;
  /** Bearer token required on every HTTP request. */
  token: string | undefined;
  /** Serve the guard's OpenTelemetry metrics as Prometheus text at /metrics (with --http). */
  metrics: boolean;
  /** Engine handles (connections) shared by calls outside a client session; default per engine (see USAGE). */
  pool: number | undefined;
  /** Most client sessions holding a connection at once; 0: no sessions. Default per engine (see USAGE). */
  maxSessions: number | undefined;
  /** A client session with no call for this long is closed (its connection too), ms. */
  sessionIdleTimeout: number;
  liveness: { interval: number; timeout: number; failures: number };
  /** Longest wait for a free engine handle before a tool call gives up, ms. */
  acquireTimeout: number;
  /** Bound of one connection attempt, ms. */
  connectTimeout: number;
  /** Default and largest number of rows `query` returns. */
  maxRows: number;
  /** Largest serialized result `query` returns, bytes. */
  maxResultBytes: number;
  /** How often a running query sends a progress notification, ms. */
  progressInterval: number;
  logLevel: LogLevel;
  /** Demo only: registers the `demo_wedge` tool. */
  demoFaults: boolean;
  help: boolean;
}

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

export const TOKEN_ENV = 'ENGINE_GUARD_MCP_TOKEN';

/** Default of `--session-idle-timeout`: 5 minutes, a long pause of an agent at work. */
export const DEFAULT_SESSION_IDLE_TIMEOUT = 300_000;

export const USAGE = `engine-guard example MCP server

Usage: npm run --silent mcp -- [flags]

Engine (embedded DuckDB with a generated sample data set unless --pg is given):
  --pg <url>                   PostgreSQL or any PostgreSQL-wire server (e.g. HyperDB's hyperd),
                               e.g. postgresql://user@127.0.0.1:5432/db
  --pool <n>                   engine handles (connections) shared by calls outside a client
                               session: the status facts, and every call with --max-sessions 0
                               [default 3 for DuckDB (below libuv's 4 threads), 4 for --pg]

Sessions (each MCP client gets a connection of its own; see README "Sessions"):
  --max-sessions <n>           clients holding a connection at once; one more waits up to
                               --acquire-timeout, then gets an error. 0: no sessions, every call
                               runs on a shared connection and keeps no state between calls
                               [default 3 for DuckDB (below libuv's 4 threads), 10 for --pg]
  --session-idle-timeout <ms>  close a client's session after this long without a call
                               (its temporary tables and settings go with it)  [default ${DEFAULT_SESSION_IDLE_TIMEOUT}]

Liveness (a silent op is convicted after <failures> failed probes, one every <interval>):
  --liveness-interval <ms>     probe a running op after this long without progress [default ${DEFAULT_LIVENESS.interval}]
  --liveness-timeout <ms>      bound of one probe                                  [default ${DEFAULT_LIVENESS.timeout}]
  --liveness-failures <n>      consecutive failed probes that convict an op       [default ${DEFAULT_LIVENESS.failures}]
  --acquire-timeout <ms>       longest wait for a free engine handle              [default 30000]
  --connect-timeout <ms>       bound of one connection attempt                    [default 10000]

Results:
  --max-rows <n>               default and largest row count of one query         [default 1000]
  --max-result-bytes <n>       largest serialized query result                    [default 1000000]
  --progress-interval <ms>     progress notification period while a query runs    [default 250]

Transport (stdio unless --http is given):
  --http <port>                serve Streamable HTTP on http://127.0.0.1:<port>/mcp (0: any free port)
  --token <secret>             require "Authorization: Bearer <secret>" over HTTP
                               (or set ${TOKEN_ENV})
  --metrics                    with --http: the guard's metrics as Prometheus text at
                               http://127.0.0.1:<port>/metrics (same Host and token checks)

  --log-level <level>          ${LOG_LEVELS.join(' | ')} (logs go to stderr)   [default info]
  -h, --help                   show this help
`;

function integer(name: string, raw: string | undefined, fallback: number, min: number): number {
  if (raw === undefined) return fallback;
  if (!/^\d+$/.test(raw.trim())) {
    throw new UsageError(`--${name} must be a whole number, got "${raw}"`);
  }
  const value = Number(raw.trim());
  if (!Number.isSafeInteger(value) || value < min) {
    throw new UsageError(`--${name} must be at least ${min}, got ${raw}`);
  }
  return value;
}

/** Parses `argv` (without the node and script paths). */
export function parseCli(argv: string[], env: NodeJS.ProcessEnv = process.env): CliOptions {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        pg: { type: 'string' },
        http: { type: 'string' },
        token: { type: 'string' },
        metrics: { type: 'boolean' },
        pool: { type: 'string' },
        'max-sessions': { type: 'string' },
        'session-idle-timeout': { type: 'string' },
        'liveness-interval': { type: 'string' },
        'liveness-timeout': { type: 'string' },
        'liveness-failures': { type: 'string' },
        'acquire-timeout': { type: 'string' },
        'connect-timeout': { type: 'string' },
        'max-rows': { type: 'string' },
        'max-result-bytes': { type: 'string' },
        'progress-interval': { type: 'string' },
        'log-level': { type: 'string' },
        'demo-faults': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const str = (name: string): string | undefined => {
    const value = values[name];
    return typeof value === 'string' ? value : undefined;
  };

  const pg = str('pg');
  if (pg !== undefined && !/^postgres(ql)?:\/\//.test(pg)) {
    throw new UsageError(`--pg must be a postgres:// or postgresql:// URL, got "${pg}"`);
  }
  const httpRaw = str('http');
  const http = httpRaw === undefined ? undefined : integer('http', httpRaw, 0, 0);
  if (http !== undefined && http > 65535)
    throw new UsageError(`--http must be a TCP port, got ${http}`);
  const tokenFlag = str('token');
  if (tokenFlag !== undefined && http === undefined) {
    throw new UsageError('--token only applies to --http (stdio has no network exposure)');
  }
  if (tokenFlag === '') throw new UsageError('--token must not be empty');
  const metrics = values.metrics === true;
  if (metrics && http === undefined) {
    throw new UsageError('--metrics only applies to --http (it is served at /metrics)');
  }
  const token = http === undefined ? undefined : (tokenFlag ?? (env[TOKEN_ENV] || undefined));
  const logLevel = (str('log-level') ?? 'info') as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) {
    throw new UsageError(`--log-level must be one of ${LOG_LEVELS.join(', ')}, got "${logLevel}"`);
  }

  return {
    pg,
    http,
    token,
    metrics,
    pool: str('pool') === undefined ? undefined : integer('pool', str('pool'), 0, 1),
    maxSessions:
      str('max-sessions') === undefined
        ? undefined
        : integer('max-sessions', str('max-sessions'), 0, 0),
    sessionIdleTimeout: integer(
      'session-idle-timeout',
      str('session-idle-timeout'),
      DEFAULT_SESSION_IDLE_TIMEOUT,
      1,
    ),
    liveness: {
      interval: integer(
        'liveness-interval',
        str('liveness-interval'),
        DEFAULT_LIVENESS.interval,
        1,
      ),
      timeout: integer('liveness-timeout', str('liveness-timeout'), DEFAULT_LIVENESS.timeout, 1),
      failures: integer(
        'liveness-failures',
        str('liveness-failures'),
        DEFAULT_LIVENESS.failures,
        1,
      ),
    },
    acquireTimeout: integer('acquire-timeout', str('acquire-timeout'), 30_000, 1),
    connectTimeout: integer('connect-timeout', str('connect-timeout'), 10_000, 1),
    maxRows: integer('max-rows', str('max-rows'), 1000, 1),
    maxResultBytes: integer('max-result-bytes', str('max-result-bytes'), 1_000_000, 1024),
    progressInterval: integer('progress-interval', str('progress-interval'), 250, 10),
    logLevel,
    demoFaults: values['demo-faults'] === true,
    help: values.help === true,
  };
}
