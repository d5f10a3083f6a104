/**
 * The machinery the model-based tests of sessions share: a fake engine that observes the guard
 * from the inside. Every call the guard makes on a handle (fn, restore, reset, state check)
 * enters the handle and checks there that nobody else uses it, that it was not destroyed, and
 * that a write runs alone; violations are collected, not thrown, so the guard's own code never
 * sees an assertion. Callers' promises are tracked until they settle.
 */

/** The message of the error that `isFatal` recognises: the handle is dead. */
export const FATAL = 'connection lost';

/** How a test ends a call it holds. */
export type Settle = 'ok' | 'error' | 'fatal';

/** A value whose `then` getter throws `error`: a hostile result of fn or a hook. */
export function throwingThen(error: Error): unknown {
  return {
    // biome-ignore lint/suspicious/noThenProperty: the hostile value under test
    get then(): never {
      throw error;
    },
  };
}

/** A fake engine handle, as the observer sees it. */
export interface ObservedHandle {
  readonly generation: number;
  /** Calls running on it now. */
  active: number;
  /** The kind of the op running on it, while one does (hooks have none). */
  kind: 'read' | 'write' | undefined;
  /** It died (a fatal error, or killed): every later call on it fails fatally. */
  dead: boolean;
  destroyed: number;
}

/** A call held on its handle until the test settles it. */
export interface HeldCall<C> {
  readonly conn: C;
  settle(how: Settle): void;
}

/** See the module documentation. */
export class ModelObserver<C extends ObservedHandle> {
  readonly conns: C[] = [];
  /** The calls held now, oldest first. */
  readonly gates: HeldCall<C>[] = [];
  readonly pending = new Set<Promise<unknown>>();
  readonly violations: string[] = [];
  /** What runs on each handle now, for the messages. */
  readonly #what = new WeakMap<C, string>();

  fail(message: string): void {
    this.violations.push(message);
  }

  /**
   * Uses `conn` for one call (`what`), checking nobody else does, it was not destroyed, and (for
   * an op's call, of `kind`) that a write runs alone and a read beside no write.
   */
  enter(conn: C, what: string, kind?: 'read' | 'write'): void {
    if (conn.active > 0) {
      const other = this.#what.get(conn) ?? 'another call';
      this.fail(`${what} on handle ${conn.generation} while ${other} runs on it`);
    }
    if (conn.destroyed > 0) this.fail(`${what} on handle ${conn.generation} after its destroy`);
    if (kind !== undefined) {
      for (const other of this.conns) {
        if (this.gaveUp(other)) continue;
        if (other.kind === 'write' || (kind === 'write' && other.kind === 'read')) {
          this.fail(`${what} (${kind}) beside a ${other.kind} on handle ${other.generation}`);
        }
      }
    }
    conn.active++;
    conn.kind = kind;
    this.#what.set(conn, what);
  }

  exit(conn: C): void {
    conn.active--;
    conn.kind = undefined;
    this.#what.delete(conn);
  }

  /** Ends a call on `conn` as `how` says: the handle's generation, or an error. */
  endCall(conn: C, how: Settle): unknown {
    this.exit(conn);
    if (how === 'ok') return conn.generation;
    if (how === 'fatal') conn.dead = true;
    throw new Error(how === 'fatal' ? FATAL : 'op failed');
  }

  /**
   * Holds a call on `conn` (listed in `gates`) until it is settled; when `signal` aborts,
   * `aborted` runs (while it is held) and, if `honorsAbort`, the call ends as an error.
   * `ended` runs when it ends, before its outcome.
   */
  hold(
    conn: C,
    signal: AbortSignal,
    honorsAbort: boolean,
    ended?: () => void,
    aborted?: () => void,
  ): Promise<unknown> {
    return new Promise((resolve, reject) => {
      let open = true;
      const held: HeldCall<C> = {
        conn,
        settle: (how) => {
          if (!open) return;
          open = false;
          this.gates.splice(this.gates.indexOf(held), 1);
          ended?.();
          try {
            resolve(this.endCall(conn, how));
          } catch (error) {
            reject(error);
          }
        },
      };
      this.gates.push(held);
      const onAbort = (): void => {
        if (!open) return;
        aborted?.();
        if (honorsAbort) held.settle('error');
      };
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Tracks a caller's promise until it settles; `onError` / `onValue` check how it did. */
  track(
    promise: Promise<unknown>,
    onError?: (error: unknown) => void,
    onValue?: (value: unknown) => void,
  ): void {
    const settled = promise.then(
      (value: unknown) => {
        this.pending.delete(settled);
        onValue?.(value);
      },
      (error: unknown) => {
        this.pending.delete(settled);
        onError?.(error);
      },
    );
    this.pending.add(settled);
  }

  /**
   * The guard gave up on `conn` while a call may still run on it (an abandoned op whose lease
   * was revoked): what runs there no longer holds the lock.
   */
  protected gaveUp(_conn: C): boolean {
    return false;
  }
}
