/**
 * Stopping the process the user started stops the example server, closing the guard, within a
 * bound: SIGINT, SIGTERM and stdin closed over stdio; SIGINT and SIGTERM over HTTP; SIGTERM to
 * `npm run mcp` itself (npm signals its shell, the shell dies without passing the signal on: the
 * server notices its parent is gone); and SIGKILL of npm (the shell lives on, waiting: the
 * server notices that the npm behind it is gone).
 *
 * No step depends on timing: the server is known to be ready when it logged so (whole lines),
 * and known to be gone when its stderr reached end-of-file (every process holding the pipe
 * exited, so every line it wrote is in) and its pid no longer runs.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import type { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT, serverProcess } from '../../examples/mcp-server/spawn.js';

/** The server's own bound (SHUTDOWN_BOUND_MS) plus a generous margin for this machine. */
const BOUND_MS = 12_000 + 8_000;
const TEST_TIMEOUT = 90_000;
/** Starting takes a few seconds (tsx, DuckDB's sample data); a loaded machine takes longer. */
const START_BOUND_MS = 45_000;

interface Started {
  child: ChildProcess;
  /** The server's pid (from its ready log line). */
  pid: number;
  /** The HTTP port, when started with --http. */
  port: number | undefined;
  /** Everything written on the stderr the server shares with `child`. */
  log: () => string;
  /** Settles when that stderr reached end-of-file: every process holding it has exited. */
  ended: Promise<void>;
}

const READY = /(?:listening on http:\/\/127\.0\.0\.1:(\d+)\/mcp|ready on stdio)\b.*\bpid=(\d+)\b/;

async function start(
  command: string,
  args: string[],
  http: boolean,
  stdin: 'pipe' | Readable = 'pipe',
): Promise<Started> {
  const child = spawn(command, args, { cwd: REPO_ROOT, stdio: [stdin, 'pipe', 'pipe'] });
  let log = '';
  child.stdout?.resume();
  const stderr = child.stderr!;
  const ended = once(stderr, 'end').then(() => {});
  ended.catch(() => {});
  const ready = new Promise<Started>((resolve, reject) => {
    stderr.on('data', (chunk: Buffer) => {
      log += chunk.toString();
      // Only whole lines: a pid cut in two by a chunk boundary would be another process's.
      const match = READY.exec(log.slice(0, log.lastIndexOf('\n') + 1));
      if (match === null) return;
      resolve({
        child,
        pid: Number(match[2]),
        port: http ? Number(match[1]) : undefined,
        log: () => log,
        ended,
      });
    });
    ended.then(() => reject(new Error(`server exited before it was ready:\n${log}`)));
  });
  let timer: NodeJS.Timeout | undefined;
  const tooLong = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`server not ready after ${START_BOUND_MS} ms:\n${log}`)),
      START_BOUND_MS,
    );
  });
  try {
    return await Promise.race([ready, tooLong]);
  } catch (error) {
    child.kill('SIGKILL');
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

/** Whether `pid` runs; a zombie (exited, not reaped: PID 1 of a container may never) does not. */
function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  if (process.platform !== 'linux') return true;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
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

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Waits until the server is gone: its stderr ended (it and every process sharing the pipe
 * exited), then its pid stops running (a process closes its files a moment before it is
 * reaped). Kills it and fails past {@link BOUND_MS}.
 */
async function gone(server: Started): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<'late'>((resolve) => {
    timer = setTimeout(() => resolve('late'), BOUND_MS);
  });
  const outcome = await Promise.race([server.ended.then(() => 'ended' as const), bound]);
  clearTimeout(timer);
  if (outcome === 'late') {
    if (running(server.pid)) process.kill(server.pid, 'SIGKILL');
    throw new Error(`server ${server.pid} still running after ${BOUND_MS} ms:\n${server.log()}`);
  }
  for (let waited = 0; running(server.pid); waited += 20) {
    if (waited > 5_000) throw new Error(`server ${server.pid} closed stderr but still runs`);
    await sleep(20);
  }
}

const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

/** `npm run --silent mcp -- [--http 0]`: npm runs the server through a shell. */
function startWithNpm(http: boolean, stdin?: Readable): Promise<Started> {
  const args = ['run', '--silent', 'mcp', '--', ...(http ? ['--http', '0'] : [])];
  return start(npm, args, http, stdin);
}

/**
 * A pipe whose writing end a process of its own holds open, to serve as npm's stdin. Node
 * closes a child's `stdin` pipe when the child exits, so after a SIGKILL of npm the server
 * would stop for "stdin closed"; an MCP client in another language (or a terminal) keeps it
 * open, and then only the watch of npm can stop the server.
 */
function heldOpenPipe(): { stream: Readable; close: () => void } {
  const holder = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1 << 30)'], {
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  return { stream: holder.stdout!, close: () => holder.kill('SIGKILL') };
}

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
      const { command, args } = serverProcess(http ? ['--http', '0'] : []);
      const server = await start(command, args, http);
      if (how === 'stdin closed') server.child.stdin?.end();
      else server.child.kill(how as NodeJS.Signals);
      await gone(server);
      expect(server.log()).toContain('shutting down');
      expect(server.log()).toMatch(/guard state from=\w+ to=closed/);
      if (server.port !== undefined) expect(await listening(server.port)).toBe(false);
    },
    TEST_TIMEOUT,
  );

  it.each([['http'], ['stdio']])(
    '%s: SIGTERM to `npm run mcp` stops the server it started',
    async (transport) => {
      const server = await startWithNpm(transport === 'http');
      server.child.kill('SIGTERM');
      await gone(server);
      expect(server.log()).toContain('shutting down');
      expect(server.log()).toMatch(/guard state from=\w+ to=closed/);
      if (server.port !== undefined) expect(await listening(server.port)).toBe(false);
    },
    TEST_TIMEOUT,
  );

  it.each([['http'], ['stdio']])(
    '%s: SIGKILL of `npm run mcp` (its shell lives on) stops the server it started',
    async (transport) => {
      const stdin = heldOpenPipe();
      try {
        const server = await startWithNpm(transport === 'http', stdin.stream);
        const npmPid = server.child.pid!;
        server.child.kill('SIGKILL');
        await once(server.child, 'exit');
        await gone(server);
        expect(server.log()).toContain(
          `shutting down why="process ${npmPid} that started the server exited"`,
        );
        expect(server.log()).toMatch(/guard state from=\w+ to=closed/);
        if (server.port !== undefined) expect(await listening(server.port)).toBe(false);
      } finally {
        stdin.close();
      }
    },
    TEST_TIMEOUT,
  );
});
