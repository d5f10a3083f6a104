/**
 * Shared helpers of the guard, pool and liveness tests: one fake guard (on
 * `FakeEngineFactory.guardOptions()`), one `waitFor`, one `flush`, one way to record events.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import {
  EngineGuard,
  type EngineGuardOptions,
  type GuardEvents,
  type OpOptions,
} from '../../src/index.js';
import type { FakeEngine, FakeEngineFactory } from '../../src/testing/index.js';

export type FakeGuardOptions = EngineGuardOptions<FakeEngine>;
export type FakeGuard = EngineGuard<FakeEngine>;

/**
 * A guard over `factory`'s fake engines: every hook wired to the fakes, a fast watchdog
 * (interval 100, timeout 100, failures 2), only `ECONNRESET` fatal, no `isAlive`.
 */
export function fakeGuard(
  factory: FakeEngineFactory,
  extra: Partial<FakeGuardOptions> = {},
): FakeGuard {
  return new EngineGuard<FakeEngine>(
    factory.guardOptions({
      isFatal: (error) => (error as { code?: string } | null)?.code === 'ECONNRESET',
      isAlive: undefined,
      liveness: { interval: 100, timeout: 100, failures: 2 },
      ...extra,
    }),
  );
}

/** Resolves with the rejection reason; fails if the promise resolves. */
export function errorOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    (value) => {
      throw new Error(`expected a rejection, got ${String(value)}`);
    },
    (error: unknown) => error,
  );
}

/** Polls `cond` every 2 ms; throws naming `what` after `timeoutMs`. */
export async function waitFor(
  cond: () => boolean,
  timeoutMs = 5_000,
  what = 'condition',
): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!cond()) {
    if (performance.now() > end) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    }
    await sleep(2);
  }
}

/** A promise and its resolver, for holding an op or a hook where the test wants it. */
export function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

/** Lets pending promise callbacks and immediates run (`turns` event-loop turns). */
export async function flush(turns = 5): Promise<void> {
  for (let i = 0; i < turns; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

/** Every payload of event `type` emitted from now on. */
export function record<K extends keyof GuardEvents>(guard: FakeGuard, type: K): GuardEvents[K][] {
  const seen: GuardEvents[K][] = [];
  guard.on(type, (event) => seen.push(event));
  return seen;
}

/** Blocks the event loop for `ms`. */
export function busyWait(ms: number): void {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    // the event loop is blocked
  }
}

/** Ref'd timers alive in the process. */
export function activeTimeouts(): number {
  return process.getActiveResourcesInfo().filter((kind) => kind === 'Timeout').length;
}

/** Ops queued for the lock or for a handle. */
export function queued(guard: FakeGuard): number {
  const q = guard.status().queue;
  return q.readers + q.writers + q.forHandle;
}

/** A warning `process.emitWarning` was asked to emit. */
export interface CapturedWarning {
  message: string;
  code: string | undefined;
}

/**
 * Runs `fn` with `process.emitWarning` capturing instead of printing, for a test that expects a
 * warning: it asserts on what it got, and `npm test` prints no warning that nobody needs to read.
 * Only what `fn` emits synchronously is captured; a throw from `fn` is passed on after restoring.
 */
export function captureWarnings<T>(fn: () => T): { result: T; warnings: CapturedWarning[] } {
  const warnings: CapturedWarning[] = [];
  const emit = process.emitWarning;
  process.emitWarning = ((warning: string | Error, options?: { code?: string } | string) => {
    const code = typeof options === 'object' ? options.code : (warning as { code?: string }).code;
    warnings.push({ message: String(warning instanceof Error ? warning.message : warning), code });
  }) as typeof process.emitWarning;
  try {
    return { result: fn(), warnings };
  } finally {
    process.emitWarning = emit;
  }
}

/**
 * A read on `guard`'s first handle (opened by a warm-up read) whose engine then stops answering
 * and ignores aborts: resolves with what the read rejects with (`EngineStalledError` once the
 * watchdog convicts it).
 */
export async function stalledRead(
  guard: FakeGuard,
  factory: FakeEngineFactory,
  options?: OpOptions,
): Promise<unknown> {
  await guard.read((e) => e.call('warm'));
  const engine = factory.created[0]!;
  engine.wedge();
  engine.nextCall('ignore-abort');
  return errorOf(
    guard.read((e, ctx) => e.call('r', { signal: ctx.signal, duration: 60_000 }), options),
  );
}
