/**
 * RWLock's fairness policy (issue 11): no convoy behind a writer that waits for long reads, and
 * no writer starvation under a stream of short reads. Fake timers: every figure is model time.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { type Lease, RWLock, type RWLockOptions } from '../../src/index.js';
import { flush, IDLE } from './support.js';

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

interface Job {
  mode: 'read' | 'write';
  requested: number;
  granted: number | undefined;
  ended: number | undefined;
  error: unknown;
  done: Promise<void>;
}

/** A lock and the jobs run on it, checking exclusion at every grant. */
function harness(options: RWLockOptions = {}) {
  const lock = new RWLock(options);
  let readers = 0;
  let writers = 0;
  const jobs: Job[] = [];
  const run = (
    mode: 'read' | 'write',
    ms: number,
    opts: { signal?: AbortSignal; timeout?: number } = {},
  ): Job => {
    const job: Job = {
      mode,
      requested: Date.now(),
      granted: undefined,
      ended: undefined,
      error: undefined,
      done: Promise.resolve(),
    };
    const body = async (): Promise<void> => {
      job.granted = Date.now();
      if (mode === 'write') {
        expect(readers + writers, 'a writer holds alone').toBe(0);
        writers++;
      } else {
        expect(writers, 'no reader beside a writer').toBe(0);
        readers++;
      }
      await sleep(ms);
      if (mode === 'write') writers--;
      else readers--;
      job.ended = Date.now();
    };
    job.done = (mode === 'read' ? lock.read(body, opts) : lock.write(body, opts)).catch(
      (error: unknown) => {
        job.error = error;
      },
    );
    jobs.push(job);
    return job;
  };
  /** `count` short reads one after another, each of `ms`; resolves with them when all ended. */
  const chain = async (count: number, ms: number): Promise<Job[]> => {
    const done: Job[] = [];
    for (let i = 0; i < count; i++) {
      const job = run('read', ms);
      await job.done;
      done.push(job);
    }
    return done;
  };
  /** `n` readers, each reading `ms` in a loop until `stop()`. */
  const stream = (n: number, ms: number) => {
    let stopped = false;
    const loops = Array.from({ length: n }, async (_, i) => {
      await sleep(i * Math.ceil(ms / n));
      while (!stopped) await run('read', ms).done;
    });
    return {
      stop: () => {
        stopped = true;
        return Promise.all(loops);
      },
    };
  };
  return { lock, run, chain, stream, jobs };
}

const wait = (job: Job): number => (job.granted ?? Number.NaN) - job.requested;

beforeEach(() => {
  vi.useFakeTimers({ now: 0 });
});

afterEach(() => {
  vi.useRealTimers();
});

describe('RWLock fairness: no convoy', () => {
  it('short reads behind a write that waits for a 6 s read wait at most 500 ms each', async () => {
    const { lock, run, chain } = harness();
    const long = run('read', 6_000);
    await vi.advanceTimersByTimeAsync(10);
    const write = run('write', 10);
    await vi.advanceTimersByTimeAsync(1);
    const shorts = chain(30, 10);
    await vi.advanceTimersByTimeAsync(7_000);
    const reads = await shorts;
    await Promise.all([long.done, write.done]);
    const waits = reads.map(wait);
    expect(Math.max(...waits)).toBeLessThanOrEqual(500);
    // Only the first short read (requested at 11) met the writer's patience (from 10 to 110);
    // the rest passed it at once.
    expect(waits[0]).toBe(99);
    expect(waits.slice(1).every((w) => w === 0)).toBe(true);
    // The writer entered when the long read ended (no bypass read was still running).
    expect(write.granted).toBe(6_000);
    expect(lock.state).toEqual(IDLE);
  });

  it("with fairness: 'fifo' the same short reads wait for the long read (the old phases)", async () => {
    const { run, chain } = harness({ fairness: 'fifo' });
    run('read', 6_000);
    await vi.advanceTimersByTimeAsync(10);
    const write = run('write', 10);
    await vi.advanceTimersByTimeAsync(1);
    const shorts = chain(3, 10);
    await vi.advanceTimersByTimeAsync(7_000);
    const reads = await shorts;
    expect(write.granted).toBe(6_000);
    expect(wait(reads[0]!)).toBe(6_000 + 10 - 11);
  });

  it("fairness: 'fifo' never bypasses a waiting writer", async () => {
    const { lock, run } = harness({ fairness: 'fifo', bypassAfter: 0 });
    run('read', 1_000);
    const write = run('write', 10);
    await vi.advanceTimersByTimeAsync(500);
    expect(lock.state.bypassing).toBe(false);
    expect(lock.tryAcquireRead()).toBeNull();
    const later = run('read', 10);
    await vi.advanceTimersByTimeAsync(600);
    expect(write.granted).toBe(1_000);
    expect(later.granted).toBe(1_010);
  });
});

describe('RWLock fairness: no writer starvation', () => {
  it('a write under 3 readers looping 15 ms reads gets in within 500 ms', async () => {
    for (const fairness of ['no-convoy', 'fifo'] as const) {
      const { run, stream } = harness({ fairness });
      const readers = stream(3, 15);
      await vi.advanceTimersByTimeAsync(200);
      const write = run('write', 5);
      await vi.advanceTimersByTimeAsync(1_000);
      await vi.advanceTimersByTimeAsync(100);
      const stopping = readers.stop();
      await vi.advanceTimersByTimeAsync(100);
      await stopping;
      await write.done;
      // It waits only for the reads it found running (15 ms at most), never for later ones.
      expect(wait(write), fairness).toBeLessThanOrEqual(15);
    }
  });

  it('a write behind a long read enters as soon as it and the bypassing reads end, short reads flowing meanwhile', async () => {
    const { lock, run, stream, jobs } = harness();
    run('read', 2_000);
    await vi.advanceTimersByTimeAsync(10);
    const write = run('write', 5);
    const readers = stream(3, 15);
    await vi.advanceTimersByTimeAsync(50);
    expect(lock.state.bypassing).toBe(false); // still patient
    await vi.advanceTimersByTimeAsync(1_000);
    expect(lock.state.bypassing).toBe(true);
    await vi.advanceTimersByTimeAsync(1_000);
    const stopping = readers.stop();
    await vi.advanceTimersByTimeAsync(200);
    await stopping;
    // Bound: remaining time of the pre-writer read + the longest read admitted in the bypass.
    expect(write.granted).toBeGreaterThanOrEqual(2_000);
    expect(write.granted).toBeLessThanOrEqual(2_000 + 15);
    const passed = jobs.filter(
      (j) => j.mode === 'read' && j.granted! > 110 && j.granted! < 2_000 && wait(j) === 0,
    );
    expect(passed.length).toBeGreaterThan(100);
  });
});

describe('RWLock fairness: the bypass window', () => {
  it('a pre-writer read ending early keeps the bypass open while another still runs', async () => {
    const { lock, run } = harness();
    run('read', 2_000);
    run('read', 300);
    const write = run('write', 5);
    await vi.advanceTimersByTimeAsync(150);
    expect(lock.state.bypassing).toBe(true);
    await vi.advanceTimersByTimeAsync(200); // the 300 ms read has ended
    expect(lock.state).toMatchObject({ readers: 1, bypassing: true });
    const passer = run('read', 3_000); // admitted during the bypass, outlives the long read
    await flush();
    expect(passer.granted).toBe(350);
    await vi.advanceTimersByTimeAsync(1_700); // t = 2,050: the long read ended at 2,000
    expect(lock.state).toMatchObject({ readers: 1, bypassing: false, queuedWriters: 1 });
    const late = run('read', 10); // bypass closed: queues behind the writer
    await flush();
    expect(late.granted).toBeUndefined();
    expect(lock.tryAcquireRead()).toBeNull();
    await vi.advanceTimersByTimeAsync(2_000);
    // Bound: the writer reached the head at 0; L = 2,000, D = 3,000 (admitted at 350).
    expect(write.granted).toBe(3_350);
    expect(late.granted).toBe(3_355);
  });

  it('a writer whose pre-writer reads end within bypassAfter never opens the bypass', async () => {
    const { lock, run } = harness({ bypassAfter: 100 });
    run('read', 60);
    const write = run('write', 5);
    const reader = run('read', 5);
    await vi.advanceTimersByTimeAsync(59);
    expect(lock.state).toMatchObject({ bypassing: false, queuedReaders: 1 });
    await vi.advanceTimersByTimeAsync(100);
    expect(write.granted).toBe(60);
    expect(reader.granted).toBe(65);
    // The patience timer went with the writer: nothing left pending.
    expect(vi.getTimerCount()).toBe(0);
  });

  it('respects maxReaders while bypassing, and tryAcquireRead agrees with the queue', async () => {
    const { lock, run } = harness({ maxReaders: 3 });
    run('read', 5_000);
    const write = run('write', 5);
    const queued = [run('read', 1_000), run('read', 1_000), run('read', 1_000)];
    await vi.advanceTimersByTimeAsync(50);
    expect(lock.tryAcquireRead()).toBeNull(); // patient: readers queue behind the writer
    await vi.advanceTimersByTimeAsync(60);
    expect(lock.state).toMatchObject({ readers: 3, queuedReaders: 1, bypassing: true });
    expect(queued.map((j) => j.granted)).toEqual([100, 100, undefined]);
    expect(lock.tryAcquireRead()).toBeNull(); // at the cap, and a reader is queued anyway
    await vi.advanceTimersByTimeAsync(1_000); // one bypassing read ended at 1,100
    expect(queued[2]!.granted).toBe(1_100);
    await vi.advanceTimersByTimeAsync(1_000); // the other ended at 1,100 too: a free slot
    const lease: Lease | null = lock.tryAcquireRead();
    expect(lease).not.toBeNull();
    lease?.release();
    await vi.advanceTimersByTimeAsync(3_000); // t = 5,110: the long read ended at 5,000
    expect(write.granted).toBe(5_000);
  });

  it('bypassAfter 0 lets readers pass a writer waiting on running reads at once', async () => {
    const { lock, run } = harness({ bypassAfter: 0 });
    run('read', 1_000);
    const write = run('write', 5);
    expect(lock.state.bypassing).toBe(true);
    const lease = lock.tryAcquireRead();
    expect(lease).not.toBeNull();
    lease?.release();
    const reader = run('read', 10);
    await flush();
    expect(reader.granted).toBe(0);
    await vi.advanceTimersByTimeAsync(2_000);
    expect(write.granted).toBe(1_000);
  });

  it('writers stay in arrival order among themselves', async () => {
    const { run } = harness();
    run('read', 1_000);
    const writes = [run('write', 10), run('write', 10), run('write', 10)];
    await vi.advanceTimersByTimeAsync(200);
    run('read', 2_000); // passes the first writer during the bypass
    await vi.advanceTimersByTimeAsync(5_000);
    expect(writes.map((w) => w.granted)).toEqual([2_200, 2_210, 2_220]);
  });
});

describe('RWLock fairness: aborts racing the bypass', () => {
  it('never grants a passing reader whose signal fired before the lock heard of it', async () => {
    const { lock, run } = harness({ maxReaders: 2 });
    run('read', 5_000);
    const write = run('write', 5);
    await vi.advanceTimersByTimeAsync(150); // bypass open
    const passer = await lock.acquireRead(); // takes the last slot
    const controller = new AbortController();
    const reason = new Error('caller left');
    // Registered before the lock's own listener: frees a slot while the abort is under way.
    controller.signal.addEventListener('abort', () => passer.release());
    const queued = lock.acquireRead({ signal: controller.signal });
    const outcome = queued.then(
      (lease) => {
        lease.release();
        return 'granted';
      },
      (error: unknown) => error,
    );
    await flush();
    expect(lock.state).toMatchObject({ readers: 2, queuedReaders: 1, bypassing: true });
    controller.abort(reason);
    await expect(outcome).resolves.toBe(reason);
    expect(lock.state).toMatchObject({ readers: 1, queuedReaders: 0, bypassing: true });
    await vi.advanceTimersByTimeAsync(5_000);
    expect(write.granted).toBe(5_000);
  });
});

describe('RWLock fairness: cancelling the waiting writer', () => {
  it('aborting it while patient wakes the readers queued behind it in the same turn', async () => {
    const { lock, run } = harness();
    run('read', 5_000);
    const controller = new AbortController();
    const write = run('write', 5, { signal: controller.signal });
    const readers = [run('read', 10), run('read', 10)];
    await vi.advanceTimersByTimeAsync(50);
    expect(vi.getTimerCount()).toBe(2); // the long read's sleep and the writer's patience
    controller.abort(new Error('gave up'));
    await flush();
    expect(readers.map((j) => j.granted)).toEqual([50, 50]);
    expect(write.error).toEqual(new Error('gave up'));
    expect(lock.state).toMatchObject({ queuedWriters: 0, bypassing: false });
    expect(vi.getTimerCount()).toBe(3); // long read + two short reads; no patience timer
  });

  it('a writer timing out during the bypass hands the head to the next writer, with fresh patience', async () => {
    const { lock, run } = harness();
    run('read', 5_000);
    const first = run('write', 5, { timeout: 300 });
    const second = run('write', 5);
    await vi.advanceTimersByTimeAsync(200);
    expect(lock.state.bypassing).toBe(true);
    const passer = run('read', 10);
    await flush();
    expect(passer.granted).toBe(200);
    await vi.advanceTimersByTimeAsync(100); // t = 300: the first writer times out
    expect(first.error).toBeInstanceOf(Error);
    expect(lock.state).toMatchObject({ queuedWriters: 1, bypassing: false });
    const held = run('read', 10); // the second writer's patience holds it back
    await vi.advanceTimersByTimeAsync(99);
    expect(held.granted).toBeUndefined();
    await vi.advanceTimersByTimeAsync(1);
    expect(held.granted).toBe(400);
    expect(lock.state.bypassing).toBe(true);
    await vi.advanceTimersByTimeAsync(5_000);
    expect(second.granted).toBe(5_000);
    expect(vi.getTimerCount()).toBe(0);
  });
});
