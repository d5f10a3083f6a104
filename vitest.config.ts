import { defineConfig } from 'vitest/config';

export default defineConfig({
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
