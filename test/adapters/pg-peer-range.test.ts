/**
 * Found in review (failed before the fix): package.json admits `pg` >= 8.13.0, and the README says so, but `pgTransaction` needs
 * `Client#getTransactionStatus()`, which `pg` only has from 8.21.0 (checked in the published
 * tarballs: 8.13.0 ... 8.20.0 lack it, 8.21.0 has it). A user on pg 8.13-8.20 installs without a
 * peer warning and gets a TypeError from every pgTransaction call (the example's execute tool).
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
  peerDependencies: Record<string, string>;
};

/** The lowest version a `>=x.y.z` range admits, as [major, minor, patch]. */
function floor(range: string): number[] {
  const match = /^>=\s*(\d+)\.(\d+)\.(\d+)/.exec(range.trim());
  if (match === null) throw new Error(`unexpected range ${range}`);
  return match.slice(1).map(Number);
}

describe('pg peer range', () => {
  it('the pg peer range starts at 8.21.0, the first pg with getTransactionStatus() (pgTransaction needs it)', () => {
    const [major, minor] = floor(pkg.peerDependencies.pg ?? '');
    expect(major).toBe(8);
    expect(minor).toBeGreaterThanOrEqual(21);
  });
});
