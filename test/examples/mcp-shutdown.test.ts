/**
 * Stopping the process the user started stops the example server, closing the guard, within a
 * bound: SIGINT, SIGTERM and stdin closed over stdio; SIGINT and SIGTERM over HTTP; and SIGTERM
 * to `npm run mcp` itself (npm signals its shell, the shell dies without passing the signal on:
 * the server notices its parent is gone).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { connect } from 'node:net';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT, serverProcess } from '../../examples/mcp-server/spawn.js';

/** The server's own bound (SHUTDOWN_BOUND_MS) plus a generous margin for this machine. */
const BOUND_MS = 12_000 + 8_000;
const TEST_TIMEOUT = 60_000;

interface Started {
  child: ChildProcess;
  /** The server's pid (from its ready log line). */
  pid: number;
  /** The HTTP port, when started with --http. */
  port: number | undefined;
  log: () => string;
}

async function start(command: string, args: string[], http: boolean): Promise<Started> {
  const child = spawn(command, args, { cwd: REPO_ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
  let log = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    log += chunk.toString();
  });
  child.stdout?.resume();
  const deadline = Date.now() + 30_000;
  for (;;) {
    const match =
      /(?:listening on http:\/\/127\.0\.0\.1:(\d+)\/mcp|ready on stdio).*pid=(\d+)/.exec(log);
    if (match !== null) {
      return {
        child,
        pid: Number(match[2]),
        port: http ? Number(match[1]) : undefined,
        log: () => log,
      };
    }
    if (Date.now() > deadline || child.exitCode !== null) {
      child.kill('SIGKILL');
      throw new Error(`server did not start:\n${log}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function listening(port: number): Promise<boolean> {
  const socket = connect({ host: '127.0.0.1', port });
  try {
    await once(socket, 'connect');
    return true;
  } catch {
    return false;
  } finally {
    socket.destroy();
  }
}

/** Waits until the server process is gone; returns how long it took. */
async function gone(pid: number): Promise<number> {
  const started = performance.now();
  while (alive(pid)) {
    if (performance.now() - started > BOUND_MS) {
      process.kill(pid, 'SIGKILL');
      throw new Error(`server ${pid} still running after ${BOUND_MS} ms`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return performance.now() - started;
}

const direct = (flags: string[]) => {
  const { command, args } = serverProcess(flags);
  return { command, args };
};

describe('example server shutdown', () => {
  it.each([
    ['stdio', 'SIGINT'],
    ['stdio', 'SIGTERM'],
    ['stdio', 'stdin closed'],
    ['http', 'SIGINT'],
    ['http', 'SIGTERM'],
  ])(
    '%s: %s stops the server and closes the guard',
    async (transport, how) => {
      const http = transport === 'http';
      const { command, args } = direct(http ? ['--http', '0'] : []);
      const server = await start(command, args, http);
      if (how === 'stdin closed') server.child.stdin?.end();
      else server.child.kill(how as NodeJS.Signals);
      await gone(server.pid);
      expect(server.log()).toContain('shutting down');
      expect(server.log()).toMatch(/guard state from=\w+ to=closed/);
      if (server.port !== undefined) expect(await listening(server.port)).toBe(false);
    },
    TEST_TIMEOUT,
  );

  it.each([['http'], ['stdio']])(
    '%s: SIGTERM to `npm run mcp` stops the server it started',
    async (transport) => {
      const http = transport === 'http';
      const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
      const server = await start(
        npm,
        ['run', '--silent', 'mcp', '--', ...(http ? ['--http', '0'] : [])],
        http,
      );
      server.child.kill('SIGTERM');
      await gone(server.pid);
      expect(server.log()).toContain('shutting down');
      if (server.port !== undefined) expect(await listening(server.port)).toBe(false);
    },
    TEST_TIMEOUT,
  );
});
