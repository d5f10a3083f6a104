/**
 * PostgreSQL (or any PostgreSQL-wire server, such as HyperDB's `hyperd`) behind the MCP server,
 * built on `engine-guard/pg`.
 *
 * Read-only `query`: the statement runs inside `BEGIN READ ONLY ... ROLLBACK`, so the server
 * itself refuses writes (SQLSTATE 25006 "cannot execute INSERT in a read-only transaction"). It
 * is sent with the extended query protocol, which takes exactly one statement: the server
 * rejects `COMMIT; DELETE ...` ("cannot insert multiple commands into a prepared statement"),
 * so the statement cannot leave the read-only transaction either. Rows are capped with the
 * protocol's own row limit (Execute with a maximum row count, then the portal is closed), so an
 * oversized result is never transferred, let alone buffered.
 */

import type { EngineGuardOptions, OpContext } from 'engine-guard';
import {
  isFatalPgError,
  type PgClient,
  type PgHandle,
  pgGuardOptions,
  pgQuery,
  pgTransaction,
} from 'engine-guard/pg';
import pg from 'pg';
import {
  DESCRIBE_TABLE_SQL,
  type Engine,
  type EngineFacts,
  type ExecuteOutput,
  groupColumns,
  InputError,
  LIST_TABLES_SQL,
  type QueryOptions,
  type QueryOutput,
  type TableColumns,
  type TableInfo,
  toJsonValue,
  uniqueNames,
} from '../engine.js';

export interface PostgresEngineOptions {
  /** postgres:// URL. */
  url: string;
  /** Reported to the server as `application_name`. */
  applicationName?: string;
}

const TYPE_NAMES = new Map<number, string>([
  ...Object.entries(pg.types.builtins).map(([name, oid]): [number, string] => [
    oid as number,
    name.toLowerCase(),
  ]),
  [19, 'name'],
  [2278, 'void'],
]);
const INT8_OID = 20;

/** `PostgreSQL at host:port/db`, never the password. */
function describeUrl(url: string): string {
  try {
    const parsed = new URL(url);
    const db = parsed.pathname.replace(/^\//, '') || '(default database)';
    const user = parsed.username ? `${decodeURIComponent(parsed.username)}@` : '';
    return `PostgreSQL-wire server at ${user}${parsed.host}/${db}`;
  } catch {
    return 'PostgreSQL-wire server';
  }
}

interface ConnectionInternals {
  sync(): void;
  close(message: { type: 'P' | 'S'; name?: string }): void;
}

interface QueryInternals {
  handlePortalSuspended(connection: ConnectionInternals): void;
  handleCommandComplete(message: unknown, connection: ConnectionInternals): void;
  handleEmptyQuery(connection: ConnectionInternals): void;
  handleError(error: Error, connection: ConnectionInternals | undefined): void;
}

/**
 * A `pg.Query` that fetches at most `limit` rows: the portal is executed with that row count,
 * and when the server suspends it (more rows remain) the portal is closed instead of resumed.
 * With a row limit `pg` leaves the protocol Sync to the query, so this one sends exactly one
 * Sync on every path (completion, suspension, error) and the connection stays in step.
 */
function limitedQuery(text: string, limit: number): pg.Query {
  // Rows as arrays: two columns with the same name stay two values.
  const query = new pg.Query({ text, rows: limit, rowMode: 'array' } as pg.QueryConfig);
  const internals = query as unknown as QueryInternals;
  const complete = internals.handleCommandComplete.bind(query);
  const empty = internals.handleEmptyQuery.bind(query);
  const fail = internals.handleError.bind(query);
  let synced = false;
  internals.handleCommandComplete = (message, connection) => {
    synced = true; // pg syncs after CommandComplete when a row limit is set
    complete(message, connection);
  };
  internals.handleEmptyQuery = (connection) => {
    synced = true;
    empty(connection);
  };
  internals.handlePortalSuspended = (connection) => {
    if (synced) return;
    synced = true;
    connection.close({ type: 'P', name: '' });
    connection.sync();
  };
  internals.handleError = (error, connection) => {
    // An ErrorResponse from the server: it now skips everything until a Sync.
    if (!synced && error instanceof pg.DatabaseError && connection !== undefined) {
      synced = true;
      connection.sync();
    }
    fail(error, connection);
  };
  return query;
}

/**
 * Runs one statement with the extended protocol, keeping at most `maxRows + 1` rows. Heartbeats
 * per row received. It waits for the server's answer even after `ctx.signal` aborts: the guard
 * sent a server-side cancel, and the handle is only reused once the server has acknowledged it.
 */
function runLimited(
  client: PgClient,
  ctx: OpContext,
  sql: string,
  options: QueryOptions,
): Promise<QueryOutput> {
  const limit = options.maxRows + 1;
  return new Promise<QueryOutput>((resolve, reject) => {
    const query = limitedQuery(sql, limit);
    const rows: unknown[][] = [];
    query.on('row', (row: unknown[]) => {
      if (rows.length < limit) rows.push(row);
      options.progress.rowsReceived++;
      ctx.heartbeat();
    });
    query.on('error', reject);
    query.on('end', (result) => {
      const fields = result?.fields ?? [];
      const names = uniqueNames(fields.map((field) => field.name));
      const truncated = rows.length > options.maxRows;
      const kept = truncated ? rows.slice(0, options.maxRows) : rows;
      resolve({
        columns: fields.map((field, i) => ({
          name: names[i] ?? field.name,
          type: TYPE_NAMES.get(field.dataTypeID) ?? `oid ${field.dataTypeID}`,
        })),
        rows: kept.map((row) => {
          const out: Record<string, unknown> = {};
          fields.forEach((field, i) => {
            const value = row[i];
            out[names[i] ?? field.name] =
              field.dataTypeID === INT8_OID && typeof value === 'string'
                ? toJsonValue(BigInt(value))
                : toJsonValue(value);
          });
          return out;
        }),
        truncated,
      });
    });
    client.query(query);
  });
}

/** Ends the transaction whatever happened; a dead connection is the guard's business. */
async function rollback(handle: PgHandle): Promise<void> {
  try {
    await handle.client.query('ROLLBACK');
  } catch {
    // The connection failed: the op's own error says so and `isFatal` retires the handle.
  }
}

export function createPostgresEngine(options: PostgresEngineOptions): Engine<PgHandle> {
  const config: pg.ClientConfig = {
    connectionString: options.url,
    application_name: options.applicationName ?? 'engine-guard-mcp',
  };
  return {
    kind: 'postgres',
    description: describeUrl(options.url),
    readOnlyMode:
      'each query runs alone (extended protocol: one statement) inside BEGIN READ ONLY ... ROLLBACK',

    guardOptions(overrides: Partial<EngineGuardOptions<PgHandle>>) {
      return pgGuardOptions({ config }, overrides);
    },

    isFatal: isFatalPgError,

    async query(handle, ctx, sql, queryOptions) {
      // BEGIN inside the try: whatever happens next, the ROLLBACK is queued behind it, so the
      // handle never goes back to the pool inside a transaction.
      try {
        await handle.client.query('BEGIN READ ONLY');
        ctx.signal.throwIfAborted();
        return await runLimited(handle.client, ctx, sql, queryOptions);
      } finally {
        await rollback(handle);
      }
    },

    async execute(handle, ctx, sql): Promise<ExecuteOutput> {
      // All or nothing: statement by statement in one transaction; a statement that would end
      // it (COMMIT, ROLLBACK...) is refused by what the server reports (PgTransactionEndedError).
      const results = await pgTransaction(handle, ctx, sql);
      if (results.length === 0) throw new InputError('No SQL statement given.');
      let affected: number | null = null;
      for (const result of results) {
        if (['INSERT', 'UPDATE', 'DELETE', 'MERGE', 'COPY'].includes(result.command ?? '')) {
          affected = (affected ?? 0) + (result.rowCount ?? 0);
        }
      }
      return { statements: results.length, rowsAffected: affected };
    },

    async listTables(handle, ctx): Promise<TableInfo[]> {
      const { rows } = await pgQuery<{ schema: string; name: string; type: string }>(
        handle,
        ctx,
        LIST_TABLES_SQL,
      );
      return rows.map((row) => ({ schema: row.schema, name: row.name, type: row.type }));
    },

    async describeTable(handle, ctx, table, schema): Promise<Map<string, TableColumns>> {
      const { rows } = await pgQuery(handle, ctx, DESCRIBE_TABLE_SQL, [table, schema ?? '']);
      return groupColumns(rows, table);
    },

    async facts(handle, ctx): Promise<EngineFacts> {
      const { rows } = await pgQuery<{
        version: string;
        database: string;
        tables: string;
        views: string;
      }>(
        handle,
        ctx,
        `SELECT version() AS version, current_database() AS database,
          (SELECT count(*) FROM information_schema.tables
            WHERE table_schema NOT IN ('information_schema', 'pg_catalog', 'pg_toast')
              AND table_type = 'BASE TABLE') AS tables,
          (SELECT count(*) FROM information_schema.tables
            WHERE table_schema NOT IN ('information_schema', 'pg_catalog', 'pg_toast')
              AND table_type = 'VIEW') AS views`,
      );
      const row = rows[0];
      if (row === undefined) throw new Error('the engine returned no facts');
      return {
        version: row.version,
        database: row.database,
        tables: Number(row.tables),
        views: Number(row.views),
      };
    },

    async close() {
      // The guard owns every connection; nothing else to release.
    },
  };
}
