/** Public types of engine-guard/pg: small structural types, so a user's `pg` need not match ours. */

/** One row of a result, as `pg` returns it by default (column name to parsed value). */
export type PgRow = Record<string, unknown>;

/** What {@link pgQuery} resolves to: the part of `pg`'s `QueryResult` this adapter relies on. */
export interface PgQueryResult<R extends object = PgRow> {
  /** The statement's command tag (`SELECT`, `INSERT`...); `null` for an empty query. */
  command: string | null;
  /** Rows affected or returned, as the server reported them. */
  rowCount: number | null;
  rows: R[];
  /** Result columns, with their type OIDs. */
  fields: { name: string; dataTypeID: number }[];
}

/**
 * The part of a `pg.Client` that the adapter and its callers use. A structural type, so that
 * your `pg` version does not have to match the one this package was built with; a `pg.Client`
 * fits it.
 */
export interface PgClient {
  query(
    textOrConfig: string | { text: string; values?: unknown[]; queryMode?: 'extended' },
    values?: unknown[],
  ): Promise<PgQueryResult>;
  /** A submittable (`pg.Query`, `pg-cursor`, `pg-query-stream`): returned as given. */
  query<S extends { submit(connection: unknown): void }>(submittable: S): S;
  end(): Promise<void>;
  /** `'I'` idle, `'T'` in a transaction, `'E'` in a failed transaction (pg >= 8.13). */
  getTransactionStatus?(): string | null;
}

/** One guarded engine handle: a connected client and the server process serving it. */
export interface PgHandle {
  /** The connected `pg.Client`. Use it only inside a guarded op (through {@link pgQuery}). */
  client: PgClient;
  /** `pg_backend_pid()` of this connection: the backend that runs its queries. */
  pid: number;
}

/**
 * Connection settings, passed to `new pg.Client(config)` as given (the fields listed are the
 * ones the adapter reads or that are most used; any other `pg.ClientConfig` field is accepted
 * from a `pg.ClientConfig`-typed value and passed through).
 */
export interface PgClientConfig {
  host?: string | undefined;
  port?: number | undefined;
  user?: string | undefined;
  database?: string | undefined;
  password?: unknown;
  connectionString?: string | undefined;
  ssl?: unknown;
  application_name?: string | undefined;
  keepAlive?: boolean | undefined;
  keepAliveInitialDelayMillis?: number | undefined;
  connectionTimeoutMillis?: number | undefined;
  statement_timeout?: unknown;
  lock_timeout?: unknown;
  idle_in_transaction_session_timeout?: unknown;
  query_timeout?: unknown;
  options?: string | undefined;
  types?: unknown;
}
