import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ProbeTimeoutError } from '../../src/index.js';
import { Watchdog, type WatchdogHooks, type WatchedSubject } from '../../src/liveness/watchdog.js';

interface Subject extends WatchedSubject {
  name: string;
}

function subject(name = 's'): Subject {
  return {
    name,
    lastBeat: 0,
    probeFailures: 0,
    probing: false,
    nextProbeAt: 0,
    watched: false,
  };
}

type ProbeImpl = (s: Subject, signal: AbortSignal) => Promise<unknown>;

function harness(settings: Partial<ConstructorParameters<typeof Watchdog>[0]>, probe: ProbeImpl) {
  const events = {
    probes: [] as number[],
    results: [] as Array<{ ok: boolean; error: unknown }>,
    convicted: [] as Array<{ at: number; subject: Subject; error: unknown }>,
    pauses: [] as number[],
  };
  const all = new Set<Subject>();
  const hooks: WatchdogHooks<Subject> = {
    subjects: () => all,
    probe: (s, signal) => {
      events.probes.push(performance.now());
      return probe(s, signal);
    },
    onProbeResult: (_s, ok, error) => events.results.push({ ok, error }),
    onConvict: (s, error) => events.convicted.push({ at: performance.now(), subject: s, error }),
    onPause: (late) => events.pauses.push(late),
  };
  const dog = new Watchdog<Subject>(
    { interval: 100, timeout: 50, failures: 3, pauseThreshold: 1_000, ...settings },
    hooks,
  );
  // The owner keeps the list of subjects; here, every subject ever watched.
  const watch = dog.watch.bind(dog);
  dog.watch = (s: Subject, at?: number) => {
    all.add(s);
    watch(s, at);
  };
  return { dog, events };
}

const never = () => new Promise<never>(() => {});

beforeEach(() => {
  vi.useFakeTimers({
    toFake: ['setTimeout', 'clearTimeout', 'setImmediate', 'clearImmediate', 'Date', 'performance'],
  });
});

afterEach(() => {
  vi.useRealTimers();
});

describe('Watchdog', () => {
  it('convicts a silent subject at interval × failures + timeout, not before', async () => {
    const { dog, events } = harness({}, never);
    const s = subject();
    const start = performance.now();
    dog.watch(s);
    await vi.advanceTimersByTimeAsync(349);
    expect(events.convicted).toHaveLength(0);
    expect(s.probeFailures).toBe(2);
    await vi.advanceTimersByTimeAsync(2);
    expect(events.convicted).toHaveLength(1);
    const at = (events.convicted[0]?.at ?? 0) - start;
    expect(at).toBeGreaterThanOrEqual(350);
    expect(at).toBeLessThanOrEqual(351);
    expect(events.convicted[0]?.error).toBeInstanceOf(ProbeTimeoutError);
    // Probes started one interval apart.
    expect(events.probes.map((t) => t - start)).toEqual([100, 200, 300]);
    expect(dog.size).toBe(0);
    // The timer stays armed (unref'd) until its next tick, then finds nobody and stops.
    await vi.advanceTimersByTimeAsync(100);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('never probes a subject that heartbeats, however long it runs', async () => {
    const { dog, events } = harness({}, never);
    const s = subject();
    dog.watch(s);
    for (let i = 0; i < 600; i++) {
      await vi.advanceTimersByTimeAsync(90);
      s.lastBeat = performance.now();
    }
    expect(events.probes).toHaveLength(0);
    expect(events.convicted).toHaveLength(0);
    dog.unwatch(s);
    await vi.advanceTimersByTimeAsync(100);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('keeps a silent subject whose probes pass, for as long as it runs', async () => {
    const { dog, events } = harness({}, () => Promise.resolve('alive'));
    const s = subject();
    dog.watch(s);
    await vi.advanceTimersByTimeAsync(60 * 60 * 1000);
    expect(events.convicted).toHaveLength(0);
    expect(events.probes.length).toBeGreaterThan(30_000);
    expect(events.results.every((r) => r.ok)).toBe(true);
    dog.stop();
    expect(vi.getTimerCount()).toBe(0);
  });

  it('a passing probe resets the count of consecutive failures', async () => {
    let n = 0;
    const { dog, events } = harness({}, () =>
      ++n % 3 === 0 ? Promise.resolve() : Promise.reject(new Error('no')),
    );
    const s = subject();
    dog.watch(s);
    await vi.advanceTimersByTimeAsync(5_000);
    expect(events.convicted).toHaveLength(0);
    expect(events.results.filter((r) => !r.ok).length).toBeGreaterThan(20);
    dog.stop();
  });

  it('a heartbeat that overtakes a failing probe wipes its failure', async () => {
    const s = subject();
    const { dog, events } = harness({ failures: 1 }, () => {
      s.lastBeat = performance.now() + 1;
      return Promise.reject(new Error('slow side channel'));
    });
    dog.watch(s);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(events.convicted).toHaveLength(0);
    dog.stop();
  });

  it('keeps at most one probe in flight per subject', async () => {
    let inFlight = 0;
    let maxInFlight = 0;
    const { dog, events } = harness({ interval: 10, timeout: 1_000, failures: 100 }, () => {
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      return new Promise((resolve) =>
        setTimeout(() => {
          inFlight--;
          resolve(undefined);
        }, 200),
      );
    });
    const s = subject();
    dog.watch(s);
    await vi.advanceTimersByTimeAsync(2_000);
    expect(maxInFlight).toBe(1);
    expect(events.probes.length).toBeGreaterThanOrEqual(8);
    dog.stop();
  });

  it('aborts the signal of a probe that timed out', async () => {
    let seen: AbortSignal | undefined;
    const { dog } = harness({ failures: 5 }, (_s, signal) => {
      seen = signal;
      return never();
    });
    dog.watch(subject());
    await vi.advanceTimersByTimeAsync(151);
    expect(seen?.aborted).toBe(true);
    expect(seen?.reason).toBeInstanceOf(ProbeTimeoutError);
    dog.stop();
  });

  it('a local pause (wall clock jumped: laptop sleep) convicts nobody on that tick', async () => {
    const { dog, events } = harness({ failures: 1, pauseThreshold: 500 }, never);
    const s = subject();
    dog.watch(s);
    await vi.advanceTimersByTimeAsync(120); // probe in flight, due to time out at 150
    expect(events.probes).toHaveLength(1);
    // The machine slept 30 s: the wall clock jumps, the monotonic clock does not.
    vi.setSystemTime(Date.now() + 30_000);
    await vi.advanceTimersByTimeAsync(31);
    expect(events.pauses.length).toBeGreaterThan(0);
    expect(events.convicted).toHaveLength(0);
    // Liveness is re-checked at once, and a dead subject is still convicted afterwards.
    expect(events.probes).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(60);
    expect(events.convicted).toHaveLength(1);
    dog.stop();
  });

  it('unwatching the last subject leaves no timer after its next tick; a late probe result is ignored', async () => {
    let resolveProbe: () => void = () => {};
    const { dog, events } = harness({}, () => new Promise<void>((r) => (resolveProbe = r)));
    const s = subject();
    dog.watch(s);
    await vi.advanceTimersByTimeAsync(100);
    expect(events.probes).toHaveLength(1);
    dog.unwatch(s);
    resolveProbe();
    await vi.advanceTimersByTimeAsync(1_000);
    expect(events.results).toHaveLength(0);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('a probe that throws synchronously counts as failed', async () => {
    const { dog, events } = harness({ failures: 2 }, () => {
      throw new Error('sync');
    });
    dog.watch(subject());
    await vi.advanceTimersByTimeAsync(201);
    expect(events.convicted).toHaveLength(1);
    expect(events.convicted[0]?.error).toEqual(new Error('sync'));
  });
});
