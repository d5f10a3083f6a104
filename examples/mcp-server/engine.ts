/**
 * What the MCP server needs from an engine. One adapter per engine (`engines/duckdb.ts`,
 * `engines/postgres.ts`), each built on its adapter (`engine-guard/duckdb`, `engine-guard/pg`).
 *
 * Every method that takes a handle runs inside a guarded op: the server calls it from
 * `guard.read(...)` or `guard.write(...)`, so the handle is exclusively the op's while it runs.
 */
import type { EngineGuardOptions, OpContext } from 'engine-guard';

export type EngineKind = 'duckdb' | 'postgres';

export interface ColumnMeta {
  name: string;
  type: string;
}

/** What a running query reports about itself; the adapter updates it, the server reads it. */
export interface QueryProgress {
  /** Engine's own completion estimate, 0 to 100, when it has one. */
  percentage: number | undefined;
  /** Rows the engine has processed (scanned), when it reports it. */
  rowsProcessed: number | undefined;
  /** Result rows received so far. */
  rowsReceived: number;
}

export interface QueryOptions {
  /** Return at most this many rows; `truncated` tells whether there were more. */
  maxRows: number;
  /** Updated while the query runs (read by the progress notifications). */
  progress: QueryProgress;
}

export interface QueryOutput {
  columns: ColumnMeta[];
  /** Rows as objects keyed by (deduplicated) column name, values JSON-safe. */
  rows: Record<string, unknown>[];
  /** The statement produced more rows than `maxRows`. */
  truncated: boolean;
}

export interface ExecuteOutput {
  /** Statements run (all in one transaction). */
  statements: number;
  /** Rows inserted, updated or deleted, when the engine reports it. */
  rowsAffected: number | null;
}

export interface TableInfo {
  schema: string;
  name: string;
  /** `BASE TABLE`, `VIEW`, `LOCAL TEMPORARY`, ... as the engine's information_schema says. */
  type: string;
}

export interface ColumnInfo {
  name: string;
  type: string;
  nullable: boolean;
  default: string | null;
}

/** One table's columns, under its name as the engine spells it. */
export interface TableColumns {
  table: string;
  columns: ColumnInfo[];
}

/** Facts shown by the `status` tool, served from a cache (never loaded on the status path). */
export interface EngineFacts {
  version: string;
  database: string;
  tables: number;
  views: number;
}

export interface Engine<H> {
  readonly kind: EngineKind;
  /** One line for logs and `status`, e.g. `DuckDB (in-memory, sample data)`. No secrets. */
  readonly description: string;
  /** How `query` is kept read-only, for `status` and the docs. */
  readonly readOnlyMode: string;
  /** Guard options from the recipe, with the server's settings on top. */
  guardOptions(overrides: Partial<EngineGuardOptions<H>>): EngineGuardOptions<H>;
  /** True for errors meaning the handle is gone (the guard replaces it). */
  isFatal(error: unknown): boolean;
  /**
   * Runs exactly one statement in a transaction the ENGINE keeps read-only: a write is refused by
   * the engine with its own error, whatever the SQL text looks like.
   */
  query(handle: H, ctx: OpContext, sql: string, options: QueryOptions): Promise<QueryOutput>;
  /** Runs one or more statements in one transaction (all or nothing). */
  execute(handle: H, ctx: OpContext, sql: string): Promise<ExecuteOutput>;
  listTables(handle: H, ctx: OpContext): Promise<TableInfo[]>;
  /** Columns of every table named `table` (case-insensitive), keyed by schema. */
  describeTable(
    handle: H,
    ctx: OpContext,
    table: string,
    schema: string | undefined,
  ): Promise<Map<string, TableColumns>>;
  facts(handle: H, ctx: OpContext): Promise<EngineFacts>;
  /** Releases what the adapter holds outside the guard (e.g. the DuckDB instance). */
  close(): Promise<void>;
}

/**
 * A problem with the caller's input (not with the engine): reported as a tool error with this
 * message as is.
 */
export class InputError extends Error {
  override readonly name = 'InputError';
}

/** Information-schema query shared by both engines: user tables and views. */
export const LIST_TABLES_SQL = `SELECT table_schema AS "schema", table_name AS "name", table_type AS "type"
FROM information_schema.tables
WHERE table_schema NOT IN ('information_schema', 'pg_catalog', 'pg_toast')
ORDER BY 1, 2`;

/**
 * Columns of the tables named `$1` (case-insensitively), optionally in schema `$2`. Both
 * engines accept `$n` parameters.
 */
export const DESCRIBE_TABLE_SQL = `SELECT table_schema AS "schema", table_name AS "table", column_name AS "name",
  data_type AS "type", is_nullable AS "nullable", column_default AS "default"
FROM information_schema.columns
WHERE lower(table_name) = lower($1)
  AND ($2 = '' OR lower(table_schema) = lower($2))
  AND table_schema NOT IN ('information_schema', 'pg_catalog', 'pg_toast')
ORDER BY table_schema, table_name, ordinal_position`;

/** Groups DESCRIBE_TABLE_SQL rows by schema, preferring an exact-case table name match. */
export function groupColumns(
  rows: readonly Record<string, unknown>[],
  table: string,
): Map<string, TableColumns> {
  const exact = rows.some((row) => row.table === table);
  const bySchema = new Map<string, TableColumns>();
  for (const row of rows) {
    if (exact && row.table !== table) continue;
    const schema = String(row.schema);
    let entry = bySchema.get(schema);
    if (entry === undefined) {
      entry = { table: String(row.table), columns: [] };
      bySchema.set(schema, entry);
    }
    entry.columns.push({
      name: String(row.name),
      type: String(row.type),
      nullable: row.nullable === true || row.nullable === 'YES',
      default: row.default === null || row.default === undefined ? null : String(row.default),
    });
  }
  return bySchema;
}

/** Column names made unique (`a`, `a_2`, ...) so rows can be objects. */
export function uniqueNames(names: readonly string[]): string[] {
  const seen = new Set<string>();
  return names.map((name) => {
    let candidate = name === '' ? '?column?' : name;
    for (let i = 2; seen.has(candidate); i++) candidate = `${name}_${i}`;
    seen.add(candidate);
    return candidate;
  });
}

/** Converts an engine value to something `JSON.stringify` renders faithfully. */
export function toJsonValue(value: unknown): unknown {
  switch (typeof value) {
    case 'bigint':
      return Number.isSafeInteger(Number(value)) ? Number(value) : value.toString();
    case 'number':
      return Number.isFinite(value) ? value : String(value);
    case 'string':
    case 'boolean':
      return value;
    case 'undefined':
      return null;
    case 'object': {
      if (value === null) return null;
      if (value instanceof Date) {
        return Number.isNaN(value.getTime()) ? String(value) : value.toISOString();
      }
      if (value instanceof Uint8Array) return `\\x${Buffer.from(value).toString('hex')}`;
      if (Array.isArray(value)) return value.map(toJsonValue);
      if (value instanceof Map) {
        return Object.fromEntries([...value].map(([k, v]) => [String(k), toJsonValue(v)]));
      }
      const proto = Object.getPrototypeOf(value);
      if (proto === Object.prototype || proto === null) {
        const out: Record<string, unknown> = {};
        for (const [k, v] of Object.entries(value)) out[k] = toJsonValue(v);
        return out;
      }
      // Engine value classes (decimals, intervals, UUIDs...) print themselves.
      return String(value);
    }
    default:
      return String(value);
  }
}

export function newProgress(): QueryProgress {
  return { percentage: undefined, rowsProcessed: undefined, rowsReceived: 0 };
}
