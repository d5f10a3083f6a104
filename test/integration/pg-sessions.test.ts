/**
 * Sessions on the real PostgreSQL (SPEC 8): a session's handle convicted mid-query through a
 * blackholed FaultProxy makes the session lost, never silently fresh; `restore` and `reopen()`
 * continue; other sessions and stateless reads are unaffected. Only the first handle (the
 * session's) goes through the proxy; every later one connects directly.
 */
import { describe, expect, it } from 'vitest';
import { type PgHandle, pgQuery } from '../../src/adapters/pg.js';
import {
  type EngineGuard,
  EngineStalledError,
  type OpContext,
  SessionLostError,
} from '../../src/index.js';
import type { FaultProxy } from '../../src/testing/index.js';
import { errorOf } from '../support/guard.js';
import { clientConfig } from '../support/pg.js';
import {
  BOUND,
  kit,
  MARGIN,
  type PgOptions,
  pgOptions,
  TEST_TIMEOUT,
  viaProxy,
} from '../support/pg-faults-kit.js';

async function sessionGuard(
  overrides: Partial<PgOptions> = {},
): Promise<{ proxy: FaultProxy; guard: EngineGuard<PgHandle> }> {
  const k = kit();
  const proxy = await k.proxy();
  const proxied = pgOptions(viaProxy(proxy), { pool: 2, maxSessions: 2, ...overrides });
  const direct = pgOptions(clientConfig(), { pool: 2, maxSessions: 2, ...overrides });
  const guard = k.guard({
    ...proxied,
    create: (ctx) => (ctx.generation === 1 ? proxied.create(ctx) : direct.create(ctx)),
  });
  return { proxy, guard };
}

const count = async (
  run: (fn: (h: PgHandle, ctx: OpContext) => Promise<unknown>) => Promise<unknown>,
): Promise<unknown> =>
  run(
    async (h, ctx) =>
      (await pgQuery<{ n: number }>(h, ctx, 'SELECT count(*)::int AS n FROM scratch')).rows[0]?.n,
  );

describe('sessions on PostgreSQL', () => {
  it(
    'a session convicted mid-query is lost; reopen() continues on a fresh handle; others go on',
    async () => {
      const { proxy, guard } = await sessionGuard();
      const session = guard.session({ label: 'victim' });
      await session.write((h, ctx) =>
        pgQuery(h, ctx, 'CREATE TEMP TABLE scratch(x int); INSERT INTO scratch VALUES (1), (2)'),
      );
      expect(await count((fn) => session.read(fn))).toBe(2);
      expect(session.status().generation).toBe(1);

      const bystander = guard.session({ label: 'bystander' });
      await bystander.write((h, ctx) =>
        pgQuery(h, ctx, 'CREATE TEMP TABLE scratch(x int); INSERT INTO scratch VALUES (7)'),
      );

      proxy.blackhole();
      const started = performance.now();
      const stalled = await errorOf(
        session.read((h, ctx) => pgQuery(h, ctx, 'SELECT count(*) FROM scratch, pg_sleep(0.2)')),
      );
      expect(stalled).toBeInstanceOf(EngineStalledError);
      expect(performance.now() - started).toBeLessThan(BOUND + MARGIN);
      expect(session.status()).toMatchObject({ state: 'lost', losses: 1, generation: 1 });

      const lost = await errorOf(session.read((h, ctx) => pgQuery(h, ctx, 'SELECT 1')));
      expect(lost).toBeInstanceOf(SessionLostError);
      expect(lost).toMatchObject({ generation: 1, sessionId: session.id });

      // Unaffected: the other session keeps its own table, stateless reads run.
      expect(await count((fn) => bystander.read(fn))).toBe(1);
      const plain = await guard.read((h, ctx) => pgQuery<{ v: number }>(h, ctx, 'SELECT 3 AS v'));
      expect(plain.rows[0]?.v).toBe(3);

      session.reopen();
      let generation = 0;
      const gone = await errorOf(
        session.read(async (h, ctx) => {
          generation = ctx.generation;
          return pgQuery(h, ctx, 'SELECT count(*) FROM scratch');
        }),
      );
      // A fresh handle: the state really is gone, and the error says so. The session holds no
      // state any more, so it is not pinned: its calls run on shared handles.
      expect((gone as { code?: string }).code).toBe('42P01');
      expect(generation).toBeGreaterThan(1);
      expect(session.status()).toMatchObject({ state: 'open', pinned: false });
    },
    TEST_TIMEOUT,
  );

  it(
    'with restore, the session continues after the loss and ctx.restored is true',
    async () => {
      const { proxy, guard } = await sessionGuard();
      const session = guard.session({
        label: 'restored',
        restore: (h, ctx) =>
          pgQuery(
            h,
            ctx,
            "CREATE TEMP TABLE scratch(x int); INSERT INTO scratch VALUES (1), (2); SET application_name = 'restored'",
          ),
      });
      await session.write((h, ctx) =>
        pgQuery(h, ctx, 'CREATE TEMP TABLE scratch(x int); INSERT INTO scratch VALUES (1), (2)'),
      );
      proxy.blackhole();
      const stalled = await errorOf(
        session.read((h, ctx) => pgQuery(h, ctx, 'SELECT pg_sleep(0.2)')),
      );
      expect(stalled).toBeInstanceOf(EngineStalledError);
      const after = await session.read(async (h, ctx) => ({
        restored: ctx.restored,
        n: (await pgQuery<{ n: number }>(h, ctx, 'SELECT count(*)::int AS n FROM scratch')).rows[0]
          ?.n,
        app: (await pgQuery<{ a: string }>(h, ctx, 'SHOW application_name')).rows[0],
      }));
      expect(after).toMatchObject({ restored: true, n: 2 });
      expect(Object.values(after.app ?? {})).toEqual(['restored']);
      expect(await session.read((_h, ctx) => ctx.restored)).toBe(false);
    },
    TEST_TIMEOUT,
  );
});
