/**
 * engine-guard/pg's `reset`: a shared handle back to a clean state between two callers, and the
 * bookkeeping that lets it skip the round trip when the op provably left nothing.
 *
 * "Clean" means: what `DISCARD ALL` leaves (with a fresh random seed), plus the settings the
 * guard's `setup` made (its baseline). A handle is known clean at a count of ReadyForQuery messages (one per query the
 * client ran, whoever sent it); any later query, the op's own `client.query` included, makes it
 * unknown again, and unknown means dirty.
 */
import type { ResetContext } from '../guard/types.js';
import { inFlight, pgQuery, type RawClient, raceSignal } from './pg-client.js';
import { SettingNames, watchSettingNames } from './pg-setting-names.js';
import type { PgClient, PgHandle } from './pg-types.js';

/**
 * The settings `setup` made on a handle (see {@link pgCaptureBaseline}): what every stateless op
 * of the handle runs under, put back after each reset.
 */
export interface Baseline {
  /** Statements re-applying it after `DISCARD ALL`, each starting with `; `; '' for none. */
  readonly sql: string;
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
): void {
  const state: SessionState = {
    ready: 0,
    cleanAt: 0,
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
  });
  watchSettingNames(client, () => state.names);
}

/**
 * True when `client` is tracked and no query ran on it since it was last known clean. A query
 * still on its way (sent by an op that returned without waiting for it) has not been counted
 * yet: the client is not known clean while one is.
 */
export function isClean(client: PgClient): boolean {
  const state = sessions.get(client);
  return (
    state !== undefined &&
    state.cleanAt === state.ready &&
    (client as RawClient).readyForQuery !== false
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
  const { rows } = await pgQuery<{ name: string; value: string }>(
    handle,
    { signal, heartbeat() {} },
    BASELINE_SQL,
    [names],
  );
  const settings = new Map<string, string>();
  let authorization: string | undefined;
  let role: string | undefined;
  for (const { name, value } of rows) {
    if (name === 'session_authorization') authorization = value;
    else if (name === 'role') role = value;
    else settings.set(name, value);
  }
  state.baseline = {
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
    if (results.at(-1)?.rows[0]?.held === false) markCleanAt(client, cleanAt + 3);
    return;
  }
  await inFlight(client, client.query(ROLLBACK_CLEAN_SQL));
  forgetNamedStatements(client as RawClient);
  markCleanAt(client, cleanAt + 3);
}

/** After `DEALLOCATE ALL`: `pg` would Bind the statements it believes parsed, unparsed. */
function forgetNamedStatements(client: RawClient): void {
  const connection = client.connection;
  if (connection?.parsedStatements !== undefined) connection.parsedStatements = {};
  if (connection?.submittedNamedStatements !== undefined) connection.submittedNamedStatements = {};
}

/** Resolves once `client` has nothing queued or running (an aborted op's query may still be). */
export function drained(client: RawClient, signal: AbortSignal): Promise<void> {
  if (client.readyForQuery !== false) return Promise.resolve();
  return raceSignal(
    new Promise<void>((resolve) => {
      (client as unknown as NodeJS.EventEmitter).once('drain', resolve);
    }),
    signal,
  );
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
 * All of it is one round trip. It is skipped (and returns synchronously) when the handle is
 * known clean: nothing ran on it since the last reset, or only a {@link pgReadOnly} outside a
 * session, whose ROLLBACK round trip also dropped the advisory locks and prepared statements it
 * may have left and drew a new seed (what survives a rolled-back read-only transaction).
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
  if (isClean(handle.client)) return undefined;
  return discardAll(handle, ctx);
}

async function discardAll(handle: PgHandle, ctx: ResetContext): Promise<void> {
  const client = handle.client as RawClient;
  // ctx.signal is read only when there is something to wait for: the guard bounds the reset by
  // itself, and an AbortSignal per op is a measurable share of a loopback round trip.
  if (client.readyForQuery === false) await drained(client, ctx.signal);
  const state = sessions.get(client);
  const open = client.getTransactionStatus?.() !== 'I';
  const baseline = state?.baseline.sql ?? '';
  const sql = `${open ? 'ROLLBACK; ' : ''}${DISCARD_ALL_SQL}${baseline}`;
  await inFlight(client, client.query(sql));
  forgetNamedStatements(client);
  markClean(client);
}
