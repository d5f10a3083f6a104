/**
 * Several statements in one round trip, as one unit: statements of the adapter's own around one
 * main statement, all in one extended-protocol batch closed by a single Sync.
 *
 * The server runs the batch's statements in order and answers them in one stream ending with one
 * ReadyForQuery. When one fails, it skips every message up to the Sync: nothing after the failed
 * statement runs. That is what makes the batch safe where separately synced statements (pg's own
 * `pipeline` client option) are not: a `BEGIN READ ONLY` that fails (a cancel that lands on it)
 * stops the statement after it from running outside the read-only transaction, and a reset that
 * fails stops the next caller's statement from running on the state it was meant to clear.
 *
 * `pg` sees one query (a `pg.Query` whose `submit` writes the whole batch): its queue, its
 * `readyForQuery` flag and its 'drain' event, and so the adapter's count of ReadyForQuery messages
 * (pg-reset.ts), the busy-handle probe's "query in flight" and the cancel hook's drain, all see one
 * query from the batch's write to its ReadyForQuery. A cancel (`pg_cancel_backend`) that lands
 * during the batch fails the statement running then, and the server skips the rest.
 *
 * The adapter's statements carry no Describe: their rows are kept as raw text fields for the
 * caller to read ({@link GroupOutcome.rows}). The main statement is described and parsed by `pg`
 * as any query is, and its result is the batch's result. Statements in one batch share one
 * transaction unless a statement ends it (`COMMIT`, `ROLLBACK`, or a command such as `DISCARD
 * ALL` that commits at once; `DISCARD ALL` is accepted only as the first statement of a batch).
 */
import pg from 'pg';

/** One statement of the adapter's own in a batch: SQL text and its parameters as text. */
export interface Hidden {
  readonly text: string;
  readonly values?: readonly (string | null)[] | undefined;
}

/** The main statement of a batch: what `pgQuery` would send with the extended protocol. */
export interface MainStatement {
  readonly text: string;
  readonly values?: readonly unknown[] | undefined;
}

/** How a batch ended. */
export interface GroupOutcome {
  /** The main statement's result (pg's result object), when it completed. */
  readonly result: unknown;
  /**
   * The error the batch ended with, if any: the first statement that failed (nothing after it
   * ran), or a parameter of the main statement that `pg` could not send.
   */
  readonly error: unknown;
  /**
   * Where the error came from: `'before'`/`'after'` one of the adapter's statements around the
   * main one (`failedAt` says which), `'main'` the main statement. Undefined when none failed.
   */
  readonly failed: 'before' | 'main' | 'after' | undefined;
  /** Index in `before` or `after` of the adapter's statement that failed. */
  readonly failedAt: number | undefined;
  /** Raw text fields of the rows each of the adapter's statements returned, `before` then `after`. */
  readonly rows: readonly (readonly (readonly (string | null)[])[])[];
}

/** What `pg.Query` offers a subclass (its internals as pg 8 has them). */
interface QueryInternals {
  text: string;
  values: readonly unknown[] | undefined;
  queryMode: string | undefined;
  portal: string;
  name?: string;
  rows?: number;
  callback?: (error: Error | null, result?: unknown) => void;
  /** The result (or results) gathered so far. */
  _results: unknown;
  prepare(connection: Connection): void;
  _getRows(connection: Connection, rows: number | undefined): void;
  handleRowDescription(msg: unknown): void;
  handleDataRow(msg: { fields: (string | null)[] }): void;
  handleCommandComplete(msg: unknown, connection: Connection): void;
  handleEmptyQuery(connection: Connection): void;
  handleError(error: Error, connection: Connection): void;
  handleReadyForQuery(connection: Connection): void;
}

/** What a batch writes on `pg`'s connection. */
interface Connection {
  /** pg's one writer of protocol messages: each call writes one message on the stream. */
  _send(buffer: Buffer): boolean;
  stream: { writable: boolean; write(buffer: Buffer): boolean };
  parse(query: { text: string; name?: string }): void;
  bind(config: { values: readonly (string | null)[] }): void;
  execute(config: { portal?: string; rows?: number }): void;
  sync(): void;
}

type QueryConstructor = new (
  text: string,
  values: undefined,
  callback: (error: Error | null, result?: unknown) => void,
) => QueryInternals;

const Query = (pg as unknown as { Query: QueryConstructor }).Query;

function noop(): void {}

function writeHidden(connection: Connection, statement: Hidden): void {
  connection.parse({ text: statement.text });
  connection.bind({ values: statement.values ?? [] });
  connection.execute({});
}

/** A `pg.Query` that writes `before`, the main statement, `after`, and one Sync. */
export class GroupedQuery extends Query {
  readonly #main: boolean;
  readonly #before: readonly Hidden[];
  readonly #after: readonly Hidden[];
  /** Statements completed so far: `before`, then the main one, then `after`. */
  #completed = 0;
  readonly #rows: (string | null)[][][];
  #failed: GroupOutcome['failed'];
  #failedAt: number | undefined;
  /** True while `prepare` writes the batch: an error then is `pg`'s, not the server's. */
  #preparing = false;
  /**
   * A parameter of the main statement `pg` could not send (its `prepare` failed the query at
   * once). The statements before it were written all the same and run: the answer waits for the
   * batch's ReadyForQuery, which tells whether they went through.
   */
  #bindError: Error | undefined;
  #answered = false;
  readonly #done: (outcome: GroupOutcome) => void;

  /** `main` undefined: a batch of the adapter's statements only (`before`). */
  constructor(
    before: readonly Hidden[],
    main: MainStatement | undefined,
    after: readonly Hidden[],
    done: (outcome: GroupOutcome) => void,
  ) {
    // The text alone: pg copies a config object, property by property.
    super(main?.text ?? '', undefined, noop);
    this.values = main?.values ?? [];
    this.queryMode = 'extended';
    this.#main = main !== undefined;
    this.callback = (error, result) => this.#answer(error, result);
    this.#before = before;
    this.#after = after;
    this.#rows = Array.from({ length: before.length + after.length }, () => []);
    this.#done = done;
  }

  #answer(error: Error | null, result: unknown): void {
    // pg may call back twice: the first answer stands.
    if (this.#answered) return;
    this.#answered = true;
    if ((error === null || error === undefined) && this.#bindError !== undefined) {
      // The statements before the main one went through; the main one was never sent.
      error = this.#bindError;
      this.#failed = 'main';
    }
    if (error !== null && error !== undefined && this.#failed === undefined) {
      // Not the server's: pg failed the main statement itself.
      this.#failed = 'main';
    }
    this.#done({
      // A failure after the main statement completed leaves its result standing.
      result:
        error === null || error === undefined
          ? result
          : this.#failed === 'after'
            ? this._results
            : undefined,
      error: error ?? undefined,
      failed: error === null || error === undefined ? undefined : this.#failed,
      failedAt: this.#failedAt,
      rows: this.#rows,
    });
  }

  /** Which statement is running now: `before`, the main one, or `after`, and its index there. */
  #where(): ['before' | 'main' | 'after', number] {
    const done = this.#completed;
    const before = this.#before.length;
    if (done < before || !this.#main) return ['before', done];
    if (done === before) return ['main', 0];
    return ['after', done - before - 1];
  }

  override prepare(connection: Connection): void {
    // The batch's messages go out as one buffer, in one write: pg corks the stream around this,
    // but a corked stream still hands the kernel one buffer per message (writev).
    const chunks: Buffer[] = [];
    const send = connection._send;
    connection._send = (buffer) => {
      chunks.push(buffer);
      return true;
    };
    this.#preparing = true;
    try {
      for (const statement of this.#before) writeHidden(connection, statement);
      if (this.#main) {
        super.prepare(connection);
      } else {
        connection.sync();
      }
    } finally {
      this.#preparing = false;
      connection._send = send;
    }
    if (connection.stream.writable) connection.stream.write(Buffer.concat(chunks));
  }

  override _getRows(connection: Connection, rows: number | undefined): void {
    connection.execute({ portal: this.portal, rows });
    for (const statement of this.#after) writeHidden(connection, statement);
    connection.sync();
  }

  override handleRowDescription(msg: unknown): void {
    if (this.#where()[0] === 'main') super.handleRowDescription(msg);
  }

  override handleDataRow(msg: { fields: (string | null)[] }): void {
    const [where, index] = this.#where();
    if (where === 'main') super.handleDataRow(msg);
    else this.#rows[where === 'before' ? index : this.#before.length + index]!.push(msg.fields);
  }

  override handleCommandComplete(msg: unknown, connection: Connection): void {
    if (this.#where()[0] === 'main') super.handleCommandComplete(msg, connection);
    this.#completed++;
  }

  override handleEmptyQuery(connection: Connection): void {
    if (this.#where()[0] === 'main') super.handleEmptyQuery(connection);
    this.#completed++;
  }

  override handleError(error: Error, connection: Connection): void {
    if (this.#preparing) {
      // pg's own, from a parameter of the main statement it could not send (the Parse, a Close
      // and the Sync still go): answered at the ReadyForQuery, once the rest is known.
      this.#bindError ??= error;
      return;
    }
    if (this.#failed === undefined) {
      const [where, index] = this.#where();
      // A row of the main statement that pg could not parse (a type parser threw): pg keeps the
      // error and reports it at ReadyForQuery, or in place of a later error, when the batch is
      // past the main statement. It is the main statement's failure: its rows are incomplete.
      const unparsed = (this as { _canceledDueToError?: unknown })._canceledDueToError;
      this.#failed = unparsed ? 'main' : where;
      this.#failedAt = this.#failed === 'main' ? undefined : index;
    }
    super.handleError(error, connection);
  }
}

/**
 * Sends `before`, `main` and `after` on `client` as one batch (see the module documentation) and
 * resolves with how it ended; never rejects. Call it only when nothing else is queued on the
 * client. `answered`, when given, is called with the outcome synchronously, as soon as it is
 * known: before `pg` sends a query it holds behind the batch (the promise settles later).
 */
export function sendGroup(
  client: { query(query: unknown): unknown },
  before: readonly Hidden[],
  main: MainStatement | undefined,
  after: readonly Hidden[],
  answered?: (outcome: GroupOutcome) => void,
): Promise<GroupOutcome> {
  return new Promise<GroupOutcome>((resolve) => {
    const done =
      answered === undefined
        ? resolve
        : (outcome: GroupOutcome): void => {
            answered(outcome);
            resolve(outcome);
          };
    client.query(new GroupedQuery(before, main, after, done));
  });
}
