/**
 * The async context that makes re-entrancy work: which locks and guards the current async
 * context holds.
 *
 * One `AsyncLocalStorage` for the whole package, on purpose. On Node 20 every instance that has
 * ever run stays registered with async_hooks for the life of the process, and every promise
 * created anywhere pays for each one: a lock or guard per instance would make an app that
 * creates 100 of them ~100× slower at every `await`. So each `run` pushes a small immutable
 * frame `(owner, value)` on a chain, and lookups walk it.
 *
 * Dead frames. A continuation can outlive its hold: a job that reschedules itself from inside
 * `read(fn)` runs its next turn in a context whose frame was released long ago. If new frames
 * linked to such frames, every run would add one and none would ever be freed. So a value may
 * say its hold has ended: a value with a `released` property (see {@link Releasable}) is dead
 * once that property is `true` (a `Lease`; a guard op can expose `get released()` when it is
 * done). `heldBy` skips dead frames, and `runHolding` links the new frame to live frames only,
 * copying the live ones when a dead frame sits among them, so a chain is never deeper than the
 * live nesting at the time it was built. A value without `released` is live for as long as its
 * context runs, as before.
 */
import { AsyncLocalStorage } from 'node:async_hooks';

/** A held value that can tell when its hold has ended. */
export interface Releasable {
  /** True once the hold has ended; it never turns false again. */
  readonly released: boolean;
}

interface Frame {
  readonly owner: object;
  readonly value: unknown;
  readonly parent: Frame | undefined;
}

const storage = new AsyncLocalStorage<Frame>();

function isDead(frame: Frame): boolean {
  const value = frame.value;
  return (
    typeof value === 'object' && value !== null && (value as Partial<Releasable>).released === true
  );
}

/** The chain without its dead frames: the same frames when all are live, else live copies. */
function liveChain(frame: Frame | undefined): Frame | undefined {
  let live = frame;
  while (live !== undefined && isDead(live)) live = live.parent;
  if (live === undefined) return undefined;
  for (let f = live.parent; f !== undefined; f = f.parent) {
    if (isDead(f)) return { owner: live.owner, value: live.value, parent: liveChain(live.parent) };
  }
  return live;
}

/** The live value `owner` registered in the current async context, if any. */
export function heldBy<T>(owner: object): T | undefined {
  for (let frame = storage.getStore(); frame !== undefined; frame = frame.parent) {
    if (frame.owner === owner && !isDead(frame)) return frame.value as T;
  }
  return undefined;
}

/** Runs `fn(...args)` in a context where `heldBy(owner)` returns `value` while it is live. */
export function runHolding<A extends unknown[], R>(
  owner: object,
  value: unknown,
  fn: (...args: A) => R,
  ...args: A
): R {
  return storage.run({ owner, value, parent: liveChain(storage.getStore()) }, fn, ...args);
}

/** Test-only: how many frames the current context's chain holds. */
export function chainDepth(): number {
  let depth = 0;
  for (let frame = storage.getStore(); frame !== undefined; frame = frame.parent) depth++;
  return depth;
}
