/**
 * Whether a connection of engine-guard/pg goes through a connection pooler, and whether that
 * pooler keeps connection state (a session-mode pool) or not (a transaction-mode pool, as
 * PgBouncer's `pool_mode=transaction` and Supavisor's transaction mode: each transaction, or each
 * statement outside one, may run on another server connection, which another client then gets
 * with whatever the statement left on it).
 *
 * - A direct connection's startup key (BackendKeyData) carries the pid of its backend; a pooler
 *   hands out keys of its own. So a key that is not `pg_backend_pid()` means a pooler sits
 *   between, at no cost.
 * - Behind one, which kind is asked once per guard options (the first handle's create), the way
 *   `pgCoordinator` checks its lock session: the handle sets a token in its session; a second
 *   connection through the same pooler opens a transaction (so it holds a server connection) and
 *   looks for the token; then the handle reads its token back. Another client seeing the token,
 *   or the handle losing it or changing backend, proves a transaction-mode pooler. A session-mode
 *   pooler gives each client its own server connection for as long as it is connected, so
 *   neither can happen there.
 */

import { closeClient, connect, END_GRACE_MS, type RawClient } from './pg-client.js';
import type { PgClient, PgClientConfig } from './pg-types.js';

/** How a handle reaches its server. */
export type PgRoute = 'direct' | 'session pooler' | 'transaction pooler';

const routes = new WeakMap<PgClient, PgRoute>();

/** How `client` reaches its server, as its create found (`undefined`: not known). */
export function routeOf(client: PgClient): PgRoute | undefined {
  return routes.get(client);
}

/**
 * How a handle made by `pgGuardOptions` reaches its server, as its `create` found:
 * `'direct'`, `'session pooler'` (state kept as on a direct connection) or `'transaction pooler'`
 * (PgBouncer `pool_mode=transaction`, Supavisor in transaction mode: connection state cannot be
 * kept, see `pgState`). `undefined` for a handle the adapter did not make.
 */
export function pgRoute(handle: { readonly client: PgClient }): PgRoute | undefined {
  return routes.get(handle.client);
}

/** The custom setting the probe sets on the handle's session. */
const PROBE_SETTING = 'engine_guard.pooler_probe';

/**
 * Finds each new handle's route; the kind of pooler is asked once per instance (one per
 * `pgGuardOptions` call: every handle of it takes the same route), and again after a failure.
 */
export class PoolerDetector {
  readonly #config: PgClientConfig;
  #kind: Promise<PgRoute | undefined> | undefined;

  constructor(config: PgClientConfig) {
    this.#config = config;
  }

  /** Records the route of a new handle `client` whose backend says it is `pid`. */
  async check(client: RawClient, pid: number, signal: AbortSignal): Promise<void> {
    const key = (client as { processID?: unknown }).processID;
    if (key === pid) {
      routes.set(client, 'direct');
      return;
    }
    // No startup key at all (a server that only speaks the protocol): nothing to go by.
    if (typeof key !== 'number') return;
    if (this.#kind === undefined) {
      const kind = probeKind(client, pid, this.#config, signal);
      this.#kind = kind;
      kind.catch(() => {
        if (this.#kind === kind) this.#kind = undefined;
      });
    }
    const kind = await this.#kind;
    if (kind !== undefined) routes.set(client, kind);
  }
}

/**
 * How long a probe statement may wait for a server connection, ms. The other connection's waits
 * while the handle holds the only one of a session-mode pool; the handle's second statement
 * waits while the other connection holds the only one of a transaction-mode pool. On a direct
 * connection or a pool with room, each is answered at once.
 */
const PROBE_WAIT_MS = 2_000;

/** `promise`'s value, or `'waited'` when it takes longer than {@link PROBE_WAIT_MS}. */
async function withinProbeWait<T>(promise: Promise<T>): Promise<T | 'waited'> {
  let timer: NodeJS.Timeout | undefined;
  const waited = new Promise<'waited'>((resolve) => {
    timer = setTimeout(() => resolve('waited'), PROBE_WAIT_MS);
    timer.unref();
  });
  try {
    return await Promise.race([promise, waited]);
  } finally {
    clearTimeout(timer);
  }
}

/** The probe described in the module's comment, on handle `client`. */
async function probeKind(
  client: RawClient,
  pid: number,
  config: PgClientConfig,
  signal: AbortSignal,
): Promise<PgRoute | undefined> {
  const token = `${process.pid}-${Math.random().toString(36).slice(2)}`;
  try {
    await client.query('SELECT pg_catalog.set_config($1, $2, false)', [PROBE_SETTING, token]);
  } catch (error) {
    // A server that refuses the probe (no set_config): the route stays unknown.
    if (typeof (error as { code?: unknown } | null)?.code === 'string') return undefined;
    throw error;
  }
  const other = await connect(config, signal);
  try {
    const seen = await withinProbeWait(
      other
        .query('BEGIN')
        .then(() =>
          other.query('SELECT pg_catalog.current_setting($1, true) AS token', [PROBE_SETTING]),
        ),
    );
    // The handle keeps the pool's only server connection while idle: a session-mode pool.
    if (seen === 'waited') return 'session pooler';
    // Another client saw this session's setting: the server connection went to it.
    if ((seen.rows[0] as { token: string | null } | undefined)?.token === token) {
      return 'transaction pooler';
    }
    const back = client.query(
      'SELECT pg_catalog.current_setting($1, true) AS token, pg_catalog.pg_backend_pid() AS pid',
      [PROBE_SETTING],
    );
    const answer = await withinProbeWait(back);
    if (answer === 'waited') {
      // No server connection of its own: let the other one go, then the answer comes.
      await other.query('ROLLBACK');
      await back;
      return 'transaction pooler';
    }
    const row = answer.rows[0] as { token: string | null; pid: number } | undefined;
    return row?.token !== token || row.pid !== pid ? 'transaction pooler' : 'session pooler';
  } finally {
    await closeClient(other, END_GRACE_MS);
    // Behind a session-mode pool, the handle's own session: leave nothing of the probe there.
    await client
      .query('SELECT pg_catalog.set_config($1, $2, false)', [PROBE_SETTING, ''])
      .catch(() => undefined);
  }
}
