/** engine-guard/pg's all-or-nothing helper (and the check `pgReadOnly` shares with it). */
import type { RawClient } from './pg-client.js';
import { isFatalPgError } from './pg-fatal.js';
import { pgQuery } from './pg-query.js';
import { drained, rollbackReadOnly } from './pg-reset.js';
import type { AbortSource } from './pg-signal.js';
import { splitStatements } from './pg-split.js';
import type { PgHandle, PgQueryResult } from './pg-types.js';

/**
 * Thrown by {@link pgTransaction} when a statement ended or escaped the transaction (`COMMIT`,
 * `ROLLBACK`, `END`, `ABORT`, `PREPARE TRANSACTION`...). Nothing after that statement ran.
 * `committed` says, as the server reports it (`txid_status`), whether what ran before it was
 * committed: `false` when the helper's fence held (the commit failed and rolled everything back,
 * or the statement rolled back), `true` when the fence had been removed and the commit went
 * through, `undefined` when the server could not be asked.
 */
export class PgTransactionEndedError extends Error {
  override readonly name = 'PgTransactionEndedError';
  /** Stable code: `ERR_PG_TRANSACTION_ENDED`. */
  readonly code = 'ERR_PG_TRANSACTION_ENDED';
  /** Index (0-based) of the statement that ended the transaction. */
  readonly statement: number;
  /** Whether the statements before it were committed (see the class). */
  readonly committed: boolean | undefined;
  constructor(statement: number, committed: boolean | undefined, options?: ErrorOptions) {
    const outcome =
      committed === false
        ? 'nothing was applied'
        : committed
          ? "the server committed what ran before it: the helper's fence had been removed or disabled. Nothing after it ran"
          : 'whether what ran before it was committed is unknown (the server could not be asked). Nothing after it ran';
    super(
      `Statement ${statement + 1} ended the transaction; pgTransaction runs statements inside ` +
        `its own transaction, so transaction control is refused and ${outcome}`,
      options,
    );
    this.statement = statement;
    this.committed = committed;
  }
}

/** Why {@link PgTransactionRefusedError} refused a transaction. */
export type PgTransactionRefusal = 'replica' | 'constraints';

/**
 * Thrown by {@link pgTransaction} when it cannot keep its all-or-nothing promise, before anything
 * was committed (everything was rolled back):
 * - `'replica'`: `session_replication_role` is `replica` (set by the connection's `options`, the
 *   session, or a statement of the transaction). The server then fires no ordinary trigger, the
 *   one behind the helper's fence included, so a `COMMIT` among the statements would go through.
 * - `'constraints'`: a statement made the server check the fence before the helper's own `COMMIT`
 *   (`SET CONSTRAINTS ALL IMMEDIATE` checks every deferred constraint at once). Name your
 *   constraints instead: `SET CONSTRAINTS my_fk IMMEDIATE`.
 */
export class PgTransactionRefusedError extends Error {
  override readonly name = 'PgTransactionRefusedError';
  /** Stable code: `ERR_PG_TRANSACTION_REFUSED`. */
  readonly code = 'ERR_PG_TRANSACTION_REFUSED';
  readonly reason: PgTransactionRefusal;
  /** Index (0-based) of the statement that caused it; `undefined` when it was so from the start. */
  readonly statement: number | undefined;
  constructor(reason: PgTransactionRefusal, statement: number | undefined, options?: ErrorOptions) {
    const after = statement === undefined ? '' : `After statement ${statement + 1}, the`;
    super(
      reason === 'replica'
        ? `${after || 'The'} session runs with session_replication_role = replica, where the server fires no ordinary trigger: pgTransaction's fence cannot stop a COMMIT among the statements there, so it refuses to run them. Nothing was applied`
        : `Statement ${(statement ?? 0) + 1} made the server check pgTransaction's fence before the helper's own COMMIT (SET CONSTRAINTS ALL IMMEDIATE checks every deferred constraint, the fence's included): name your constraints instead (SET CONSTRAINTS name IMMEDIATE). Nothing was applied`,
      options,
    );
    this.reason = reason;
    this.statement = statement;
  }
}

/**
 * Refuses to begin a transaction of a helper inside one the caller left open (a session that ran
 * `BEGIN` in an earlier call): the helper's `ROLLBACK` would roll back the caller's uncommitted
 * work, its `COMMIT` commit it. Waits first for queries still on their way on the client, so the
 * transaction status it reads is the server's latest.
 * @throws TypeError when the connection is inside a transaction (open or failed).
 */
export function refuseOpenTransaction(
  handle: PgHandle,
  signal: AbortSource,
  helper: string,
): Promise<void> | undefined {
  const client = handle.client as RawClient;
  if (client.readyForQuery === false) {
    return drained(client, signal).then(() => checkOutsideTransaction(client, helper));
  }
  checkOutsideTransaction(client, helper);
  return undefined;
}

function checkOutsideTransaction(client: RawClient, helper: string): void {
  const status = client.getTransactionStatus?.();
  if (status === 'T' || status === 'E') {
    throw new TypeError(
      `${helper} must run outside a transaction, but the connection is inside one${status === 'E' ? ' that failed' : ''} ` +
        `(begun by an earlier call of the session): ${helper === 'pgReadOnly' ? 'its ROLLBACK' : 'its COMMIT or ROLLBACK'} ` +
        'would end that transaction too. COMMIT or ROLLBACK it first, or run the statement with pgQuery inside it. Nothing was sent',
    );
  }
}

/**
 * Ends the transaction whatever happened; a dead connection is the guard's business. With
 * `cleanAt` (the handle was known clean at BEGIN), the same round trip drops the session state
 * the transaction may have left, so `pgReset` can skip its own.
 */
async function rollback(handle: PgHandle, cleanAt?: number, inSession = false): Promise<void> {
  try {
    await rollbackReadOnly(handle, cleanAt, inSession);
  } catch {
    // The connection failed: the op's own error says so and `isFatal` retires the handle.
  }
}

/** One statement of {@link pgTransaction}: SQL text, or text with its parameters. */
export type PgStatement = string | { text: string; values?: unknown[] };

/**
 * Fence of {@link pgTransaction}: a temporary table whose deferred unique constraint is violated
 * by the two rows the helper inserts at `BEGIN` and deletes just before its own `COMMIT`. A
 * statement that commits (`COMMIT`, `END`, `PREPARE TRANSACTION`, `COMMIT AND CHAIN`) makes the
 * server check the constraint, fail the commit and roll everything back.
 */
const FENCE_CONSTRAINT = 'engine_guard_tx_fence_k';
/**
 * A fresh fence per transaction, dropped at its commit: one left on the session could be altered
 * (its constraint dropped) by an earlier caller and then guard nothing for the next. A table of
 * that name already there makes the CREATE fail: the helper refuses rather than trust it.
 */
const FENCE_SETUP_SQL =
  'CREATE TEMPORARY TABLE engine_guard_tx_fence' +
  ` (k int CONSTRAINT ${FENCE_CONSTRAINT} UNIQUE DEFERRABLE INITIALLY DEFERRED) ON COMMIT DROP`;
/**
 * The current transaction's id (the fence's insert assigned one), and whether the server fires
 * the fence's trigger (it fires none under `session_replication_role = replica`).
 */
const XID_SQL =
  "SELECT txid_current_if_assigned()::text AS xid, current_setting('session_replication_role') = 'replica' AS replica";
/** Whether a transaction the helper began was committed, as the server knows it. */
const XID_STATUS_SQL = 'SELECT txid_status($1::bigint) AS status';
const FENCE_ARM_SQL = 'INSERT INTO pg_temp.engine_guard_tx_fence VALUES (1), (1)';
const FENCE_DISARM_SQL = 'DELETE FROM pg_temp.engine_guard_tx_fence';

/**
 * Runs `statements` all-or-nothing in one transaction, one statement per call with the extended
 * protocol (the server refuses a call holding several statements), and returns their results.
 * A script (one string) is first cut at its top-level semicolons by a small lexer (quotes,
 * dollar quotes and comments skipped); a piece it cuts wrongly is refused by the server, never
 * run, since each piece goes alone through the extended protocol.
 *
 * A statement that ends or escapes the transaction is refused, decided by what the server
 * reports, never by reading the SQL: after each statement the client's transaction status
 * (from the server's ReadyForQuery message) must still be "in a transaction"; if it is not
 * (`ROLLBACK`, `ABORT`), nothing after it runs and {@link PgTransactionEndedError} is thrown. A
 * statement that commits (`COMMIT`, `END`, `PREPARE TRANSACTION`) hits the helper's fence, a
 * deferred constraint that the server checks on any commit but the helper's own, so that
 * commit fails and rolls everything back (same error). A statement that ends the transaction
 * and opens another (`ROLLBACK AND CHAIN`) is seen by the transaction id changing. Any other
 * error rolls back and is rethrown as is. Each statement costs one extra round trip (the id
 * check).
 *
 * Where the fence cannot hold, it refuses with {@link PgTransactionRefusedError} before anything
 * is committed: under `session_replication_role = replica` (the server fires no ordinary trigger
 * there; checked at the start and after each statement), and when a statement checks the fence
 * early (`SET CONSTRAINTS ALL IMMEDIATE`: name your constraints instead).
 *
 * Not caught: a statement that removes the fence itself (`DISCARD TEMP`, dropping or emptying
 * `pg_temp.engine_guard_tx_fence`, disabling its trigger) followed by a `COMMIT`; the helper still
 * reports the {@link PgTransactionEndedError}, with `committed: true` (asked of the server, never
 * assumed): what came before that commit stays committed.
 *
 * Inside a transaction the caller left open (a session that ran `BEGIN` in an earlier call), it
 * refuses to run (a `TypeError`, nothing sent): its COMMIT would commit the session's earlier
 * work with it, its ROLLBACK roll it back.
 *
 * Needs PostgreSQL (temporary tables with deferrable constraints) and `pg` >= 8.21 (transaction
 * status). Session state (advisory locks, `SET` without `LOCAL`, prepared statements) is not
 * transactional and is not undone: that is the guard's `reset` (sessions).
 */
export async function pgTransaction(
  handle: PgHandle,
  ctx: { signal: AbortSignal; heartbeat(): void },
  statements: string | readonly PgStatement[],
): Promise<PgQueryResult[]> {
  if (typeof statements === 'string') statements = splitStatements(statements);
  if (!Array.isArray(statements)) {
    throw new TypeError(
      'The "statements" argument must be a SQL script or an array of SQL strings or { text, values }',
    );
  }
  // Checked before anything is sent: a bad statement must not leave half a transaction.
  for (const [index, statement] of statements.entries()) {
    const ok =
      typeof statement === 'string' ||
      (statement !== null &&
        typeof statement === 'object' &&
        typeof statement.text === 'string' &&
        (statement.values === undefined || Array.isArray(statement.values)));
    if (!ok) {
      throw new TypeError(
        `The "statements[${index}]" argument must be a SQL string or { text: string, values?: unknown[] }`,
      );
    }
  }
  const client = handle.client;
  if (typeof client.getTransactionStatus !== 'function') {
    throw new TypeError('pgTransaction needs a pg client with getTransactionStatus() (pg >= 8.21)');
  }
  const status = (): string | null | undefined => client.getTransactionStatus?.();
  /** The transaction's id (a statement that ends it and starts another changes it), and replica mode. */
  const check = async (): Promise<{ xid: string | null; replica: boolean }> => {
    const row = (await pgQuery<{ xid: string | null; replica: boolean }>(handle, ctx, XID_SQL))
      .rows[0];
    return { xid: row?.xid ?? null, replica: row?.replica === true };
  };
  const results: PgQueryResult[] = [];
  ctx.signal.throwIfAborted();
  const waiting = refuseOpenTransaction(handle, ctx.signal, 'pgTransaction');
  if (waiting !== undefined) await waiting;
  let committed = false;
  try {
    // READ WRITE: a session whose default is read-only (default_transaction_read_only) would
    // refuse the fence, and the caller's writes.
    await pgQuery(handle, ctx, 'BEGIN READ WRITE');
    await pgQuery(handle, ctx, FENCE_SETUP_SQL);
    await pgQuery(handle, ctx, FENCE_ARM_SQL);
    const start = await check();
    if (start.replica) throw new PgTransactionRefusedError('replica', undefined);
    const ours = start.xid;
    const ended = async (index: number, cause?: unknown): Promise<PgTransactionEndedError> =>
      new PgTransactionEndedError(
        index,
        await committedAs(handle, ctx, ours),
        cause === undefined ? undefined : { cause },
      );
    for (const [index, statement] of statements.entries()) {
      const config =
        typeof statement === 'string'
          ? { text: statement, values: [], queryMode: 'extended' as const }
          : {
              text: statement.text,
              values: statement.values ?? [],
              queryMode: 'extended' as const,
            };
      try {
        results.push(await pgQuery(handle, ctx, config));
      } catch (error) {
        const outcome = await endedBy(handle, ctx, error);
        if (outcome === 'ended') throw await ended(index, error);
        if (outcome === 'fence') {
          throw new PgTransactionRefusedError('constraints', index, { cause: error });
        }
        throw error;
      }
      if (status() !== 'T') throw await ended(index);
      const now = await check();
      if (now.xid !== ours) throw await ended(index);
      if (now.replica) throw new PgTransactionRefusedError('replica', index);
    }
    await pgQuery(handle, ctx, FENCE_DISARM_SQL);
    await pgQuery(handle, ctx, 'COMMIT');
    committed = true;
    return results;
  } finally {
    // Queued behind the statement: after a cancel it runs once the server gave up on it.
    if (!committed) await rollback(handle);
  }
}

/**
 * Whether the helper's transaction `xid` was committed, as the server knows it; `undefined` when
 * it cannot say (or could not be asked).
 */
async function committedAs(
  handle: PgHandle,
  ctx: { signal: AbortSignal; heartbeat(): void },
  xid: string | null,
): Promise<boolean | undefined> {
  if (xid === null || ctx.signal.aborted) return undefined;
  try {
    const { rows } = await pgQuery<{ status: string | null }>(handle, ctx, XID_STATUS_SQL, [xid]);
    const status = rows[0]?.status;
    return status === 'committed' ? true : status === 'aborted' ? false : undefined;
  } catch {
    return undefined;
  }
}

/**
 * After a statement of {@link pgTransaction} failed: did it end the transaction (`'ended'`: its
 * commit failed, on the fence or on any other deferred check, and the server rolled back), or did
 * it trip the fence without ending it (`'fence'`: `SET CONSTRAINTS ALL IMMEDIATE`), or neither?
 * Asked with a round trip: `pg` rejects a failed query before the server's ReadyForQuery, so the
 * status it holds at that moment is stale.
 */
async function endedBy(
  handle: PgHandle,
  ctx: { signal: AbortSignal; heartbeat(): void },
  error: unknown,
): Promise<'ended' | 'fence' | undefined> {
  const fence = (error as { constraint?: unknown } | null)?.constraint === FENCE_CONSTRAINT;
  if (ctx.signal.aborted || isFatalPgError(error)) return undefined;
  try {
    // Fails (25P02) inside an aborted transaction: that is the "still inside" answer.
    await pgQuery(handle, ctx, 'SELECT 1');
  } catch {
    return fence ? 'fence' : undefined;
  }
  return handle.client.getTransactionStatus?.() === 'I' ? 'ended' : undefined;
}
