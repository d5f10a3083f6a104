/**
 * engine-guard/pg's `state` check (SPEC 8.1, pin on state): what connection state a session op
 * left on its handle, measured against what {@link pgReset} would leave (its "clean": `DISCARD
 * ALL` plus the settings `setup` established), in one catalog round trip, or none when the handle
 * is provably clean.
 */
import type { HeldState, StateContext } from '../guard/types.js';
import { inFlight, type RawClient, raceSignal } from './pg-client.js';
import { type PgRoute, routeOf } from './pg-pooler.js';
import {
  type Baseline,
  baselineOf,
  drained,
  isClean,
  literal,
  markCleanAt,
  NO_BASELINE,
  RESEED,
  readyCount,
  rememberLogin,
} from './pg-reset.js';
import { MAX_SETTING_NAMES } from './pg-setting-names.js';
import type { PgHandle, PgQueryResult } from './pg-types.js';

/**
 * A session op left connection state on its handle, but the handle reaches its server through a
 * transaction-mode pooler (PgBouncer `pool_mode=transaction`, Supavisor in transaction mode),
 * where no connection state sticks to a server connection: the next statement may run on another
 * one, and another client gets this one with the state on it. Thrown by {@link pgState}, so the
 * guard discards the state and the call rejects (`SessionStateDiscardedError`, reason
 * `'unknown'`, this error as its `cause`). Stateless ops, and session ops that leave no state or
 * keep it inside one open transaction, work as usual.
 */
export class PgPoolerStateError extends Error {
  override readonly name = 'PgPoolerStateError';
  /** Stable code: `ERR_PG_POOLER_STATE`. */
  readonly code = 'ERR_PG_POOLER_STATE';
  /** The state found on the server connection the check ran on. */
  readonly found: readonly HeldState[];
  /**
   * When the check ran on another backend than the handle's (a pooler the adapter took for a
   * direct or session-mode route): the handle's backend and the one that answered.
   */
  readonly moved: { readonly from: number; readonly to: number } | undefined;

  constructor(found: readonly HeldState[], moved?: { from: number; to: number }) {
    const what =
      found.length > 0
        ? `The call left ${found.map((entry) => `${entry.kind} ${entry.name}`).join(', ')}`
        : 'Whatever the call left is out of sight';
    const where =
      moved === undefined
        ? 'the connection goes through a transaction-mode pooler (PgBouncer pool_mode=transaction, Supavisor in transaction mode)'
        : `the connection moved from backend ${moved.from} to ${moved.to} between two statements, as behind a transaction-mode pooler`;
    super(
      `Connection state cannot be kept here: ${where}, where each transaction may run on another server connection. ${what}. ` +
        'Drop it in the same call, keep it inside one transaction, or connect to the server directly or through a session-mode pool',
    );
    this.found = found;
    this.moved = moved;
  }
}

/** One row of the check: a piece of state, or the backend that answered (`kind` 'backend'). */
interface StateRow {
  kind: string;
  name: string;
}

/** `ARRAY[...]::text[]` of `values`, written as literals (the check is several statements, so no parameters). */
function textArray(values: Iterable<string>): string {
  return `ARRAY[${[...values].map(literal).join(', ')}]::text[]`;
}

/**
 * The op's own `statement_timeout` and `lock_timeout` must not fail the check (a caller that set
 * `statement_timeout = '1ms'` could otherwise never keep state). The check's statements are one
 * implicit transaction, so `SET LOCAL` lifts them for this round trip only; their values as the
 * op left them, and their defaults, are kept first (as transaction-local custom settings, in the
 * same display form) so the check can still report them.
 */
const LIFT_TIMEOUTS =
  "SELECT pg_catalog.set_config('engine_guard.statement_timeout', pg_catalog.current_setting('statement_timeout'), true)," +
  " pg_catalog.set_config('engine_guard.lock_timeout', pg_catalog.current_setting('lock_timeout'), true);" +
  ' SET LOCAL statement_timeout TO DEFAULT; SET LOCAL lock_timeout TO DEFAULT;' +
  " SELECT pg_catalog.set_config('engine_guard.statement_timeout_default', pg_catalog.current_setting('statement_timeout'), true)," +
  " pg_catalog.set_config('engine_guard.lock_timeout_default', pg_catalog.current_setting('lock_timeout'), true);" +
  ' SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0;';

/**
 * The check: what pgReset would clear (temporary objects, settings set in the session, prepared
 * statements, `WITH HOLD` cursors, `LISTEN`, session advisory locks, `SET ROLE`, `SET SESSION
 * AUTHORIZATION`), each measured against the baseline, and the backend that answered. Before it,
 * in the same round trip, sequences' `currval` and the random seed are discarded (see
 * {@link pgState}).
 */
function stateSql(baseline: Baseline, names: readonly string[], login: string | undefined): string {
  const baseNames = textArray(baseline.settings.keys());
  const baseValues = textArray(baseline.settings.values());
  const custom = textArray(names.filter((name) => !baseline.settings.has(name)));
  const sessionUser = baseline.authorization ?? login;
  // The catalog functions rather than their views: planned in a fraction of the time. Reading
  // the settings is most of the check's cost: once.
  return `${LIFT_TIMEOUTS} DISCARD SEQUENCES; SELECT ${RESEED};
WITH settings AS MATERIALIZED (
  SELECT s.name, s.setting, s.source, s.reset_val FROM pg_catalog.pg_show_all_settings() s
    WHERE s.name NOT IN ('statement_timeout', 'lock_timeout') AND s.name NOT LIKE 'engine\\_guard.%'
)
SELECT kind, name FROM (
  SELECT 1 AS step, 'temp ' || o.type AS kind,
      coalesce(o.name, pg_catalog.regexp_replace(o.identity, '^pg_temp(_[0-9]+)?\\.', '')) AS name
    FROM pg_catalog.pg_depend d, LATERAL pg_catalog.pg_identify_object(d.classid, d.objid, 0) o
    WHERE d.refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass
      AND d.refobjid = pg_catalog.pg_my_temp_schema() AND d.deptype = 'n'
  UNION ALL SELECT 2, 'setting', s.name FROM settings s
    WHERE s.source = 'session' AND s.name <> ALL (${baseNames})
      AND s.setting IS DISTINCT FROM s.reset_val
  UNION ALL SELECT 2, 'setting', b.name
    FROM ROWS FROM (pg_catalog.unnest(${baseNames}), pg_catalog.unnest(${baseValues})) AS b(name, value)
    WHERE CASE b.name
        WHEN 'statement_timeout' THEN pg_catalog.current_setting('engine_guard.statement_timeout')
        WHEN 'lock_timeout' THEN pg_catalog.current_setting('engine_guard.lock_timeout')
        ELSE pg_catalog.current_setting(b.name, true) END IS DISTINCT FROM b.value
  UNION ALL SELECT 2, 'setting', t.name FROM pg_catalog.unnest(ARRAY['lock_timeout', 'statement_timeout']) AS t(name)
    WHERE t.name <> ALL (${baseNames})
      AND pg_catalog.current_setting('engine_guard.' || t.name)
        IS DISTINCT FROM pg_catalog.current_setting('engine_guard.' || t.name || '_default')
  UNION ALL SELECT 2, 'setting', n FROM pg_catalog.unnest(${custom}) AS n
    WHERE pg_catalog.current_setting(n, true) <> ''
      AND NOT EXISTS (SELECT FROM settings s WHERE s.name = n)
  UNION ALL SELECT 3, 'prepared statement', p.name FROM pg_catalog.pg_prepared_statement() p
  UNION ALL SELECT 4, 'cursor', c.name FROM pg_catalog.pg_cursor() c WHERE c.is_holdable
  UNION ALL SELECT 5, 'listen', l FROM pg_catalog.pg_listening_channels() AS l
  UNION ALL SELECT 6, 'advisory lock',
      CASE WHEN k.objsubid = 1 THEN ((k.classid::int8 << 32) | k.objid::int8)::text
        ELSE k.classid::int4 || ',' || k.objid::int4 END
      || CASE WHEN k.mode = 'ShareLock' THEN ' (shared)' ELSE '' END
    FROM pg_catalog.pg_lock_status() k
    WHERE k.locktype = 'advisory' AND k.pid = pg_catalog.pg_backend_pid()
  UNION ALL ${
    sessionUser === undefined
      ? // The first check of a handle reads the role it logged in as, and remembers it.
        `SELECT 7, 'session authorization', session_user::text
    FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) a
    WHERE a.usesysid IS DISTINCT FROM (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = session_user)
  UNION ALL SELECT 10, 'login', r.rolname::text
    FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) a
    JOIN pg_catalog.pg_roles r ON r.oid = a.usesysid`
      : `SELECT 7, 'session authorization', session_user::text
    WHERE session_user::text IS DISTINCT FROM ${literal(sessionUser)}`
  }
  UNION ALL SELECT 8, 'role', current_user::text
    WHERE pg_catalog.current_setting('role') IS DISTINCT FROM ${literal(baseline.role ?? 'none')}
  UNION ALL SELECT 9, 'backend', pg_catalog.pg_backend_pid()::text
) AS held ORDER BY step, name`;
}

/**
 * The `state` hook of {@link pgGuardOptions} (its default): reports the connection state a
 * session op left on its handle, so that a `pin: 'on-state'` session keeps the handle only while
 * it holds some (SPEC 8.1). "None" means exactly what {@link pgReset} would leave: the handle
 * then goes back to the pool without a reset.
 *
 * - **No round trip** (a synchronous `undefined`) when the handle is provably clean: nothing ran
 *   on it since it was last known clean, or only a `pgReadOnly` whose ROLLBACK round trip showed
 *   it left nothing (see `pgReadOnly`).
 * - **No round trip** either when the op left a transaction open (or failed): the answer is
 *   `[{ kind: 'transaction', name: 'open' }]` (`'failed'`), so a session can `BEGIN` in one call
 *   and `COMMIT` in a later one. The rest is checked once the transaction has ended.
 * - Otherwise **one round trip** reads the catalogs: temporary objects in `pg_my_temp_schema()`
 *   (`{ kind: 'temp table', name: 'scratch' }`, `'temp view'`, `'temp sequence'`,
 *   `'temp function'`, `'temp type'`), settings that differ from the setup's baseline
 *   (`{ kind: 'setting', name: 'search_path' }`: those `pg_settings` shows as set in the session,
 *   and custom ones such as `app.tenant` whose names the handle's SQL showed or `customSettings`
 *   declares), prepared statements (SQL `PREPARE` and `pg`'s named queries), `WITH HOLD` cursors,
 *   `LISTEN` channels, session advisory locks of `pg_backend_pid()` (`'42'`, `'1,2'`, with
 *   `' (shared)'`), `SET ROLE` (`'role'`) and `SET SESSION AUTHORIZATION`
 *   (`'session authorization'`) that differ from the baseline. Found clean, the handle is
 *   recorded as clean, so the next `pgReset` or check is skipped.
 * - The same round trip discards sequences' `currval`/`lastval` and draws a new random seed,
 *   which no catalog shows: under `pin: 'on-state'` neither outlives the call that made it, pinned
 *   or not (a session that needs `currval` across calls: `RETURNING`, or `pin: 'always'`).
 * - Not seen (and not cleared by `pgReset` either): libraries loaded with `LOAD`, state kept by
 *   extensions or procedural languages (PL/Python's `GD`), `pg` client settings; nor a custom
 *   setting set inside a function under a name the SQL never shows (declare it in
 *   `customSettings`). A custom setting given at connect time or by `ALTER ROLE ... SET` counts as
 *   state once the SQL names it, unless `customSettings` declares it (its value then is the
 *   baseline).
 * - Behind a transaction-mode pooler (PgBouncer `pool_mode=transaction`, Supavisor; found when
 *   the handle was created, see `PgRoute`), state that outlives a transaction cannot be kept: it
 *   throws {@link PgPoolerStateError} naming what it found, so the guard discards the state and
 *   rejects the call, instead of pretending. An open transaction is kept there as anywhere. It
 *   throws the same when the backend that answered is not the handle's own.
 *
 * Needs PostgreSQL 13 or later. For servers that only speak the wire protocol (HyperDB's
 * `hyperd`) and lack these catalogs, give `state: undefined` (sessions then hold their handle from
 * their first op). Bounded by the guard's `resetTimeout` (`ctx.signal`).
 */
export function pgState(
  handle: PgHandle,
  ctx: StateContext,
): readonly HeldState[] | undefined | Promise<readonly HeldState[] | undefined> {
  const client = handle.client as RawClient;
  if (isClean(client)) return undefined;
  // A query the op left on its way: its ReadyForQuery carries the transaction status to read.
  if (client.readyForQuery === false) {
    return drained(client, ctx.signal).then(() => transactionOrCatalog(handle, ctx));
  }
  return transactionOrCatalog(handle, ctx);
}

function transactionOrCatalog(
  handle: PgHandle,
  ctx: StateContext,
): readonly HeldState[] | Promise<readonly HeldState[]> {
  const status = handle.client.getTransactionStatus?.();
  if (status === 'T' || status === 'E') {
    return [{ kind: 'transaction', name: status === 'E' ? 'failed' : 'open' }];
  }
  return readCatalog(handle, ctx);
}

async function readCatalog(handle: PgHandle, ctx: StateContext): Promise<readonly HeldState[]> {
  const client = handle.client;
  const before = readyCount(client);
  const known = baselineOf(client);
  const sql = stateSql(known?.baseline ?? NO_BASELINE, known?.names ?? [], known?.login);
  const results = (await raceSignal(
    inFlight(client, client.query(sql)),
    ctx.signal,
  )) as unknown as PgQueryResult<StateRow>[];
  let backend: number | undefined;
  const found: HeldState[] = [];
  for (const row of results.at(-1)?.rows ?? []) {
    if (row.kind === 'backend') backend = Number(row.name);
    else if (row.kind === 'login') rememberLogin(client, row.name);
    else found.push({ kind: row.kind, name: row.name });
  }
  // Names beyond the cap were not checked: a custom setting may hide among them, so the handle
  // cannot be called clean (it stays pinned until it is reset or closed).
  if (known?.overflow === true) {
    found.push({
      kind: 'setting',
      name: `(custom settings: more than ${MAX_SETTING_NAMES} names seen, not all checked)`,
    });
  }
  const route: PgRoute | undefined = routeOf(client);
  if (route === 'transaction pooler') {
    if (found.length > 0) throw new PgPoolerStateError(found);
  } else if (backend !== handle.pid) {
    throw new PgPoolerStateError(found, { from: handle.pid, to: backend ?? Number.NaN });
  }
  if (found.length === 0 && before !== undefined) markCleanAt(client, before + 1);
  return found;
}
