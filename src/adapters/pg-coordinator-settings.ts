/**
 * What `pgCoordinator` accepts and refuses: its options (validated, with their defaults), its
 * error, the advisory lock key of a cluster key, and the checks of the server it connects to.
 */
import { createHash } from 'node:crypto';
import { validateBoolean, validateDuration } from '../internal/validate.js';
import { validateSchema } from './pg-fence.js';

const VERSION_14 = 140_000;

/** Options of {@link pgCoordinator}. */
export interface PgCoordinatorOptions {
  /** What the lease is for: every process coordinating on the same thing uses the same key. */
  key: string;
  /** Schema of the fence sequence and table, created on first use. Default `engine_guard`. */
  schema?: string | undefined;
  /** Reads take a shared cluster lease too (no write anywhere runs while they do). Default false. */
  coordinateReads?: boolean | undefined;
  /**
   * The server ends a lock session silent this long (`idle_session_timeout`), freeing its locks:
   * a frozen or partitioned holder loses the lease within about this bound. Default 5,000 ms;
   * at least 1,000.
   */
  leaseTimeout?: number | undefined;
  /** How often the lease is renewed while its op is alive, ms. Default 1,000; at most `leaseTimeout / 3`. */
  renewInterval?: number | undefined;
  /** Bound of opening the lock session, ms. Default 10,000. */
  connectTimeout?: number | undefined;
}

/** Why a {@link PgCoordinatorError} was thrown. */
export type PgCoordinatorErrorReason = 'pooler' | 'server-version' | 'closed' | 'session';

/**
 * The coordinator cannot work here (`pooler`: the connection goes through a transaction-mode
 * pooler; `server-version`: PostgreSQL older than 14), was closed (`closed`), or its lock
 * session could not be opened or failed while an acquire waited (`session`; `cause` is the
 * connection's error).
 */
export class PgCoordinatorError extends Error {
  override readonly name = 'PgCoordinatorError';
  /** Stable code: `ERR_PG_COORDINATOR`. */
  readonly code = 'ERR_PG_COORDINATOR';
  /** Why it was thrown (see {@link PgCoordinatorErrorReason}). */
  readonly reason: PgCoordinatorErrorReason;
  constructor(reason: PgCoordinatorErrorReason, message: string, options?: ErrorOptions) {
    super(message, options);
    this.reason = reason;
  }
}

/** Settings after validation and defaults. */
export interface Settings {
  readonly key: string;
  readonly schema: string;
  readonly coordinateReads: boolean;
  readonly leaseTimeout: number;
  readonly renewInterval: number;
  readonly connectTimeout: number;
  /** Counted from the send of the last answered renewal: the holder's own, earlier, deadline. */
  readonly lossAfter: number;
}

const OPTION_KEYS = new Set([
  'key',
  'schema',
  'coordinateReads',
  'leaseTimeout',
  'renewInterval',
  'connectTimeout',
]);

export function parseOptions(options: PgCoordinatorOptions): Settings {
  if (options === null || typeof options !== 'object') {
    throw new TypeError('The "options" argument must be an object with a "key" string');
  }
  for (const name of Object.keys(options)) {
    if (!OPTION_KEYS.has(name)) throw new TypeError(`Unknown pgCoordinator option "${name}"`);
  }
  if (typeof options.key !== 'string' || options.key.length === 0) {
    throw new TypeError('The "key" option must be a non-empty string');
  }
  const leaseTimeout = validateDuration(options.leaseTimeout, 'leaseTimeout') ?? 5_000;
  if (leaseTimeout < 1_000 || !Number.isInteger(leaseTimeout)) {
    throw new RangeError(
      `The "leaseTimeout" option must be an integer number of ms >= 1000, got ${leaseTimeout}`,
    );
  }
  const renewInterval = validateDuration(options.renewInterval, 'renewInterval') ?? 1_000;
  if (renewInterval <= 0 || renewInterval > leaseTimeout / 3) {
    throw new RangeError(
      `The "renewInterval" option must be > 0 and at most leaseTimeout / 3 (${leaseTimeout / 3}), got ${renewInterval}`,
    );
  }
  const connectTimeout = validateDuration(options.connectTimeout, 'connectTimeout') ?? 10_000;
  return {
    key: options.key,
    schema: validateSchema(options.schema, 'schema'),
    coordinateReads: validateBoolean(options.coordinateReads, 'coordinateReads') ?? false,
    leaseTimeout,
    renewInterval,
    connectTimeout,
    lossAfter: leaseTimeout - renewInterval,
  };
}

/** The advisory lock key of `key`: 64 bits of its SHA-256, as a signed bigint (text). */
export function lockKey(key: string): string {
  const digest = createHash('sha256').update(`engine-guard:${key}`).digest();
  return digest.readBigInt64BE(0).toString();
}

/** What the first statement of a lock session reads. */
export interface ServerCheck {
  version: number;
  pid: number;
}

/** What the second statement reads back of the first one's session. */
export interface SessionCheck {
  pid: number;
  token: string | null;
}

/**
 * @throws PgCoordinatorError (`server-version`) for a server older than PostgreSQL 14, which
 *   has no `idle_session_timeout` to end a silent lock session.
 */
export function checkServerVersion(row: ServerCheck | undefined): ServerCheck {
  if (row === undefined || !(row.version >= VERSION_14)) {
    throw new PgCoordinatorError(
      'server-version',
      `pgCoordinator needs PostgreSQL 14 or later (idle_session_timeout ends a silent lock session); the server is version ${String(row?.version)}`,
    );
  }
  return row;
}

/**
 * @throws PgCoordinatorError (`pooler`) when the second statement ran on another backend, or
 *   without the first one's session setting: a transaction-mode pooler sits between.
 */
export function checkSessionPinned(
  first: ServerCheck,
  second: SessionCheck | undefined,
  token: string,
): void {
  if (second?.pid !== first.pid || second.token !== token) {
    throw new PgCoordinatorError(
      'pooler',
      'pgCoordinator needs a direct session: its session settings did not survive to the next statement, as behind a transaction-mode pooler (PgBouncer pool_mode=transaction), where session advisory locks do not hold. Connect it to the server, or to a session-mode pool',
    );
  }
}
