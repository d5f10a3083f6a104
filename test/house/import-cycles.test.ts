/**
 * No import cycle in src/: a module's imports point down the layers (lock and diagnostics below
 * the guard, the guard below the adapters), so types shared by two layers live in the lower one.
 * Type-only imports count too: a type cycle is a layering mistake that the next value import
 * turns into a load-order bug (a class used before its module finished evaluating).
 *
 * The graph is read with the TypeScript compiler's own import scanner (`ts.preProcessFile`:
 * static imports, `import type`, re-exports, dynamic `import()` and `require`), relative
 * specifiers only: packages and `node:` modules cannot close a cycle through src/.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const SRC = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src');

/** Every `.ts` file under `dir`, as absolute paths. */
function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return sources(full);
    return entry.name.endsWith('.ts') ? [full] : [];
  });
}

/** The src/ modules `file` imports (`./x.js` is the source `./x.ts`, as NodeNext spells it). */
function importsOf(file: string, known: ReadonlySet<string>): string[] {
  const { importedFiles } = ts.preProcessFile(readFileSync(file, 'utf8'), true, true);
  const found = new Set<string>();
  for (const { fileName } of importedFiles) {
    if (!fileName.startsWith('.')) continue;
    const target = path.resolve(path.dirname(file), fileName).replace(/\.js$/, '.ts');
    const candidates = [target, `${target}.ts`, path.join(target, 'index.ts')];
    const hit = candidates.find((candidate) => known.has(candidate));
    if (hit === undefined) throw new Error(`${file}: cannot resolve "${fileName}"`);
    found.add(hit);
  }
  return [...found];
}

/**
 * The cycles of a graph: its strongly connected components of more than one node (or a node
 * importing itself), each as one closed path through it (Tarjan, then a walk inside the
 * component), so a failure names a cycle to break.
 */
function findCycles(graph: ReadonlyMap<string, readonly string[]>): string[][] {
  let counter = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const components: string[][] = [];
  const visit = (node: string): void => {
    index.set(node, counter);
    low.set(node, counter);
    counter++;
    stack.push(node);
    onStack.add(node);
    for (const next of graph.get(node) ?? []) {
      if (!index.has(next)) {
        visit(next);
        low.set(node, Math.min(low.get(node) ?? 0, low.get(next) ?? 0));
      } else if (onStack.has(next)) {
        low.set(node, Math.min(low.get(node) ?? 0, index.get(next) ?? 0));
      }
    }
    if (low.get(node) !== index.get(node)) return;
    const component: string[] = [];
    let member: string | undefined;
    do {
      member = stack.pop();
      if (member === undefined) break;
      onStack.delete(member);
      component.push(member);
    } while (member !== node);
    const selfLoop = (graph.get(node) ?? []).includes(node);
    if (component.length > 1 || selfLoop) components.push(component);
  };
  for (const node of graph.keys()) if (!index.has(node)) visit(node);
  return components.map((component) => cycleThrough(graph, new Set(component)));
}

/** One closed path inside a strongly connected component, from its first member back to it. */
function cycleThrough(graph: ReadonlyMap<string, readonly string[]>, members: Set<string>) {
  // From its first member by name, so a failure reads the same on every run.
  const [start] = [...members].sort();
  if (start === undefined) return [];
  // Breadth-first from start's successors back to start, staying inside the component.
  const from = new Map<string, string>();
  const queue: string[] = [start];
  while (queue.length > 0) {
    const node = queue.shift() as string;
    for (const next of graph.get(node) ?? []) {
      if (!members.has(next) || from.has(next)) continue;
      from.set(next, node);
      if (next === start) {
        const path: string[] = [start];
        for (let at = from.get(start); at !== undefined && at !== start; at = from.get(at)) {
          path.unshift(at);
        }
        path.unshift(start);
        return path;
      }
      queue.push(next);
    }
  }
  return [...members];
}

describe('import graph of src/', () => {
  const files = sources(SRC);
  const known = new Set(files);
  const graph = new Map(files.map((file) => [file, importsOf(file, known)]));
  const name = (file: string): string => path.relative(SRC, file);

  it('is read in full: every module, and the entry points with their imports', () => {
    expect(files.length).toBeGreaterThan(30);
    expect(graph.get(path.join(SRC, 'index.ts'))?.map(name)).toEqual(
      expect.arrayContaining(['guard/engine-guard.ts', 'lock/rwlock.ts', 'diagnostics.ts']),
    );
    // `import type` counts: guard/health.ts imports only types from guard/op.ts.
    expect(graph.get(path.join(SRC, 'guard/health.ts'))?.map(name)).toContain('guard/op.ts');
  });

  it('has no cycle', () => {
    const cycles = findCycles(graph).map((cycle) => cycle.map(name).join(' -> '));
    expect(cycles).toEqual([]);
  });
});

describe('findCycles (the checker itself)', () => {
  it('finds a cycle, names it as a closed path, and finds self-imports', () => {
    const graph = new Map([
      ['a', ['b']],
      ['b', ['c', 'd']],
      ['c', ['a']],
      ['d', []],
      ['e', ['e']],
    ]);
    expect(findCycles(graph)).toEqual(
      expect.arrayContaining([
        ['a', 'b', 'c', 'a'],
        ['e', 'e'],
      ]),
    );
    expect(findCycles(graph)).toHaveLength(2);
  });

  it('passes an acyclic graph, diamonds included', () => {
    const graph = new Map([
      ['a', ['b', 'c']],
      ['b', ['d']],
      ['c', ['d']],
      ['d', []],
    ]);
    expect(findCycles(graph)).toEqual([]);
  });
});
