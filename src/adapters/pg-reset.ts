/**
 * engine-guard/pg's `reset`: a shared handle back to a clean state between two callers, and the
 * bookkeeping that lets it skip the round trip when the op provably left nothing.
 *
 * "Clean" means: what `DISCARD ALL` leaves (with a fresh random seed), plus the settings the
 * guard's `setup` made (its baseline). A handle is known clean at a count of ReadyForQuery messages (one per query the
 * client ran, whoever sent it); any later query, the op's own `client.query` included, makes it
 * unknown again, and unknown means dirty.
 */
import { randomFillSync } from 'node:crypto';
import type { ResetContext } from '../guard/types.js';
import {
  clients,
  destroySocket,
  inFlight,
  noop,
  queryInFlight,
  type RawClient,
  raceSignal,
} from './pg-client.js';
import { GroupedQuery, type GroupOutcome, type Hidden } from './pg-group.js';
import { SettingNames, watchSettingNames } from './pg-setting-names.js';
import type { AbortSource } from './pg-signal.js';
import type { PgClient, PgHandle } from './pg-types.js';

/**
 * The reset {@link pgReset} put off until a handle's next query failed, at the head of that
 * query's batch and again alone: the query was not run, and the handle's connection is closed
 * (the guard replaces it). `cause` is the error of the last try.
 */
export class PgResetError extends Error {
  override readonly name = 'PgResetError';
  /** Stable code: `ERR_PG_RESET`. */
  readonly code = 'ERR_PG_RESET';
  constructor(options?: ErrorOptions) {
    super(
      'The reset between two callers, sent with this query, failed: the query was not run and the connection is closed',
      options,
    );
  }
}

/**
 * The settings `setup` made on a handle (see {@link pgCaptureBaseline}): what every stateless op
 * of the handle runs under, put back after each reset.
 */
export interface Baseline {
  /** Statements re-applying it after `DISCARD ALL`, each starting with `; `; '' for none. */
  readonly sql: string;
  /**
   * The same as one statement with parameters (the names and values), set in the order of `sql`
   * (a target list is evaluated left to right); undefined for none.
   */
  readonly statement: Hidden | undefined;
  /** Settings (`pg_settings` rows set in the session, and custom ones) by name: their value. */
  readonly settings: ReadonlyMap<string, string>;
  /** The session user `setup` switched to (`SET SESSION AUTHORIZATION`), if it did. */
  readonly authorization: string | undefined;
  /** The role `setup` set (`SET ROLE`), if it did. */
  readonly role: string | undefined;
}

/** The baseline of a handle whose `setup` (if any) changed no setting. */
export const NO_BASELINE: Baseline = {
  sql: '',
  statement: undefined,
  settings: new Map(),
  authorization: undefined,
  role: undefined,
};

/** What the adapter knows about the session state of a client it created. */
interface SessionState {
  /** ReadyForQuery messages seen on the client so far. */
  ready: number;
  /** `ready` when the client was last known clean (0: when it connected). */
  cleanAt: number;
  /**
   * The reset {@link pgReset} put off: `'owed'` until the client's next query carries it (or the
   * client sat idle for an event-loop turn and it went alone), `'sending'` while it is on its way.
   */
  reset: 'none' | 'owed' | 'sending';
  /**
   * A query was handed to `client.query` while the reset travelled at the head of a batch: `pg`
   * holds it, and sends it as soon as the batch ends, whatever the reset's outcome.
   */
  queuedBehindCarried: boolean;
  /** The reset is on its way at the head of a batch, its outcome not yet applied. */
  carrying: boolean;
  /** The reset that went alone succeeded: the client is clean at its ReadyForQuery. */
  cleanAtNextReady: boolean;
  /** Bound of a reset sent alone, ms (the guard's `resetTimeout`): past it the connection is cut. */
  readonly bound: number;
  /** Sends the whole reset alone, ahead of anything else (see {@link sendWholeReset}). */
  sendWhole: () => Promise<void>;
  baseline: Baseline;
  /**
   * Custom setting names the SQL sent since the client was last known clean may have set (see
   * pg-setting-names.ts); a new set at each clean point.
   */
  names: SettingNames;
  /** Custom setting names the adapter's `customSettings` option declares: always checked. */
  readonly declared: readonly string[];
  /** The role the connection logged in as, once a state check has read it. */
  login: string | undefined;
  /**
   * Whether `pgReadOnly` outside a session drops, in its ROLLBACK round trip, what it may have
   * left: only worth its cost when the guard's reset is {@link pgReset}, which can then be skipped.
   */
  readonly checkReadOnly: boolean;
  /**
   * Whether `pgReadOnly` in a session asks, in its ROLLBACK round trip, whether it left anything:
   * only worth its cost when the guard's `state` check is `pgState`, which can then answer at once.
   */
  readonly checkState: boolean;
}

const sessions = new WeakMap<PgClient, SessionState>();

/** The guard's default `resetTimeout`, ms: the bound of a reset sent alone when none is given. */
export const DEFAULT_RESET_BOUND_MS = 5_000;

/**
 * A new random seed for `random()`, drawn from the server's strong random source: a `setseed()`
 * survives `DISCARD ALL` (and a rollback), and would decide the next caller's `random()` values.
 * (`hashtextextended` spreads the UUID's random bits over 64 bits; `setseed` takes [-1, 1].)
 */
export const RESEED =
  'pg_catalog.setseed(pg_catalog.hashtextextended(pg_catalog.gen_random_uuid()::text, 0)::float8 / 9223372036854775808.0)';

/**
 * What `DISCARD ALL` does, spelled out so that the baseline and a new random seed share its round
 * trip (`DISCARD ALL` itself refuses to run inside a transaction block, and a query string of
 * several statements is one implicit block), and a ROLLBACK when a transaction was left open.
 */
const DISCARD_ALL_SQL =
  'CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; UNLISTEN *;' +
  ` SELECT pg_catalog.pg_advisory_unlock_all(), ${RESEED}; DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES`;

/**
 * Ends `pgReadOnly`'s transaction on a handle that was clean when it began, and undoes in the
 * same round trip the only session state a rolled-back read-only transaction can leave behind
 * (checked on the real server: temporary objects, `SET`s, `LISTEN`, `WITH HOLD` cursors and
 * sequence positions are rolled back or refused; session advisory locks, prepared statements
 * and the random seed are not). Releasing them costs the server less than asking whether there
 * are any: `pg_locks` reads the whole lock table (measured on loopback: about 50 µs more than a
 * bare ROLLBACK, where the question took about 150 µs more, as much as the `DISCARD ALL` it would
 * save).
 */
const ROLLBACK_CLEAN_SQL = `ROLLBACK; DEALLOCATE ALL; SELECT pg_catalog.pg_advisory_unlock_all(), ${RESEED}`;

/**
 * The same in a session, which keeps what it took: ends `pgReadOnly`'s transaction and asks, in
 * the same round trip, whether any of what survives it is there (a new seed is drawn all the
 * same: under `pin: 'on-state'` the seed never outlives a call, see `pgState`).
 */
const ROLLBACK_CHECK_SQL =
  `ROLLBACK; SELECT ${RESEED}, EXISTS (SELECT FROM pg_catalog.pg_locks` +
  " WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid())" +
  ' OR EXISTS (SELECT FROM pg_catalog.pg_prepared_statements) AS held';

/**
 * The settings the handle's `setup` changed, in the order they are put back: settings first (some
 * need the login role's rights), then the session user, then the role (each of those two resets
 * what comes after it). `$1`: custom setting names the setup's SQL showed or the adapter declares.
 */
const BASELINE_SQL = `WITH settings AS MATERIALIZED (SELECT name, source FROM pg_catalog.pg_settings)
SELECT name, value FROM (
  SELECT 1 AS step, name, pg_catalog.current_setting(name) AS value
    FROM settings WHERE source = 'session'
  UNION ALL SELECT 1, n, pg_catalog.current_setting(n, true) FROM pg_catalog.unnest($1::text[]) AS n
    WHERE pg_catalog.current_setting(n, true) <> ''
      AND NOT EXISTS (SELECT FROM settings s WHERE s.name = n)
  UNION ALL SELECT 2, 'session_authorization', session_user::text
    FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) AS a
    WHERE a.usesysid IS DISTINCT FROM (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = session_user)
  UNION ALL SELECT 3, 'role', pg_catalog.current_setting('role')
    WHERE pg_catalog.current_setting('role') <> 'none'
) AS b ORDER BY step`;

/**
 * Starts tracking `client`'s session state; it counts as clean from here on. `checks`: see
 * {@link SessionState}; `declared`: the adapter's `customSettings`.
 */
export function trackSession(
  client: RawClient,
  checks: { readOnly: boolean; state: boolean },
  declared: readonly string[] = [],
  bound = DEFAULT_RESET_BOUND_MS,
): void {
  const state: SessionState = {
    bound,
    ready: 0,
    cleanAt: 0,
    reset: 'none',
    queuedBehindCarried: false,
    carrying: false,
    cleanAtNextReady: false,
    sendWhole: () => Promise.resolve(),
    baseline: NO_BASELINE,
    names: new SettingNames(),
    declared,
    login: undefined,
    checkReadOnly: checks.readOnly,
    checkState: checks.state,
  };
  sessions.set(client, state);
  client.connection?.on?.('readyForQuery', () => {
    state.ready++;
    if (state.cleanAtNextReady) {
      state.cleanAtNextReady = false;
      setClean(state);
    }
  });
  watchSettingNames(client, () => state.names);
  payOwedResetFirst(client, state);
}

/**
 * Wraps `client.query` (on the instance) so that a query sent while a reset is owed, whoever
 * sends it (the op's own `client.query`, a probe, a state check), goes after the reset: the reset
 * is handed to `pg` first, and when it fails the connection is cut before the query leaves (`pg`
 * sends a query only after the ReadyForQuery of the one before it). The adapter's own queries
 * that carry the reset in their batch (see {@link takeOwedReset}) pass as they are.
 */
function payOwedResetFirst(client: RawClient, state: SessionState): void {
  const query = client.query;
  state.sendWhole = () => sendWholeReset(client, state, query);
  const gated = function (this: PgClient, ...args: unknown[]): unknown {
    if (state.reset === 'owed') state.sendWhole().catch(noop);
    // Behind a batch carrying the reset (not that batch itself): see carriedResetAnswered.
    else if (state.carrying && !(args[0] instanceof GroupedQuery)) {
      state.queuedBehindCarried = true;
    }
    return (query as (...a: unknown[]) => unknown).apply(this, args);
  };
  (client as { query: unknown }).query = gated;
}

/**
 * Sends the whole reset alone, ahead of anything queued after it, by the simple protocol (one
 * round trip: see {@link robustResetSql}); resolves once it is through, rejects when it failed,
 * after cutting the connection: a query `pg` holds behind it is then never sent.
 */
function sendWholeReset(
  client: RawClient,
  state: SessionState,
  query: PgClient['query'],
): Promise<void> {
  state.reset = 'sending';
  return new Promise<void>((resolve, reject) => {
    // Bounded like the guard's own reset: a reset lost on a dead link retires the handle.
    const timer = setTimeout(() => destroySocket(client), state.bound);
    timer.unref();
    const done = (error: Error | null): void => {
      clearTimeout(timer);
      if (error !== null && error !== undefined) {
        // Nothing may run on the state the reset was to clear.
        destroySocket(client);
        state.reset = 'owed';
        reject(error);
        return;
      }
      state.reset = 'none';
      forgetNamedStatements(client);
      state.cleanAtNextReady = true;
      resolve();
    };
    (query as unknown as (text: string, values: undefined, cb: typeof done) => void).call(
      client,
      robustResetSql(client, state),
      undefined,
      done,
    );
  });
}

/**
 * The reset as one simple-protocol string: a ROLLBACK when a transaction is open, what `DISCARD
 * ALL` does spelled out (RESET ALL early, so a `statement_timeout` the op set does not bound the
 * rest), a new random seed, and the setup's baseline.
 */
function robustResetSql(client: RawClient, state: SessionState | undefined): string {
  const open = client.getTransactionStatus?.() !== 'I';
  return `${open ? 'ROLLBACK; ' : ''}${DISCARD_ALL_SQL}${state?.baseline.sql ?? ''}`;
}

/**
 * Resets `client` now, alone (after what is on its way on it): for a reset that failed at the
 * head of a batch (see {@link resetCarried}). Rejects when it failed (the connection is then cut).
 */
export async function resetNow(client: PgClient, signal: AbortSignal | undefined): Promise<void> {
  const raw = client as RawClient;
  if (raw.readyForQuery === false) await drained(raw, signal);
  const state = sessions.get(client);
  if (state === undefined) {
    await inFlight(client, client.query(robustResetSql(raw, undefined)));
    forgetNamedStatements(raw);
    return;
  }
  await state.sendWhole();
}

/**
 * The reset put off on `client`, as statements to send at the head of the batch of its next
 * query, or undefined when none is owed. Carried so, it is part of that query: a reset that waits
 * (for a lock another connection holds on a temporary table) makes the query wait, within the
 * op's own bounds (its abort cancels the batch, and nothing after the reset runs then), and a
 * dead link is the op's liveness business. Cutting the connection would not stop the server from
 * running the rest of the batch once the reset is through. Taking it marks it on its way: call
 * {@link resetCarried} with the batch's outcome, or {@link giveBackReset} if not sending it.
 */
export function takeOwedReset(client: PgClient): Hidden[] | undefined {
  const state = sessions.get(client);
  if (state?.reset !== 'owed') return undefined;
  state.reset = 'sending';
  state.carrying = true;
  state.queuedBehindCarried = false;
  return resetStatements(state.baseline);
}

/**
 * Whether the batch that carried the reset (its first `length` statements) failed in the reset:
 * a failure further on (`pgReadOnly`'s BEGIN READ ONLY, an adapter statement after the main one)
 * finds the reset through.
 */
function resetFailed(outcome: GroupOutcome, length: number): boolean {
  return outcome.failed === 'before' && (outcome.failedAt ?? 0) < length;
}

/**
 * To pass to {@link sendGroup} as `answered` for a batch carrying the reset (its first `length`
 * statements): applies the batch's outcome to the reset (see {@link resetCarried}) as soon as it
 * is known, before `pg` sends what it holds behind the batch, and before any code of the op runs
 * (a `client.query` then pays a reset owed again first). When the reset failed and a query is
 * held already (the op's own `client.query`, not awaited), the connection is cut now, so that
 * query never runs on the state the reset was to clear (it fails; the handle is replaced).
 */
export function carriedResetAnswered(
  client: PgClient,
  outcome: GroupOutcome,
  length: number,
): void {
  const state = sessions.get(client);
  if (state === undefined || !state.carrying) return;
  state.carrying = false;
  if (!resetFailed(outcome, length)) {
    state.reset = 'none';
    forgetNamedStatements(client as RawClient);
    return;
  }
  // Nothing after the failed statement ran: still owed, to be sent alone (resetNow).
  state.reset = 'owed';
  if (state.queuedBehindCarried || queuedInPg(client as RawClient)) destroySocket(client);
}

/** Whether `pg` holds a query not sent yet (its queue, as pg 8 keeps it). */
function queuedInPg(client: RawClient): boolean {
  const internals = client as unknown as { _queryQueue?: unknown[]; queryQueue?: unknown[] };
  // pg 8.23 keeps `_queryQueue` (its `queryQueue` getter is deprecated); earlier 8.x `queryQueue`.
  const queue = internals._queryQueue ?? internals.queryQueue;
  return queue === undefined || queue.length > 0;
}

/** The reset taken with {@link takeOwedReset} is not sent after all: still owed. */
export function giveBackReset(client: PgClient): void {
  const state = sessions.get(client);
  if (state === undefined || !state.carrying) return;
  state.carrying = false;
  state.reset = 'owed';
}

/**
 * The batch that carried the reset taken with {@link takeOwedReset} ended with `outcome`: true
 * when the reset went through, false when it failed (nothing after it ran, and it is owed again:
 * send it alone with {@link resetNow}; an op's `statement_timeout` can bound `DISCARD ALL`, not
 * the whole reset, which clears it first).
 */
export function resetCarried(client: PgClient, outcome: GroupOutcome, length: number): boolean {
  if (!sessions.has(client)) return true;
  // Applied already when the batch was answered (see carriedResetAnswered), or now.
  carriedResetAnswered(client, outcome, length);
  return !resetFailed(outcome, length);
}

/** Random words from Node's strong random source, drawn 512 seeds at a time. */
const seedWords = new Uint32Array(1024);
let seedNext = seedWords.length;

/** A new random seed for `setseed()`, in [-1, 1), from Node's strong random source. */
function newSeed(): string {
  if (seedNext >= seedWords.length) {
    randomFillSync(seedWords);
    seedNext = 0;
  }
  const high = seedWords[seedNext++]!;
  const low = seedWords[seedNext++]!;
  // 53 random bits: a double in [0, 1), then [-1, 1).
  const unit = ((high >>> 5) * 67108864 + (low >>> 6)) / 9007199254740992;
  return String(unit * 2 - 1);
}

/**
 * The reset as the first statements of a batch (see pg-group.ts): `DISCARD ALL` (which a batch
 * takes only as its first statement, and commits at once), a new random seed, and the setup's
 * baseline, inside BEGIN ... COMMIT when there is one, so that a `BEGIN` ... `ROLLBACK` of the
 * query behind them cannot roll the baseline back. The seed is a parameter: a query's parameters
 * are not shown in `pg_stat_activity`, where another connection could read a literal one.
 */
function resetStatements(baseline: Baseline): Hidden[] {
  const seed = { text: 'SELECT pg_catalog.setseed($1)', values: [newSeed()] };
  if (baseline.statement === undefined) return [DISCARD_ALL, seed];
  return [DISCARD_ALL, BEGIN, seed, baseline.statement, COMMIT];
}

const DISCARD_ALL: Hidden = { text: 'DISCARD ALL' };
const BEGIN: Hidden = { text: 'BEGIN' };
const COMMIT: Hidden = { text: 'COMMIT' };

/**
 * True when `client` is tracked and no query ran on it since it was last known clean, or a reset
 * is owed on it (see {@link pgReset}): whatever runs on it next runs after that reset. A query
 * still on its way (sent by an op that returned without waiting for it) has not been counted
 * yet: the client is not known clean while one is.
 */
export function isClean(client: PgClient): boolean {
  const state = sessions.get(client);
  return (
    state !== undefined &&
    (state.cleanAt === state.ready || state.reset === 'owed') &&
    (client as RawClient).readyForQuery !== false &&
    // On a live connection. (Not also "outside a transaction", tried once: it called handles
    // dirty after an abort, so their reset went alone at once, where a cancel meant for the
    // aborted query could land on it and fail the next caller's query.)
    clients.get(client)?.gone === undefined
  );
}

/**
 * When `client` is known clean now and `pgReadOnly` (in a session or not) should check what it
 * leaves: its ReadyForQuery count, to hand to {@link rollbackReadOnly}.
 */
export function cleanSince(client: PgClient, inSession: boolean): number | undefined {
  const state = sessions.get(client);
  if (state === undefined || !(inSession ? state.checkState : state.checkReadOnly)) {
    return undefined;
  }
  return isClean(client) ? state.ready : undefined;
}

/** Records the role `client` logged in as (read by a state check, once). */
export function rememberLogin(client: PgClient, login: string): void {
  const state = sessions.get(client);
  if (state !== undefined) state.login = login;
}

/** ReadyForQuery messages seen on `client` so far (`undefined` for a client not tracked). */
export function readyCount(client: PgClient): number | undefined {
  return sessions.get(client)?.ready;
}

/** Records that `client` is clean now (after the adapter's own harmless query, say). */
export function markClean(client: PgClient): void {
  const state = sessions.get(client);
  if (state !== undefined) setClean(state);
}

/**
 * Records that `client` is clean, when exactly `count` ReadyForQuery messages were seen on it:
 * one more (a query of the op's own that ran meanwhile) and nothing is known.
 */
export function markCleanAt(client: PgClient, count: number): void {
  const state = sessions.get(client);
  if (state?.ready === count) setClean(state);
}

function setClean(state: SessionState): void {
  state.cleanAt = state.ready;
  if (state.reset === 'owed') state.reset = 'none';
  if (state.names.names.size > 0 || state.names.overflow) state.names = new SettingNames();
}

/**
 * A string literal that reads the same whatever `standard_conforming_strings` says (an op may
 * have turned it off, and a multi-statement string is parsed before any of it runs).
 */
export function literal(value: string): string {
  return `E'${value.replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
}

/**
 * Records the settings `setup` made on `handle` as its baseline: {@link pgReset} puts them back
 * after `DISCARD ALL` (in the same round trip). Read from the server: the settings set in the
 * session (`pg_settings`), the custom ones (`app.tenant`) whose names the setup's SQL showed or the
 * adapter's `customSettings` declares, the session user (`SET SESSION AUTHORIZATION`) and the role
 * (`SET ROLE`). The handle counts as clean afterwards.
 */
export async function pgCaptureBaseline(handle: PgHandle, signal: AbortSignal): Promise<void> {
  const state = sessions.get(handle.client);
  if (state === undefined) return;
  const names = [...new Set([...state.names.names, ...state.declared])];
  // Right after `setup` (or `create`): nothing else runs on the client, no pgQuery turn needed.
  const client = handle.client;
  const { rows } = (await raceSignal(
    inFlight(client, client.query(BASELINE_SQL, [names])),
    signal,
  )) as unknown as { rows: { name: string; value: string }[] };
  const settings = new Map<string, string>();
  let authorization: string | undefined;
  let role: string | undefined;
  for (const { name, value } of rows) {
    if (name === 'session_authorization') authorization = value;
    else if (name === 'role') role = value;
    else settings.set(name, value);
  }
  state.baseline = {
    statement:
      rows.length === 0
        ? undefined
        : {
            text: `SELECT ${rows.map((_, i) => `pg_catalog.set_config($${2 * i + 1}, $${2 * i + 2}, false)`).join(', ')}`,
            values: rows.flatMap(({ name, value }) => [name, value]),
          },
    sql: rows
      .map(
        ({ name, value }) =>
          `; SELECT pg_catalog.set_config(${literal(name)}, ${literal(value)}, false)`,
      )
      .join(''),
    settings,
    authorization,
    role,
  };
  markClean(handle.client);
}

/**
 * The baseline of `client` (see {@link pgCaptureBaseline}), the custom names to check, and its
 * login role.
 */
export function baselineOf(client: PgClient):
  | {
      baseline: Baseline;
      names: readonly string[];
      /** More names were seen than could be kept (see `SettingNames`). */
      overflow: boolean;
      login: string | undefined;
    }
  | undefined {
  const state = sessions.get(client);
  if (state === undefined) return undefined;
  const names = new Set(state.names.names);
  for (const name of state.declared) names.add(name);
  for (const name of state.baseline.settings.keys()) if (name.includes('.')) names.add(name);
  return {
    baseline: state.baseline,
    names: [...names],
    overflow: state.names.overflow,
    login: state.login,
  };
}

/**
 * Ends `pgReadOnly`'s transaction. On a handle known clean before the transaction began (at
 * `cleanAt`), the same round trip outside a session drops what the transaction may have left
 * (see {@link ROLLBACK_CLEAN_SQL}); in a session (`inSession`), which keeps it, it asks whether
 * any is there (see {@link ROLLBACK_CHECK_SQL}). The handle is clean again (none was, or it was
 * dropped) unless a query other than the BEGIN, the statement and this one ran on it meanwhile
 * (the op's own). Rejects only when the connection failed.
 */
export async function rollbackReadOnly(
  handle: PgHandle,
  cleanAt: number | undefined,
  inSession = false,
  ranBefore = 2,
): Promise<void> {
  const client = handle.client;
  if (cleanAt === undefined || !sessions.has(client)) {
    await inFlight(client, client.query('ROLLBACK'));
    return;
  }
  if (inSession) {
    const results = (await inFlight(client, client.query(ROLLBACK_CHECK_SQL))) as unknown as {
      rows: { held?: boolean }[];
    }[];
    if (results.at(-1)?.rows[0]?.held === false) markCleanAt(client, cleanAt + ranBefore + 1);
    return;
  }
  await inFlight(client, client.query(ROLLBACK_CLEAN_SQL));
  forgetNamedStatements(client as RawClient);
  markCleanAt(client, cleanAt + ranBefore + 1);
}

/**
 * The statements that end `pgReadOnly`'s transaction in its batch (see pg-read-only.ts), as
 * {@link rollbackReadOnly} would: a ROLLBACK, and on a handle known clean at BEGIN, outside a
 * session, the drop of what a rolled-back read-only transaction can leave (prepared statements,
 * advisory locks, a seed), in a session the question whether any of it is there, and a new seed
 * either way. `cleanAt` undefined: the ROLLBACK alone.
 *
 * Outside a session the prepared statements are dropped, not asked about: on the server
 * `DEALLOCATE ALL` costs less than a `select 1`, where the question (planning a query over
 * `pg_prepared_statement()`) cost more than the rest of the batch (pgbench, one pipeline per
 * read, 4 clients on loopback: 8.8k reads/s with the question, 11.0k with `DEALLOCATE ALL`).
 */
export function readOnlyEnd(cleanAt: number | undefined, inSession: boolean): Hidden[] {
  if (cleanAt === undefined) return [ROLLBACK];
  const seed = [newSeed()];
  return inSession
    ? [ROLLBACK, { text: CHECK_HELD_SQL, values: seed }]
    : [ROLLBACK, DEALLOCATE_ALL, { text: CLEAN_SQL, values: seed }];
}

/**
 * How `pgReadOnly`'s batch, which went through, ended for the handle's cleanliness (`rows`: the
 * raw rows of the statements of {@link readOnlyEnd}): marks the handle clean when nothing is
 * left (always outside a session, where the batch dropped it).
 */
export function readOnlyEnded(
  client: PgClient,
  cleanAt: number,
  inSession: boolean,
  rows: GroupOutcome['rows'],
): void {
  if (!inSession) {
    forgetNamedStatements(client as RawClient);
    markCleanAt(client, cleanAt + 1);
    return;
  }
  if (rows.at(-1)?.[0]?.[1] === 'f') markCleanAt(client, cleanAt + 1);
}

const ROLLBACK: Hidden = { text: 'ROLLBACK' };
const DEALLOCATE_ALL: Hidden = { text: 'DEALLOCATE ALL' };
/** Outside a session: the rest of what survives a rolled-back read-only transaction ($1: a seed). */
const CLEAN_SQL = 'SELECT pg_catalog.pg_advisory_unlock_all(), pg_catalog.setseed($1)';
/** In a session: a new seed, and whether an advisory lock or a prepared statement is held. */
const CHECK_HELD_SQL =
  'SELECT pg_catalog.setseed($1), EXISTS (SELECT FROM pg_catalog.pg_lock_status() k' +
  " WHERE k.locktype = 'advisory' AND k.pid = pg_catalog.pg_backend_pid())" +
  ' OR EXISTS (SELECT FROM pg_catalog.pg_prepared_statement())';

/** After `DEALLOCATE ALL`: `pg` would Bind the statements it believes parsed, unparsed. */
function forgetNamedStatements(client: RawClient): void {
  const connection = client.connection;
  if (connection?.parsedStatements !== undefined) connection.parsedStatements = {};
  if (connection?.submittedNamedStatements !== undefined) connection.submittedNamedStatements = {};
}

/**
 * Resolves once `client` has nothing queued or running (an aborted op's query may still be), or
 * once its connection is gone: `pg` never emits 'drain' after a FATAL error (a backend terminated
 * mid-query leaves `readyForQuery` false for good), only 'error' and 'end'.
 */
export function drained(client: RawClient, signal: AbortSource | undefined): Promise<void> {
  if (client.readyForQuery !== false || isGone(client)) return Promise.resolve();
  const emitter = client as unknown as NodeJS.EventEmitter;
  const drain = new Promise<void>((resolve) => {
    const done = (): void => {
      emitter.off('drain', done);
      emitter.off('end', done);
      emitter.off('error', done);
      resolve();
    };
    emitter.on('drain', done);
    emitter.on('end', done);
    emitter.on('error', done);
  });
  return signal === undefined ? drain : raceSignal(drain, signal);
}

/** The connection of `client` failed or ended (as far as the adapter or `pg` knows). */
function isGone(client: RawClient): boolean {
  if (clients.get(client)?.gone !== undefined) return true;
  const flags = client as unknown as { _ended?: boolean; _queryable?: boolean };
  return flags._ended === true || flags._queryable === false;
}

/**
 * The `reset` hook of {@link pgGuardOptions} (its default): returns a shared handle to a clean
 * state after a stateless op, before it serves another caller.
 *
 * - A transaction the op left open (or failed) is rolled back.
 * - Then what `DISCARD ALL` clears: temporary tables, `SET`s, `set_config`, `SET ROLE` and
 *   `SET SESSION AUTHORIZATION`, SQL `PREPARE`d statements and the protocol-level ones `pg`
 *   caches by name (its cache is cleared too, so a named query after the reset parses again),
 *   `LISTEN`, `WITH HOLD` cursors, session advisory locks, sequences' `currval`.
 * - A new random seed is drawn (from the server's strong random source), so a `setseed()` of
 *   the op does not decide the next caller's `random()` values.
 * - Then the settings the guard's `setup` made are applied again (captured once per handle
 *   right after `setup`, when `setup` is given through {@link pgGuardOptions}'s overrides):
 *   whatever `setup` establishes is what every stateless op runs under. That is the settings
 *   `pg_settings` shows as set in the session, the session user (`SET SESSION AUTHORIZATION`),
 *   the role (`SET ROLE`), and custom settings (`app.tenant`, as row-level security policies
 *   read them) whose names the setup's SQL shows (`SET app.tenant = ...`,
 *   `set_config('app.tenant', ...)`, or a parameter) or the adapter's `customSettings` declares.
 *   Settings given at connect time (`config.options`, `statement_timeout`...) and those of
 *   `ALTER ROLE/DATABASE ... SET` survive `DISCARD ALL` by themselves. Other state `setup` made
 *   (temporary tables, prepared statements) does not: keep it in a session. A role or session
 *   user is no security boundary against the op itself: when the login role may switch to it,
 *   the op may switch back (`RESET ROLE`).
 *
 * When it runs: put off. `pgReset` marks the handle as owing the reset and returns synchronously;
 * the reset travels at the head of the handle's next query, in the same round trip, as one batch
 * closed by a single Sync (see pg-group.ts): the server skips the query when the reset fails
 * there, and the reset is then sent alone (the whole list spelled out, `RESET ALL` early) before
 * the query is sent again, or the query rejects with {@link PgResetError}. Queries that cannot
 * carry it (an op's own `client.query`, a probe, a state check) make `client.query` send it alone
 * first, and a handle left idle for an event-loop turn sends it alone then (bounded by the guard's
 * `resetTimeout`; past it the connection is closed). It goes alone at once (a promise) when the
 * op left a transaction open or a query on its way, and it throws on a connection known dead.
 *
 * It is skipped (and returns synchronously) when the handle is known clean: nothing ran on it
 * since the last reset, or only a {@link pgReadOnly} outside a session, whose batch also dropped
 * the advisory locks and prepared statements it may have left and drew a new seed (what
 * survives a rolled-back read-only transaction).
 * `pgReadOnly` does that only on handles of a guard whose `reset` is `pgReset` itself (a reset of
 * your own that calls `pgReset` still gets the settings of `setup` back, without that skip).
 *
 * Not undone (neither does `DISCARD ALL`): libraries loaded with `LOAD`, state kept by
 * extensions or procedural languages (PL/Python's `GD`), `pg` client settings (type parsers,
 * listeners). Needs PostgreSQL 13 or later (`gen_random_uuid()`). For servers that only speak the
 * wire protocol (HyperDB's `hyperd`) and lack these commands, give your own `reset` or
 * `reset: undefined`.
 */
export function pgReset(handle: PgHandle, ctx: ResetContext): Promise<void> | undefined {
  const client = handle.client as RawClient;
  // A connection known dead cannot be reset: the guard retires the handle. Checked first: a reset
  // sent alone that failed cut the connection and left the reset owed, which reads as clean.
  const gone = clients.get(client)?.gone;
  if (gone !== undefined) throw gone;
  if (isClean(client)) return undefined;
  const state = sessions.get(client);
  // Put off to the head of the next query's batch when that batch can carry all of it: nothing
  // still on its way, no transaction to roll back first (DISCARD ALL must open a batch).
  if (
    state !== undefined &&
    state.reset === 'none' &&
    client.readyForQuery !== false &&
    client.getTransactionStatus?.() === 'I'
  ) {
    owe(client, state);
    return undefined;
  }
  return discardAll(handle, ctx);
}

/**
 * Records the reset as owed on `client`. If the client is still idle after this event-loop turn
 * (no next op took it at once), the reset goes alone then: whatever the op left (a session
 * advisory lock above all) is not kept for long on an idle connection.
 */
function owe(client: RawClient, state: SessionState): void {
  state.reset = 'owed';
  // Safe whoever holds the handle by then: while the reset is owed nothing ran on it since.
  setImmediate(() => {
    if (state.reset === 'owed' && client.readyForQuery !== false && !queryInFlight(client)) {
      state.sendWhole().catch(noop);
    }
  });
}

async function discardAll(handle: PgHandle, ctx: ResetContext): Promise<void> {
  const client = handle.client as RawClient;
  // ctx.signal is read only when there is something to wait for: the guard bounds the reset by
  // itself, and an AbortSignal per op is a measurable share of a loopback round trip.
  if (client.readyForQuery === false) await drained(client, ctx.signal);
  const state = sessions.get(client);
  if (state === undefined) {
    await inFlight(client, client.query(robustResetSql(client, undefined)));
    forgetNamedStatements(client);
    return;
  }
  await inFlight(client, state.sendWhole());
}
