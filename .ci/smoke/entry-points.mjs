// Imports every entry point of the installed engine-guard, as `import` and as `require`, and
// checks that each one loads and that both builds export the same names. The entry points are
// read from the installed package.json "exports", so a new one is checked without a change
// here. Run from a project where engine-guard and its optional peers (pg, @duckdb/node-api,
// @opentelemetry/api) are installed; used by .ci/run's smoke step on a git-URL install.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(`${process.cwd()}/`);
const pkg = JSON.parse(readFileSync(require.resolve('engine-guard/package.json'), 'utf8'));
const entries = Object.keys(pkg.exports)
  .filter((subpath) => !subpath.endsWith('.json'))
  .map((subpath) => `${pkg.name}${subpath.slice(1)}`);
assert.ok(entries.length >= 4, `expected at least 4 entry points, got ${entries.join(', ')}`);

for (const entry of entries) {
  const esm = await import(entry);
  const cjs = require(entry);
  const esmNames = Object.keys(esm)
    .filter((name) => name !== 'default')
    .sort();
  const cjsNames = Object.keys(cjs).sort();
  assert.ok(esmNames.length > 0, `${entry} (import) exports nothing`);
  assert.deepEqual(cjsNames, esmNames, `${entry}: require and import export the same names`);
  console.log(`${entry}: ${esmNames.length} exports, import and require agree`);
}
