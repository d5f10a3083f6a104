/**
 * The writer's patience: the bookkeeping behind RWLock's `no-convoy` fairness (see the
 * "Fairness policy" section of docs/design.md).
 *
 * One writer at a time is *watched*: the one at the head of the queue while only reads hold the
 * lock. The reads holding it at that moment are its *pre-reads*. For `bypassAfter` ms the writer
 * is patient, and the lock keeps later readers behind it. After that, while at least one
 * pre-read still runs, the lock *bypasses* it: readers may pass it. The last pre-read ending
 * closes the bypass, so the writer then waits only for the reads admitted while it was open.
 *
 * Pre-reads are told apart by epoch, in O(1): every read lease records the epoch it was granted
 * in, and each watch starts a new one, so a read belongs to the watch's pre-reads exactly when
 * its epoch is older than the watch's. One timer per lock at most, cleared when the watch ends.
 */
import type { Timer } from '../internal/promises.js';

export class WriterPatience<W extends object> {
  readonly #bypassAfter: number;
  readonly #onBypass: () => void;
  #watched: W | null = null;
  #epoch = 0;
  #preReads = 0;
  #bypassing = false;
  #timer: Timer | undefined = undefined;

  /** `onBypass` runs when the patience of a watched writer runs out (from a timer). */
  constructor(bypassAfter: number, onBypass: () => void) {
    this.#bypassAfter = bypassAfter;
    this.#onBypass = onBypass;
  }

  /** Epoch a read granted now belongs to. */
  get epoch(): number {
    return this.#epoch;
  }

  /** True while readers may pass the watched writer. */
  get bypassing(): boolean {
    return this.#bypassing;
  }

  /** The writer being watched, if any. */
  get watched(): W | null {
    return this.#watched;
  }

  /**
   * `writer` is now at the head of the queue and waits for `readers` reads only. With a
   * `bypassAfter` of 0 the bypass opens at once; the caller then admits the readers itself.
   */
  watch(writer: W, readers: number): void {
    this.#watched = writer;
    this.#epoch++;
    this.#preReads = readers;
    if (this.#bypassAfter === 0) this.#bypassing = true;
    else this.#timer = setTimeout(this.#expire, this.#bypassAfter);
  }

  /** The watched writer was granted or left the queue. */
  end(): void {
    this.#watched = null;
    this.#bypassing = false;
    this.#preReads = 0;
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
  }

  /** A read lease granted in `epoch` ended. */
  readEnded(epoch: number): void {
    // The last pre-read gone: close the bypass, so the writer waits only for reads admitted so far.
    if (this.#watched !== null && epoch < this.#epoch && --this.#preReads === 0) {
      this.#bypassing = false;
    }
  }

  readonly #expire = (): void => {
    this.#timer = undefined;
    this.#bypassing = true;
    this.#onBypass();
  };
}
