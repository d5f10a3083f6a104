/**
 * Stops the server when the process that started it is gone, so that it is never left running
 * (and listening) on its own.
 *
 * "The process that started it" is not always the parent. `npm run mcp` runs the server through
 * a shell (`npm → sh -c "node ... main.ts" → node`), and the shell passes no signal on:
 * - SIGTERM to npm: npm passes it to the shell, the shell dies, the server is re-parented;
 * - SIGKILL to npm: npm dies, the shell lives on (waiting for the server), so the server's
 *   parent never changes.
 * So the watch looks through shells: it watches the parent and, while that is a shell, the
 * shell's parent too, up to the first process that is not a shell (npm, an MCP client, a test
 * runner, a terminal's login shell's parent). When any of them is gone, the server stops.
 *
 * Reading another process's parent needs the OS: `/proc` on Linux, `ps` elsewhere on Unix. On
 * Windows only the parent is watched.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';

/** Command names of the shells a package manager (or a user) runs a command through. */
const SHELLS = new Set(['sh', 'dash', 'bash', 'zsh', 'ash', 'ksh', 'mksh', 'busybox']);

/** Most ancestors watched: a chain of shells this long is a loop or a mistake. */
const MAX_ANCESTORS = 6;

/** A process as the watch sees it: its parent and its command name. */
interface ProcessInfo {
  ppid: number;
  comm: string;
  /** True when the process has exited and waits to be reaped (a zombie): it is gone. */
  exited: boolean;
}

/** `/proc/<pid>/stat` (Linux): `pid (comm) state ppid ...`; `comm` may hold spaces and `)`. */
function fromProc(pid: number): ProcessInfo | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  const open = stat.indexOf('(');
  const close = stat.lastIndexOf(')');
  const [state, ppid] = stat.slice(close + 2).split(' ');
  return { ppid: Number(ppid), comm: stat.slice(open + 1, close), exited: state === 'Z' };
}

/** `ps` (macOS, the BSDs): the parent and the command name of `pid`. */
function fromPs(pid: number): ProcessInfo | undefined {
  try {
    const out = execFileSync('ps', ['-o', 'ppid=,stat=,comm=', '-p', String(pid)], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
      timeout: 2_000,
    }).trim();
    const match = /^(\d+)\s+(\S+)\s+(.+)$/.exec(out);
    if (match === null) return undefined;
    return {
      ppid: Number(match[1]),
      comm: basename(match[3]!.trim()),
      exited: match[2]!.startsWith('Z'),
    };
  } catch {
    return undefined;
  }
}

const hasProc = process.platform === 'linux';

function info(pid: number): ProcessInfo | undefined {
  if (process.platform === 'win32') return undefined;
  return hasProc ? fromProc(pid) : fromPs(pid);
}

/** Login shells show as `-bash`: the name without the dash. */
function isShell(comm: string): boolean {
  return SHELLS.has(comm.replace(/^-/, ''));
}

/**
 * The processes to watch: the parent, and through every shell the first process that is not
 * one. Exported for the tests.
 */
export function starters(parent: number = process.ppid): number[] {
  const pids = [parent];
  let pid = parent;
  for (let i = 0; i < MAX_ANCESTORS; i++) {
    const current = info(pid);
    if (current === undefined || !isShell(current.comm) || current.ppid <= 1) break;
    pid = current.ppid;
    pids.push(pid);
  }
  return pids;
}

/** Whether `pid` still runs (a zombie does not: it has exited, nobody has reaped it yet). */
function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    // EPERM: it exists, under another user.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
  return info(pid)?.exited !== true;
}

/**
 * Calls `onGone` (once) when the parent changes (we were re-parented) or a process found by
 * {@link starters} is gone, checked every `intervalMs`. Returns a function that stops the watch.
 * The timer never keeps the process alive.
 */
export function watchStarters(onGone: (why: string) => void, intervalMs = 500): () => void {
  const parent = process.ppid;
  const watched = starters(parent);
  const timer = setInterval(() => {
    let why: string | undefined;
    if (process.ppid !== parent) why = 'parent process exited';
    else {
      const dead = watched.find((pid) => !running(pid));
      if (dead !== undefined) why = `process ${dead} that started the server exited`;
    }
    if (why === undefined) return;
    clearInterval(timer);
    onGone(why);
  }, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}
