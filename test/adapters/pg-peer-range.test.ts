/**
 * The `pg` peer range admits only what is tested:
 *
 * - Found in review (failed before the fix): package.json admitted `pg` >= 8.13.0, but
 *   `pgTransaction` needs `Client#getTransactionStatus()`, which `pg` only has from 8.21.0
 *   (checked in the published tarballs: 8.13.0 ... 8.20.0 lack it, 8.21.0 has it).
 * - Issue 16: `>= 8.21.0` also admitted pg 9, which removes what pg 8 deprecates (the client's
 *   own query queue, `activeQuery`) and which nothing here runs against: a user on pg 9 would
 *   install without a peer warning. The range ends below 9.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

const read = (path: string): { version: string; peerDependencies: Record<string, string> } =>
  JSON.parse(readFileSync(new URL(path, import.meta.url), 'utf8'));
const range = read('../../package.json').peerDependencies.pg ?? '';
/** The pg the tests run against. */
const tested = read('../../node_modules/pg/package.json').version;

type Version = [number, number, number];

function parse(version: string): Version {
  const match = /^(\d+)(?:\.(\d+))?(?:\.(\d+))?$/.exec(version.trim());
  if (match === null) throw new Error(`unexpected version ${version}`);
  return [Number(match[1]), Number(match[2] ?? 0), Number(match[3] ?? 0)];
}

function compare(a: Version, b: Version): number {
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return 0;
}

/** Whether `version` satisfies `range`: comparators (`>=`, `>`, `<=`, `<`) joined by spaces. */
function satisfies(version: string, range: string): boolean {
  const v = parse(version);
  return range
    .trim()
    .split(/\s+/)
    .every((comparator) => {
      const match = /^(>=|<=|>|<)(.+)$/.exec(comparator);
      if (match === null) throw new Error(`unexpected comparator ${comparator} in ${range}`);
      const order = compare(v, parse(match[2]!));
      switch (match[1]) {
        case '>=':
          return order >= 0;
        case '>':
          return order > 0;
        case '<=':
          return order <= 0;
        default:
          return order < 0;
      }
    });
}

describe('pg peer range', () => {
  it('starts at 8.21.0, the first pg with getTransactionStatus() (pgTransaction needs it)', () => {
    expect(satisfies('8.21.0', range)).toBe(true);
    expect(satisfies('8.20.0', range)).toBe(false);
    expect(satisfies('8.13.0', range)).toBe(false);
  });

  it('admits the pg the tests run against', () => {
    expect(satisfies(tested, range)).toBe(true);
  });

  it('ends below pg 9, which nothing here is tested against', () => {
    expect(satisfies('8.99.99', range)).toBe(true);
    expect(satisfies('9.0.0', range)).toBe(false);
    expect(satisfies('10.0.0', range)).toBe(false);
  });
});
