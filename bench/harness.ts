/**
 * Small benchmark harness shared by every `bench/*.bench.ts` module.
 *
 * A module exports `sections: Section[]`; `bench/run.ts` discovers the modules, runs every section
 * in one process, prints the tables and rewrites `docs/benchmarks.md`. Figures, ratios and target
 * checks all come from the same run, so they can be compared side by side.
 *
 * Timing rules: medians over several rounds after a warm-up, each contender with its own copy of
 * the timing loop, and the contenders of a comparison run in a rotated order each round so none
 * always runs first (or last). One full GC before the first round, none between rounds (see
 * {@link MeasureOptions.gcEachRound}).
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

/** One target a section promises, as measured in this run. */
export interface Check {
  /** What is checked, e.g. `RWLock.read(fn) vs runExclusive(fn)`. */
  name: string;
  /** The target, in words, e.g. `>= 5x faster`. */
  target: string;
  /** What was measured, e.g. `6.1x faster`. */
  actual: string;
  pass: boolean;
}

/** What a section reports. `table[0]` is the header row. */
export interface SectionResult {
  table: string[][];
  notes?: string[];
  checks?: Check[];
}

/** One benchmark section: a titled table plus notes and target checks. */
export interface Section {
  title: string;
  /** One paragraph saying what is measured and how. */
  description: string;
  run(): Promise<SectionResult>;
}

/** Options of {@link measureAsync} and {@link compareAsync}. */
export interface MeasureOptions {
  /** Calls per round. Default 10,000. */
  iterations?: number;
  /** Calls before the first round, to let the JIT settle. Default `iterations`. */
  warmup?: number;
  /** Timed rounds; the result is their median. Default 9. */
  rounds?: number;
  /**
   * Force a full GC before every round. Default false: a full GC shrinks the young generation,
   * so the allocation-heavy contenders would pay extra scavenges at the start of every round.
   */
  gcEachRound?: boolean;
}

/** Result of timing one contender. */
export interface Measurement {
  name: string;
  /** Median over the rounds of the mean CPU ns per call within a round (see TIMING_LOOP_SOURCE). */
  nsPerOp: number;
  /** ns per call of each round, in round order. */
  roundsNsPerOp: number[];
  iterations: number;
}

/** A function timed by {@link compareAsync}. */
export interface Contender {
  name: string;
  fn: () => unknown;
}

/** Returns `globalThis.gc`, or exits with a clear message when node was started without it. */
export function requireGc(): () => void {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (typeof gc !== 'function') {
    throw new Error(
      'globalThis.gc is not available: run the benchmarks with `npm run bench` ' +
        '(node --expose-gc --import ./bench/built.mjs bench/run.ts).',
    );
  }
  return gc;
}

/** Runs a full GC (twice, so that weak references and finalizers settle). */
export function fullGc(): void {
  const gc = requireGc();
  gc();
  gc();
}

/** `process.memoryUsage().heapUsed` right after a full GC. */
export function heapUsedAfterGc(): number {
  fullGc();
  return process.memoryUsage().heapUsed;
}

/** Median of a non-empty list. */
export function median(values: readonly number[]): number {
  if (values.length === 0) throw new RangeError('median of an empty list');
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** Nanoseconds since an arbitrary origin, as a number. */
export function nowNs(): number {
  return Number(process.hrtime.bigint());
}

type Loop = (fn: () => unknown, iterations: number) => Promise<number>;

/**
 * The body of a timing loop, as source (also used by benches that time in a fresh process):
 * `iterations` sequential `await fn()`, timed in CPU time of the process (`process.cpuUsage`,
 * user + system), in ns per call. CPU time rather than the wall clock: on a shared machine other
 * processes delay a loop (a wall-clock round then measures the machine's load), but do not add
 * to the CPU time it uses.
 */
export const TIMING_LOOP_SOURCE = `async function loop(fn, iterations) {
  const start = process.cpuUsage();
  for (let i = 0; i < iterations; i++) await fn();
  const used = process.cpuUsage(start);
  return ((used.user + used.system) * 1000) / iterations;
}`;

/**
 * A fresh copy of the timing loop. V8 keeps type feedback per function literal, so one shared
 * loop would turn megamorphic as contenders pass through it and slow down whoever runs in it
 * next; compiling the loop once per contender keeps each one's call site monomorphic.
 */
function makeLoop(): Loop {
  return new Function(`return ${TIMING_LOOP_SOURCE};`)() as Loop;
}

/** Times `await fn()` run `iterations` times in a row; returns the median CPU ns/op over `rounds`. */
export async function measureAsync(
  name: string,
  fn: () => unknown,
  options: MeasureOptions = {},
): Promise<Measurement> {
  const [result] = await compareAsync([{ name, fn }], options);
  return result!;
}

/**
 * Times several contenders side by side. Every contender is warmed up first; then, round by
 * round, each one runs `iterations` sequential `await fn()` calls, in an order rotated (and
 * reversed every other round) so that no contender always goes first.
 */
export async function compareAsync(
  contenders: readonly Contender[],
  options: MeasureOptions = {},
): Promise<Measurement[]> {
  const iterations = options.iterations ?? 10_000;
  const warmup = options.warmup ?? iterations;
  const rounds = options.rounds ?? 9;
  const gc = requireGc();
  gc();
  const loops = contenders.map(() => makeLoop());
  for (const [i, c] of contenders.entries()) await loops[i]!(c.fn, warmup);
  const samples = contenders.map(() => [] as number[]);
  for (let round = 0; round < rounds; round++) {
    const order = contenders.map((_, i) => (i + round) % contenders.length);
    if (round % 2 === 1) order.reverse();
    for (const index of order) {
      if (options.gcEachRound) gc();
      samples[index]!.push(await loops[index]!(contenders[index]!.fn, iterations));
    }
  }
  return contenders.map((c, i) => ({
    name: c.name,
    nsPerOp: median(samples[i]!),
    roundsNsPerOp: samples[i]!,
    iterations,
  }));
}

/** Seeded PRNG (mulberry32): same seed, same sequence, so runs are repeatable. */
export function createRng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

/** Fisher-Yates shuffle in place with the given PRNG. */
export function shuffleInPlace<T>(items: T[], random: () => number): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    const tmp = items[i]!;
    items[i] = items[j]!;
    items[j] = tmp;
  }
  return items;
}

/** Resolves on the next turn of the event loop (after I/O callbacks). */
export function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** A promise with its resolver exposed. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

const intFormat = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });

/** `1234567.8` -> `1,234,568`. */
export function fmtInt(value: number): string {
  return intFormat.format(value);
}

/** ns with a sensible precision: `12.3 ns`, `1,234 ns`. */
export function fmtNs(ns: number): string {
  return ns < 100 ? `${ns.toFixed(1)} ns` : `${fmtInt(ns)} ns`;
}

/** ms with a sensible precision. */
export function fmtMs(ms: number): string {
  if (ms < 1) return `${ms.toFixed(3)} ms`;
  if (ms < 100) return `${ms.toFixed(2)} ms`;
  return `${fmtInt(ms)} ms`;
}

/** A ratio as `3.2x`. */
export function fmtRatio(ratio: number): string {
  return ratio >= 100 ? `${fmtInt(ratio)}x` : `${ratio.toFixed(2)}x`;
}

/** Bytes as `123 B`, `1.2 KiB`, `3.4 MiB`, `1.0 GiB`. */
export function fmtBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${Math.round(value)} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/**
 * Column alignment: right for columns whose body cells mostly start with a number (`1,234 ns`,
 * `>= 5x`, `0.52x`), left otherwise.
 */
function rightAligned(
  rows: readonly (readonly string[])[],
  align?: readonly ('left' | 'right')[],
): boolean[] {
  const [header, ...body] = rows;
  return (header ?? []).map((_, i) => {
    if (align?.[i] !== undefined) return align[i] === 'right';
    const cells = body.map((row) => row[i] ?? '').filter((cell) => cell !== '');
    const numeric = cells.filter((cell) => /^[<>=~\s]*[-+]?[\d.]/.test(cell)).length;
    return cells.length > 0 && numeric * 2 >= cells.length;
  });
}

/** Renders rows as an aligned plain-text table (first row is the header). */
export function formatTextTable(rows: readonly (readonly string[])[]): string {
  const [header, ...body] = rows;
  if (header === undefined) return '';
  const right = rightAligned(rows);
  const widths = header.map((_, i) => Math.max(...rows.map((row) => (row[i] ?? '').length)));
  const line = (row: readonly string[]) =>
    header
      .map((_, i) => {
        const cell = row[i] ?? '';
        return right[i] ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!);
      })
      .join('  ')
      .trimEnd();
  const rule = widths.map((w) => '-'.repeat(w)).join('  ');
  return [line(header), rule, ...body.map(line)].join('\n');
}

/**
 * Renders rows as a Markdown table (first row is the header), numeric columns right-aligned
 * unless `align` says otherwise,
 * cells padded the way `biome format` lays tables out, so the generated file passes
 * `biome check`.
 */
export function formatMarkdownTable(
  rows: readonly (readonly string[])[],
  align?: readonly ('left' | 'right')[],
): string {
  const [header] = rows;
  if (header === undefined) return '';
  const right = rightAligned(rows, align);
  const cells = rows.map((row) => header.map((_, i) => (row[i] ?? '').replaceAll('|', '\\|')));
  const widths = header.map((_, i) => Math.max(3, ...cells.map((row) => row[i]!.length)));
  const pad = (cell: string, i: number) =>
    right[i] ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!);
  const line = (row: readonly string[]) => `| ${row.map(pad).join(' | ')} |`;
  const rule = widths.map((w, i) => (right[i] ? `${'-'.repeat(w - 1)}:` : `:${'-'.repeat(w - 1)}`));
  const [head, ...body] = cells;
  return [line(head!), `| ${rule.join(' | ')} |`, ...body.map(line)].join('\n');
}

/** `sorted[⌈p·n⌉ - 1]`: the smallest value at or above a fraction `p` of the sorted samples. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) throw new RangeError('percentile of an empty list');
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1));
  return sorted[index]!;
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise<void>((resolve) => setTimeout(resolve, ms));
}

/** `min–max` of a non-empty list, each end formatted with `fmt`. */
export function fmtSpread(values: readonly number[], fmt: (x: number) => string = fmtInt): string {
  return `${fmt(Math.min(...values))}–${fmt(Math.max(...values))}`;
}

/** A duration in ns shown in µs below 1 ms, in ms above. */
export function fmtUs(ns: number): string {
  if (ns >= 1e6) return fmtMs(ns / 1e6);
  return `${(ns / 1e3).toFixed(ns < 1e4 ? 2 : 1)} µs`;
}

/** What {@link driveClosedLoop} measured. */
export interface LoadResult {
  /** Calls completed. */
  ops: number;
  /** Wall time of the whole run, ns. */
  wallNs: number;
  /** CPU time of this process (user + system, every thread) during the run, µs. */
  cpuUs: number;
}

/**
 * Closed-loop load: `callers` concurrent loops each await `op()` then issue the next, until
 * `durationMs` has passed (calls in flight then still finish and count). CPU is
 * `process.cpuUsage()` over the run, so it includes whatever the op costs this process (driver,
 * parsing, GC), not what it costs a server in another process.
 */
export async function driveClosedLoop(
  op: () => Promise<unknown>,
  callers: number,
  durationMs: number,
): Promise<LoadResult> {
  const deadline = nowNs() + durationMs * 1e6;
  let ops = 0;
  const caller = async (): Promise<void> => {
    while (nowNs() < deadline) {
      await op();
      ops++;
    }
  };
  const cpu0 = process.cpuUsage();
  const start = nowNs();
  await Promise.all(Array.from({ length: callers }, caller));
  const wallNs = nowNs() - start;
  const cpu = process.cpuUsage(cpu0);
  return { ops, wallNs, cpuUs: cpu.user + cpu.system };
}

const rootDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/**
 * The `--import` of a benchmark's child process, as of `npm run bench`: TypeScript through tsx,
 * the library from dist/ (see built.mjs).
 */
export const BENCH_IMPORT = path.join(rootDir, 'bench', 'built.mjs');

/**
 * Runs `code` (an ES module) in a fresh `node` started with `flags`, in the repository root, and
 * returns what it printed on stdout, parsed as JSON. For figures that depend on process-wide
 * state (promise hooks, async_hooks registrations) and so must not inherit this process's.
 */
export async function runInFreshProcess<T>(
  code: string,
  flags: readonly string[] = [],
): Promise<T> {
  const { stdout } = await promisify(execFile)(
    process.execPath,
    [...flags, '--input-type=module', '-e', code],
    { cwd: rootDir },
  );
  return JSON.parse(stdout) as T;
}
