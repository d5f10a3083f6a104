/**
 * Module hooks of bench/built.mjs: the library's entry points (src/index, src/adapters/pg, ...)
 * resolve to the build in dist/, the code users import, instead of the TypeScript source that tsx
 * compiles on the fly (with `keepNames`, so that every closure made per op also pays for a
 * `__name` call the build does not have).
 */
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = new URL('../', import.meta.url);
const srcDir = new URL('src/', root).href;
/** src/ entry (without extension) -> its file in dist/, as tsup.config.ts names them. */
const ENTRIES = new Map([
  ['index', 'dist/index.js'],
  ['testing/index', 'dist/testing/index.js'],
  ['adapters/pg', 'dist/adapters/pg.js'],
  ['adapters/duckdb', 'dist/adapters/duckdb.js'],
  ['otel/index', 'dist/otel/index.js'],
]);

export async function resolve(specifier, context, nextResolve) {
  const resolved = await nextResolve(specifier, context);
  // Modules of src/ among themselves (none is loaded but through an entry) keep their imports.
  if (context.parentURL?.startsWith(srcDir)) return resolved;
  if (!resolved.url.startsWith(srcDir)) return resolved;
  const entry = resolved.url.slice(srcDir.length).replace(/\.[cm]?[jt]s$/, '');
  const built = ENTRIES.get(entry);
  if (built === undefined) return resolved;
  const url = new URL(built, root);
  if (!existsSync(fileURLToPath(url))) {
    throw new Error(`${built} is missing: run \`npm run build\` first (bench/run.ts does)`);
  }
  return { url: pathToFileURL(fileURLToPath(url)).href, format: 'module', shortCircuit: true };
}
