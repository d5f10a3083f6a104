/**
 * The drivers and `@opentelemetry/api` are optional peers: in a project where `@duckdb/node-api`
 * is not installed, `engine-guard` and `engine-guard/pg` load (and load no DuckDB), and in a
 * project with neither driver, `engine-guard` loads. `@opentelemetry/api` is loaded by
 * `engine-guard/otel` only: the core and the adapters never load it, installed or not. Built with tsup into a temporary package (no type
 * declarations: this is about what runs), installed by copying, and run by a fresh `node`, from
 * `import` and from `require`.
 */
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
let work: string;

/** A project in `work/name` with engine-guard and the given packages (linked from the repo). */
function project(name: string, linked: readonly string[]): string {
  const dir = path.join(work, name);
  const modules = path.join(dir, 'node_modules');
  mkdirSync(path.join(modules, 'engine-guard'), { recursive: true });
  cpSync(path.join(work, 'dist'), path.join(modules, 'engine-guard', 'dist'), { recursive: true });
  cpSync(path.join(root, 'package.json'), path.join(modules, 'engine-guard', 'package.json'));
  for (const pkg of linked) {
    // The repo's own copy (not every package exports its package.json to resolve it by).
    const target = path.join(root, 'node_modules', pkg);
    mkdirSync(path.dirname(path.join(modules, pkg)), { recursive: true });
    symlinkSync(target, path.join(modules, pkg), 'dir');
  }
  writeFileSync(path.join(dir, 'package.json'), '{ "name": "consumer", "private": true }\n');
  return dir;
}

/** Runs `code` in `dir` with a fresh node; returns its stdout (throws on a non-zero exit). */
function run(dir: string, file: string, code: string): string {
  writeFileSync(path.join(dir, file), code);
  return execFileSync(process.execPath, [file], {
    cwd: dir,
    encoding: 'utf8',
    timeout: 30_000,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

/** Prints the optional peers found among the loaded modules (CJS cache). */
const LOADED = `
const loaded = Object.keys(require.cache);
console.log(JSON.stringify({
  pg: loaded.some((f) => /[\\\\/]node_modules[\\\\/]pg[\\\\/]/.test(f)),
  duckdb: loaded.some((f) => /[\\\\/]@duckdb[\\\\/]/.test(f)),
  otel: loaded.some((f) => /[\\\\/]@opentelemetry[\\\\/]api[\\\\/]/.test(f)),
}));`;

beforeAll(() => {
  work = mkdtempSync(path.join(tmpdir(), 'engine-guard-peers-'));
  execFileSync(
    process.execPath,
    [
      path.join(root, 'node_modules/tsup/dist/cli-default.js'),
      '--out-dir',
      path.join(work, 'dist'),
      '--no-dts',
      '--no-sourcemap',
    ],
    { cwd: root, stdio: 'pipe', timeout: 120_000 },
  );
}, 150_000);

afterAll(() => {
  if (work !== undefined) rmSync(work, { recursive: true, force: true });
});

describe('optional peer dependencies', () => {
  it('engine-guard loads where neither driver is installed (import and require)', () => {
    const dir = project('none', []);
    const esm = run(
      dir,
      'a.mjs',
      `import { EngineGuard } from 'engine-guard';
       import * as testing from 'engine-guard/testing';
       console.log(typeof EngineGuard, typeof testing.FaultProxy);`,
    );
    expect(esm.trim()).toBe('function function');
    const cjs = run(dir, 'a.cjs', `const { EngineGuard } = require('engine-guard');${LOADED}`);
    expect(JSON.parse(cjs)).toEqual({ pg: false, duckdb: false, otel: false });
    // And the adapters say clearly what is missing.
    expect(() => run(dir, 'b.cjs', `require('engine-guard/pg');`)).toThrow(
      /Cannot find module 'pg'/,
    );
    expect(() => run(dir, 'c.cjs', `require('engine-guard/otel');`)).toThrow(
      /Cannot find module '@opentelemetry\/api'/,
    );
    expect(() => run(dir, 'c.mjs', `import 'engine-guard/otel';`)).toThrow(
      /Cannot find (package|module) '@opentelemetry\/api'/,
    );
  });

  it('engine-guard/otel loads with @opentelemetry/api (import and require) and loads no driver; the core and pg never load the api', () => {
    const dir = project('otel', ['@opentelemetry/api', 'pg']);
    const cjs = run(
      dir,
      'a.cjs',
      `const { EngineGuard } = require('engine-guard');
       require('engine-guard/pg');
       ${LOADED}`,
    );
    expect(JSON.parse(cjs)).toEqual({ pg: true, duckdb: false, otel: false });
    // With the global no-op providers of the api: instruments, records an op, disposes.
    const body = `
      const guard = new EngineGuard({ name: 'peers', create: () => ({}) });
      const instrumentation = instrumentGuard(guard);
      const value = await guard.read(() => 42);
      instrumentation.dispose();
      await guard.close();`;
    const withOtel = run(
      dir,
      'b.cjs',
      `const { EngineGuard } = require('engine-guard');
       const { instrumentGuard } = require('engine-guard/otel');
       (async () => {${body}
         const loaded = Object.keys(require.cache);
         console.log(value, JSON.stringify({
           otel: loaded.some((f) => /[\\\\/]@opentelemetry[\\\\/]api[\\\\/]/.test(f)),
           pg: loaded.some((f) => /[\\\\/]node_modules[\\\\/]pg[\\\\/]/.test(f)),
         }));
       })();`,
    );
    expect(withOtel.trim()).toBe('42 {"otel":true,"pg":false}');
    const esm = run(
      dir,
      'c.mjs',
      `import { EngineGuard } from 'engine-guard';
       import { instrumentGuard } from 'engine-guard/otel';
       ${body}
       console.log(value, typeof instrumentation[Symbol.dispose]);`,
    );
    expect(esm.trim()).toBe('42 function');
  });

  it('engine-guard and engine-guard/pg load where @duckdb/node-api is absent, loading no DuckDB', () => {
    const dir = project('pg-only', ['pg']);
    const cjs = run(
      dir,
      'a.cjs',
      `const { EngineGuard } = require('engine-guard');
       const { pgGuardOptions } = require('engine-guard/pg');
       const options = pgGuardOptions({ config: { host: '127.0.0.1', port: 1 } });
       if (typeof options.probe !== 'function' || typeof EngineGuard !== 'function') process.exit(2);
       ${LOADED}`,
    );
    expect(JSON.parse(cjs)).toEqual({ pg: true, duckdb: false, otel: false });
    const esm = run(
      dir,
      'a.mjs',
      `import { EngineGuard } from 'engine-guard';
       import { pgGuardOptions, pgQuery } from 'engine-guard/pg';
       console.log(typeof EngineGuard, typeof pgGuardOptions, typeof pgQuery);`,
    );
    expect(esm.trim()).toBe('function function function');
    // DuckDB really is absent here.
    expect(() => run(dir, 'b.mjs', `import 'engine-guard/duckdb';`)).toThrow(
      /Cannot find (package|module) '@duckdb\/node-api'/,
    );
  });

  it('engine-guard/duckdb loads where pg is absent, loading no pg', () => {
    const dir = project('duckdb-only', ['@duckdb/node-api']);
    const cjs = run(
      dir,
      'a.cjs',
      `require('engine-guard');
       const { duckdbGuardOptions } = require('engine-guard/duckdb');
       if (typeof duckdbGuardOptions !== 'function') process.exit(2);
       ${LOADED}`,
    );
    expect(JSON.parse(cjs)).toEqual({ pg: false, duckdb: true, otel: false });
  });
});
