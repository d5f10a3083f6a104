/**
 * Guarantees of RWLock that hostile or careless callers used to break (issue 7): late revokes of
 * joined leases, values from `fn` whose `then` lookup throws, joined calls with an aborted
 * signal, internals reachable from the public API, and what `lock:cancel` reports.
 */
import diagnosticsChannel from 'node:diagnostics_channel';
import { describe, expect, it } from 'vitest';
import { channelNames, type Lease, QueueFullError, RWLock } from '../../src/index.js';
import { flush } from './support.js';

function revokedProxy(): object {
  const { proxy, revoke } = Proxy.revocable({}, {});
  revoke();
  return proxy;
}

describe('RWLock: a late revoke of a joined lease', () => {
  it('is a no-op once the joined lease was released: the outer write keeps exclusion', async () => {
    const lock = new RWLock();
    let inner: Lease | undefined;
    const events: string[] = [];
    let finishOuter: () => void = () => {};
    const outer = lock.write(async (lease) => {
      await lock.read((joined) => {
        inner = joined;
      });
      inner?.revoke();
      expect(lease.released).toBe(false);
      expect(lease.revoked).toBe(false);
      events.push('outer+');
      await new Promise<void>((resolve) => {
        finishOuter = resolve;
      });
      events.push('outer-');
    });
    await flush();
    const second = lock.write(() => {
      events.push('second');
    });
    await flush();
    expect(lock.state.writing).toBe(true);
    expect(events).toEqual(['outer+']);
    finishOuter();
    await Promise.all([outer, second]);
    expect(events).toEqual(['outer+', 'outer-', 'second']);
    expect(inner?.revoked).toBe(false);
  });

  it('still revokes the outer hold while the joined lease is live', async () => {
    const lock = new RWLock();
    await lock.write(async (outer) => {
      await lock.read((joined) => {
        joined.revoke(new Error('stop'));
      });
      expect(outer.revoked).toBe(true);
      expect(outer.signal.reason).toEqual(new Error('stop'));
      expect(lock.state.writing).toBe(false);
    });
  });
});

describe('RWLock: every path out of fn releases', () => {
  it.each([
    ['a revoked Proxy', revokedProxy],
    [
      'an object whose then getter throws',
      () =>
        Object.defineProperty({}, 'then', {
          get(): never {
            throw new Error('then getter');
          },
        }),
    ],
  ])('read(() => %s) rejects and leaves no reader behind', async (_name, make) => {
    const lock = new RWLock();
    let result: Promise<unknown> | undefined;
    expect(() => {
      result = lock.read(make);
    }).not.toThrow();
    await expect(result).rejects.toBeInstanceOf(Error);
    expect(lock.state.readers).toBe(0);
    // The same from a queued call and from a joined call.
    const blocker = lock.tryAcquireWrite()!;
    const queued = lock.write(make);
    blocker.release();
    await expect(queued).rejects.toBeInstanceOf(Error);
    await lock.write(async () => {
      await expect(lock.read(make)).rejects.toBeInstanceOf(Error);
    });
    expect(lock.state).toMatchObject({ readers: 0, writing: false });
  });
});

describe('RWLock: joined calls honour an aborted signal', () => {
  it('read(fn, { signal }) joined with an aborted signal rejects with its reason and skips fn', async () => {
    const lock = new RWLock();
    const reason = new Error('caller gave up');
    const controller = new AbortController();
    controller.abort(reason);
    let ran = false;
    await lock.write(async () => {
      await expect(
        lock.read(
          () => {
            ran = true;
          },
          { signal: controller.signal },
        ),
      ).rejects.toBe(reason);
      await expect(lock.acquireRead({ signal: controller.signal })).rejects.toBe(reason);
      await expect(lock.acquireWrite({ signal: controller.signal })).rejects.toBe(reason);
      await expect(lock.write(() => 1, { signal: controller.signal })).rejects.toBe(reason);
    });
    expect(ran).toBe(false);
    expect(lock.state).toMatchObject({ readers: 0, writing: false });
  });
});

describe('RWLock: public surface', () => {
  it('exposes no way to release a lease without holding it', () => {
    const lock = new RWLock();
    const lease = lock.tryAcquireRead()!;
    expect('releaseLease' in lock).toBe(false);
    expect('join' in lease).toBe(false);
    expect(Object.getOwnPropertySymbols(Object.getPrototypeOf(lock))).toEqual([]);
    lease.release();
  });
});

describe('RWLock: lock:cancel diagnostics', () => {
  it('carries the QueueFullError itself when the queue is full', async () => {
    const lock = new RWLock({ name: 'diag', maxQueue: 0 });
    const messages: { reason: unknown; mode: string }[] = [];
    const listener = (message: unknown) => {
      messages.push(message as { reason: unknown; mode: string });
    };
    diagnosticsChannel.subscribe(channelNames.lockCancel, listener);
    try {
      const holder = lock.tryAcquireWrite()!;
      const refused = lock.acquireRead();
      await expect(refused).rejects.toBeInstanceOf(QueueFullError);
      const error = await refused.catch((e: unknown) => e);
      expect(messages).toHaveLength(1);
      expect(messages[0]!.mode).toBe('read');
      expect(messages[0]!.reason).toBeInstanceOf(QueueFullError);
      expect(messages[0]!.reason).toBe(error);
      holder.release();
    } finally {
      diagnosticsChannel.unsubscribe(channelNames.lockCancel, listener);
    }
  });
});
