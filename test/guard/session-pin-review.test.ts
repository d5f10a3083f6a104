/**
 * Sessions that pin on state (SPEC 8.1), attacked by hand: the races the model-based test found
 * or that a hostile caller would try, each pinned down as one deterministic scenario.
 */
import { describe, expect, it } from 'vitest';
import { EngineGuard, type EngineGuardOptions, type HeldState } from '../../src/index.js';

/** A connection whose state is a set of temp tables. */
interface Conn {
  readonly generation: number;
  readonly tables: Set<string>;
  /** Calls (fn, state check, reset) running on it now. */
  busy: number;
  /** Most calls that ran on it at once. */
  most: number;
  destroyed: number;
}

function held(conn: Conn): HeldState[] {
  return [...conn.tables].sort().map((name) => ({ kind: 'temp table', name }));
}

/** Marks `conn` used by one more call while `work` runs. */
function use<T>(conn: Conn, work: () => T): T {
  conn.busy++;
  conn.most = Math.max(conn.most, conn.busy);
  let async = false;
  try {
    const result = work();
    if (result instanceof Promise) {
      async = true;
      return result.finally(() => {
        conn.busy--;
      }) as T;
    }
    return result;
  } finally {
    if (!async) conn.busy--;
  }
}

function guardWith(extra: Partial<EngineGuardOptions<Conn>> = {}): {
  guard: EngineGuard<Conn>;
  conns: Conn[];
} {
  const conns: Conn[] = [];
  const guard = new EngineGuard<Conn>({
    create: ({ generation }) => {
      const conn: Conn = { generation, tables: new Set(), busy: 0, most: 0, destroyed: 0 };
      conns.push(conn);
      return conn;
    },
    destroy: (conn) => {
      conn.destroyed++;
    },
    reset: (conn) => {
      conn.tables.clear();
    },
    state: (conn) => use(conn, () => held(conn)),
    cancel: () => undefined,
    pool: 2,
    maxSessions: 2,
    ...extra,
  });
  return { guard, conns };
}

describe('pin on state, attacked by hand', () => {
  it('runs a call once when its own state check pins the session in the turn it starts', async () => {
    // A handle idle in the pool, a sync fn and a sync check: the op runs, is checked and pins
    // the session before the session even knows the op it started.
    const { guard } = guardWith();
    await guard.read(() => 1);
    const session = guard.session();
    let runs = 0;
    const result = await session.write((conn) => {
      runs++;
      conn.tables.add('t');
      return runs;
    });
    expect(session.status().pinned).toBe(true);
    expect(runs).toBe(1);
    expect(result).toBe(1);
    expect(session.status().ops).toBe(1);
    await guard.close();
  });
});
