/**
 * engine-guard/pg's read-only helper: `BEGIN READ ONLY`, the statement and the ROLLBACK (with what
 * cleans up after it) in one round trip, as one batch (see pg-group.ts).
 */
import { beatWhileRunning, clients, type RawClient, refuseNul } from './pg-client.js';
import { type GroupOutcome, type Hidden, sendGroup } from './pg-group.js';
import {
  carriedResetAnswered,
  cleanSince,
  drained,
  PgResetError,
  readOnlyEnd,
  readOnlyEnded,
  resetCarried,
  resetNow,
  rollbackReadOnly,
  takeOwedReset,
} from './pg-reset.js';
import { type AbortSource, abortSourceOf, noop, raceSignal, throwIfAborted } from './pg-signal.js';
import { refuseOpenTransaction } from './pg-transaction.js';
import { type Turn, takeTurn, waitForTurn } from './pg-turns.js';
import type { PgHandle, PgQueryResult, PgRow } from './pg-types.js';

const BEGIN_READ_ONLY: Hidden = { text: 'BEGIN READ ONLY' };

/**
 * Runs ONE statement inside `BEGIN READ ONLY ... ROLLBACK`, so the server itself refuses writes
 * (SQLSTATE 25006). It is sent with the extended protocol, which takes exactly one statement: the
 * server rejects `COMMIT; DELETE ...` ("cannot insert multiple commands into a prepared
 * statement"), so the statement cannot leave the read-only transaction either.
 *
 * One round trip: the BEGIN, the statement and the ROLLBACK go as one batch closed by a single
 * Sync, so the server runs nothing after a statement that failed. A BEGIN that fails (a cancel
 * that lands on it) stops the statement from running outside the read-only transaction. When the
 * statement fails, the ROLLBACK follows alone (a second round trip, on that path only). A reset
 * `pgReset` put off on the handle travels at the head of the same batch.
 *
 * What it does not undo: session state that outlives a transaction. `SELECT
 * pg_advisory_lock(1)` keeps the lock held, `PREPARE` keeps its statement, within a session.
 * Outside a session (no `ctx.sessionId`), on a handle of a guard whose `reset` is `pgReset` and
 * that was clean when it began, the batch also drops them (`DEALLOCATE ALL`,
 * `pg_advisory_unlock_all()`; `pg`'s own named statements are then parsed again on their next
 * use) and draws a new random seed (a `setseed()` is not rolled back), which leaves the handle
 * clean: `pgReset` then has nothing to do. Otherwise the guard's `reset` clears them before the next
 * caller. In a session, on a handle of a guard whose `state` check is `pgState` and that was
 * clean when it began, the batch asks instead whether any such lock or statement is there (and
 * draws a new seed): when none is, the handle is clean and `pgState` answers at once, with no
 * round trip of its own.
 *
 * Inside a transaction the caller left open (a session that ran `BEGIN` in an earlier call), it
 * refuses to run (a `TypeError`, nothing sent): its own ROLLBACK would roll back the session's
 * uncommitted work. Run the statement with `pgQuery` there, or end that transaction first.
 *
 * When the op aborts, it rejects at once with the abort's reason; the batch is left to the
 * guard's `cancel`, and the handle is not given back before its ROLLBACK ran.
 */
export async function pgReadOnly<R extends object = PgRow>(
  handle: PgHandle,
  ctx: { signal: AbortSignal; heartbeat(): void; readonly sessionId?: number | undefined },
  text: string,
  values?: unknown[],
): Promise<PgQueryResult<R>> {
  const signal = abortSourceOf(ctx);
  throwIfAborted(signal);
  refuseNul(text);
  const waiting = refuseOpenTransaction(handle, signal, 'pgReadOnly');
  if (waiting !== undefined) await waiting;
  const client = handle.client as RawClient;
  const stopBeats = beatWhileRunning(client, ctx);
  const turn = takeTurn(client);
  try {
    await waitForTurn(turn, signal);
    // Read once its turn came: the queries before it on the handle may have changed it.
    const inSession = ctx.sessionId !== undefined;
    const cleanAt = cleanSince(client, inSession);
    const run = runBatch(handle, { text, values: values ?? [] }, cleanAt, inSession, turn, signal);
    const result = await raceSignal(run, signal);
    ctx.heartbeat();
    if (turn !== undefined && !turn.now) await raceSignal(turn.previous, signal);
    return result as PgQueryResult<R>;
  } finally {
    turn?.leave();
    turn?.settled();
    stopBeats();
  }
}

/**
 * Sends the batch (with the reset owed on the handle at its head), then whatever must follow it
 * alone (the ROLLBACK after a failed statement, `DEALLOCATE ALL`), and only then ends `turn`: the
 * cancel hook's drain, and so the handle's release, wait for all of it. Resolves with the
 * statement's result; rejects with its error.
 */
async function runBatch(
  handle: PgHandle,
  main: { text: string; values: unknown[] },
  cleanAt: number | undefined,
  inSession: boolean,
  turn: Turn | undefined,
  signal: AbortSource,
): Promise<unknown> {
  const client = handle.client as RawClient;
  const state = clients.get(client);
  if (state !== undefined) {
    state.inFlight++;
    state.sentAt = performance.now();
  }
  turn?.sent();
  try {
    // Nothing is sent once the op aborted (its caller was told so): checked before each send.
    throwIfAborted(signal);
    let reset = takeOwedReset(client);
    for (;;) {
      const carried = reset;
      const outcome = await sendGroup(
        client,
        carried === undefined ? [BEGIN_READ_ONLY] : [...carried, BEGIN_READ_ONLY],
        main,
        readOnlyEnd(cleanAt, inSession),
        carried === undefined
          ? undefined
          : (answer) => carriedResetAnswered(client, answer, carried.length),
      );
      if (carried !== undefined && !resetCarried(client, outcome, carried.length)) {
        // The reset failed at the head of the batch: nothing after it ran. Once more alone.
        await endTransaction(client, undefined);
        if (clients.get(client)?.gone !== undefined)
          throw new PgResetError({ cause: outcome.error });
        throwIfAborted(signal);
        try {
          await resetNow(client, undefined);
        } catch (error) {
          throw new PgResetError({ cause: error });
        }
        throwIfAborted(signal);
        reset = undefined;
        continue;
      }
      return await settleBatch(handle, outcome, cleanAt, inSession);
    }
  } finally {
    if (state !== undefined) state.inFlight--;
    turn?.finish();
  }
}

async function settleBatch(
  handle: PgHandle,
  outcome: GroupOutcome,
  cleanAt: number | undefined,
  inSession: boolean,
): Promise<unknown> {
  const client = handle.client as RawClient;
  if (outcome.failed === undefined) {
    if (cleanAt !== undefined) readOnlyEnded(client, cleanAt, inSession, outcome.rows);
    return outcome.result;
  }
  if (outcome.failed === 'main') {
    // The transaction failed with the statement; the ROLLBACK (and its clean-up) goes alone.
    await drained(client, undefined);
    await rollbackReadOnly(handle, cleanAt, inSession, 1).catch(noop);
    throw outcome.error;
  }
  // The BEGIN failed (nothing else ran), or the ROLLBACK or the clean-up did (the result stands).
  await endTransaction(client, undefined);
  if (outcome.failed === 'after' && outcome.result !== undefined) return outcome.result;
  throw outcome.error;
}

/** Rolls back a transaction left open or failed on `client`, once its batch's answer is in. */
async function endTransaction(client: RawClient, signal: AbortSource | undefined): Promise<void> {
  await drained(client, signal);
  const status = client.getTransactionStatus?.();
  if (status === 'T' || status === 'E') {
    await new Promise<void>((resolve) => {
      (client.query as unknown as (t: string, v: undefined, cb: () => void) => void).call(
        client,
        'ROLLBACK',
        undefined,
        () => resolve(),
      );
    });
  }
}
