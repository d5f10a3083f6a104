/**
 * An intrusive doubly linked FIFO. Nodes carry their own links, so pushing, shifting and removing
 * an arbitrary node (an aborted waiter in the middle of the queue) are all O(1) with no
 * allocation beyond the node itself. Arrays would make removal O(n): 100,000 aborted waiters
 * would cost O(n²).
 */

/** Links a node needs to live in a {@link WaiterQueue}. */
export interface QueueNode<T> {
  prev: T | null;
  next: T | null;
  /** True while the node is linked into a queue. */
  queued: boolean;
}

/**
 * Where a queue that takes `exit` (the lock's `queueFor`, the pool's `acquire`) puts the way to
 * take a waiter back out before it is served: the guard's op was answered some other way (its
 * session took the call back, or closed).
 */
export interface Withdrawable {
  /**
   * Set while the waiter may still be queued: removes it as an abort would (it is told `reason`,
   * and whom it held back is served in the same turn). A no-op once it was served or left.
   */
  withdraw: ((reason: unknown) => void) | undefined;
}

/** FIFO of nodes that link themselves. */
export class WaiterQueue<T extends QueueNode<T>> {
  head: T | null = null;
  tail: T | null = null;
  size = 0;

  push(node: T): void {
    node.prev = this.tail;
    node.next = null;
    if (this.tail === null) this.head = node;
    else this.tail.next = node;
    this.tail = node;
    node.queued = true;
    this.size++;
  }

  /** Links `node` at the head (a waiter that was ahead of everyone queued now). */
  unshift(node: T): void {
    node.prev = null;
    node.next = this.head;
    if (this.head === null) this.tail = node;
    else this.head.prev = node;
    this.head = node;
    node.queued = true;
    this.size++;
  }

  /** Unlinks `node`; a node that is not queued is left alone. */
  remove(node: T): void {
    if (!node.queued) return;
    const { prev, next } = node;
    if (prev === null) this.head = next;
    else prev.next = next;
    if (next === null) this.tail = prev;
    else next.prev = prev;
    node.prev = null;
    node.next = null;
    node.queued = false;
    this.size--;
  }
}
