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
  /**
   * Most client sessions keeping connection state (a connection of their own) at once; 0: no
   * client keeps state between calls. Default per engine (see USAGE).
   */
  maxSessions: number | undefined;
  /** A client session with no call for this long is closed (its connection too), ms. */
  sessionIdleTimeout: number;
  /** The `--liveness-*` flags given; the others come from the engine's adapter (see USAGE). */
  liveness: LivenessFlags;
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

/** The liveness settings given on the command line; `undefined`: the adapter's default. */
export interface LivenessFlags {
  interval: number | undefined;
  timeout: number | undefined;
  failures: number | undefined;
}

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

export const TOKEN_ENV = 'ENGINE_GUARD_MCP_TOKEN';

/** Default of `--session-idle-timeout`: 5 minutes, a long pause of an agent at work. */
export const DEFAULT_SESSION_IDLE_TIMEOUT = 300_000;

/** `1000/1500/2`: interval, timeout and failures, as the server logs them. */
export function describeLiveness(liveness: {
  interval: number;
  timeout: number;
  failures: number;
}): string {
  return `${liveness.interval}/${liveness.timeout}/${liveness.failures}`;
}

/**
 * engine-guard/pg's `PG_LIVENESS`, written out: importing the pg adapter here would load `pg`
 * into a DuckDB server too. test/examples/mcp-cli.test.ts checks that it matches.
 */
export const PG_LIVENESS_TEXT = '1000/1500/2';

export const USAGE = `engine-guard example MCP server

Usage: npm run --silent mcp -- [flags]

Engine (embedded DuckDB with a generated sample data set unless --pg is given):
  --pg <url>                   PostgreSQL or any PostgreSQL-wire server (e.g. HyperDB's hyperd),
                               e.g. postgresql://user@127.0.0.1:5432/db
  --pool <n>                   engine handles (connections) shared by every call that keeps no
                               connection state
                               [default 3 for DuckDB (below libuv's 4 threads), 4 for --pg]

Sessions (each MCP client has one; see README "Sessions"): a client's calls run side by side on
shared connections until one leaves connection state (a temporary table, a SET...); the client
then keeps that connection, and its calls run there one at a time, until it drops the state.
  --max-sessions <n>           clients keeping state (a connection of their own) at once,
                               beside --pool; a call that leaves state when all are taken is
                               told its state was discarded. 0: no client keeps state
                               [default 3 for DuckDB (below libuv's 4 threads), 10 for --pg]
  --session-idle-timeout <ms>  close a client's session after this long without a call
                               (its temporary tables and settings go with it)  [default ${DEFAULT_SESSION_IDLE_TIMEOUT}]

Liveness (a silent op is convicted after <failures> failed probes, one every <interval>).
Defaults: the engine adapter's, interval/timeout/failures ${PG_LIVENESS_TEXT} with --pg
(engine-guard/pg's PG_LIVENESS), ${describeLiveness(DEFAULT_LIVENESS)} for DuckDB (the library's); each flag
replaces one of them. See docs/design.md "Choosing liveness settings".
  --liveness-interval <ms>     probe a running op after this long without progress
  --liveness-timeout <ms>      bound of one probe
  --liveness-failures <n>      consecutive failed probes that convict an op
  --acquire-timeout <ms>       longest wait for a free engine handle              [default 30000]
  --connect-timeout <ms>       bound of one connection attempt                    [default 10000]

Results:
  --max-rows <n>               default and largest row count of one query         [default 1000]
  --max-result-bytes <n>       largest serialized query result                    [default 1000000]
  --progress-interval <ms>     progress notification period while a call waits or runs,
                               at most 5000 (clients reset their request timeout on progress:
                               see README "Long calls")                            [default 250]

Transport (stdio unless --http is given):
  --http <port>                serve Streamable HTTP on http://127.0.0.1:<port>/mcp (0: any free port)
  --token <secret>             require "Authorization: Bearer <secret>" over HTTP
                               (or set ${TOKEN_ENV})
  --metrics                    with --http: the guard's metrics as Prometheus text at
                               http://127.0.0.1:<port>/metrics (same Host and token checks)

  --log-level <level>          ${LOG_LEVELS.join(' | ')} (logs go to stderr)   [default info]
  -h, --help                   show this help
`;

function integer(
  name: string,
  raw: string | undefined,
  fallback: number,
  min: number,
  max?: number,
): number;
function integer(
  name: string,
  raw: string | undefined,
  fallback: undefined,
  min: number,
  max?: number,
): number | undefined;
function integer(
  name: string,
  raw: string | undefined,
  fallback: number | undefined,
  min: number,
  max = Number.MAX_SAFE_INTEGER,
): number | undefined {
  if (raw === undefined) return fallback;
  if (!/^\d+$/.test(raw.trim())) {
    throw new UsageError(`--${name} must be a whole number, got "${raw}"`);
  }
  const value = Number(raw.trim());
  if (!Number.isSafeInteger(value) || value < min) {
    throw new UsageError(`--${name} must be at least ${min}, got ${raw}`);
  }
  if (value > max) throw new UsageError(`--${name} must be at most ${max}, got ${raw}`);
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
      interval: integer('liveness-interval', str('liveness-interval'), undefined, 1),
      timeout: integer('liveness-timeout', str('liveness-timeout'), undefined, 1),
      failures: integer('liveness-failures', str('liveness-failures'), undefined, 1),
    },
    acquireTimeout: integer('acquire-timeout', str('acquire-timeout'), 30_000, 1),
    connectTimeout: integer('connect-timeout', str('connect-timeout'), 10_000, 1),
    maxRows: integer('max-rows', str('max-rows'), 1000, 1),
    maxResultBytes: integer('max-result-bytes', str('max-result-bytes'), 1_000_000, 1024),
    // Progress at least every 5 s: a client that resets its request timeout on progress (the
    // TypeScript SDK's resetTimeoutOnProgress) then outlives any default timeout it might use.
    progressInterval: integer('progress-interval', str('progress-interval'), 250, 10, 5_000),
    logLevel,
    demoFaults: values['demo-faults'] === true,
    help: values.help === true,
  };
}
