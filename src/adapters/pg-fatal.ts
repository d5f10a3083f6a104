/** {@link isFatalPgError}: which errors mean a `pg` connection is gone. */

/** Node.js socket error codes meaning the connection is gone. */
const FATAL_ERRNO: ReadonlySet<string> = new Set([
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'ECONNREFUSED',
  'ECONNABORTED',
  'ENOTCONN',
  'EHOSTUNREACH',
  'EHOSTDOWN',
  'ENETUNREACH',
  'ENETDOWN',
]);

/**
 * SQLSTATEs (outside class 08) after which the server closes the session: admin_shutdown,
 * crash_shutdown, cannot_connect_now, database_dropped, idle_session_timeout.
 */
const FATAL_SQLSTATE: ReadonlySet<string> = new Set(['57P01', '57P02', '57P03', '57P04', '57P05']);

/** Messages of `pg` errors that mean the client's connection is gone. */
const FATAL_MESSAGES: readonly string[] = [
  'Client has encountered a connection error and is not queryable',
  'Client was closed and is not queryable',
];

/**
 * True for errors meaning "this connection is gone": socket errors (`ECONNRESET`, `EPIPE`,
 * `ETIMEDOUT`, `ECONNREFUSED`, ...), `pg`'s "Connection terminated..." and "... not queryable"
 * errors, SQLSTATE class 08 (connection exception), the 57P0x codes after which the server
 * ends the session (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now, ...),
 * and `PgResetError` (`ERR_PG_RESET`: the adapter closed the connection, whatever its `cause`).
 *
 * False for everything else, including 57014 (query_canceled): a cancelled query leaves a
 * healthy connection. The `cause` chain (and an `AggregateError`'s errors) are looked at too.
 */
export function isFatalPgError(error: unknown): boolean {
  try {
    return isFatalAt(error, 0);
  } catch {
    // A getter that throws, a revoked Proxy: nothing that says "connection gone".
    return false;
  }
}

function isFatalAt(error: unknown, depth: number): boolean {
  if (depth > 8 || error === null || typeof error !== 'object') return false;
  const { code, message, cause } = error as { code?: unknown; message?: unknown; cause?: unknown };
  if (typeof code === 'string') {
    if (FATAL_ERRNO.has(code) || FATAL_SQLSTATE.has(code)) return true;
    // PgResetError: the reset between two callers failed, and the adapter closed the connection.
    if (code === 'ERR_PG_RESET') return true;
    if (code.length === 5 && code.startsWith('08')) return true;
  }
  if (typeof message === 'string') {
    if (message.startsWith('Connection terminated')) return true;
    if (FATAL_MESSAGES.includes(message)) return true;
  }
  if (
    error instanceof AggregateError &&
    Array.isArray(error.errors) &&
    error.errors.some((e) => isFatalAt(e, depth + 1))
  ) {
    return true;
  }
  return cause !== undefined && cause !== error && isFatalAt(cause, depth + 1);
}
