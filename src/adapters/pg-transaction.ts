/** engine-guard/pg's read-only helper and all-or-nothing helper. */
import { pgQuery } from './pg-client.js';
import { isFatalPgError } from './pg-fatal.js';
import { cleanSince, rollbackReadOnly } from './pg-reset.js';
import { splitStatements } from './pg-split.js';
import type { PgHandle, PgQueryResult, PgRow } from './pg-types.js';

/**
 * Thrown by {@link pgTransaction} when a statement ended or escaped the transaction (`COMMIT`,
 * `ROLLBACK`, `END`, `ABORT`, `PREPARE TRANSACTION`...). Nothing of the transaction was applied.
 */
export class PgTransactionEndedError extends Error {
  override readonly name = 'PgTransactionEndedError';
  /** Stable code: `ERR_PG_TRANSACTION_ENDED`. */
  readonly code = 'ERR_PG_TRANSACTION_ENDED';
  /** Index (0-based) of the statement that ended the transaction. */
  readonly statement: number;
  constructor(statement: number, options?: ErrorOptions) {
    super(
      `Statement ${statement + 1} ended the transaction; pgTransaction runs statements inside ` +
        'its own transaction, so transaction control is refused and nothing was applied',
      options,
    );
    this.statement = statement;
  }
}

/**
 * Ends the transaction whatever happened; a dead connection is the guard's business. With
 * `cleanAt` (the handle was known clean at BEGIN), the same round trip drops the session state
 * the transaction may have left, so `pgReset` can skip its own.
 */
async function rollback(handle: PgHandle, cleanAt?: number): Promise<void> {
  try {
    await rollbackReadOnly(handle, cleanAt);
  } catch {
    // The connection failed: the op's own error says so and `isFatal` retires the handle.
  }
}

/**
 * Runs ONE statement inside `BEGIN READ ONLY ... ROLLBACK`, so the server itself refuses writes
 * (SQLSTATE 25006). It is sent with the extended protocol, which takes exactly one statement: the
 * server rejects `COMMIT; DELETE ...` ("cannot insert multiple commands into a prepared
 * statement"), so the statement cannot leave the read-only transaction either.
 *
 * What it does not undo: session state that outlives a transaction. `SELECT
 * pg_advisory_lock(1)` keeps the lock held, `PREPARE` keeps its statement, within a session.
 * Outside a session (no `ctx.sessionId`), on a handle of a guard whose `reset` is `pgReset` and
 * that was clean when it began, the ROLLBACK's round trip also drops them (`DEALLOCATE ALL`,
 * `pg_advisory_unlock_all()`), which leaves the handle clean: `pgReset` then skips its round
 * trip. Otherwise the guard's `reset` clears them before the next caller.
 */
export async function pgReadOnly<R extends object = PgRow>(
  handle: PgHandle,
  ctx: { signal: AbortSignal; heartbeat(): void; readonly sessionId?: number | undefined },
  text: string,
  values?: unknown[],
): Promise<PgQueryResult<R>> {
  ctx.signal.throwIfAborted();
  // A session keeps its locks and statements: only a shared handle is cleaned on the way.
  const inSession = ctx.sessionId !== undefined;
  const cleanAt = inSession ? undefined : cleanSince(handle.client);
  // BEGIN inside the try: whatever happens next, the ROLLBACK is queued behind it, so the
  // handle never goes back to the pool inside a transaction.
  try {
    await pgQuery(handle, ctx, 'BEGIN READ ONLY');
    return await pgQuery<R>(handle, ctx, { text, values: values ?? [], queryMode: 'extended' });
  } finally {
    await rollback(handle, cleanAt);
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
/** The current transaction's id (the fence's insert assigned one). */
const XID_SQL = 'SELECT txid_current_if_assigned()::text AS xid';
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
 * Not caught: a statement that removes the fence itself (`DISCARD TEMP`, dropping or emptying
 * `pg_temp.engine_guard_tx_fence`) followed by a `COMMIT`; the helper still reports the
 * {@link PgTransactionEndedError}, but what came before that commit stays committed.
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
  /** The transaction's id: a statement that ends it and starts another (`AND CHAIN`) changes it. */
  const xid = async (): Promise<string | null> =>
    ((await pgQuery(handle, ctx, XID_SQL)).rows[0]?.xid as string | null | undefined) ?? null;
  const results: PgQueryResult[] = [];
  ctx.signal.throwIfAborted();
  let committed = false;
  try {
    // READ WRITE: a session whose default is read-only (default_transaction_read_only) would
    // refuse the fence, and the caller's writes.
    await pgQuery(handle, ctx, 'BEGIN READ WRITE');
    await pgQuery(handle, ctx, FENCE_SETUP_SQL);
    await pgQuery(handle, ctx, FENCE_ARM_SQL);
    const ours = await xid();
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
        if (await endedBy(handle, ctx, error)) {
          throw new PgTransactionEndedError(index, { cause: error });
        }
        throw error;
      }
      if (status() !== 'T' || (await xid()) !== ours) throw new PgTransactionEndedError(index);
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
 * After a statement of {@link pgTransaction} failed: did it end the transaction? Either its
 * commit hit the fence (the server names the constraint), or the server is now outside any
 * transaction (asked with a round trip: `pg` rejects a failed query before the server's
 * ReadyForQuery, so the status it holds at that moment is stale).
 */
async function endedBy(
  handle: PgHandle,
  ctx: { signal: AbortSignal; heartbeat(): void },
  error: unknown,
): Promise<boolean> {
  if ((error as { constraint?: unknown } | null)?.constraint === FENCE_CONSTRAINT) return true;
  if (ctx.signal.aborted || isFatalPgError(error)) return false;
  try {
    // Fails (25P02) inside an aborted transaction: that is the "still inside" answer.
    await pgQuery(handle, ctx, 'SELECT 1');
  } catch {
    return false;
  }
  return handle.client.getTransactionStatus?.() === 'I';
}
