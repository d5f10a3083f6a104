/**
 * One abort listener per signal, shared by every item (waiter, op) that watches it.
 *
 * Node's EventTarget removes a listener by walking its list, so giving each of n items sharing
 * one signal a listener of its own makes settling them O(n²): 100,000 lock waiters on one signal
 * took minutes. Here an item joins and leaves a Set, and the signal has one listener per owner.
 */
class Watch<T> {
  readonly items = new Set<T>();
  constructor(
    readonly fanout: SignalFanout<T>,
    readonly signal: AbortSignal,
  ) {}
  handleEvent(): void {
    this.fanout.fire(this);
  }
}

/** See the module documentation. */
export class SignalFanout<T> {
  readonly #watches = new Map<AbortSignal, Watch<T>>();
  readonly #onAbort: (items: T[], reason: unknown) => void;

  /** `onAbort` gets every item still watching the signal, in the order they started watching. */
  constructor(onAbort: (items: T[], reason: unknown) => void) {
    this.#onAbort = onAbort;
  }

  /** Starts watching `signal` on behalf of `item`. */
  add(signal: AbortSignal, item: T): void {
    let watch = this.#watches.get(signal);
    if (watch === undefined) {
      watch = new Watch(this, signal);
      this.#watches.set(signal, watch);
      signal.addEventListener('abort', watch, { once: true });
    }
    watch.items.add(item);
  }

  /** Stops watching for `item`; the last item out removes the listener. */
  remove(signal: AbortSignal, item: T): void {
    const watch = this.#watches.get(signal);
    if (watch === undefined || !watch.items.delete(item)) return;
    if (watch.items.size === 0) {
      signal.removeEventListener('abort', watch);
      this.#watches.delete(signal);
    }
  }

  /** @internal The signal aborted: hand every item to the owner at once. */
  fire(watch: Watch<T>): void {
    this.#watches.delete(watch.signal);
    const items = [...watch.items];
    watch.items.clear();
    this.#onAbort(items, watch.signal.reason);
  }
}
