import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

const src = (file: string): string => fileURLToPath(new URL(`./src/${file}`, import.meta.url));

export default defineConfig({
  // The examples import the package by name, as its users do; in the repo the names resolve to
  // the sources (tsconfig.json "paths" does the same for tsc and tsx).
  resolve: {
    alias: [
      { find: /^engine-guard$/, replacement: src('index.ts') },
      { find: /^engine-guard\/testing$/, replacement: src('testing/index.ts') },
      { find: /^engine-guard\/pg$/, replacement: src('adapters/pg.ts') },
      { find: /^engine-guard\/duckdb$/, replacement: src('adapters/duckdb.ts') },
      { find: /^engine-guard\/otel$/, replacement: src('otel/index.ts') },
    ],
  },
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/support/global-setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Real servers and real sockets: keep parallelism modest on 2-core machines.
    maxWorkers: 2,
    allowOnly: false,
  },
});
