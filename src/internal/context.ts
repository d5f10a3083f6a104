/**
 * The async context that makes re-entrancy work: which locks and guards the current async
 * context holds.
 *
 * One `AsyncLocalStorage` for the whole package, on purpose. On Node 20 every instance that has
 * ever run stays registered with async_hooks for the life of the process, and every promise
 * created anywhere pays for each one: a lock or guard per instance would make an app that
 * creates 100 of them ~100× slower at every `await`. So each `run` pushes a small immutable
 * frame `(owner, value)` on a chain, and lookups walk it (chains are as deep as the nesting).
 */
import { AsyncLocalStorage } from 'node:async_hooks';

interface Frame {
  readonly owner: object;
  readonly value: unknown;
  readonly parent: Frame | undefined;
}

const storage = new AsyncLocalStorage<Frame>();

/** The value `owner` registered in the current async context, if any. */
export function heldBy<T>(owner: object): T | undefined {
  for (let frame = storage.getStore(); frame !== undefined; frame = frame.parent) {
    if (frame.owner === owner) return frame.value as T;
  }
  return undefined;
}

/** Runs `fn(...args)` in a context where `heldBy(owner)` returns `value`. */
export function runHolding<A extends unknown[], R>(
  owner: object,
  value: unknown,
  fn: (...args: A) => R,
  ...args: A
): R {
  return storage.run({ owner, value, parent: storage.getStore() }, fn, ...args);
}
