/**
 * docs/api.md, "Exported names", lists every export of every entry point as the API reports
 * (api/*.api.md, kept current by `npm run api:check` in CI) have them: each name under its
 * entry point, values as values and types as types, and nothing that is not exported.
 */
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { type ExportKind, listedNames, reportExports } from './snippets.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
  name: string;
  exports: Record<string, unknown>;
};
const entries = Object.keys(pkg.exports)
  .filter((subpath) => !subpath.endsWith('.json'))
  .map((subpath) => `${pkg.name}${subpath.slice(1)}`);
const listed = listedNames(readFileSync(join(ROOT, 'docs', 'api.md'), 'utf8'));

/** `name (value)` for each export, sorted: a failure shows both sides side by side. */
const described = (names: Map<string, ExportKind>): string[] =>
  [...names].map(([name, kind]) => `${name} (${kind})`).sort();

describe('docs/api.md names every export', () => {
  it('has a list for each entry point of package.json', () => {
    expect([...listed.keys()].sort()).toEqual([...entries].sort());
  });

  for (const entry of entries) {
    it(`${entry}: every export, of the right kind, and nothing else`, () => {
      const report = readFileSync(join(ROOT, 'api', `${entry.replace(/\//g, '-')}.api.md`), 'utf8');
      const exported = reportExports(report);
      expect(exported.size).toBeGreaterThan(0);
      expect([...(listed.get(entry) ?? [])].sort()).toEqual(described(exported));
    });
  }
});
