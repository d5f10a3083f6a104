/**
 * The queue of an {@link RWLock}: writers in arrival order, and readers grouped by their `key`
 * (readers without one form one group), so that the lock can grant readers round-robin across
 * keys without giving up its FIFO phases (see "Order of service" in the RWLock documentation).
 *
 * Every waiter is linked three ways, all intrusive and O(1) to unlink:
 * - `before`/`after`: arrival order across everyone, which is what tells a reader ahead of the
 *   first queued writer from one behind it;
 * - `prev`/`next`: its group (a writer's group is the writers' queue);
 * - each group with queued readers sits in one of two rings: `front` while its oldest reader is
 *   ahead of the first queued writer (or no writer waits), `behind` otherwise.
 *
 * Keeping the rings exact is what keeps every step O(1): a group moves between them only when
 * its oldest reader changes (it is granted or leaves) or when the first writer leaves the queue.
 * In that last case the groups whose oldest reader is now ahead of the next writer are found by
 * walking the readers between the two writers; a reader is walked at most once in its life
 * (readers ahead of the first writer stay ahead of it), so the walk is O(1) amortized.
 */
import { type QueueNode, WaiterQueue } from '../internal/waiter-queue.js';
import type { LockMode } from './lease.js';

/** What a waiter needs to live in a {@link FairQueue}. */
export interface FairQueueMember<W extends FairQueueMember<W>> extends QueueNode<W> {
  /** Neighbours in arrival order, across groups and writers. */
  before: W | null;
  after: W | null;
  /** Its readers' group, or the writers' queue. */
  readonly group: WaiterGroup<W>;
  /** Arrival number: lower arrived first. */
  readonly seq: number;
}

/** The queued waiters of one key (or of all writers), oldest first; itself a ring node. */
export class WaiterGroup<W extends FairQueueMember<W>>
  extends WaiterQueue<W>
  implements QueueNode<WaiterGroup<W>>
{
  prev: WaiterGroup<W> | null = null;
  next: WaiterGroup<W> | null = null;
  queued = false;
  /** True while in the `behind` ring. */
  behind = false;

  constructor(
    readonly mode: LockMode,
    readonly key: unknown,
  ) {
    super();
  }
}

/** See the module documentation. */
export class FairQueue<W extends FairQueueMember<W>> {
  /** Queued writers, in arrival order. */
  readonly writers = new WaiterGroup<W>('write', undefined);
  /** Groups whose oldest reader is ahead of the first queued writer, in turn order. */
  readonly front = new WaiterQueue<WaiterGroup<W>>();
  /** Groups whose readers all wait behind the first queued writer, in turn order. */
  readonly behind = new WaiterQueue<WaiterGroup<W>>();
  /** Waiters queued, readers and writers. */
  size = 0;
  /** Readers queued. */
  readers = 0;
  readonly #keyless = new WaiterGroup<W>('read', undefined);
  // Only keys with queued readers: a group is dropped with its last reader.
  readonly #keyed = new Map<unknown, WaiterGroup<W>>();
  #last: W | null = null;

  /**
   * The group a reader with `key` joins (`undefined`: the keyless group). A new key's group is
   * registered by {@link FairQueue.push} only, so a waiter that never gets queued (its setup
   * threw) leaves nothing behind.
   */
  groupOf(key: unknown): WaiterGroup<W> {
    if (key === undefined) return this.#keyless;
    return this.#keyed.get(key) ?? new WaiterGroup<W>('read', key);
  }

  /** Queues `waiter` last, in its group; a group's first reader puts it at the back of a ring. */
  push(waiter: W): void {
    const last = this.#last;
    waiter.before = last;
    waiter.after = null;
    if (last !== null) last.after = waiter;
    this.#last = waiter;
    this.size++;
    const group = waiter.group;
    group.push(waiter);
    if (group === this.writers) return;
    this.readers++;
    if (group.size > 1) return;
    if (group !== this.#keyless) this.#keyed.set(group.key, group);
    this.#place(group, this.writers.head === null);
  }

  /**
   * Unlinks a queued `waiter`. `granted`: it leaves because it was served, so its group's turn
   * is over and the group moves to the back of its ring; a waiter that gave up leaves its group
   * where it was (unless its group's next reader is behind the first writer: then it moves to the
   * back of `behind`).
   */
  remove(waiter: W, granted: boolean): void {
    if (!waiter.queued) return;
    const { before, after } = waiter;
    if (before !== null) before.after = after;
    if (after === null) this.#last = before;
    else after.before = before;
    waiter.before = null;
    waiter.after = null;
    this.size--;
    const group = waiter.group;
    const oldest = group.head === waiter;
    group.remove(waiter);
    if (group === this.writers) {
      if (oldest) this.#promote(after);
      return;
    }
    this.readers--;
    const ring = group.behind ? this.behind : this.front;
    if (group.size === 0) {
      ring.remove(group);
      if (group !== this.#keyless) this.#keyed.delete(group.key);
      return;
    }
    if (!oldest) return;
    if (!group.behind && !this.#ahead(group.head as W)) {
      ring.remove(group);
      this.#place(group, false);
    } else if (granted && ring.tail !== group) {
      ring.remove(group);
      ring.push(group);
    }
  }

  /** True when `reader` stands ahead of the first queued writer (or no writer waits). */
  #ahead(reader: W): boolean {
    const writer = this.writers.head;
    return writer === null || reader.seq < writer.seq;
  }

  #place(group: WaiterGroup<W>, front: boolean): void {
    group.behind = !front;
    (front ? this.front : this.behind).push(group);
  }

  /**
   * The first writer left; `from` is whoever queued right after it. The readers up to the new
   * first writer are now ahead of every writer: their groups move to the back of `front`, in the
   * order their oldest readers arrived.
   */
  #promote(from: W | null): void {
    const until = this.writers.head;
    for (let reader = from; reader !== until && reader !== null; reader = reader.after) {
      if (this.behind.size === 0) return;
      const group = reader.group;
      if (group.behind && group.head === reader) {
        this.behind.remove(group);
        this.#place(group, true);
      }
    }
  }
}
