/**
 * Benchmark entry point: `npm run bench` (node --expose-gc --import ./bench/built.mjs bench/run.ts).
 *
 * It builds dist/ first and measures that build, the code users import (see built.mjs);
 * `ENGINE_GUARD_BENCH_SOURCE=src npm run bench` measures src/ as tsx compiles it instead.
 *
 * Runs every section of every `bench/*.bench.ts` module in this one process, prints each table,
 * and rewrites `docs/benchmarks.md` with the machine, the figures, the ratios and the target
 * checks of this run. A module takes part by exporting `sections: Section[]` (see harness.ts).
 *
 * `npm run bench -- <filter>` runs only the sections whose module file name or title contains
 * `<filter>`; a filtered run prints its tables but leaves `docs/benchmarks.md` alone.
 *
 * `npm run bench -- --node 20,22,24 [<filter>]` runs the same on each of those Node releases,
 * one after another, each in a child process (see node-versions.ts); unfiltered, it writes
 * `docs/benchmarks.md` with every section once per release, the release in each heading and in
 * each target's name.
 *
 * Exit code 1 if a section throws; target misses are reported (FAIL) but do not fail the run.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import {
  type Check,
  formatMarkdownTable,
  formatTextTable,
  requireGc,
  type Section,
  type SectionResult,
} from './harness.js';
import { nodeBinary, parseNodeList, runOn } from './node-versions.js';

const benchDir = path.dirname(fileURLToPath(import.meta.url));
const rootDir = path.resolve(benchDir, '..');
const docsFile = path.join(rootDir, 'docs', 'benchmarks.md');
/** The library is measured as users import it, from dist/ (see built.mjs), unless asked not to. */
const BUILT = process.env.ENGINE_GUARD_BENCH_SOURCE !== 'src';

/** What one section gave, in a form a child process can hand to its parent as JSON. */
interface Outcome {
  file: string;
  title: string;
  description: string;
  result: SectionResult | undefined;
  /** Why the section failed, when it did. */
  error: string | undefined;
  seconds: number;
}

/** One run of the selected sections on one Node release. */
interface Run {
  /** The Node release, as shown in headings: `v24.22.3`. */
  node: string;
  /** The machine and the run, as listed at the top of the page. */
  info: Record<string, string>;
  outcomes: Outcome[];
  seconds: number;
  loadAtEnd: string;
}

/** The command line: `[--node <list>] [--emit <file>] [<filter>]`. */
interface Args {
  filter: string | undefined;
  /** Releases to run on, each in a child process; undefined: in this process. */
  nodes: string[] | undefined;
  /** Internal: write this run as JSON to the file (a child of a `--node` run), not the docs. */
  emit: string | undefined;
  /** Internal: the command shown on the page (a child of a `--node` run gets its parent's). */
  command: string | undefined;
}

/** @throws RangeError on an unknown option or a bad `--node` list. */
function parseArgs(argv: readonly string[]): Args {
  const args: Args = { filter: undefined, nodes: undefined, emit: undefined, command: undefined };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1;
    const name = eq < 0 ? arg : arg.slice(0, eq);
    const value = (): string | undefined => (eq < 0 ? argv[++i] : arg.slice(eq + 1));
    if (name === '--node') args.nodes = parseNodeList(value());
    else if (name === '--emit') args.emit = value();
    else if (name === '--command') args.command = value();
    else if (arg.startsWith('--')) throw new RangeError(`Unknown option ${arg}`);
    else args.filter = arg.toLowerCase();
  }
  return args;
}

/** What a `bench/*.bench.ts` module exports. */
interface BenchModule {
  sections?: Section[];
  /**
   * Where the module runs among the others: lower first, then by file name. Default 100.
   * Modules share one process, and some leave state behind (RWLock's AsyncLocalStorage makes
   * every later promise dearer), so the lock's own baseline runs first.
   */
  order?: number;
}

async function loadSections(
  filter: string | undefined,
): Promise<{ file: string; section: Section }[]> {
  const files = (await readdir(benchDir)).filter((f) => /\.bench\.[cm]?[jt]s$/.test(f));
  const modules: { file: string; mod: BenchModule }[] = [];
  for (const file of files) {
    const mod = (await import(pathToFileURL(path.join(benchDir, file)).href)) as BenchModule;
    if (!Array.isArray(mod.sections)) {
      throw new Error(`bench/${file} must export \`sections: Section[]\``);
    }
    modules.push({ file, mod });
  }
  modules.sort(
    (a, b) => (a.mod.order ?? 100) - (b.mod.order ?? 100) || a.file.localeCompare(b.file),
  );
  const all: { file: string; section: Section }[] = [];
  for (const { file, mod } of modules) {
    for (const section of mod.sections ?? []) {
      if (
        filter === undefined ||
        file.toLowerCase().includes(filter) ||
        section.title.toLowerCase().includes(filter)
      ) {
        all.push({ file, section });
      }
    }
  }
  return all;
}

/** The commit measured, and whether `src/` had uncommitted changes. */
function sourceVersion(): string {
  try {
    const git = (...args: string[]) =>
      execFileSync('git', args, {
        cwd: rootDir,
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'ignore'],
      }).trim();
    const commit = git('rev-parse', '--short', 'HEAD');
    const dirty = git('status', '--porcelain', '--', 'src') !== '';
    const what = BUILT
      ? 'the build in dist/ (`npm run build`, run first by bench/run.ts)'
      : 'src/ as tsx compiles it (ENGINE_GUARD_BENCH_SOURCE=src)';
    return `commit ${commit}${dirty ? ' + uncommitted changes in src/' : ''}; measured: ${what}`;
  } catch {
    return 'unknown (not a git checkout)';
  }
}

function loadAverage(): string {
  return os.loadavg()[0]!.toFixed(2);
}

function machine(command: string): Record<string, string> {
  const cpus = os.cpus();
  return {
    Command: command,
    Source: sourceVersion(),
    Date: new Date().toISOString(),
    CPU: `${cpus[0]?.model.trim() ?? 'unknown'}, ${cpus.length} cores`,
    Memory: `${(os.totalmem() / 1024 ** 3).toFixed(1)} GiB`,
    OS: `${os.type()} ${os.release()} (${os.arch()})`,
    Node: `${process.version} (V8 ${process.versions.v8})`,
    Load: `${loadAverage()} (1-min load average at start; other processes make figures noisier)`,
  };
}

const CHECK_ALIGN: ('left' | 'right')[] = ['left', 'right', 'right', 'left'];

function checkRows(checks: readonly Check[]): string[][] {
  return [
    ['Target', 'Wanted', 'Measured', 'Result'],
    ...checks.map((c) => [c.name, c.target, c.actual, c.pass ? 'PASS' : 'FAIL']),
  ];
}

function renderOutcome(out: string[], o: Outcome): void {
  if (o.result === undefined) {
    out.push(`**Section failed:** \`${o.error}\``, '');
    return;
  }
  out.push(formatMarkdownTable(o.result.table), '');
  for (const note of o.result.notes ?? []) out.push(`- ${note}`);
  if ((o.result.notes ?? []).length > 0) out.push('');
  if ((o.result.checks ?? []).length > 0) {
    out.push(formatMarkdownTable(checkRows(o.result.checks ?? []), CHECK_ALIGN), '');
  }
}

/** The page: one run as it always was, or several, each section once per Node release. */
function renderMarkdown(runs: readonly Run[]): string {
  const several = runs.length > 1;
  const first = runs[0]!;
  const out: string[] = [];
  out.push('# Benchmarks', '');
  out.push(
    'Generated by `npm run bench` from `bench/*.bench.ts`; do not edit by hand, re-run instead.',
    several
      ? `Every figure, ratio and target below comes from the same run: the sections ran on each Node release in turn (${runs.map((r) => r.node).join(', ')}), on the machine listed here, and each heading and target names its release. Compare figures within one release; across releases, compare the ratios.`
      : 'Every figure, ratio and target below comes from the same run, on the machine listed here.',
    'Timings are medians over several rounds or batches, after a warm-up.',
    '',
  );
  for (const [key, value] of Object.entries(first.info)) {
    if (!several || (key !== 'Node' && key !== 'Load')) out.push(`- **${key}**: ${value}`);
  }
  if (several) {
    for (const run of runs) {
      out.push(
        `- **Node ${run.info.Node}**: ${run.seconds.toFixed(1)} s; 1-min load average ${run.info.Load?.split(' ')[0]} at start, ${run.loadAtEnd} at end`,
      );
    }
    out.push('');
  } else {
    out.push(`- **Duration**: ${first.seconds.toFixed(1)} s for the whole run`);
    out.push(`- **Load at end**: ${first.loadAtEnd} (1-min load average)`, '');
  }

  const prefix = (run: Run): string => (several ? `Node ${run.node}: ` : '');
  const allChecks = runs.flatMap((run) =>
    run.outcomes.flatMap((o) =>
      (o.result?.checks ?? []).map((c) => ({ ...c, name: `${prefix(run)}${o.title}: ${c.name}` })),
    ),
  );
  if (allChecks.length > 0) {
    const passed = allChecks.filter((c) => c.pass).length;
    out.push('## Targets', '');
    out.push(`${passed} of ${allChecks.length} targets met in this run.`, '');
    out.push(formatMarkdownTable(checkRows(allChecks), CHECK_ALIGN), '');
  }

  for (const o of first.outcomes) {
    out.push(`## ${o.title}`, '');
    if (!several) {
      out.push(`_${`bench/${o.file}`}, ${o.seconds.toFixed(1)} s._ ${o.description}`, '');
      renderOutcome(out, o);
      continue;
    }
    out.push(`_${`bench/${o.file}`}._ ${o.description}`, '');
    for (const run of runs) {
      const mine = run.outcomes.find((x) => x.title === o.title);
      if (mine === undefined) continue;
      out.push(`### Node ${run.node}`, '', `_${mine.seconds.toFixed(1)} s._`, '');
      renderOutcome(out, mine);
    }
  }
  return `${out.join('\n').trimEnd()}\n`;
}

/** Runs the selected sections in this process, printing each table as it comes. */
async function runHere(filter: string | undefined, command: string): Promise<Run | undefined> {
  const info = machine(command);
  for (const [key, value] of Object.entries(info)) console.log(`${key.padEnd(8)} ${value}`);
  const selected = await loadSections(filter);
  if (selected.length === 0) {
    console.error(`No benchmark section matches "${filter}".`);
    return undefined;
  }
  const started = performance.now();
  const outcomes: Outcome[] = [];
  for (const { file, section } of selected) {
    console.log(`\n== ${section.title} (bench/${file})`);
    const t0 = performance.now();
    let result: SectionResult | undefined;
    let error: string | undefined;
    try {
      result = await section.run();
    } catch (e) {
      console.error('Section failed:', e);
      error = String(e);
    }
    const seconds = (performance.now() - t0) / 1000;
    const { title, description } = section;
    outcomes.push({ file, title, description, result, error, seconds });
    if (result === undefined) continue;
    console.log(formatTextTable(result.table));
    for (const note of result.notes ?? []) console.log(`  * ${note}`);
    for (const c of result.checks ?? []) {
      console.log(`  [${c.pass ? 'PASS' : 'FAIL'}] ${c.name}: wanted ${c.target}, got ${c.actual}`);
    }
    console.log(`  (${seconds.toFixed(1)} s)`);
  }
  const seconds = (performance.now() - started) / 1000;
  return { node: process.version, info, outcomes, seconds, loadAtEnd: loadAverage() };
}

/** Runs the selected sections on each release in turn, each in a child process. */
async function runOnEach(
  nodes: readonly string[],
  filter: string | undefined,
  command: string,
): Promise<Run[] | undefined> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'engine-guard-bench-'));
  const runs: Run[] = [];
  try {
    for (const major of nodes) {
      const bin = await nodeBinary(major, rootDir);
      const emit = path.join(dir, `node-${major}.json`);
      console.log(`\n==== Node ${major} (${bin})`);
      const args = ['--emit', emit, `--command=${command}`];
      const code = await runOn(
        bin,
        fileURLToPath(import.meta.url),
        [...args, ...(filter === undefined ? [] : [filter])],
        rootDir,
      );
      if (code === 2) return undefined;
      if (!existsSync(emit))
        throw new Error(`Node ${major}: the run ended (${code}) with no results`);
      runs.push(JSON.parse(await readFile(emit, 'utf8')) as Run);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return runs;
}

function summarize(runs: readonly Run[]): { failed: boolean } {
  let failed = false;
  for (const run of runs) {
    const checks = run.outcomes.flatMap((o) => o.result?.checks ?? []);
    const met = checks.filter((c) => c.pass).length;
    failed ||= run.outcomes.some((o) => o.result === undefined);
    console.log(
      `\n${runs.length > 1 ? `Node ${run.node}: ` : ''}${met}/${checks.length} targets met; ${run.seconds.toFixed(1)} s in all.`,
    );
  }
  return { failed };
}

async function main(): Promise<number> {
  let args: Args;
  try {
    requireGc();
    args = parseArgs(process.argv.slice(2));
  } catch (error) {
    console.error(error instanceof Error ? error.message : error);
    return 2;
  }
  const { filter, nodes, emit } = args;
  // Once, in the process the user started: its children measure the same build.
  if (BUILT && emit === undefined) {
    console.log('Building dist/ (npm run build): the benchmarks measure the build users import.');
    execFileSync('npm', ['run', '--silent', 'build'], { cwd: rootDir, stdio: 'inherit' });
  }
  const command =
    args.command ??
    (nodes === undefined
      ? '`npm run bench` (`node --expose-gc --import ./bench/built.mjs bench/run.ts`)'
      : `\`npm run bench -- --node ${nodes.join(',')}\` (each release in a child process: \`node --expose-gc --import ./bench/built.mjs bench/run.ts\`)`);
  const runs =
    nodes === undefined
      ? await runHere(filter, command).then((run) => (run === undefined ? undefined : [run]))
      : await runOnEach(nodes, filter, command);
  if (runs === undefined) return 2;
  if (emit !== undefined) {
    await writeFile(emit, JSON.stringify(runs[0]));
    return runs[0]!.outcomes.some((o) => o.result === undefined) ? 1 : 0;
  }
  const { failed } = summarize(runs);
  if (filter === undefined) {
    await mkdir(path.dirname(docsFile), { recursive: true });
    await writeFile(docsFile, renderMarkdown(runs));
    console.log(`Wrote ${path.relative(rootDir, docsFile)}.`);
  } else {
    console.log(`Filtered run ("${filter}"): ${path.relative(rootDir, docsFile)} left unchanged.`);
  }
  return failed ? 1 : 0;
}

process.exitCode = await main();
