/**
 * An op's abort, told without an `AbortSignal`: the adapters' fast path.
 *
 * `ctx.signal` is made on first use (an `AbortController`, its signal, and the listener an
 * adapter adds to it), which measured as most of what `pgQuery` added to a loopback round trip.
 * The guard's op context also answers to {@link ABORT_WATCH}, so an adapter that knows the key can
 * ask whether the op aborted and be called when it does, with nothing made per op but one small
 * object. It is keyed by `Symbol.for`, so each entry point's bundled copy of this module finds the
 * same key. Anything else handed as `ctx` (a plain `{ signal, heartbeat }`) goes on using `signal`.
 *
 * @internal
 */

/** See the module documentation. */
export const ABORT_WATCH: unique symbol = Symbol.for('engine-guard.abort-watch') as never;

/** What {@link ABORT_WATCH} gives. */
export interface AbortWatch {
  /** True once the op aborted (caller abort, stall, close): `ctx.signal` is aborted, or will be. */
  readonly aborted: boolean;
  /** The reason `ctx.signal` aborts with, once {@link AbortWatch.aborted}. */
  readonly abortReason: unknown;
  /**
   * Calls `listener` once, when the op aborts (never if it has aborted already: check
   * {@link AbortWatch.aborted} first). Returns the function that stops it.
   */
  onAbort(listener: () => void): () => void;
}

/** A `ctx` that may answer to {@link ABORT_WATCH}. */
export interface MaybeWatched {
  readonly [ABORT_WATCH]?: AbortWatch | undefined;
}
