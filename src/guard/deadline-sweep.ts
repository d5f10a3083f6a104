/**
 * One timer for many deadlines: the hooks the guard runs between two ops (`reset`, `state`) are
 * each bounded, and a timer (plus a closure) per call would cost more than the call on a fast
 * engine. The sweep keeps one timer armed for the earliest deadline of the calls in flight.
 */
import type { Timer } from '../internal/promises.js';

/** Something with a deadline on the `performance.now()` clock. */
export interface Deadlined {
  readonly deadline: number;
}

/** See the module documentation. */
export class DeadlineSweep<T extends Deadlined> {
  readonly #items = new Set<T>();
  readonly #expired: (item: T) => void;
  #timer: Timer | undefined = undefined;

  /** `expired` is called once for each item still in the sweep when its deadline passes. */
  constructor(expired: (item: T) => void) {
    this.#expired = expired;
  }

  get size(): number {
    return this.#items.size;
  }

  add(item: T): void {
    this.#items.add(item);
    this.#arm();
  }

  /** False when `item` was not in the sweep (it expired, or was removed already). */
  delete(item: T): boolean {
    if (!this.#items.delete(item)) return false;
    if (this.#items.size === 0 && this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    return true;
  }

  /** The items in flight, as a copy (safe to delete from while iterating). */
  items(): T[] {
    return [...this.#items];
  }

  #arm(): void {
    if (this.#timer !== undefined) return;
    let earliest = Number.POSITIVE_INFINITY;
    for (const item of this.#items) earliest = Math.min(earliest, item.deadline);
    if (earliest === Number.POSITIVE_INFINITY) return;
    this.#timer = setTimeout(
      () => {
        this.#timer = undefined;
        const now = performance.now();
        for (const item of this.items()) {
          if (item.deadline <= now && this.#items.has(item)) this.#expired(item);
        }
        this.#arm();
      },
      Math.max(0, earliest - performance.now()),
    );
  }
}
