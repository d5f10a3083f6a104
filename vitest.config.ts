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
    // Most of the suite waits (on timers, sockets, servers, child processes) rather than
    // computing: four files at once on a 2-core machine took the run from 240 s to 165 s; six
    // gained little more, the machine's CPU being the limit by then.
    maxWorkers: 4,
    allowOnly: false,
  },
});
