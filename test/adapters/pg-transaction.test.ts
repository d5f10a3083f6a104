/**
 * engine-guard/pg's all-or-nothing helper (pgTransaction) and its read-only helper (pgReadOnly),
 * against the real PostgreSQL: a statement that ends the transaction is refused by what the
 * server reports, and leaves nothing behind.
 */
import { EngineGuard } from 'engine-guard';
import {
  type PgHandle,
  PgTransactionEndedError,
  PgTransactionRefusedError,
  pgGuardOptions,
  pgQuery,
  pgReadOnly,
  pgTransaction,
} from 'engine-guard/pg';
import { describe, expect, it, onTestFinished } from 'vitest';
import { adminQuery, clientConfig } from '../support/pg.js';

/** A guard closed when the test ends; `pool: 1` puts every call of a test on one session. */
function guard(config = clientConfig(), pool?: number): EngineGuard<PgHandle> {
  const g = new EngineGuard(pgGuardOptions({ config }, pool === undefined ? {} : { pool }));
  onTestFinished(() => g.close());
  return g;
}

/** `promise`'s outcome, or 'still pending' after `ms`. */
function within(promise: Promise<unknown>, ms: number): Promise<string> {
  return Promise.race([
    promise.then(
      () => 'resolved',
      (error: Error) => `rejected: ${error.message}`,
    ),
    new Promise<string>((resolve) => setTimeout(() => resolve('still pending'), ms).unref()),
  ]);
}

/** A table name for this test; dropped when it finishes (whether it exists or not). */
function tableName(prefix: string): string {
  const name = `${prefix}_${process.pid}_${Date.now()}_${Math.floor(Math.random() * 1e6)}`;
  onTestFinished(async () => {
    await adminQuery(`DROP TABLE IF EXISTS ${name}`);
  });
  return name;
}

async function exists(table: string): Promise<boolean> {
  const { rows } = await adminQuery<{ t: string | null }>('SELECT to_regclass($1)::text AS t', [
    table,
  ]);
  return rows[0]?.t !== null && rows[0]?.t !== undefined;
}

describe('pgTransaction', () => {
  it('commits every statement together and returns their results', async () => {
    const g = guard();
    const t = tableName('tx_ok');
    const results = await g.write((pg, ctx) =>
      pgTransaction(pg, ctx, [
        `CREATE TABLE ${t} (x int)`,
        { text: `INSERT INTO ${t} VALUES ($1), ($2)`, values: [1, 2] },
        `SELECT count(*)::int AS n FROM ${t}`,
      ]),
    );
    expect(results.map((r) => r.command)).toEqual(['CREATE', 'INSERT', 'SELECT']);
    expect(results[1]?.rowCount).toBe(2);
    expect(results[2]?.rows).toEqual([{ n: 2 }]);
    expect(await exists(t)).toBe(true);
  });

  it('a statement that fails rolls back the ones before it', async () => {
    const g = guard();
    const t = tableName('tx_fail');
    await expect(
      g.write((pg, ctx) => pgTransaction(pg, ctx, [`CREATE TABLE ${t} (x int)`, 'SELECT 1/0'])),
    ).rejects.toMatchObject({ code: '22012' });
    expect(await exists(t)).toBe(false);
  });

  it('refuses several statements in one string (the server does, with the extended protocol)', async () => {
    const g = guard();
    const t = tableName('tx_multi');
    await expect(
      g.write((pg, ctx) =>
        pgTransaction(pg, ctx, [`CREATE TABLE ${t} (x int); COMMIT; SELECT 1/0`]),
      ),
    ).rejects.toThrow(/multiple commands/);
    expect(await exists(t)).toBe(false);
  });

  it.each([
    ['COMMIT'],
    ['END'],
    ['COMMIT AND CHAIN'],
    ['ROLLBACK'],
    ['ABORT'],
    ['ROLLBACK AND CHAIN'],
    ["PREPARE TRANSACTION 'engine_guard_test'"],
  ])(
    'a statement that ends the transaction (%s) is refused and leaves nothing behind',
    async (end) => {
      const g = guard();
      const t = tableName('tx_end');
      const after = tableName('tx_after');
      const error = await g
        .write((pg, ctx) =>
          pgTransaction(pg, ctx, [
            `CREATE TABLE ${t} (x int)`,
            end,
            `CREATE TABLE ${after} (x int)`,
          ]),
        )
        .catch((e: unknown) => e);
      expect(error).toBeInstanceOf(PgTransactionEndedError);
      expect(error).toMatchObject({ code: 'ERR_PG_TRANSACTION_ENDED', statement: 1 });
      expect(await exists(t)).toBe(false);
      expect(await exists(after)).toBe(false);
      const { rows } = await adminQuery('SELECT gid FROM pg_prepared_xacts');
      expect(rows).toEqual([]);
      // The handle is usable afterwards, outside any transaction.
      expect(await g.read((pg, ctx) => pgReadOnly(pg, ctx, 'SELECT 1 AS one'))).toMatchObject({
        rows: [{ one: 1 }],
      });
    },
  );

  it("a script is cut into statements: the issue's commit case leaves nothing behind", async () => {
    const g = guard();
    const t = tableName('tx_script');
    const error = await g
      .write((pg, ctx) => pgTransaction(pg, ctx, `create table ${t}(x int); commit; select 1/0`))
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PgTransactionEndedError);
    expect(await exists(t)).toBe(false);
    const results = await g.write((pg, ctx) =>
      pgTransaction(
        pg,
        ctx,
        `create table ${t}(x text); -- a; comment
         insert into ${t} values ('a;b'), ($$c;d$$), (E'e\\';f'); /* g; /* h; */ */ ;`,
      ),
    );
    expect(results.map((r) => r.command)).toEqual(['CREATE', 'INSERT']);
    const { rows } = await adminQuery(`SELECT x FROM ${t} ORDER BY x`);
    expect(rows.map((r) => r.x)).toEqual(['a;b', 'c;d', "e';f"]);
  });

  it('savepoints inside stay inside', async () => {
    const g = guard();
    const t = tableName('tx_sp');
    await g.write((pg, ctx) =>
      pgTransaction(pg, ctx, [
        `CREATE TABLE ${t} (x int)`,
        'SAVEPOINT a',
        `INSERT INTO ${t} VALUES (1)`,
        'ROLLBACK TO SAVEPOINT a',
        'RELEASE SAVEPOINT a',
        `INSERT INTO ${t} VALUES (2)`,
      ]),
    );
    const { rows } = await adminQuery(`SELECT x FROM ${t}`);
    expect(rows).toEqual([{ x: 2 }]);
  });

  it('rejects bad statements with a TypeError before sending anything', async () => {
    const g = guard();
    await expect(g.write((pg, ctx) => pgTransaction(pg, ctx, 42 as never))).rejects.toBeInstanceOf(
      TypeError,
    );
    const t = tableName('tx_bad');
    for (const bad of [null, 7, { text: 1 }, { text: 'select 1', values: 'x' }]) {
      await expect(
        g.write((pg, ctx) => pgTransaction(pg, ctx, [`CREATE TABLE ${t} (x int)`, bad as never])),
      ).rejects.toThrow(/statements\[1\]/);
    }
    expect(await exists(t)).toBe(false);
  });
});

describe('pgReadOnly', () => {
  it('runs one statement read-only: the server refuses writes and a second statement', async () => {
    const g = guard();
    const t = tableName('ro');
    await expect(
      g.read((pg, ctx) => pgReadOnly(pg, ctx, `CREATE TABLE ${t} (x int)`)),
    ).rejects.toMatchObject({ code: '25006' });
    await expect(
      g.read((pg, ctx) => pgReadOnly(pg, ctx, `COMMIT; CREATE TABLE ${t} (x int)`)),
    ).rejects.toThrow(/multiple commands/);
    expect(await exists(t)).toBe(false);
    const { rows } = await g.read((pg, ctx) => pgReadOnly(pg, ctx, 'SELECT $1::int AS v', [7]));
    expect(rows).toEqual([{ v: 7 }]);
  });

  it('an empty query gives an empty result', async () => {
    const g = guard();
    for (const sql of ['', '   ', '-- c', ';']) {
      const result = await g.read((pg, ctx) => pgReadOnly(pg, ctx, sql));
      expect(result.rows).toEqual([]);
    }
  });
});

// Found in review, each failing before its fix.
describe('pgTransaction, the holes found in review', () => {
  it('an earlier call that defuses its fence and commits leaves the next call all or nothing', async () => {
    const g = guard(clientConfig(), 1); // one session for both calls
    // The fence is fresh per transaction (dropped at its commit), so defusing it reaches no one.
    await g
      .write((pg, ctx) =>
        pgTransaction(pg, ctx, [
          'DELETE FROM pg_temp.engine_guard_tx_fence',
          'SET CONSTRAINTS ALL IMMEDIATE',
          'ALTER TABLE pg_temp.engine_guard_tx_fence DROP CONSTRAINT engine_guard_tx_fence_k',
        ]),
      )
      .catch(() => undefined);
    const t = tableName('tx_fence');
    await expect(
      g.write((pg, ctx) => pgTransaction(pg, ctx, `CREATE TABLE ${t} (x int); COMMIT; SELECT 1/0`)),
    ).rejects.toThrow();
    expect(await exists(t)).toBe(false);
  });

  it('works on a session whose default is read-only transactions: its BEGIN asks for READ WRITE', async () => {
    const g = guard(clientConfig({ options: '-c default_transaction_read_only=on' }));
    const results = await g.write((pg, ctx) => pgTransaction(pg, ctx, ['SELECT 1 AS one']));
    expect(results[0]?.rows).toEqual([{ one: 1 }]);
  });

  it('COPY ... FROM STDIN fails within seconds instead of wedging the handle for ever', async () => {
    const g = guard(clientConfig(), 1);
    const t = tableName('tx_copy');
    await adminQuery(`CREATE TABLE ${t} (x int)`);
    expect(
      await within(
        g.write((pg, ctx) => pgTransaction(pg, ctx, [`COPY ${t} FROM STDIN`])),
        10_000,
      ),
    ).toMatch(/^rejected/);
    // The handle serves the next op.
    expect(
      await within(
        g.read((pg, ctx) => pgReadOnly(pg, ctx, 'SELECT 1')),
        10_000,
      ),
    ).toBe('resolved');
  }, 30_000);

  it('pgReadOnly: COPY into a session TEMP table FROM STDIN (allowed read-only) fails instead of hanging', async () => {
    // The temporary table must outlive its op: without the reset, which would drop it.
    const g = new EngineGuard(
      pgGuardOptions({ config: clientConfig() }, { pool: 1, reset: undefined }),
    );
    onTestFinished(() => g.close());
    // A temporary table of the session, which a read-only transaction may write to.
    await g.write((pg, ctx) => pgTransaction(pg, ctx, ['CREATE TEMP TABLE copy_scratch (x int)']));
    const outcome = await within(
      g.read((pg, ctx) => pgReadOnly(pg, ctx, 'COPY pg_temp.copy_scratch FROM STDIN')),
      10_000,
    );
    expect(outcome).toMatch(/^rejected/);
    expect(outcome).not.toMatch(/does not exist/);
  }, 30_000);
});

/** Rows of `table`, read as the superuser on a connection of its own. */
async function countRows(table: string): Promise<number> {
  const { rows } = await adminQuery<{ n: number }>(`SELECT count(*)::int AS n FROM ${table}`);
  return rows[0]?.n ?? -1;
}

/**
 * A guard with one session slot; without a `state` check, its sessions hold their handle from
 * the first op (`pin: 'always'`).
 */
function sessionGuard(): EngineGuard<PgHandle> {
  const g = new EngineGuard(
    pgGuardOptions({ config: clientConfig() }, { maxSessions: 1, state: undefined }),
  );
  onTestFinished(() => g.close());
  return g;
}

// Issue 16: each failed before its fix.
describe('pgTransaction never reports "nothing applied" when something was', () => {
  it("refuses under session_replication_role = replica from the connection's options: the issue's case commits nothing", async () => {
    const g = guard(clientConfig({ options: '-c session_replication_role=replica' }));
    const t = tableName('tx_replica');
    await adminQuery(`CREATE TABLE ${t} (x int)`);
    const error = await g
      .write((pg, ctx) =>
        pgTransaction(pg, ctx, [
          `INSERT INTO ${t} VALUES (1)`,
          'COMMIT',
          `INSERT INTO ${t} VALUES (2)`,
        ]),
      )
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PgTransactionRefusedError);
    expect(error).toMatchObject({
      code: 'ERR_PG_TRANSACTION_REFUSED',
      reason: 'replica',
      statement: undefined,
    });
    expect((error as Error).message).toContain('session_replication_role = replica');
    expect(await countRows(t)).toBe(0);
  });

  it('refuses when a statement switches to replica, before the COMMIT after it can run', async () => {
    const g = guard();
    const t = tableName('tx_replica_stmt');
    await adminQuery(`CREATE TABLE ${t} (x int)`);
    const error = await g
      .write((pg, ctx) =>
        pgTransaction(pg, ctx, [
          `INSERT INTO ${t} VALUES (1)`,
          'SET session_replication_role = replica',
          'COMMIT',
          `INSERT INTO ${t} VALUES (2)`,
        ]),
      )
      .catch((e: unknown) => e);
    expect(error).toMatchObject({
      name: 'PgTransactionRefusedError',
      reason: 'replica',
      statement: 1,
    });
    expect(await countRows(t)).toBe(0);
  });

  it('refuses in a session that set replica in an earlier call', async () => {
    const g = sessionGuard();
    const t = tableName('tx_replica_session');
    await adminQuery(`CREATE TABLE ${t} (x int)`);
    await using session = g.session();
    await session.write((pg, ctx) => pgQuery(pg, ctx, 'SET session_replication_role = replica'));
    await expect(
      session.write((pg, ctx) =>
        pgTransaction(pg, ctx, [
          `INSERT INTO ${t} VALUES (1)`,
          'COMMIT',
          `INSERT INTO ${t} VALUES (2)`,
        ]),
      ),
    ).rejects.toMatchObject({ name: 'PgTransactionRefusedError', reason: 'replica' });
    expect(await countRows(t)).toBe(0);
  });

  it('a COMMIT past a removed fence is reported as committed, as the server says', async () => {
    const g = guard();
    const t = tableName('tx_defused');
    await adminQuery(`CREATE TABLE ${t} (x int)`);
    const error = await g
      .write((pg, ctx) =>
        pgTransaction(pg, ctx, [
          `INSERT INTO ${t} VALUES (1)`,
          'DELETE FROM pg_temp.engine_guard_tx_fence',
          'COMMIT',
          `INSERT INTO ${t} VALUES (2)`,
        ]),
      )
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PgTransactionEndedError);
    expect(error).toMatchObject({ statement: 2, committed: true });
    expect((error as Error).message).not.toContain('nothing was applied');
    expect((error as Error).message).toContain('committed what ran before it');
    expect(await countRows(t)).toBe(1);
  });

  it('a COMMIT the fence stops is reported as nothing applied (committed: false)', async () => {
    const g = guard();
    const t = tableName('tx_fenced');
    await adminQuery(`CREATE TABLE ${t} (x int)`);
    const error = await g
      .write((pg, ctx) => pgTransaction(pg, ctx, [`INSERT INTO ${t} VALUES (1)`, 'COMMIT']))
      .catch((e: unknown) => e);
    expect(error).toMatchObject({
      name: 'PgTransactionEndedError',
      statement: 1,
      committed: false,
    });
    expect((error as Error).message).toContain('nothing was applied');
    expect(await countRows(t)).toBe(0);
  });

  it('SET CONSTRAINTS ALL IMMEDIATE is refused as what it is, not as the end of the transaction; named constraints work', async () => {
    const g = guard();
    const t = tableName('tx_constraints');
    await adminQuery(
      `CREATE TABLE ${t} (x int CONSTRAINT ${t}_u UNIQUE DEFERRABLE INITIALLY DEFERRED)`,
    );
    const error = await g
      .write((pg, ctx) =>
        pgTransaction(pg, ctx, [`INSERT INTO ${t} VALUES (1)`, 'SET CONSTRAINTS ALL IMMEDIATE']),
      )
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PgTransactionRefusedError);
    expect(error).toMatchObject({ reason: 'constraints', statement: 1 });
    expect((error as Error).message).toContain('SET CONSTRAINTS name IMMEDIATE');
    expect(await countRows(t)).toBe(0);
    // Naming the constraint checks it at once, and leaves the fence deferred.
    await expect(
      g.write((pg, ctx) =>
        pgTransaction(pg, ctx, [
          `INSERT INTO ${t} VALUES (1), (1)`,
          `SET CONSTRAINTS ${t}_u IMMEDIATE`,
        ]),
      ),
    ).rejects.toMatchObject({ code: '23505', constraint: `${t}_u` });
    await g.write((pg, ctx) =>
      pgTransaction(pg, ctx, [`INSERT INTO ${t} VALUES (1)`, `SET CONSTRAINTS ${t}_u IMMEDIATE`]),
    );
    expect(await countRows(t)).toBe(1);
  });

  it('a script with a SQL-standard function body (BEGIN ATOMIC ... END) runs as written', async () => {
    const g = guard();
    const fn = `tx_atomic_${process.pid}_${Date.now()}`;
    onTestFinished(async () => {
      await adminQuery(`DROP FUNCTION IF EXISTS ${fn}()`);
    });
    const results = await g.write((pg, ctx) =>
      pgTransaction(
        pg,
        ctx,
        `CREATE FUNCTION ${fn}() RETURNS int LANGUAGE sql
           BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 41 END + 1; END;
         SELECT ${fn}() AS v`,
      ),
    );
    expect(results.map((r) => r.command)).toEqual(['CREATE', 'SELECT']);
    expect(results[1]?.rows).toEqual([{ v: 42 }]);
  });
});

describe('the helpers refuse to run inside a transaction a session left open', () => {
  it("pgReadOnly: a TypeError, and the session's uncommitted work is still there to commit", async () => {
    const g = sessionGuard();
    const t = tableName('ro_open');
    await adminQuery(`CREATE TABLE ${t} (x int)`);
    await using session = g.session();
    await session.write((pg, ctx) => pgQuery(pg, ctx, `BEGIN; INSERT INTO ${t} VALUES (1)`));
    const error = await session
      .read((pg, ctx) => pgReadOnly(pg, ctx, 'SELECT 1'))
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TypeError);
    expect((error as Error).message).toMatch(/pgReadOnly must run outside a transaction/);
    // The session's transaction is still open and holds its row.
    expect(
      await session.read(
        async (pg, ctx) =>
          (await pgQuery<{ n: number }>(pg, ctx, `SELECT count(*)::int AS n FROM ${t}`)).rows[0]?.n,
      ),
    ).toBe(1);
    await session.write((pg, ctx) => pgQuery(pg, ctx, 'COMMIT'));
    expect(await countRows(t)).toBe(1);
  });

  it('pgReadOnly: also inside a failed transaction, which the session may still roll back to a savepoint', async () => {
    const g = sessionGuard();
    const t = tableName('ro_failed');
    await adminQuery(`CREATE TABLE ${t} (x int)`);
    await using session = g.session();
    await session
      .write((pg, ctx) =>
        pgQuery(pg, ctx, `BEGIN; INSERT INTO ${t} VALUES (1); SAVEPOINT s; SELECT 1/0`),
      )
      .catch(() => undefined);
    await expect(session.read((pg, ctx) => pgReadOnly(pg, ctx, 'SELECT 1'))).rejects.toThrow(
      /inside one that failed/,
    );
    await session.write((pg, ctx) => pgQuery(pg, ctx, 'ROLLBACK TO SAVEPOINT s; COMMIT'));
    expect(await countRows(t)).toBe(1);
  });

  it("pgTransaction: a TypeError; its COMMIT does not commit the session's earlier work", async () => {
    const g = sessionGuard();
    const t = tableName('tx_open');
    await adminQuery(`CREATE TABLE ${t} (x int)`);
    await using session = g.session();
    await session.write((pg, ctx) => pgQuery(pg, ctx, `BEGIN; INSERT INTO ${t} VALUES (1)`));
    await expect(
      session.write((pg, ctx) => pgTransaction(pg, ctx, [`INSERT INTO ${t} VALUES (2)`])),
    ).rejects.toThrow(/pgTransaction must run outside a transaction/);
    await session.write((pg, ctx) => pgQuery(pg, ctx, 'ROLLBACK'));
    expect(await countRows(t)).toBe(0);
  });
});
