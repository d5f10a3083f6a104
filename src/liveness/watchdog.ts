import { ProbeTimeoutError } from '../errors.js';
import type { Timer } from '../internal/promises.js';

/**
 * The liveness watchdog: decides when a running operation has lost its engine.
 *
 * It measures liveness, not duration. A subject (a running op) that reports progress through
 * heartbeats is never probed, however long it runs. A silent subject is probed once every
 * `interval`; each probe is bounded by `timeout`; `failures` consecutive failed probes convict it.
 * With probes that start `interval` apart, conviction comes at most
 * `interval × failures + timeout` after the last sign of life (when `timeout ≤ interval`).
 *
 * Invariants:
 * - At most one probe in flight per subject.
 * - A heartbeat, or a passing probe, resets the failure count to zero.
 * - Local-pause guard: a timer that fires later than `pauseThreshold` (event-loop block, or a
 *   laptop that slept, seen as the wall clock running ahead of the monotonic one) convicts no one.
 *   A probe whose timeout fired that late is discarded as inconclusive and liveness is checked
 *   again at once. A probe timeout is also only judged after pending I/O has had a turn
 *   (`setImmediate`), so a reply that arrived during a pause is read before the verdict.
 * - One timer for all subjects, armed only while there are subjects: no per-op timer, and
 *   nothing left running when the last subject leaves.
 */

/** The watchdog's per-subject bookkeeping; an op carries these fields itself. */
export interface WatchedSubject {
  /** `performance.now()` of the last sign of life (start, heartbeat, or passing probe). */
  lastBeat: number;
  /** Consecutive failed probes. */
  probeFailures: number;
  /** @internal */ probing: boolean;
  /** @internal Earliest time the next probe may start. */ nextProbeAt: number;
  /** @internal */ watched: boolean;
}

/** Resolved settings. */
export interface WatchdogSettings {
  interval: number;
  timeout: number;
  failures: number;
  pauseThreshold: number;
}

/** What the watchdog calls out to. */
export interface WatchdogHooks<S extends WatchedSubject> {
  /**
   * Every subject that may be watched (the owner's list of running ops). The watchdog keeps no
   * collection of its own: watching and unwatching an op is then a few field writes.
   */
  subjects(): Iterable<S>;
  /** Runs one probe; rejects (or throws) when it fails. */
  probe(subject: S, signal: AbortSignal): Promise<unknown>;
  /** Every conclusive probe result. */
  onProbeResult(subject: S, ok: boolean, error: unknown, durationMs: number): void;
  /** `failures` consecutive probes failed. Called once per subject. */
  onConvict(subject: S, lastError: unknown): void;
  /** A local pause was detected; `lateMs` is how late the timer fired. */
  onPause?(lateMs: number): void;
}

const now = (): number => performance.now();

/** See the module documentation. */
export class Watchdog<S extends WatchedSubject> {
  readonly settings: WatchdogSettings;
  readonly #hooks: WatchdogHooks<S>;
  #watched = 0;
  #timer: Timer | undefined = undefined;
  #timerDue = 0;
  #timerDueWall = 0;
  /** The `finish` of each probe in flight, so that stop() can end them. */
  readonly #inflight = new Set<(ok: boolean, error: unknown, conclusive: boolean) => void>();

  constructor(settings: WatchdogSettings, hooks: WatchdogHooks<S>) {
    this.settings = settings;
    this.#hooks = hooks;
  }

  /** Subjects being watched. */
  get size(): number {
    return this.#watched;
  }

  /** Starts watching; the subject counts as alive at `at` (default: now). */
  watch(subject: S, at: number = now()): void {
    subject.lastBeat = at;
    subject.probeFailures = 0;
    subject.probing = false;
    subject.nextProbeAt = at + this.settings.interval;
    subject.watched = true;
    if (++this.#watched === 1) this.#timer?.ref();
    this.#arm(subject.nextProbeAt);
  }

  /** Stops watching; a probe in flight is left to finish and its result ignored. */
  unwatch(subject: S): void {
    if (!subject.watched) return;
    subject.watched = false;
    // Left armed rather than cleared: short ops come and go far more often than the timer
    // fires, and re-arming a timer per op would cost more than the op itself. Unref'd, a
    // timer with nobody to watch keeps no process alive, and fires once for nothing.
    if (--this.#watched === 0) this.#timer?.unref();
  }

  /** Stops everything. */
  stop(): void {
    for (const subject of this.#hooks.subjects()) subject.watched = false;
    this.#watched = 0;
    this.#disarm();
    // Probes in flight: abort them and clear their timers, so nothing of ours outlives stop().
    const stopped = new Error('The liveness watchdog stopped (the guard is closing)');
    for (const finish of [...this.#inflight]) finish(false, stopped, false);
  }

  #arm(due: number): void {
    if (this.#timer !== undefined && this.#timerDue <= due) return;
    this.#disarm();
    const t = now();
    const delay = Math.max(0, due - t);
    this.#timerDue = t + delay;
    this.#timerDueWall = Date.now() + delay;
    this.#timer = setTimeout(() => this.#tick(), delay);
    if (this.#watched === 0) this.#timer.unref();
  }

  #disarm(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #lateness(dueMono: number, dueWall: number): number {
    return Math.max(now() - dueMono, Date.now() - dueWall);
  }

  #tick(): void {
    this.#timer = undefined;
    const late = this.#lateness(this.#timerDue, this.#timerDueWall);
    const t = now();
    if (late > this.settings.pauseThreshold) {
      this.#hooks.onPause?.(late);
      // Our own clock stood still: what looks like silence may be ours. Re-check everyone now.
      for (const subject of this.#hooks.subjects()) {
        if (subject.watched && !subject.probing) subject.nextProbeAt = t;
      }
    }
    let next = Number.POSITIVE_INFINITY;
    for (const subject of this.#hooks.subjects()) {
      if (!subject.watched || subject.probing) continue;
      const due = Math.max(subject.lastBeat + this.settings.interval, subject.nextProbeAt);
      if (due <= t) {
        this.#probe(subject);
        next = Math.min(next, subject.nextProbeAt);
      } else {
        next = Math.min(next, due);
      }
    }
    if (next !== Number.POSITIVE_INFINITY) this.#arm(next);
  }

  #probe(subject: S): void {
    const { timeout, interval } = this.settings;
    const startedAt = now();
    subject.probing = true;
    subject.nextProbeAt = startedAt + interval;
    const controller = new AbortController();
    let done = false;
    const dueMono = startedAt + timeout;
    const dueWall = Date.now() + timeout;

    const finish = (ok: boolean, error: unknown, conclusive: boolean): void => {
      if (done) return;
      done = true;
      this.#inflight.delete(finish);
      clearTimeout(timer);
      subject.probing = false;
      if (!ok) controller.abort(error);
      if (!subject.watched) return;
      if (!conclusive) {
        subject.nextProbeAt = now();
      } else if (ok) {
        subject.probeFailures = 0;
        subject.lastBeat = Math.max(subject.lastBeat, startedAt);
        this.#hooks.onProbeResult(subject, true, undefined, now() - startedAt);
      } else if (subject.lastBeat > startedAt) {
        // A failure overtaken by a heartbeat: the subject spoke for itself. Not reported.
        subject.probeFailures = 0;
      } else {
        subject.probeFailures++;
        this.#hooks.onProbeResult(subject, false, error, now() - startedAt);
        if (subject.probeFailures >= this.settings.failures) {
          this.unwatch(subject);
          this.#hooks.onConvict(subject, error);
          return;
        }
      }
      this.#arm(Math.max(subject.lastBeat + interval, subject.nextProbeAt));
    };

    this.#inflight.add(finish);
    const timer = setTimeout(() => {
      const late = this.#lateness(dueMono, dueWall);
      if (late > this.settings.pauseThreshold) {
        this.#hooks.onPause?.(late);
        finish(false, new ProbeTimeoutError(timeout), false);
        return;
      }
      // Let I/O that is already waiting (the probe's reply) be read before the verdict.
      setImmediate(() => finish(false, new ProbeTimeoutError(timeout), true));
    }, timeout);

    let pending: Promise<unknown>;
    try {
      pending = Promise.resolve(this.#hooks.probe(subject, controller.signal));
    } catch (error) {
      pending = Promise.reject(error);
    }
    pending.then(
      () => finish(true, undefined, true),
      (error: unknown) => finish(false, error, true),
    );
  }
}
