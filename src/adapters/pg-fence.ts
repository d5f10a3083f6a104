/**
 * Fencing on PostgreSQL: the names of the coordinator's objects (one sequence of fences, one
 * table of the highest fence that wrote, per key) and {@link pgCheckFence}, which a write runs
 * inside its transaction so that a holder whose lease was since granted to another is refused.
 */
import type { Fence } from '../coordination/coordinator.js';
import { pgQuery } from './pg-query.js';
import type { PgHandle } from './pg-types.js';

/** Default schema of the coordinator's sequence and fence table. */
export const DEFAULT_SCHEMA = 'engine_guard';

/** A plain identifier PostgreSQL keeps as written (lower case, no quoting surprises). */
const IDENTIFIER = /^[a-z_][a-z0-9_]{0,62}$/;

/**
 * @throws TypeError | RangeError when `schema` is not a plain lower-case identifier.
 */
export function validateSchema(schema: unknown, name: string): string {
  if (schema === undefined) return DEFAULT_SCHEMA;
  if (typeof schema !== 'string') {
    throw new TypeError(`The "${name}" option must be a string, got ${typeof schema}`);
  }
  if (!IDENTIFIER.test(schema)) {
    throw new RangeError(
      `The "${name}" option must be a lower-case identifier (a-z, 0-9, _; at most 63), got "${schema}"`,
    );
  }
  return schema;
}

/** Qualified names of the coordinator's objects in `schema` (a validated identifier). */
export function fenceObjects(schema: string): { sequence: string; table: string } {
  return { sequence: `"${schema}".fence_seq`, table: `"${schema}".fences` };
}

/**
 * Creates the schema, the sequence and the fence table when missing. One transaction, behind a
 * transaction-level advisory lock, so that processes starting together do not race on the
 * catalog (`CREATE ... IF NOT EXISTS` alone can fail with a unique violation there).
 */
export function setupSql(schema: string): string {
  const { sequence, table } = fenceObjects(schema);
  return [
    'BEGIN',
    // An arbitrary constant of our own: serialises the setups of every coordinator.
    'SELECT pg_advisory_xact_lock(7466934281550981)',
    `CREATE SCHEMA IF NOT EXISTS "${schema}"`,
    `CREATE SEQUENCE IF NOT EXISTS ${sequence} AS bigint`,
    `CREATE TABLE IF NOT EXISTS ${table} (key text PRIMARY KEY, fence bigint NOT NULL)`,
    'COMMIT',
  ].join(';\n');
}

/** A bigint from PostgreSQL (`pg` gives int8 as a string): a number when exact, else a bigint. */
export function toFence(value: unknown): Fence {
  const big = BigInt(value as string | number | bigint);
  return big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
}

/**
 * A write was refused because its fence is older than one that already wrote for the same key:
 * its cluster lease had been lost and granted to another holder. Nothing of it may be committed
 * (the transaction is left to the caller to roll back, as after any failed statement).
 */
export class PgFenceRefusedError extends Error {
  override readonly name = 'PgFenceRefusedError';
  /** Stable code: `ERR_PG_FENCE_REFUSED`. */
  readonly code = 'ERR_PG_FENCE_REFUSED';
  /** The coordinator key. */
  readonly key: string;
  /** The stale fence the write carried. */
  readonly fence: Fence;
  /** The newer fence that had written, when it could be read. */
  readonly current: Fence | undefined;

  constructor(key: string, fence: Fence, current: Fence | undefined) {
    super(
      `Write refused for cluster key "${key}": its fence ${String(fence)} is stale (fence ${String(current ?? '?')} already wrote); its cluster lease was lost`,
    );
    this.key = key;
    this.fence = fence;
    this.current = current;
  }
}

/** What {@link pgCheckFence} needs of the op's `ctx`. */
export interface FenceContext {
  readonly fence: Fence | undefined;
  readonly signal: AbortSignal;
  heartbeat(): void;
}

/**
 * Checks the op's fence inside the write's transaction: records it as the highest fence that
 * wrote for `key`, or throws {@link PgFenceRefusedError} when a newer fence already did. The row
 * stays locked until the transaction ends, so fenced writes of one key commit in fence order,
 * and once a newer holder wrote, no older one can. Run it first in the transaction, on the same
 * connection as the write.
 *
 * ```ts
 * await guard.write(async (pg, ctx) => {
 *   await pgQuery(pg, ctx, 'BEGIN');
 *   await pgCheckFence(pg, ctx, coordinator);
 *   await pgQuery(pg, ctx, 'UPDATE ...');
 *   await pgQuery(pg, ctx, 'COMMIT');
 * });
 * ```
 * The fence table must be reachable from the write's connection: the same database as the
 * coordinator's (it creates it on first use), or one where it was created the same way.
 * @param target The coordinator (or its `key` and `schema`).
 * @throws TypeError when `ctx.fence` is missing (the op holds no cluster lease) or the
 *   connection is not inside a transaction.
 */
export async function pgCheckFence(
  handle: PgHandle,
  ctx: FenceContext,
  target: { readonly key: string; readonly schema?: string | undefined },
): Promise<void> {
  const fence = ctx.fence;
  if (typeof fence !== 'number' && typeof fence !== 'bigint') {
    throw new TypeError(
      'pgCheckFence needs ctx.fence: run it in a write of a guard that has a coordinator',
    );
  }
  if (target === null || typeof target !== 'object' || typeof target.key !== 'string') {
    throw new TypeError('The "target" argument must be the coordinator, or { key, schema }');
  }
  const schema = validateSchema(target.schema, 'schema');
  const status = handle.client.getTransactionStatus?.();
  if (status !== undefined && status !== 'T') {
    throw new TypeError(
      'pgCheckFence must run inside the write transaction (after BEGIN): outside one it cannot hold back a stale write',
    );
  }
  const { table } = fenceObjects(schema);
  const result = await pgQuery(
    handle,
    ctx,
    `INSERT INTO ${table} AS f (key, fence) VALUES ($1, $2::bigint)
     ON CONFLICT (key) DO UPDATE SET fence = EXCLUDED.fence WHERE f.fence <= EXCLUDED.fence
     RETURNING f.fence`,
    [target.key, String(fence)],
  );
  if (result.rows.length === 1) return;
  const current = await pgQuery<{ fence: string }>(
    handle,
    ctx,
    `SELECT fence FROM ${table} WHERE key = $1`,
    [target.key],
  ).then(
    (r) => (r.rows[0] === undefined ? undefined : toFence(r.rows[0].fence)),
    () => undefined,
  );
  throw new PgFenceRefusedError(target.key, fence, current);
}
