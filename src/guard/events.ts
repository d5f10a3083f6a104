import { guardEventChannel } from '../diagnostics.js';
import type { GuardEvents, Subscription } from './types.js';

/**
 * Message on `engine-guard:guard:event`: a union discriminated by `type`, one member per entry of
 * {@link GuardEvents} (derived from it, so a new event type shows up here by itself). Narrow it
 * with `switch (msg.type)`.
 *
 * @example
 * ```ts
 * diagnostics_channel.subscribe(channelNames.guardEvent, (message) => {
 *   const msg = message as GuardEventMessage;
 *   if (msg.type === 'stall') log(msg.guard, msg.event.error.opId);
 * });
 * ```
 */
export type GuardEventMessage = {
  [K in keyof GuardEvents]: {
    /** Name of the guard that emitted it, when it has one. */
    guard: string | undefined;
    /** The event type, as given to `guard.on()`. */
    type: K;
    /** The event's payload: what `guard.on(type)` listeners receive. */
    event: GuardEvents[K];
  };
}[keyof GuardEvents];

/**
 * A tiny typed event emitter. `on()` returns a {@link Subscription} (cockatiel style) instead of
 * asking for the listener back. A listener that throws does not stop the others nor the guard:
 * the error is reported through `process.emitWarning` rather than swallowed.
 */
export class TypedEvents<Events extends object> {
  readonly #listeners = new Map<keyof Events, Set<(event: never) => void>>();
  readonly #source: string | undefined;

  constructor(source: string | undefined) {
    this.#source = source;
  }

  on<K extends keyof Events>(type: K, listener: (event: Events[K]) => void): Subscription {
    if (typeof listener !== 'function') {
      throw new TypeError('The "listener" argument must be a function');
    }
    let set = this.#listeners.get(type);
    if (set === undefined) {
      set = new Set();
      this.#listeners.set(type, set);
    }
    const entry = listener as (event: never) => void;
    set.add(entry);
    const dispose = (): void => {
      set.delete(entry);
    };
    return { dispose, [Symbol.dispose]: dispose };
  }

  emit<K extends keyof Events>(type: K, event: Events[K]): void {
    if (guardEventChannel.hasSubscribers) {
      guardEventChannel.publish({ guard: this.#source, type, event });
    }
    const set = this.#listeners.get(type);
    if (set === undefined) return;
    for (const listener of set) {
      try {
        (listener as (event: Events[K]) => void)(event);
      } catch (error) {
        process.emitWarning(
          `engine-guard: a "${String(type)}" listener threw: ${error instanceof Error ? error.message : String(error)}`,
          { code: 'ENGINE_GUARD_LISTENER_ERROR' },
        );
      }
    }
  }

  clear(): void {
    this.#listeners.clear();
  }
}
