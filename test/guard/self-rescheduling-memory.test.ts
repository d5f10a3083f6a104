/**
 * A job that reschedules itself from inside its guarded op (a poller, a queue consumer) must not
 * keep its earlier ops alive for as long as it runs (issue 16, item 11: ~730 B per run on
 * Node 20 and 22, 20,000 live `Op`s after 20,000 runs). The context chain was cut before
 * (context-chain.test.ts); what linked the ops then was each op's promise, which on Node 20/22
 * holds the async context it was made in: the previous op.
 *
 * Measured in a child process started with `--expose-gc`, on the Node that runs the tests (CI
 * runs 20, 22 and 24).
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { type Measurement, SHAPES, type Shape } from './self-rescheduling.child.js';

const CHILD = fileURLToPath(new URL('./self-rescheduling.child.ts', import.meta.url));

function measure(shape: Shape): Promise<Measurement> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--expose-gc', '--import', 'tsx', CHILD, shape], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      out += chunk;
    });
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      err += chunk;
    });
    child.once('error', reject);
    child.once('exit', (code) => {
      if (code !== 0) reject(new Error(`child exited with ${code}: ${err}`));
      else resolve(JSON.parse(out) as Measurement);
    });
  });
}

describe('a job that reschedules itself from inside its op', () => {
  it.each(SHAPES)(
    '%s: retains nothing per run',
    async (shape) => {
      const m = await measure(shape);
      expect(m.shape).toBe(shape);
      // Generous: 100 B per run plus slack for the heap's own noise (before the fix: ~730 B/run).
      expect(m.growth).toBeLessThan(256 * 1024 + 100 * m.runs);
      expect(m.firstRunCollected).toBe(true);
    },
    60_000,
  );
});
