/**
 * Issue 16, item 3, across the cluster lease: two guards, each with its own pgCoordinator on the
 * same key (as two processes would have). A write of the first sends a batch of queries at once
 * and is aborted mid-batch while the second's write waits for the lease on the server. None of
 * the aborted batch's statements may run after the second write started: the lease is given back
 * only once nothing of the aborted write is queued or running on its handle.
 */
import { describe, expect, it } from 'vitest';
import { adminQuery } from '../../support/pg.js';
import { batch, batchTable, landedAfter, nextWrite } from '../../support/pg-batch.js';
import { coordinatorKit, lockWaiters, uniqueKey, until } from './kit.js';

const { coordinator, guard: guardOn } = coordinatorKit();

describe('a write aborted mid-batch, with a write of another guard waiting for the cluster lease', () => {
  it('none of its statements run after the other write started', async () => {
    const table = await batchTable();
    const key = uniqueKey();
    const first = guardOn(coordinator(key));
    const second = guardOn(coordinator(key));
    const controller = new AbortController();
    let holding!: () => void;
    const held = new Promise<void>((resolve) => {
      holding = resolve;
    });
    let threeDone!: () => void;
    const three = new Promise<void>((resolve) => {
      threeDone = resolve;
    });
    const aborted = first
      .write(
        (pg, ctx) => {
          holding();
          return batch(pg, ctx, table, 'aborted', (n) => n === 3 && threeDone());
        },
        { signal: controller.signal },
      )
      .catch((error: unknown) => error);
    await held;
    const next = nextWrite(second, table);
    await until(async () => (await lockWaiters(key)) === 1, 5_000, 'the second write to wait');
    await three;
    controller.abort(new Error('caller gave up'));
    const started = await next;
    expect(await aborted).toMatchObject({ message: 'caller gave up' });
    expect(await landedAfter(table, 'aborted', started)).toBe(0);
    const { rows } = await adminQuery<{ n: number }>(
      `SELECT count(*)::int AS n FROM ${table} WHERE op = 'aborted'`,
    );
    expect(rows[0]!.n).toBeLessThan(30);
  });
});
