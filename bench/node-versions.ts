/**
 * `npm run bench -- --node 20,22,24`: the same benchmark run on several Node releases, one after
 * another, each in a child process of its own (a Node binary cannot change its version, and the
 * async-context machinery the figures depend on differs between releases).
 *
 * A release other than the running one is fetched once from the npm registry as the
 * platform's `node-<platform>-<arch>` package (the official binaries, as the `node` package
 * ships them) into `.tmp/node-<release>/`, which git and biome ignore.
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { BENCH_IMPORT } from './harness.js';

/** The running Node's major release, as `--node` spells it. */
export const CURRENT_MAJOR = process.versions.node.split('.')[0]!;

/**
 * Parses the value of `--node`: release majors (`20`, `22`, `24`) or `current`, comma-separated.
 * @throws RangeError naming the bad entry.
 */
export function parseNodeList(value: string | undefined): string[] {
  if (value === undefined || value.trim() === '') {
    throw new RangeError('--node needs a list of Node releases, e.g. --node 24 or --node 20,22,24');
  }
  const majors = value.split(',').map((entry) => {
    const major = entry.trim() === 'current' ? CURRENT_MAJOR : entry.trim().replace(/^v/, '');
    if (!/^\d+$/.test(major) || Number(major) < 20) {
      throw new RangeError(
        `--node: "${entry}" is not a Node release this package supports (20 or later, or "current")`,
      );
    }
    return major;
  });
  return [...new Set(majors)];
}

/** The binary of Node release `major`: this process's own, or one fetched into `.tmp/`. */
export async function nodeBinary(major: string, rootDir: string): Promise<string> {
  if (major === CURRENT_MAJOR) return process.execPath;
  const pkg = `node-${process.platform}-${process.arch}`;
  const prefix = path.join(rootDir, '.tmp', `node-${major}`);
  const bin = path.join(prefix, 'node_modules', pkg, 'bin', 'node');
  if (!existsSync(bin)) {
    console.log(`Fetching Node ${major} (${pkg}@${major}) into ${path.relative(rootDir, prefix)}/`);
    await promisify(execFile)(
      'npm',
      ['install', '--prefix', prefix, '--no-save', '--no-audit', '--no-fund', `${pkg}@${major}`],
      { cwd: rootDir },
    );
    if (!existsSync(bin)) throw new Error(`npm installed ${pkg}@${major}, but ${bin} is missing`);
  }
  return bin;
}

/**
 * Runs `bench/run.ts` on `bin`, its output shown as it comes, the child writing what it measured
 * to `emitFile`. Resolves with the child's exit code.
 */
export function runOn(
  bin: string,
  runScript: string,
  args: readonly string[],
  rootDir: string,
): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, ['--expose-gc', '--import', BENCH_IMPORT, runScript, ...args], {
      cwd: rootDir,
      stdio: 'inherit',
    });
    child.once('error', reject);
    child.once('exit', (code, signal) => resolve(code ?? (signal === null ? 1 : 128)));
  });
}
