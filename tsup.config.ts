import { defineConfig } from 'tsup';

export default defineConfig({
  entry: {
    index: 'src/index.ts',
    'testing/index': 'src/testing/index.ts',
    'adapters/pg': 'src/adapters/pg.ts',
    'adapters/duckdb': 'src/adapters/duckdb.ts',
    'otel/index': 'src/otel/index.ts',
  },
  format: ['esm', 'cjs'],
  // Users see only what they call: members tagged `@internal` (the lock's release hook, the
  // lease's join, the diagnostics channels the library publishes on...) are dropped from the
  // published declarations. They stay public to the TypeScript project itself (tsconfig.json
  // does not strip), so src/ modules can still reach each other.
  //
  // The banner: Lease, Subscription, EngineGuard and Session implement Disposable /
  // AsyncDisposable (Symbol.dispose, Symbol.asyncDispose). TypeScript 5.x includes their lib
  // (esnext.disposable) by default under "module": "nodenext"; TypeScript 7 does not (its
  // default lib stops at the last ES edition), so a consumer with nothing but "module":
  // "nodenext" got "Cannot find name 'AsyncDisposable'". The reference brings that one lib in,
  // on both (checked by .ci/smoke/run-core.sh with each compiler).
  dts: {
    compilerOptions: { stripInternal: true },
    banner: '/// <reference lib="esnext.disposable" />',
  },
  sourcemap: true,
  clean: true,
  target: 'node20',
  splitting: false,
  treeshake: true,
});
