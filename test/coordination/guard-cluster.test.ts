/**
 * EngineGuard with a coordinator (SPEC section 10), guard side, on a scripted fake coordinator:
 * when the cluster lease is taken and given back, what ctx.fence is, and what a lost lease does.
 */
import { describe, expect, it } from 'vitest';
import { EngineStalledError, LeaseLostError, LockTimeoutError } from '../../src/index.js';
import { FakeEngineFactory } from '../../src/testing/index.js';
import { errorOf, type FakeGuard, fakeGuard, waitFor } from '../support/guard.js';
import { FakeCoordinator } from './fake-coordinator.js';

/** A write whose caller can abort, left waiting for its cluster lease. */
async function abortableWaitingWrite(guard: FakeGuard, coordinator: FakeCoordinator) {
  const controller = new AbortController();
  let ran = false;
  const write = errorOf(
    guard.write(
      () => {
        ran = true;
      },
      { signal: controller.signal },
    ),
  );
  await waitFor(() => coordinator.pending.length === 1, 2_000, 'the cluster wait');
  return { controller, write, ran: () => ran };
}

describe('guard with a coordinator', () => {
  it('a write takes a write lease before fn runs, sees its fence and releases it when it ends', async () => {
    const coordinator = new FakeCoordinator();
    const guard = fakeGuard(new FakeEngineFactory(), { coordinator });
    try {
      const seen: unknown[] = [];
      await guard.write((e, ctx) => {
        seen.push(ctx.fence, coordinator.grants.length, coordinator.grants[0]?.released);
        return e.call('w');
      });
      expect(seen).toEqual([1, 1, false]);
      expect(coordinator.grants[0]).toMatchObject({ mode: 'write', released: true });
      // A failing write releases too, and the next write gets the next fence.
      const error = await errorOf(
        guard.write((_e, ctx) => {
          seen.push(ctx.fence);
          throw new Error('boom');
        }),
      );
      expect((error as Error).message).toBe('boom');
      expect(seen[3]).toBe(2);
      expect(coordinator.grants.map((g) => g.released)).toEqual([true, true]);
    } finally {
      await guard.close();
    }
  });

  it('the release starts before the caller hears the result', async () => {
    const coordinator = new FakeCoordinator();
    const guard = fakeGuard(new FakeEngineFactory(), { coordinator });
    try {
      await guard.write((e) => e.call('w'));
      expect(coordinator.grants[0]?.released).toBe(true);
    } finally {
      await guard.close();
    }
  });

  it('reads take no lease unless the coordinator coordinates reads', async () => {
    const plain = new FakeCoordinator();
    const guard = fakeGuard(new FakeEngineFactory(), { coordinator: plain });
    const reads = new FakeCoordinator({ coordinatesReads: true });
    const guard2 = fakeGuard(new FakeEngineFactory(), { coordinator: reads, pool: 2 });
    try {
      const fence = await guard.read((_e, ctx) => ctx.fence);
      expect(fence).toBeUndefined();
      expect(plain.grants).toHaveLength(0);
      const fences = await Promise.all([
        guard2.read((e, ctx) => e.call(ctx.fence)),
        guard2.read((e, ctx) => e.call(ctx.fence)),
      ]);
      expect(fences.sort()).toEqual([1, 2]);
      expect(reads.grants.map((g) => [g.mode, g.released])).toEqual([
        ['read', true],
        ['read', true],
      ]);
    } finally {
      await guard.close();
      await guard2.close();
    }
  });

  it('a nested write joins the outer write and its lease', async () => {
    const coordinator = new FakeCoordinator();
    const guard = fakeGuard(new FakeEngineFactory(), { coordinator });
    try {
      const fences = await guard.write(async (_e, ctx) => [
        ctx.fence,
        await guard.write((_e2, inner) => inner.fence),
      ]);
      expect(fences).toEqual([1, 1]);
      expect(coordinator.grants).toHaveLength(1);
    } finally {
      await guard.close();
    }
  });

  it('a lost lease aborts ctx.signal with LeaseLostError, rejects the caller and sends cancel', async () => {
    const coordinator = new FakeCoordinator();
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, { coordinator });
    try {
      let signal: AbortSignal | undefined;
      const write = guard.write((e, ctx) => {
        signal = ctx.signal;
        return e.call('w', { signal: ctx.signal, duration: 60_000 });
      });
      const failed = errorOf(write);
      await waitFor(() => signal !== undefined, 2_000, 'the write to start');
      const grant = coordinator.grants[0]!;
      coordinator.lose(grant);
      const error = await failed;
      expect(error).toBeInstanceOf(LeaseLostError);
      expect(error).toMatchObject({ code: 'ERR_LEASE_LOST', indeterminate: true, fence: 1 });
      expect(signal?.aborted).toBe(true);
      expect(signal?.reason).toBe(error);
      expect(factory.created[0]!.cancels).toBe(1);
      // Given back once the engine wound the op down.
      await waitFor(() => grant.released, 2_000, 'the lease release');
      // The handle survived the cancel: the next write runs on it.
      await expect(guard.write((e) => e.call('next'))).resolves.toBe('next');
      expect(factory.created).toHaveLength(1);
    } finally {
      await guard.close();
    }
  });

  it('a lease lost on a coordinated read is not indeterminate', async () => {
    const coordinator = new FakeCoordinator({ coordinatesReads: true });
    const guard = fakeGuard(new FakeEngineFactory(), { coordinator });
    try {
      let started = false;
      const read = errorOf(
        guard.read((e, ctx) => {
          started = true;
          return e.call('r', { signal: ctx.signal, duration: 60_000 });
        }),
      );
      await waitFor(() => started, 2_000, 'the read to start');
      coordinator.lose(coordinator.grants[0]!);
      expect(await read).toMatchObject({
        name: 'LeaseLostError',
        mode: 'read',
        indeterminate: false,
      });
    } finally {
      await guard.close();
    }
  });

  it('isAlive is true while the op runs and false once it is cancelling or ended', async () => {
    const coordinator = new FakeCoordinator();
    const guard = fakeGuard(new FakeEngineFactory(), { coordinator });
    try {
      const controller = new AbortController();
      let alive: boolean | undefined;
      const write = errorOf(
        guard.write(
          (e, ctx) => {
            alive = coordinator.grants[0]?.options.isAlive();
            return e.call('w', { signal: ctx.signal, duration: 60_000 });
          },
          { signal: controller.signal },
        ),
      );
      await waitFor(() => alive !== undefined, 2_000, 'the write to start');
      expect(alive).toBe(true);
      const isAlive = coordinator.grants[0]!.options.isAlive;
      controller.abort(new Error('caller gave up'));
      expect(isAlive()).toBe(false);
      await write;
      expect(isAlive()).toBe(false);
    } finally {
      await guard.close();
    }
  });

  it('isAlive turns false when the engine fails a probe, before the op is convicted', async () => {
    const coordinator = new FakeCoordinator();
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory, {
      coordinator,
      liveness: { interval: 100, timeout: 100, failures: 3 },
    });
    try {
      await guard.read((e) => e.call('warm'));
      const engine = factory.created[0]!;
      engine.wedge();
      engine.nextCall('ignore-abort');
      const write = errorOf(guard.write((e) => e.call('w', { duration: 60_000 })));
      await waitFor(() => coordinator.grants.length === 1, 2_000, 'the grant');
      const grant = coordinator.grants[0]!;
      expect(grant.options.isAlive()).toBe(true);
      await waitFor(() => guard.status().running[0]?.probeFailures === 1, 5_000, 'a failed probe');
      expect(grant.options.isAlive()).toBe(false);
      expect(grant.released).toBe(false);
      // Convicted: the lease is given back at once, though fn never returns.
      expect(await write).toBeInstanceOf(EngineStalledError);
      expect(grant.released).toBe(true);
      engine.unwedge();
    } finally {
      await guard.close();
    }
  });

  it('waiting for the cluster lease is bounded by the op signal', async () => {
    const coordinator = new FakeCoordinator({ autoGrant: false });
    const guard = fakeGuard(new FakeEngineFactory(), { coordinator });
    try {
      const { controller, write, ran } = await abortableWaitingWrite(guard, coordinator);
      expect(guard.status().cluster?.waiting).toHaveLength(1);
      const reason = new Error('gave up');
      controller.abort(reason);
      expect(await write).toBe(reason);
      expect(coordinator.pending).toHaveLength(0);
      expect(ran()).toBe(false);
      // The guard is free again: the next write is granted and runs.
      coordinator.autoGrant = true;
      await expect(guard.write(() => 'ok')).resolves.toBe('ok');
    } finally {
      await guard.close();
    }
  });

  it('waiting for the cluster lease gets what is left of the op timeout', async () => {
    const coordinator = new FakeCoordinator({ autoGrant: false });
    const guard = fakeGuard(new FakeEngineFactory(), { coordinator });
    try {
      const write = guard.write(() => 'late', { timeout: 5_000 });
      await waitFor(() => coordinator.pending.length === 1, 2_000, 'the cluster wait');
      const timeout = coordinator.pending[0]!.options.timeout;
      expect(timeout).toBeGreaterThan(0);
      expect(timeout).toBeLessThanOrEqual(5_000);
      // The coordinator times the wait out with its own error, which the caller gets.
      coordinator.pending[0]!.settle(false, new LockTimeoutError(5_000, 'cluster'));
      await expect(write).rejects.toBeInstanceOf(LockTimeoutError);
    } finally {
      await guard.close();
    }
  });

  it('a grant that arrives after the caller aborted is given back and fn never runs', async () => {
    const coordinator = new FakeCoordinator({ autoGrant: false });
    const guard = fakeGuard(new FakeEngineFactory(), { coordinator });
    try {
      const { controller, write, ran } = await abortableWaitingWrite(guard, coordinator);
      // Grant and abort in the same turn: the grant wins the race inside the coordinator.
      coordinator.grant();
      controller.abort(new Error('late'));
      expect(await write).toMatchObject({ message: 'late' });
      await waitFor(() => coordinator.grants[0]?.released === true, 2_000, 'the release');
      expect(ran()).toBe(false);
    } finally {
      await guard.close();
    }
  });

  it('status().cluster is the coordinator status, and close() closes the coordinator', async () => {
    const coordinator = new FakeCoordinator({ autoGrant: false });
    const guard = fakeGuard(new FakeEngineFactory(), { coordinator });
    const write = errorOf(guard.write(() => 'never'));
    await waitFor(() => coordinator.pending.length === 1, 2_000, 'the cluster wait');
    expect(guard.status().cluster).toEqual(coordinator.status());
    await guard.close();
    expect(coordinator.closes).toBe(1);
    expect((await write) as Error).toMatchObject({ name: 'GuardClosedError' });
    expect(coordinator.pending).toHaveLength(0);
  });

  it('close() during a write releases its lease at once', async () => {
    const coordinator = new FakeCoordinator();
    const guard = fakeGuard(new FakeEngineFactory(), { coordinator });
    let started = false;
    const write = errorOf(
      guard.write((e, ctx) => {
        started = true;
        return e.call('w', { signal: ctx.signal, duration: 60_000 });
      }),
    );
    await waitFor(() => started, 2_000, 'the write');
    const closing = guard.close();
    expect(coordinator.grants[0]?.released).toBe(true);
    await closing;
    await write;
  });

  it('refuses a coordinator that is not one, naming the option', () => {
    expect(() => fakeGuard(new FakeEngineFactory(), { coordinator: {} as never })).toThrow(
      /"coordinator"/,
    );
  });

  it("refuses a coordinator another guard already uses: its close() would end the other guard's coordination", async () => {
    const coordinator = new FakeCoordinator();
    const first = fakeGuard(new FakeEngineFactory(), { coordinator });
    expect(() => fakeGuard(new FakeEngineFactory(), { coordinator })).toThrow(
      expect.objectContaining({
        name: 'TypeError',
        message: expect.stringMatching(/"coordinator"/),
      }),
    );
    await first.write(() => undefined);
    expect(coordinator.grants[0]?.released).toBe(true);
    await first.close();
  });

  it('status().cluster is undefined without a coordinator', async () => {
    const guard = fakeGuard(new FakeEngineFactory());
    expect(guard.status().cluster).toBeUndefined();
    await guard.close();
  });
});

describe('guard with a hostile coordinator', () => {
  it('a lease whose getters throw is still given back, and the write fails with the throw', async () => {
    const coordinator = new FakeCoordinator();
    let released = 0;
    const boom = new Error('fence getter');
    coordinator.acquire = async () => ({
      mode: 'write' as const,
      get fence(): number {
        throw boom;
      },
      signal: new AbortController().signal,
      release: async () => {
        released++;
      },
    });
    const guard = fakeGuard(new FakeEngineFactory(), { coordinator });
    try {
      let ran = false;
      const error = await errorOf(
        guard.write(() => {
          ran = true;
        }),
      );
      expect(error).toBe(boom);
      expect(ran).toBe(false);
      expect(released).toBe(1);
    } finally {
      await guard.close();
    }
  });

  it('release() that throws or rejects, status() and close() that throw: the guard carries on', async () => {
    const coordinator = new FakeCoordinator();
    const acquire = coordinator.acquire.bind(coordinator);
    let calls = 0;
    coordinator.acquire = async (mode, options) => {
      const lease = await acquire(mode, options);
      return {
        ...lease,
        signal: lease.signal,
        release: () => {
          calls++;
          if (calls === 1) throw new Error('sync release throw');
          return Promise.reject(new Error('async release rejection'));
        },
      };
    };
    coordinator.status = () => {
      throw new Error('status');
    };
    coordinator.close = () => {
      throw new Error('close');
    };
    const guard = fakeGuard(new FakeEngineFactory(), { coordinator });
    await expect(guard.write(() => 1)).resolves.toBe(1);
    await expect(guard.write(() => 2)).resolves.toBe(2);
    expect(calls).toBe(2);
    expect(guard.status().cluster).toBeUndefined();
    await expect(guard.close()).resolves.toBeUndefined();
  });
});
