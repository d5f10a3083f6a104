/**
 * The op state machine (src/guard/op.ts): every move the diagram draws is allowed, every other
 * one is refused without changing the state, and `fn`'s context is not the live op.
 */
import { describe, expect, it } from 'vitest';
import {
  ABANDONED,
  CLOSED,
  DONE,
  IllegalTransitionError,
  LEFT,
  Op,
  type OpState,
  STALLED,
} from '../../src/guard/op.js';
import { RWLock } from '../../src/index.js';
import { Handle } from '../../src/pool/handle-pool.js';
import { FakeEngineFactory } from '../../src/testing/index.js';
import { fakeGuard } from '../support/guard.js';

type Tag = OpState<object>['tag'];
const TAGS: Tag[] = [
  'waiting',
  'leased',
  'running',
  'cancelling',
  'left',
  'done',
  'stalled',
  'abandoned',
  'closed',
];

// The diagram at the top of op.ts, written out independently of the code's table.
const ALLOWED: Record<Tag, Tag[]> = {
  waiting: ['leased', 'running', 'left'],
  leased: ['running', 'left'],
  running: ['done', 'cancelling', 'stalled', 'closed'],
  cancelling: ['done', 'abandoned', 'closed'],
  left: [],
  done: [],
  stalled: [],
  abandoned: [],
  closed: [],
};

const lock = new RWLock();
const handle = new Handle<object>({}, 1);

function stateFor(tag: Tag): OpState<object> {
  const lease = lock.tryAcquireRead();
  if (lease === null) throw new Error('the test lock is never held for long');
  lease.release();
  switch (tag) {
    case 'waiting':
      return { tag: 'waiting' };
    case 'leased':
      return { tag: 'leased', lease };
    case 'running':
      return { tag: 'running', lease, handle };
    case 'cancelling': {
      const grace = setTimeout(() => {}, 0);
      clearTimeout(grace);
      return {
        tag: 'cancelling',
        lease,
        handle,
        cancel: undefined,
        cancelInFlight: false,
        outcome: undefined,
        grace,
      };
    }
    case 'left':
      return LEFT;
    case 'done':
      return DONE;
    case 'stalled':
      return STALLED;
    case 'abandoned':
      return ABANDONED;
    case 'closed':
      return CLOSED;
  }
}

/** A fresh op brought to `tag` along legal moves. */
function opIn(tag: Tag): Op<object> {
  const op = new Op<object>(1, 'read', undefined, undefined, false);
  const path: Record<Tag, Tag[]> = {
    waiting: [],
    leased: ['leased'],
    running: ['running'],
    cancelling: ['running', 'cancelling'],
    left: ['left'],
    done: ['running', 'done'],
    stalled: ['running', 'stalled'],
    abandoned: ['running', 'cancelling', 'abandoned'],
    closed: ['running', 'closed'],
  };
  for (const step of path[tag]) op.to(stateFor(step));
  expect(op.state.tag).toBe(tag);
  return op;
}

describe('op state machine', () => {
  for (const from of TAGS) {
    for (const to of TAGS) {
      const legal = ALLOWED[from].includes(to);
      it(`${legal ? 'allows' : 'refuses'} ${from} → ${to}`, () => {
        const op = opIn(from);
        if (legal) {
          op.to(stateFor(to));
          expect(op.state.tag).toBe(to);
        } else {
          expect(() => op.to(stateFor(to))).toThrow(IllegalTransitionError);
          expect(op.state.tag).toBe(from);
        }
      });
    }
  }

  it('names both states and the op in the error', () => {
    const op = opIn('done');
    expect(() => op.to(stateFor('running'))).toThrow(/op 1 cannot go from "done" to "running"/);
  });
});

describe('ctx', () => {
  it('is a small context object, not the live op: no lease, handle, resolve or reject', async () => {
    const factory = new FakeEngineFactory();
    const guard = fakeGuard(factory);
    try {
      const seen = await guard.read(
        (_engine, ctx) => {
          const { heartbeat } = ctx;
          heartbeat();
          const loose = ctx as unknown as Record<string, unknown>;
          return {
            keys: Object.keys(ctx).sort(),
            reachable: ['lease', 'handle', 'reject', 'resolve', 'state', 'to', 'abort'].filter(
              (key) => key in loose,
            ),
            signal: ctx.signal instanceof AbortSignal,
            id: ctx.id,
            kind: ctx.kind,
          };
        },
        { label: 'l' },
      );
      expect(seen.reachable).toEqual([]);
      expect(seen.keys).toEqual(['generation', 'id', 'kind', 'label']);
      expect(seen).toMatchObject({ signal: true, id: 1, kind: 'read' });
    } finally {
      await guard.close();
    }
  });
});
