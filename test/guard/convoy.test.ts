/**
 * The original report's acceptance criterion for slow ops (issue 11): one legitimately long read
 * and one queued write must not stall every other caller. Real time on a fake engine: the long
 * read passes its probes, nothing is convicted.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { FakeEngineFactory } from '../../src/testing/index.js';
import { type FakeGuard, fakeGuard } from '../support/guard.js';

const LONG_READ_MS = 6_000;
const SHORT_MS = 10;

/** A long read, then a write queued behind it, then 30 short reads one after another. */
async function convoyScenario(guard: FakeGuard) {
  const long = guard.read((engine, ctx) =>
    engine.call('long', { duration: LONG_READ_MS, signal: ctx.signal }),
  );
  await sleep(200);
  let writeStartedAt = 0;
  const writeQueuedAt = performance.now();
  const write = guard.write((engine, ctx) => {
    writeStartedAt = performance.now();
    return engine.call('write', { duration: SHORT_MS, signal: ctx.signal });
  });
  await sleep(50);
  const queuedWrite = guard.status().queued.find((op) => op.kind === 'write');
  const waits: number[] = [];
  for (let i = 0; i < 30; i++) {
    const asked = performance.now();
    let started = 0;
    await guard.read((engine, ctx) => {
      started = performance.now();
      return engine.call(i, { duration: SHORT_MS, signal: ctx.signal });
    });
    waits.push(started - asked);
  }
  return { long, write, waits, queuedWrite, writeQueuedAt, writeStarted: () => writeStartedAt };
}

describe('no convoy through the guard', () => {
  let guard: FakeGuard | undefined;
  afterEach(async () => {
    await guard?.close();
    guard = undefined;
  });

  it('short reads are not held behind a write that waits for a 6 s read (default policy)', async () => {
    guard = fakeGuard(new FakeEngineFactory(), { pool: 3 });
    const run = await convoyScenario(guard);
    // The queued write said what it waited for: the long read.
    expect(run.queuedWrite?.waitingFor.map((op) => op.kind)).toEqual(['read']);
    // Each short read waited about nothing, not for the long read (margin: 500 ms).
    expect(Math.max(...run.waits)).toBeLessThan(500);
    expect(run.writeStarted()).toBe(0); // the write still waits for the long read
    await expect(run.long).resolves.toBe('long');
    await expect(run.write).resolves.toBe('write');
    // ... and ran soon after the long read ended.
    expect(run.writeStarted() - run.writeQueuedAt).toBeLessThan(LONG_READ_MS + 1_000);
    expect(guard.status().counters.stalls).toBe(0);
  }, 20_000);

  it("fairness: 'fifo' keeps strict FIFO phases: the short reads wait for the long one", async () => {
    guard = fakeGuard(new FakeEngineFactory(), { pool: 3, fairness: 'fifo' });
    const g = guard;
    const long = g.read((engine, ctx) =>
      engine.call('long', { duration: 1_500, signal: ctx.signal }),
    );
    await sleep(100);
    const write = g.write((engine, ctx) =>
      engine.call('write', { duration: 10, signal: ctx.signal }),
    );
    await sleep(20);
    const asked = performance.now();
    await g.read((engine, ctx) => engine.call('short', { duration: 10, signal: ctx.signal }));
    expect(performance.now() - asked).toBeGreaterThan(1_000);
    await Promise.all([long, write]);
  }, 20_000);

  it('rejects a bad lock policy at the constructor, naming the option', () => {
    const factory = new FakeEngineFactory();
    expect(() => fakeGuard(factory, { fairness: 'reader-first' as unknown as 'fifo' })).toThrow(
      /fairness/,
    );
    expect(() => fakeGuard(factory, { bypassAfter: -1 })).toThrow(RangeError);
    expect(() => fakeGuard(factory, { bypassAfter: -1 })).toThrow(/bypassAfter/);
  });

  it('a queued write that times out names the read it waited for', async () => {
    guard = fakeGuard(new FakeEngineFactory(), { pool: 2 });
    const g = guard;
    const long = g.read(
      (engine, ctx) => engine.call('long', { duration: 800, signal: ctx.signal }),
      { label: 'count trips' },
    );
    await sleep(50);
    const error = await g
      .write(() => 'never', { timeout: 200 })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(error).toMatchObject({ code: 'ERR_LOCK_TIMEOUT' });
    const waitingFor = (error as { waitingFor: { kind: string; label: string }[] }).waitingFor;
    expect(waitingFor).toEqual([expect.objectContaining({ kind: 'read', label: 'count trips' })]);
    expect((error as Error).message).toContain('"count trips"');
    await long;
  }, 10_000);
});
