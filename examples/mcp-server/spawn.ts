/**
 * How to start the example server as a subprocess (for the demo and the tests): the current
 * Node.js with tsx, from the repository root, so it needs no build step.
 */
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
