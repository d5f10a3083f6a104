/**
 * `engine-guard/pg`: the hooks an {@link EngineGuard} needs to guard `pg` clients talking to
 * PostgreSQL, or to any server that speaks its wire protocol (HyperDB's `hyperd`, for example).
 *
 * ```ts
 * import { EngineGuard } from 'engine-guard';
 * import { pgGuardOptions, pgQuery } from 'engine-guard/pg';
 *
 * const guard = new EngineGuard(pgGuardOptions({ config: { host, port, user, database } }, { pool: 4 }));
 * const { rows } = await guard.read((pg, ctx) => pgQuery(pg, ctx, 'select * from t where id = $1', [id]));
 * ```
 *
 * - `create` opens one `pg.Client` (TCP keepalive on), bounded by the attempt's signal, and
 *   reads its backend pid.
 * - `destroy` is forceful: a polite `end()` gets a short grace, then the socket is destroyed
 *   (a half-open peer never answers `end()`). It never throws.
 * - `probe` on an idle handle runs `SELECT 1` on it. On a busy handle it must not queue behind
 *   the running query, so it asks from the side, over one side connection kept per guard
 *   options (see {@link pgGuardOptions}): is the op's backend still `active` in
 *   `pg_stat_activity`? At the same time it checks, without logging in, that the server still
 *   accepts connections on the side connection's route (a frozen server whose side backend
 *   still answers). When no query is in flight on the handle, the op is in the application's hands
 *   (between two queries of a transaction, say) and the probe passes.
 * - `cancel` runs `pg_cancel_backend(pid)` over the same side connection when a query runs, and
 *   returns once nothing of the op is queued or running on the handle (bounded by
 *   `cancelTimeout`; past it the socket is cut): the guard gives back the op's leases only then.
 * - `isFatal` is {@link isFatalPgError}: connection-level errors retire the handle.
 * - `reset` is {@link pgReset}: after each stateless op, the handle is returned to a clean state
 *   (what `DISCARD ALL` clears, then the settings `setup` made), skipped when the op provably
 *   left nothing.
 * - `state` is {@link pgState}: after each op of a `pin: 'on-state'` session, what connection
 *   state the op left (one catalog round trip, none when provably clean), so the session holds a
 *   handle only while it holds state. Behind a transaction-mode pooler (found at `create`, by the
 *   startup key and one probe) state cannot be kept, and `pgState` says so.
 *
 * Only this module loads `pg`; `engine-guard` and `engine-guard/duckdb` never do.
 *
 * @module
 */
import pg from 'pg';
import type { EngineGuardOptions, LivenessOptions } from '../index.js';
import {
  clients,
  closeClient,
  connect,
  destroySocket,
  END_GRACE_MS,
  inFlight,
  queryInFlight,
  type RawClient,
  raceSignal,
} from './pg-client.js';
import { isFatalPgError } from './pg-fatal.js';
import { PoolerDetector, routeOf } from './pg-pooler.js';
import { isClean, markClean, pgCaptureBaseline, pgReset, trackSession } from './pg-reset.js';
import { validateCustomSettings } from './pg-setting-names.js';
import {
  ACCEPT_CHECK_REUSE_MS,
  acceptsConnections,
  SIDE_CONNECT_TIMEOUT_MS,
  SideConnection,
} from './pg-side.js';
import { pgState } from './pg-state.js';
import { cancelUntilDrained } from './pg-turns.js';
import type { PgClientConfig, PgHandle } from './pg-types.js';

export {
  PgCoordinator,
  PgCoordinatorError,
  type PgCoordinatorErrorReason,
  type PgCoordinatorOptions,
  pgCoordinator,
} from './pg-coordinator.js';
export { isFatalPgError } from './pg-fatal.js';
export { type FenceContext, PgFenceRefusedError, pgCheckFence } from './pg-fence.js';
export { type PgRoute, pgRoute } from './pg-pooler.js';
export { pgQuery } from './pg-query.js';
export { pgReadOnly } from './pg-read-only.js';
export { PgResetError, pgReset } from './pg-reset.js';
export { PgPoolerStateError, pgState } from './pg-state.js';
export {
  type PgStatement,
  PgTransactionEndedError,
  type PgTransactionRefusal,
  PgTransactionRefusedError,
  pgTransaction,
} from './pg-transaction.js';
export type {
  PgClient,
  PgClientConfig,
  PgHandle,
  PgQueryResult,
  PgRow,
} from './pg-types.js';

/** Options of {@link pgGuardOptions}. */
export interface PgAdapterOptions {
  /** Connection settings, used for the handles and for the side connection of probes and cancels. */
  config: PgClientConfig;
  /**
   * TCP keepalive on the handles' sockets. Default true (with a first keepalive probe after
   * 10 s of silence unless `config.keepAliveInitialDelayMillis` says otherwise).
   */
  keepAlive?: boolean | undefined;
  /**
   * Settings of the side connection (busy-handle probes and cancels). Default: `config`, so the
   * probe takes the handles' route and a dead route fails it. Give another role (one with
   * `pg_read_all_stats` and `pg_signal_backend`) when the handles' role may not see or cancel its
   * own other sessions, as on some managed servers.
   */
  sideConfig?: PgClientConfig | undefined;
  /**
   * Custom settings (`app.tenant`) that `setup` or ops may set where their SQL does not name them
   * (inside a function, under a name built at run time). PostgreSQL lists no custom setting that
   * no loaded module defines, so the adapter learns their names from the SQL its handles send;
   * the ones named here are always part of the baseline `setup` leaves (see {@link pgReset}).
   */
  customSettings?: readonly string[] | undefined;
}

/** @deprecated Use {@link PgAdapterOptions}; kept for code written against the recipe. */
export type PgRecipeOptions = PgAdapterOptions;

/**
 * Liveness defaults of the pg adapter, tighter than the library's (5 s × 3 + 3 s): a busy-handle
 * probe is one round trip on a kept side connection, so probing every second is cheap, and a
 * silent dead op is convicted at most `interval × failures + timeout` = 3.5 s after its last sign
 * of life. A `liveness` override is merged over these field by field.
 */
export const PG_LIVENESS = { interval: 1_000, timeout: 1_500, failures: 2 } as const;

/** First TCP keepalive probe after this much silence, unless the config sets its own. */
const KEEPALIVE_INITIAL_DELAY_MS = 10_000;

/** Bound of one `cancel` when the guard's `cancelTimeout` is not given in the overrides. */
const DEFAULT_CANCEL_TIMEOUT_MS = 5_000;

/**
 * What a busy-handle probe asks: the backend's state and how long it has been in it, by the
 * server's clock.
 */
const BACKEND_STATE_SQL =
  'SELECT state, extract(epoch FROM clock_timestamp() - state_change)::float8 * 1000 AS idle_ms' +
  ' FROM pg_stat_activity WHERE pid = $1';

/**
 * Builds the {@link EngineGuardOptions} for PostgreSQL (and any PostgreSQL-wire engine):
 * `create`, `destroy`, `isAlive`, `probe`, `cancel`, `isFatal`, `reset` ({@link pgReset}),
 * `state` ({@link pgState}) and the adapter's liveness defaults ({@link PG_LIVENESS}).
 * `overrides` go on top (pool, liveness, timeouts, or your own hooks); an override that is
 * `undefined` leaves the default in place, except `reset: undefined` and `state: undefined`,
 * which turn the reset and the state check off; a `liveness` object is merged over the defaults.
 *
 * A `setup` given here is followed, on each handle, by one query that records the settings it
 * made (and the `customSettings`' values), so that {@link pgReset} can put them back after
 * `DISCARD ALL`.
 *
 * Each call keeps one side connection for the busy-handle probes and cancels of the handles it
 * creates (so give each guard its own call).
 */
export function pgGuardOptions(
  adapter: PgAdapterOptions,
  overrides: Partial<EngineGuardOptions<PgHandle>> = {},
): EngineGuardOptions<PgHandle> {
  if (adapter === null || typeof adapter !== 'object') {
    throw new TypeError('The "adapter" argument must be an object with a "config"');
  }
  if (adapter.config === null || typeof adapter.config !== 'object') {
    throw new TypeError('The "config" option must be a pg client config object');
  }
  if (overrides === null || typeof overrides !== 'object') {
    throw new TypeError('The "overrides" argument must be an object');
  }
  const base = adapter.config;
  const keepAlive = adapter.keepAlive ?? base.keepAlive ?? true;
  const config: PgClientConfig = {
    ...base,
    keepAlive,
    keepAliveInitialDelayMillis: base.keepAliveInitialDelayMillis ?? KEEPALIVE_INITIAL_DELAY_MS,
  };
  const cancelTimeout = overrides.cancelTimeout ?? DEFAULT_CANCEL_TIMEOUT_MS;
  if (
    adapter.sideConfig !== undefined &&
    (adapter.sideConfig === null || typeof adapter.sideConfig !== 'object')
  ) {
    throw new TypeError('The "sideConfig" option must be a pg client config object');
  }
  const sideConfig = adapter.sideConfig ?? config;
  const customSettings = validateCustomSettings(adapter.customSettings);
  const pooler = new PoolerDetector(config);
  const side = new SideConnection(sideConfig);
  // Where the side connection goes, as `pg` resolves it (constructing a client does not connect).
  const sideRoute = new pg.Client(sideConfig as pg.ClientConfig) as unknown as RawClient;
  // One accept check at a time for all the busy handles of this guard, and a success reused for
  // ACCEPT_CHECK_REUSE_MS: each check forks a server process, each state query does not.
  let accept: { promise: Promise<void>; settledAt: number | undefined } | undefined;
  const acceptCheck = (): Promise<void> => {
    const now = performance.now();
    if (accept !== undefined && (accept.settledAt ?? now) > now - ACCEPT_CHECK_REUSE_MS) {
      return accept.promise;
    }
    const current = {
      promise: acceptsConnections(sideRoute, AbortSignal.timeout(SIDE_CONNECT_TIMEOUT_MS)),
      settledAt: undefined as number | undefined,
    };
    accept = current;
    current.promise.then(
      () => {
        current.settledAt = performance.now();
      },
      () => {
        if (accept === current) accept = undefined;
      },
    );
    return current.promise;
  };
  let handles = 0;

  const options: EngineGuardOptions<PgHandle> = {
    liveness: { ...PG_LIVENESS },

    async create({ signal }) {
      const client = await connect(config, signal);
      try {
        const { rows } = await raceSignal(
          client.query('SELECT pg_backend_pid() AS pid'),
          signal,
          () => destroySocket(client),
        );
        const pid = rows[0]?.pid;
        if (typeof pid !== 'number') throw new Error('pg_backend_pid() returned no pid');
        // Behind a transaction-mode pooler no connection state can be kept (see pgState).
        await raceSignal(pooler.check(client, pid, signal), signal, () => destroySocket(client));
        handles++;
        trackSession(
          client,
          { readOnly: options.reset === pgReset, state: options.state === pgState },
          customSettings,
          options.resetTimeout,
        );
        // A pooler sets the client's startup parameters (application_name...) in the server
        // session: they are the handle's baseline, not state an op left.
        if (routeOf(client) !== 'direct') {
          await raceSignal(pgCaptureBaseline({ client, pid }, signal), signal, () =>
            destroySocket(client),
          );
        }
        // Busy-handle probes need the side connection: open it now, not on a slow link's
        // first probe (where connecting could take most of the probe's timeout).
        if (options.probe === ownProbe) side.warm();
        return { client, pid };
      } catch (error) {
        destroySocket(client);
        throw error;
      }
    },

    async destroy(handle) {
      if (handles > 0) handles--;
      if (handles === 0) side.close();
      await closeClient(handle.client, END_GRACE_MS);
    },

    // A client whose socket already failed or ended (server restart) is dead: skip it.
    isAlive(handle) {
      return clients.get(handle.client)?.gone === undefined;
    },

    async probe(handle, { signal, op }) {
      const gone = clients.get(handle.client)?.gone;
      if (gone !== undefined) {
        throw new Error(`Connection of backend ${handle.pid} is gone: ${gone.message}`, {
          cause: gone,
        });
      }
      if (op === undefined) {
        // Idle: nothing else runs on the handle, ask it directly. `SELECT 1` leaves no state.
        const clean = isClean(handle.client);
        await raceSignal(inFlight(handle.client, handle.client.query('SELECT 1')), signal);
        if (clean) markClean(handle.client);
        return;
      }
      // No query in flight: the op is working in the application (between two statements of a
      // transaction, say), and the server is waiting for it. That is no stall.
      if (!queryInFlight(handle.client)) return;
      // A query is in flight: ask from the side whether the server is still working on it.
      const started = performance.now();
      const [rows] = await Promise.all([
        side.query<{ state: string | null; idle_ms: number | null }>(signal, BACKEND_STATE_SQL, [
          handle.pid,
        ]),
        raceSignal(acceptCheck(), signal),
      ]);
      const row = rows[0];
      if (row === undefined) throw new Error(`Backend ${handle.pid} is gone`);
      const { state, idle_ms: idleMs } = row;
      if (state === 'active' || state === 'fastpath function call') return;
      // The query finished while this probe was under way (its answer may still be on its way
      // over a slow link), or it is no longer in flight: not a failure. If the answer is lost,
      // the next probe sees it.
      if (!queryInFlight(handle.client)) return;
      const now = performance.now();
      // The query in flight was sent so recently that the side query may have looked before it
      // reached the server (a slow link): not a failure either. A lost request is convicted
      // by the next probes, once it has been in flight for longer.
      const sentAt = clients.get(handle.client)?.sentAt ?? Number.NEGATIVE_INFINITY;
      if (now - sentAt <= 2 * (now - started)) return;
      if (idleMs !== null && idleMs <= now - started) return;
      throw new Error(
        `Backend ${handle.pid} is ${state ?? 'in an unknown state'}${
          idleMs === null ? '' : ` for ${Math.round(idleMs)} ms`
        } while a query of op ${op.id} is in flight: its answer was lost`,
      );
    },

    // The guard keeps the op's leases and handle until this returns: see cancelUntilDrained.
    async cancel(handle) {
      const controller = new AbortController();
      const timer = setTimeout(
        () => controller.abort(new Error(`cancel timed out after ${cancelTimeout} ms`)),
        cancelTimeout,
      );
      timer.unref();
      try {
        return await cancelUntilDrained(handle.client, controller.signal, async () => {
          const rows = await side.query<{ cancelled: boolean }>(
            controller.signal,
            'SELECT pg_cancel_backend($1) AS cancelled',
            [handle.pid],
            true,
          );
          return rows[0]?.cancelled === true;
        });
      } catch (error) {
        // Not drained in time: nothing still queued in pg may be sent later (the handle is lost).
        destroySocket(handle.client);
        throw error;
      } finally {
        clearTimeout(timer);
      }
    },

    isFatal: isFatalPgError,

    reset: pgReset,

    state: pgState,
  };

  const ownProbe = options.probe;
  for (const [key, value] of Object.entries(overrides)) {
    if (value === undefined) continue;
    if (key === 'liveness' && value !== false && typeof value === 'object' && value !== null) {
      options.liveness = { ...PG_LIVENESS, ...definedFields(value as LivenessOptions) };
      continue;
    }
    (options as unknown as Record<string, unknown>)[key] = value;
  }
  // Explicitly undefined: "no reset" (sessions-only guards, engines without DISCARD).
  if (Object.hasOwn(overrides, 'reset') && overrides.reset === undefined) delete options.reset;
  // The same for the state check: sessions then hold their handle from their first op.
  if (Object.hasOwn(overrides, 'state') && overrides.state === undefined) delete options.state;
  const setup = options.setup;
  if (setup !== undefined || customSettings.length > 0) {
    options.setup = async (handle, ctx) => {
      await setup?.(handle, ctx);
      await pgCaptureBaseline(handle, ctx.signal);
    };
  }
  return options;
}

/** `value` without its `undefined` fields. */
function definedFields<T extends object>(value: T): Partial<T> {
  const out: Partial<T> = {};
  for (const [key, field] of Object.entries(value)) {
    if (field !== undefined) (out as Record<string, unknown>)[key] = field;
  }
  return out;
}
