/**
 * {@link pgQuery}: one query on a guarded handle, in call order with the handle's other
 * `pgQuery` calls, raced against the op's abort, carrying the reset `pgReset` put off when one is
 * owed (see pg-reset.ts).
 */
import { beatWhileRunning, clients, type RawClient, refuseNul } from './pg-client.js';
import { type GroupOutcome, type MainStatement, sendGroup } from './pg-group.js';
import {
  carriedResetAnswered,
  giveBackReset,
  PgResetError,
  resetCarried,
  resetNow,
  takeOwedReset,
} from './pg-reset.js';
import {
  type AbortSource,
  abortReason,
  abortSourceOf,
  noop,
  onAbort,
  raceSignal,
  throwIfAborted,
} from './pg-signal.js';
import { splitStatements } from './pg-split.js';
import { type Turn, takeTurn, waitForTurn } from './pg-turns.js';
import type { PgHandle, PgQueryResult, PgRow } from './pg-types.js';

/** `pg.Client#query` in its callback form. */
type CallbackQuery = (
  text: QueryText,
  values: unknown[] | undefined,
  callback: (error: Error | null, result?: unknown) => void,
) => void;

type QueryText = string | { text: string; values?: unknown[]; queryMode?: 'extended' };

/**
 * Hands one query to `pg` (its callback form: no promise of `pg`'s own) and settles with it, or
 * rejects at once when `signal` aborts (the query's outcome is then swallowed). While it is in
 * flight the busy-handle probe sees it; `turn` ends when it settles.
 */
function send(
  client: RawClient,
  text: QueryText,
  values: unknown[] | undefined,
  signal: AbortSource,
  turn: Turn | undefined,
): Promise<unknown> {
  return new Promise<unknown>((resolve, reject) => {
    const state = clients.get(client);
    let answered = false;
    let ended = false;
    let unsubscribe = noop;
    const settle = (error: Error | null, result?: unknown): void => {
      // pg may call back twice (see pg-group.ts): the first answer stands.
      if (ended) return;
      ended = true;
      if (state !== undefined) state.inFlight--;
      turn?.finish();
      if (answered) return;
      answered = true;
      unsubscribe();
      if (error !== null && error !== undefined) reject(error);
      else resolve(result);
    };
    if (state !== undefined) {
      state.inFlight++;
      state.sentAt = performance.now();
    }
    turn?.sent();
    try {
      dispatch(client, text, values, settle, () => signal.aborted);
    } catch (error) {
      settle(error as Error);
      return;
    }
    if (answered) return;
    unsubscribe = onAbort(signal, () => {
      if (answered) return;
      answered = true;
      reject(abortReason(signal));
    });
  });
}

/**
 * Sends the query, with the reset `pgReset` put off at the head of its batch when one is owed and
 * the query can take it (one statement: see {@link asMain}). Otherwise `client.query` sends the
 * owed reset alone first (pg-reset.ts).
 */
function dispatch(
  client: RawClient,
  text: QueryText,
  values: unknown[] | undefined,
  settle: (error: Error | null, result?: unknown) => void,
  aborted: () => boolean,
): void {
  const reset = takeOwedReset(client);
  const main = reset === undefined ? undefined : asMain(text, values);
  if (reset === undefined || main === undefined) {
    if (reset !== undefined) giveBackReset(client);
    (client.query as unknown as CallbackQuery).call(client, text, values, settle);
    return;
  }
  const answered = (outcome: GroupOutcome): void =>
    carriedResetAnswered(client, outcome, reset.length);
  sendGroup(client, reset, main.statement, [], answered).then(async (outcome) => {
    if (!resetCarried(client, outcome, reset.length)) {
      // The reset failed at the head of the batch and nothing after it ran: once more alone.
      const gone = clients.get(client)?.gone;
      if (gone !== undefined) {
        settle(new PgResetError({ cause: outcome.error }));
        return;
      }
      if (aborted()) {
        settle(outcome.error as Error);
        return;
      }
      try {
        await resetNow(client, undefined);
      } catch (error) {
        settle(new PgResetError({ cause: error }));
        return;
      }
      // The op may have aborted while the reset went alone (it waited on a lock): its caller was
      // told so, and the statement must not run after all.
      if (aborted()) {
        settle(outcome.error as Error);
        return;
      }
      (client.query as unknown as CallbackQuery).call(client, text, values, settle);
    } else if (main.converted && outcome.failed === 'main' && refusedInBatch(outcome.error)) {
      // The reset went through; the statement was refused before it ran: send it as it was,
      // unless the op aborted meanwhile.
      if (aborted()) {
        settle(outcome.error as Error);
        return;
      }
      (client.query as unknown as CallbackQuery).call(client, text, values, settle);
    } else {
      settle((outcome.error as Error | undefined) ?? null, outcome.result);
    }
  });
}

/**
 * SQLSTATEs with which the server refuses, before running it, a statement sent as the main one of
 * a batch that `pg` would have sent by the simple protocol: 25001, a command that must run alone
 * (`VACUUM`, `CREATE DATABASE`, `CREATE INDEX CONCURRENTLY`...), and 42601 for text that held
 * more statements than the splitter found. Only when raised by the statement itself: the same
 * codes raised from code it ran (a `DO` block, a function: the error then has a `where` context)
 * come after work that is not undone (`nextval`, a notice sent) and must not run twice.
 */
function refusedInBatch(error: unknown): boolean {
  const { code, where } = (error ?? {}) as { code?: unknown; where?: unknown };
  if (code !== '25001' && code !== '42601') return false;
  return where === undefined || where === null || where === '';
}

/** Texts `pg` sends by the simple protocol, and whether each holds exactly one statement. */
const single = new Map<string, boolean>();
const SINGLE_CACHE = 256;

function isSingleStatement(text: string): boolean {
  let known = single.get(text);
  if (known === undefined) {
    known = splitStatements(text).length === 1;
    if (single.size >= SINGLE_CACHE) single.clear();
    single.set(text, known);
  }
  return known;
}

/**
 * The query as the main statement of a batch, or undefined when it cannot be one: a query `pg`
 * sends by the simple protocol goes as one only when it holds exactly one statement (`converted`:
 * sent by the extended protocol instead, see {@link refusedInBatch}), and a config with options
 * other than `text`, `values` and `queryMode` (a name, a row mode, types) goes as it is.
 */
function asMain(
  text: QueryText,
  values: unknown[] | undefined,
): { statement: MainStatement; converted: boolean } | undefined {
  let sql: string;
  let params = values;
  let extended = false;
  if (typeof text === 'string') {
    sql = text;
  } else if (text !== null && typeof text === 'object' && typeof text.text === 'string') {
    for (const key of Object.keys(text)) {
      if (key !== 'text' && key !== 'values' && key !== 'queryMode') return undefined;
    }
    sql = text.text;
    // As pg's normalizeQueryConfig: the `values` argument wins over the config's.
    params = values ?? text.values;
    extended = text.queryMode === 'extended';
  } else {
    return undefined;
  }
  if (params !== undefined && !Array.isArray(params)) return undefined;
  if (extended || (params !== undefined && params.length > 0)) {
    return { statement: { text: sql, values: params ?? [] }, converted: false };
  }
  if (!isSingleStatement(sql)) return undefined;
  return { statement: { text: sql, values: [] }, converted: true };
}

/**
 * Runs one query on a guarded handle, honouring `ctx`:
 *
 * - The queries of concurrent calls on one handle are sent one at a time, in call order (as
 *   `pg` would), but each is handed to `pg` only once the one before it settled.
 * - When `ctx.signal` aborts, it rejects at once with `signal.reason`. A query not sent yet is
 *   never sent. The one running is left to the server-side cancel (the guard's `cancel` hook,
 *   which also waits until nothing of the op runs on the handle any more); whatever it ends with
 *   later is swallowed.
 * - When its query fails, it rejects once the calls queued behind it on the handle are done:
 *   `Promise.all` of several calls then settles only after all of their statements ended, so the
 *   op never ends (and gives up its lease) while some still run. Calls settle in call order, so
 *   `Promise.all` still reports the first statement that failed (in a transaction, those after
 *   it fail too: "current transaction is aborted").
 * - It reports progress with `ctx.heartbeat()` whenever bytes arrive from the server (a large
 *   result streaming in) and when the query completes.
 * - While it runs, the busy-handle probe knows a query is in flight on the handle.
 *
 * `text` is sent with the simple protocol when there are no `values` (several statements may
 * then run in one call, and `pg` resolves to the last one's result... typed here as one result;
 * use {@link pgTransaction} for several statements), with the extended protocol otherwise. An
 * empty query (`''`, `'  '`, `'-- c'`, `';'`) resolves to an empty result (`command` null, no rows).
 */
export async function pgQuery<R extends object = PgRow>(
  handle: PgHandle,
  ctx: { signal: AbortSignal; heartbeat(): void },
  text: string | { text: string; values?: unknown[]; queryMode?: 'extended' },
  values?: unknown[],
): Promise<PgQueryResult<R>> {
  // The guard's op context tells of its abort without an AbortSignal (see pg-signal.ts).
  const signal = abortSourceOf(ctx);
  throwIfAborted(signal);
  refuseNul(typeof text === 'string' ? text : text.text);
  const client = handle.client as RawClient;
  const stopBeats = beatWhileRunning(client, ctx);
  const turn = takeTurn(client);
  try {
    await waitForTurn(turn, signal);
    // An abort between the turn's coming and this continuation (a microtask later) must stop the
    // send: send's own abort listener only covers what comes after it.
    throwIfAborted(signal);
    try {
      const result = await send(client, text, values, signal, turn);
      ctx.heartbeat();
      if (turn !== undefined && !turn.now) await raceSignal(turn.previous, signal);
      return result as PgQueryResult<R>;
    } catch (error) {
      if (turn !== undefined && !signal.aborted) {
        const behind = turn.behind();
        if (behind !== undefined) await raceSignal(behind, signal);
        if (!turn.now) await raceSignal(turn.previous, signal);
      }
      throw error;
    }
  } finally {
    turn?.leave();
    turn?.settled();
    stopBeats();
  }
}
