/**
 * The parts of the docs check that decide what a block is and whether it drifted, on made-up
 * input: so that a drifted excerpt, a missing script or an unlabeled block cannot pass unseen.
 */
import { describe, expect, it } from 'vitest';
import {
  blocksOf,
  classify,
  excerptDrift,
  fileNameOf,
  headingAnchors,
  listedNames,
  npmRuns,
  relativeLinks,
  reportExports,
} from './snippets.js';

const fence = '```';

describe('docs check: classifying info strings', () => {
  it.each([
    ['ts', 'run', 'esm'],
    ['typescript', 'run', 'esm'],
    ['js', 'run', 'esm'],
    ['js cjs', 'run', 'cjs'],
    ['ts sketch', 'typecheck', 'esm'],
    ['sql sketch', 'none', 'esm'],
    ['sh sketch', 'none', 'esm'],
    ['ts excerpt src/adapters/pg.ts', 'excerpt', 'esm'],
    ['json', 'json', 'esm'],
    ['sh', 'sh', 'esm'],
    ['text', 'none', 'esm'],
  ] as const)('%s → %s', (info, kind, format) => {
    expect(classify(info)).toMatchObject({ kind, format });
  });

  it.each([
    '',
    'sql',
    'python',
    'ts skecth',
    'ts excerpt',
    'ts excerpt a.ts b.ts',
    'text sketch',
    'json sketch extra',
  ])('"%s" is unknown: the block must say what it is', (info) => {
    expect(classify(info).kind).toBe('unknown');
  });
});

describe('docs check: finding blocks', () => {
  it('finds each block with its line, info, name and code; indented fences too', () => {
    const doc = [
      '# Title',
      `${fence}ts`,
      '// db-tools.ts',
      'export const x = 1;',
      fence,
      'text',
      `- item:`,
      `  ${fence}js cjs`,
      '  const a = require("a");',
      `  ${fence}`,
      fence,
      'figure',
      fence,
    ].join('\n');
    const blocks = blocksOf('docs/x.md', doc);
    expect(blocks.map((b) => [b.line, b.info, b.kind, b.name, b.code])).toEqual([
      [2, 'ts', 'run', 'db-tools.ts', '// db-tools.ts\nexport const x = 1;'],
      [8, 'js cjs', 'run', undefined, 'const a = require("a");'],
      [11, '', 'unknown', undefined, 'figure'],
    ]);
    expect(blocks.map(fileNameOf)).toEqual(['db-tools.ts', 'block-L8.cjs', 'block-L11.mjs']);
  });

  it('refuses a block that is never closed', () => {
    expect(() => blocksOf('docs/x.md', `${fence}ts\nconst a = 1;\n`)).toThrow(/x\.md:1/);
  });
});

describe('docs check: excerpts', () => {
  const source = [
    'export function f(a: number): number {',
    '  // why',
    '  const b = a + 1; // add one',
    '  return b;',
    '}',
  ].join('\n');

  it('an excerpt is true when each code line is a line of the source (comments, spacing aside)', () => {
    expect(excerptDrift('function f(a: number): number {', source)).toEqual([
      'function f(a: number): number {',
    ]);
    expect(
      excerptDrift('export function f(a: number): number {\n  const   b = a + 1;\n}', source),
    ).toEqual([]);
  });

  it('names each line the source no longer has', () => {
    expect(excerptDrift('const b = a + 2; // add two\nreturn b;', source)).toEqual([
      'const b = a + 2;',
    ]);
  });
});

describe('docs check: npm run commands', () => {
  it('finds the script and its arguments, past npm flags, env assignments and &&', () => {
    expect(
      npmRuns(
        [
          'npm install && npm run demo   # the demo',
          'TOKEN=s3cret npm run --silent mcp -- --http 8808 --token "$(openssl rand -hex 16)"',
          "npm --prefix /path/to/engine-guard run --silent mcp -- --pg 'postgresql://me@h/db'",
          'npm test',
          'npx vitest run test/x.test.ts',
        ].join('\n'),
      ),
    ).toEqual([
      { script: 'demo', args: [] },
      { script: 'mcp', args: ['--http', '8808', '--token', '$(openssl rand -hex 16)'] },
      { script: 'mcp', args: ['--pg', 'postgresql://me@h/db'] },
      { script: 'test', args: [] },
    ]);
  });
});

describe('docs check: links', () => {
  it('finds relative links outside code blocks, without their anchors; skips URLs', () => {
    const doc = [
      'See [design](design.md#fairness) and [the API](../reference/pg.md).',
      '[site](https://example.com), [mail](mailto:a@b.c), [here](#top)',
      `${fence}ts`,
      'const a = x[0](1); // [not](a-link.md)',
      fence,
      '[last](./CHANGELOG.md)',
    ].join('\n');
    expect(relativeLinks('docs/x.md', doc)).toEqual([
      { doc: 'docs/x.md', line: 1, target: 'design.md', anchor: 'fairness' },
      { doc: 'docs/x.md', line: 1, target: '../reference/pg.md', anchor: undefined },
      { doc: 'docs/x.md', line: 2, target: '', anchor: 'top' },
      { doc: 'docs/x.md', line: 6, target: './CHANGELOG.md', anchor: undefined },
    ]);
  });

  it("gives headings GitHub's anchors", () => {
    const doc = [
      '# Design',
      '## engine-guard/pg: what a busy-handle probe costs the server',
      '### `status()`',
      '### Why a frozen holder cannot *write* after its lease is gone',
      '```sh',
      '# not a heading',
      '```',
      '## Options',
      '### Options',
      '## [Linked](x.md) title',
    ].join('\n');
    expect([...headingAnchors(doc)]).toEqual([
      'design',
      'engine-guardpg-what-a-busy-handle-probe-costs-the-server',
      'status',
      'why-a-frozen-holder-cannot-write-after-its-lease-is-gone',
      'options',
      'options-1',
      'linked-title',
    ]);
  });
});

describe('docs check: exported names', () => {
  it('reads the exports of an API report, renamed ones included, values and types apart', () => {
    const report = [
      '// @public',
      'export class RWLock {',
      '}',
      'export function pgQuery<R>(handle: PgHandle): Promise<R>;',
      'export const PG_LIVENESS: {};',
      'export interface Lease {}',
      'export type Fence = number | bigint;',
      'type LockMode_2 = "read" | "write";',
      'export { LockMode_2 as LockMode }',
      'interface Internal {}',
    ].join('\n');
    expect([...reportExports(report)].sort()).toEqual([
      ['Fence', 'type'],
      ['Lease', 'type'],
      ['LockMode', 'type'],
      ['PG_LIVENESS', 'value'],
      ['RWLock', 'value'],
      ['pgQuery', 'value'],
    ]);
  });

  it('reads the lists of docs/api.md by entry point; a name under both kinds shows twice', () => {
    const apiMd = [
      '## Exported names',
      '',
      '### `engine-guard`',
      '',
      '- Values: `RWLock`, `CachedValue`',
      '  (made by `guard.cache()`), `DEFAULT_LIVENESS` (`{ interval: 5000 }`).',
      "- Types: `CachedValue`, `LockMode` (`'read' | 'write'`).",
      '',
      '### `engine-guard/pg`',
      '',
      '- Values: `pgQuery`.',
      '',
      '## Next section',
      '- Values: `NotCounted`.',
    ].join('\n');
    const listed = listedNames(apiMd);
    expect([...listed.keys()]).toEqual(['engine-guard', 'engine-guard/pg']);
    expect([...listed.get('engine-guard')!].sort()).toEqual([
      'CachedValue (type)',
      'CachedValue (value)',
      'DEFAULT_LIVENESS (value)',
      'LockMode (type)',
      'RWLock (value)',
    ]);
    expect([...listed.get('engine-guard/pg')!]).toEqual(['pgQuery (value)']);
  });
});
