/**
 * How to start the example server as a subprocess (for the demo and the tests): the current
 * Node.js with tsx, from the repository root, so it needs no build step.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root. */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Script path relative to {@link REPO_ROOT}. */
export const MAIN_SCRIPT = 'examples/mcp-server/main.ts';

/** `StdioClientTransport` / `spawn` parameters for the server with `flags`. */
export function serverProcess(flags: readonly string[]): {
  command: string;
  args: string[];
  cwd: string;
  env: Record<string, string>;
} {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value !== undefined) env[key] = value;
  }
  return {
    command: process.execPath,
    args: ['--import', 'tsx', MAIN_SCRIPT, ...flags],
    cwd: REPO_ROOT,
    env,
  };
}

/** The server started by {@link spawnHttpServer}. */
export interface HttpServerProcess {
  /** `http://127.0.0.1:<port>/mcp` */
  url: URL;
  child: ChildProcess;
  /** Settles with the exit code. */
  exited: Promise<number | null>;
}

/**
 * Starts the server with `--http 0` (any free port) and `flags`, and resolves with its URL once
 * it logs that it listens. `onStderr` gets everything it logs; its stdout stays empty.
 */
export function spawnHttpServer(
  flags: readonly string[],
  onStderr: (chunk: string) => void,
  onStdout: (chunk: string) => void = () => {},
): Promise<HttpServerProcess> {
  const params = serverProcess(['--http', '0', ...flags]);
  const child = spawn(params.command, params.args, {
    cwd: params.cwd,
    env: params.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  child.stdout?.on('data', (chunk: Buffer) => onStdout(chunk.toString()));
  let logged = '';
  let started = false;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${logged}`)), 30_000);
    child.stderr?.on('data', (chunk: Buffer) => {
      const text = chunk.toString();
      onStderr(text);
      if (started) return;
      logged += text;
      const match = /listening on (http:\/\/127\.0\.0\.1:\d+\/mcp)/.exec(logged);
      if (match) {
        started = true;
        clearTimeout(timer);
        resolve({ url: new URL(match[1]!), child, exited });
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}:\n${logged}`));
    });
  });
}
