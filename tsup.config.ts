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
  dts: { compilerOptions: { stripInternal: true } },
  sourcemap: true,
  clean: true,
  target: 'node20',
  splitting: false,
  treeshake: true,
});
