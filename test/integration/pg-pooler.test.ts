/**
 * engine-guard/pg behind a real PgBouncer (Debian package), in front of the shared test cluster:
 * the adapter tells a direct connection, a session-mode pool and a transaction-mode pool apart;
 * behind a transaction-mode pool `pgState` refuses to call state kept (PgPoolerStateError, naming
 * what it found) while stateless ops, and session ops that leave nothing or keep it in one open
 * transaction, work as usual. Each PgBouncer is started and stopped by this file.
 */
import type { HeldState } from 'engine-guard';
import { EngineGuard } from 'engine-guard';
import {
  type PgHandle,
  PgPoolerStateError,
  pgGuardOptions,
  pgQuery,
  pgReadOnly,
  pgRoute,
  pgState,
  pgTransaction,
} from 'engine-guard/pg';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { stateCtx } from '../support/hook-context.js';
import { clientConfig, pgConfig } from '../support/pg.js';
import { type PgBouncer, startPgBouncer } from '../support/pgbouncer.js';

let transactionPool: PgBouncer | undefined;
let sessionPool: PgBouncer | undefined;

beforeAll(async () => {
  const { host, port } = pgConfig();
  [transactionPool, sessionPool] = await Promise.all([
    startPgBouncer({ target: { host, port }, poolMode: 'transaction' }),
    startPgBouncer({ target: { host, port }, poolMode: 'session' }),
  ]);
});

afterAll(async () => {
  await Promise.all([transactionPool?.stop(), sessionPool?.stop()]);
});

function through(bouncer: PgBouncer | undefined) {
  if (bouncer === undefined) throw new Error('PgBouncer did not start');
  return clientConfig({ host: bouncer.host, port: bouncer.port });
}

const ctx = () => ({ signal: new AbortController().signal, heartbeat() {} });

/** A handle the adapter made with `config`, destroyed at the end. */
async function openHandle(config: ReturnType<typeof clientConfig>): Promise<PgHandle> {
  const options = pgGuardOptions({ config });
  const signal = AbortSignal.timeout(10_000);
  const handle = await options.create({ signal, generation: 1 });
  onTestFinished(() => options.destroy?.(handle, { reason: 'test' }));
  return handle;
}

async function state(handle: PgHandle): Promise<readonly HeldState[] | undefined> {
  return pgState(handle, stateCtx());
}

describe('the route of a handle', () => {
  it('direct, through a session-mode pool, through a transaction-mode pool', async () => {
    expect(pgRoute(await openHandle(clientConfig()))).toBe('direct');
    expect(pgRoute(await openHandle(through(sessionPool)))).toBe('session pooler');
    expect(pgRoute(await openHandle(through(transactionPool)))).toBe('transaction pooler');
  });
});

describe('the route behind a pool of one server connection', () => {
  it.each(['transaction', 'session'] as const)(
    '%s mode: found within seconds, no probe waiting for ever on the only connection',
    async (poolMode) => {
      const { host, port } = pgConfig();
      const bouncer = await startPgBouncer({ target: { host, port }, poolMode, poolSize: 1 });
      onTestFinished(() => bouncer.stop());
      const started = performance.now();
      const handle = await openHandle(through(bouncer));
      expect(pgRoute(handle)).toBe(`${poolMode} pooler`);
      expect(performance.now() - started).toBeLessThan(10_000);
    },
  );
});

describe('pgState behind a transaction-mode PgBouncer', () => {
  it.each([
    [
      'a temporary table',
      'CREATE TEMP TABLE scratch (x int)',
      { kind: 'temp table', name: 'scratch' },
    ],
    ['SET search_path', 'SET search_path TO nowhere', { kind: 'setting', name: 'search_path' }],
    ['an advisory lock', 'SELECT pg_advisory_lock(4401)', { kind: 'advisory lock', name: '4401' }],
  ])('%s left by an op: a clear error naming it, never "kept"', async (_, sql, found) => {
    const handle = await openHandle(through(transactionPool));
    await pgQuery(handle, ctx(), sql);
    const error = await state(handle).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PgPoolerStateError);
    expect(error).toMatchObject({ code: 'ERR_PG_POOLER_STATE', found: [found] });
    expect((error as Error).message).toContain('transaction-mode pooler');
    expect((error as Error).message).toContain(`${found.kind} ${found.name}`);
    // Clean the server connection the op left it on, for whoever gets it next.
    await pgQuery(handle, ctx(), 'DISCARD ALL');
  });

  it('an op that left nothing: clean', async () => {
    const handle = await openHandle(through(transactionPool));
    await pgQuery(handle, ctx(), 'SELECT 1');
    expect(await state(handle)).toEqual([]);
  });

  it('an open transaction sticks to its server connection there too: kept until it ends', async () => {
    const handle = await openHandle(through(transactionPool));
    await pgQuery(handle, ctx(), 'BEGIN; SELECT pg_advisory_xact_lock(4402)');
    expect(await state(handle)).toEqual([{ kind: 'transaction', name: 'open' }]);
    await pgQuery(handle, ctx(), 'COMMIT');
    expect(await state(handle)).toEqual([]);
  });

  it('stateless ops keep working: pgQuery, pgReadOnly, pgTransaction, through a guard', async () => {
    const guard = new EngineGuard(
      pgGuardOptions({ config: through(transactionPool) }, { pool: 2 }),
    );
    onTestFinished(() => guard.close());
    const reads = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        guard.read(async (pg, c) => {
          const a = await pgQuery<{ v: number }>(pg, c, 'SELECT $1::int AS v', [i]);
          const b = await pgReadOnly<{ v: number }>(pg, c, 'SELECT $1::int + 1 AS v', [i]);
          return [a.rows[0]?.v, b.rows[0]?.v];
        }),
      ),
    );
    expect(reads).toEqual(Array.from({ length: 8 }, (_, i) => [i, i + 1]));
    const results = await guard.write((pg, c) =>
      pgTransaction(pg, c, ['SELECT 1 AS one', 'SELECT 2 AS two']),
    );
    expect(results.map((r) => r.rows[0])).toEqual([{ one: 1 }, { two: 2 }]);
  });
});

describe('pgState behind a session-mode PgBouncer', () => {
  it('keeps state as on a direct connection', async () => {
    const handle = await openHandle(through(sessionPool));
    await pgQuery(handle, ctx(), 'CREATE TEMP TABLE scratch (x int)');
    expect(await state(handle)).toEqual([{ kind: 'temp table', name: 'scratch' }]);
    await pgQuery(handle, ctx(), 'DROP TABLE scratch');
    expect(await state(handle)).toEqual([]);
  });
});
