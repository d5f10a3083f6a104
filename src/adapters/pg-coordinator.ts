/**
 * `pgCoordinator`: a cluster lease for {@link EngineGuard} on PostgreSQL session advisory locks,
 * renewed by the guard's liveness and fenced by a sequence. See docs/design.md, "Beyond one
 * process", for the safety argument.
 *
 * - One dedicated, unpooled lock connection per coordinator (TCP keepalives on, server-side
 *   keepalives, `tcp_user_timeout` and `client_connection_check_interval` set for it).
 * - The server ends that session by itself once it is silent for `leaseTimeout`
 *   (`idle_session_timeout`), which frees its locks. The coordinator sends a renewal every
 *   `renewInterval` while every lease it holds is alive (`isAlive`), and counts a lease lost
 *   `leaseTimeout - renewInterval` after the last renewal it sent that was answered: before the
 *   server's bound runs out. A lost lease discards the session.
 * - Each grant takes `nextval` of the fence sequence after the lock: fences increase in grant
 *   order. {@link pgCheckFence} refuses a write whose fence is older than one that wrote.
 * - Aborting a wait cancels it on the server (`pg_cancel_backend` of the lock session, over a
 *   side connection); a wait the cancel did not end, or a cancel not confirmed (it may still land
 *   on a later query), discards the session. A wait that failed is followed by an unlock: a
 *   cancel can land after the grant.
 * - Every query on the lock session goes through one chain, so a cancel never hits the query
 *   after the one it was meant for.
 * - Silence is caught whatever is in flight: a query other than a lock wait left unanswered for
 *   `lossAfter` discards the session; a lock wait is asked about over the side connection (is
 *   its backend still waiting?) and discarded when the server shows it is not, or is silent too.
 * - With `coordinateReads`, the session takes the shared lock once per read lease and counts
 *   them; the last read out unlocks all (see `giveBack`).
 *
 * @module
 */
import type {
  ClusterAcquireOptions,
  ClusterLease,
  Coordinator,
  CoordinatorStatus,
  Fence,
} from '../coordination/coordinator.js';
import { LeaseLostError, LockTimeoutError } from '../errors.js';
import { validateDuration } from '../internal/validate.js';
import type { Lease, LockMode } from '../lock/lease.js';
import { RWLock } from '../lock/rwlock.js';
import {
  closeClient,
  connect,
  destroySocket,
  END_GRACE_MS,
  noop,
  type RawClient,
  raceSignal,
} from './pg-client.js';
import {
  checkServerVersion,
  checkSessionPinned,
  lockKey,
  PgCoordinatorError,
  type PgCoordinatorOptions,
  parseOptions,
  type SessionCheck,
  type Settings,
} from './pg-coordinator-settings.js';
import { isFatalPgError } from './pg-fatal.js';
import { fenceObjects, setupSql, toFence } from './pg-fence.js';
import { SideConnection } from './pg-side.js';
import type { PgClientConfig, PgQueryResult } from './pg-types.js';

/** The lock session: one connection and the chain every query on it goes through. */
interface Session {
  readonly client: RawClient;
  readonly pid: number;
  /** Settles when the last queued step is done with the connection. */
  tail: Promise<void>;
  /** Steps queued or running on it. */
  busy: number;
  /** Set once the session is unusable. */
  gone: Error | undefined;
  /**
   * Send time of the query in flight that must be answered within `lossAfter` (every query but
   * a lock wait: renewals, fence queries, unlocks), if any.
   */
  sentAt: number | undefined;
  /** The lock wait in flight, if any (see {@link PgCoordinator.watchWait}). */
  wait: WaitWatch | undefined;
  /**
   * Shared locks this session took on the server for read leases and has not given back (a
   * session-level lock taken twice is held twice). See {@link PgCoordinator.giveBack}.
   */
  shared: number;
}

/** What the renewer knows of a lock wait in flight. */
interface WaitWatch {
  /** When the server was last known to work on it: its send, then side checks that saw it. */
  seenAt: number;
  /** A side check is in flight. */
  checking: boolean;
  /** `silent`: the last side check found the wait not running, or got no answer in time. */
  verdict: 'silent' | undefined;
}

/** A held lease, as the coordinator tracks it. */
interface Held {
  readonly mode: LockMode;
  readonly fence: Fence;
  readonly controller: AbortController;
  readonly isAlive: () => boolean;
  readonly label: string | undefined;
  readonly local: Lease;
  readonly session: Session;
  readonly since: number;
  /** Send time of the last answered renewal (or of the fence query). */
  anchor: number;
  timer: NodeJS.Timeout | undefined;
  done: boolean;
}

interface Waiting {
  readonly mode: LockMode;
  readonly since: number;
  readonly label: string | undefined;
}

/**
 * A {@link Coordinator} on PostgreSQL session advisory locks (see the module documentation).
 * Use one per guard (a guard refuses a coordinator another guard already uses).
 */
export class PgCoordinator implements Coordinator {
  /** Whether reads take a shared cluster lease too (option `coordinateReads`). */
  readonly coordinatesReads: boolean;
  /** The cluster key. */
  readonly key: string;
  /** Schema of the fence sequence and table. */
  readonly schema: string;
  /** The bounds in force, ms (see {@link PgCoordinatorOptions}). */
  readonly bounds: { leaseTimeout: number; renewInterval: number; lossAfter: number };
  readonly #settings: Settings;
  readonly #config: PgClientConfig;
  readonly #lockKey: string;
  /** Keeps this process's own leases apart (a session may hold shared and exclusive at once). */
  readonly #local = new RWLock({ name: 'pgCoordinator' });
  readonly #side: SideConnection;
  readonly #held = new Set<Held>();
  readonly #waiting = new Set<Waiting>();
  readonly #closing = new AbortController();
  #session: Promise<Session> | undefined = undefined;
  #current: Session | undefined = undefined;
  #connecting = false;
  #setupDone = false;
  #lastError: { message: string; at: number } | undefined = undefined;
  #renewer: NodeJS.Timeout | undefined = undefined;
  #closed: Promise<void> | undefined = undefined;

  constructor(config: PgClientConfig, options: PgCoordinatorOptions) {
    if (config === null || typeof config !== 'object') {
      throw new TypeError('The "config" argument must be a pg.ClientConfig object');
    }
    this.#settings = parseOptions(options);
    this.key = this.#settings.key;
    this.schema = this.#settings.schema;
    this.coordinatesReads = this.#settings.coordinateReads;
    const { leaseTimeout, renewInterval, lossAfter } = this.#settings;
    this.bounds = { leaseTimeout, renewInterval, lossAfter };
    this.#config = {
      ...config,
      keepAlive: true,
      keepAliveInitialDelayMillis: renewInterval,
      application_name: 'engine-guard coordinator',
    };
    this.#side = new SideConnection(config);
    this.#lockKey = lockKey(this.key);
  }

  /**
   * Waits for the cluster lease in `mode`. Rejects with the signal's reason on abort (the wait
   * is cancelled on the server), `LockTimeoutError` after `timeout`, {@link PgCoordinatorError}
   * when the server cannot host it or the lock session fails, or the connection's error.
   */
  async acquire(mode: LockMode, options: ClusterAcquireOptions): Promise<ClusterLease> {
    if (mode !== 'read' && mode !== 'write') {
      throw new TypeError(`The "mode" argument must be 'read' or 'write', got ${String(mode)}`);
    }
    if (options === null || typeof options !== 'object' || typeof options.isAlive !== 'function') {
      throw new TypeError('The "options.isAlive" option must be a function');
    }
    const timeout = validateDuration(options.timeout, 'timeout');
    if (this.#closed !== undefined) throw this.#closedError();
    const waiting: Waiting = { mode, since: performance.now(), label: options.label };
    const bound = boundSignal(
      [options.signal, this.#closing.signal],
      timeout,
      () => new LockTimeoutError(timeout ?? 0, `cluster:${this.key}`),
    );
    this.#waiting.add(waiting);
    try {
      const local =
        mode === 'read'
          ? await this.#local.acquireRead({ signal: bound.signal })
          : await this.#local.acquireWrite({ signal: bound.signal });
      try {
        const session = await this.#open(bound.signal);
        await this.#lock(session, mode, bound.signal);
        // Awaited here, so that a grant that fails gives the local lock back below.
        return await this.#grant(session, mode, local, options);
      } catch (error) {
        local.release();
        throw this.#failure(error, bound.signal);
      }
    } finally {
      bound.dispose();
      this.#waiting.delete(waiting);
    }
  }

  /** Never waits: the cached state of the lock session and leases. */
  status(): CoordinatorStatus {
    const now = performance.now();
    const held = [...this.#held].map((lease) => ({
      mode: lease.mode,
      fence: lease.fence,
      heldMs: now - lease.since,
      sinceRenewMs: now - lease.anchor,
      label: lease.label,
    }));
    const waiting = [...this.#waiting].map((w) => ({
      mode: w.mode,
      waitingMs: now - w.since,
      label: w.label,
    }));
    let connection: CoordinatorStatus['connection'];
    if (this.#closed !== undefined) connection = 'closed';
    else if (this.#connecting) connection = 'connecting';
    else if (this.#current !== undefined && this.#current.gone === undefined)
      connection = 'connected';
    else if (this.#lastError !== undefined) connection = 'down';
    else connection = 'idle';
    return { kind: 'pg', key: this.key, held, waiting, connection, lastError: this.#lastError };
  }

  /** Releases what is held, rejects waiters, closes the lock session. Idempotent. */
  close(): Promise<void> {
    this.#closed ??= this.#close();
    return this.#closed;
  }

  async #close(): Promise<void> {
    this.#closing.abort(this.#closedError());
    clearInterval(this.#renewer);
    const releases = [...this.#held].map((lease) => this.#release(lease));
    const session = await this.#session?.catch(() => undefined);
    // The unlocks are a courtesy (ending the session frees its locks), and with the renewer
    // stopped nothing else notices a silent link: bounded.
    await Promise.race([
      Promise.all(releases).then(() => session?.tail),
      delay(this.#settings.lossAfter),
    ]);
    if (session !== undefined) await closeClient(session.client, END_GRACE_MS);
    this.#side.close();
  }

  /** What an acquire that failed rejects with: an abort's or timeout's reason as is, else a `session` error. */
  #failure(error: unknown, signal: AbortSignal): unknown {
    if ((signal.aborted && error === signal.reason) || error instanceof PgCoordinatorError) {
      return error;
    }
    const message = error instanceof Error ? error.message : String(error);
    return new PgCoordinatorError(
      'session',
      `The lock session of pgCoordinator "${this.key}" failed: ${message}`,
      { cause: error },
    );
  }

  #closedError(): PgCoordinatorError {
    return new PgCoordinatorError('closed', `pgCoordinator "${this.key}" is closed`);
  }

  // ---------------------------------------------------------------------------------------------
  // The lock session.

  #open(signal: AbortSignal): Promise<Session> {
    const current = this.#session;
    if (current !== undefined && this.#current?.gone === undefined) {
      return raceSignal(current, signal);
    }
    const opening = this.#connect();
    this.#session = opening;
    opening.catch((error: unknown) => {
      if (this.#session === opening) this.#session = undefined;
      this.#noteError(error);
    });
    return raceSignal(opening, signal);
  }

  async #connect(): Promise<Session> {
    this.#connecting = true;
    try {
      const timeout = this.#settings.connectTimeout;
      const bound = boundSignal(
        [this.#closing.signal],
        timeout,
        () => new Error(`Opening the lock session timed out after ${timeout} ms`),
      );
      try {
        const client = await connect(this.#config, bound.signal);
        try {
          return await raceSignal(this.#prepare(client), bound.signal);
        } catch (error) {
          destroySocket(client);
          throw error;
        }
      } finally {
        bound.dispose();
      }
    } finally {
      this.#connecting = false;
    }
  }

  /** Checks the server, pins the session's settings, creates the fence objects once. */
  async #prepare(client: RawClient): Promise<Session> {
    const token = `${process.pid}-${Math.random().toString(36).slice(2)}`;
    const first = await client.query(
      `SELECT current_setting('server_version_num')::int AS version, pg_backend_pid() AS pid,
              set_config('engine_guard.lock_session', $1, false) AS token`,
      [token],
    );
    const row = checkServerVersion(first.rows[0] as { version: number; pid: number } | undefined);
    const { leaseTimeout, renewInterval } = this.#settings;
    const keepIdle = Math.max(1, Math.floor(renewInterval / 1000));
    // Two statements: a transaction-mode pooler may hand the second to another backend.
    const second = await client.query(
      `SELECT pg_backend_pid() AS pid, current_setting('engine_guard.lock_session', true) AS token,
              set_config('idle_session_timeout', $1, false),
              set_config('idle_in_transaction_session_timeout', $1, false),
              set_config('tcp_user_timeout', $1, false),
              set_config('tcp_keepalives_idle', $2, false),
              set_config('tcp_keepalives_interval', $2, false),
              set_config('tcp_keepalives_count', '3', false),
              set_config('client_connection_check_interval', $3, false),
              set_config('statement_timeout', '0', false),
              set_config('lock_timeout', '0', false)`,
      [String(leaseTimeout), String(keepIdle), String(renewInterval)],
    );
    checkSessionPinned(row, second.rows[0] as SessionCheck | undefined, token);
    if (!this.#setupDone) {
      await client.query(setupSql(this.schema));
      this.#setupDone = true;
    }
    const session: Session = {
      client,
      pid: row.pid,
      tail: Promise.resolve(),
      busy: 0,
      gone: undefined,
      sentAt: undefined,
      wait: undefined,
      shared: 0,
    };
    const onGone = (error: Error): void => this.#lost(session, error);
    client.on('error', onGone);
    client.on('end', () => onGone(new Error('The lock session ended')));
    this.#current = session;
    this.#startRenewing();
    return session;
  }

  /**
   * Sends one query of the lock session that the server answers at once (all but a lock wait):
   * while it is in flight, the renewer counts the session lost once it has gone unanswered for
   * `lossAfter`, whatever it is (see {@link PgCoordinator.renew}).
   */
  #send(session: Session, text: string, values?: unknown[]): Promise<PgQueryResult> {
    session.sentAt = performance.now();
    const done = (): void => {
      session.sentAt = undefined;
    };
    const query = session.client.query(text, values);
    query.then(done, done);
    this.#lostWith(session, query);
    return query;
  }

  /**
   * A query that fails because the session ended (terminated, connection lost) loses the session
   * before anyone else hears of the failure: the client sees the connection end a turn later,
   * and an acquire started meanwhile (by the failed one's caller) must not choose it.
   */
  #lostWith(session: Session, query: Promise<unknown>): void {
    query.catch((error: unknown) => {
      if (isFatalPgError(error)) this.#lost(session, error as Error);
    });
  }

  /** Runs `step` on the session once every earlier step is done with it. */
  #step<T>(session: Session, step: (client: RawClient) => Promise<T>): Promise<T> {
    session.busy++;
    const run = session.tail.then(() => {
      if (session.gone !== undefined) throw session.gone;
      return step(session.client);
    });
    session.tail = run.then(noop, noop).then(() => {
      session.busy--;
    });
    return run;
  }

  /**
   * Takes the advisory lock. On abort, rejects at once; the step goes on: it cancels the wait
   * on the server, gives back a lock granted meanwhile, and discards a session whose wait the
   * cancel did not end.
   */
  #lock(session: Session, mode: LockMode, signal: AbortSignal): Promise<void> {
    const fn = mode === 'write' ? 'pg_advisory_lock' : 'pg_advisory_lock_shared';
    return new Promise<void>((resolve, reject) => {
      let aborted = false;
      const onAbort = (): void => {
        aborted = true;
        reject(signal.reason);
      };
      if (signal.aborted) {
        onAbort();
        return;
      }
      signal.addEventListener('abort', onAbort, { once: true });
      this.#step(session, async (client) => {
        if (aborted) return;
        // How the wait ended, set in the same turn it does (a race of promises would lag).
        let ended: 'granted' | 'failed' | undefined;
        const sentAt = performance.now();
        session.wait = { seenAt: sentAt, checking: false, verdict: undefined };
        // Its checks (and a cancel) go over the side connection: connected by the first check.
        this.#side.warm();
        const wait = client.query(`SELECT ${fn}($1::bigint)`, [this.#lockKey]);
        this.#lostWith(session, wait);
        const done = wait.then(
          () => {
            ended = 'granted';
            if (mode === 'read') session.shared++;
          },
          (error: unknown) => {
            ended = 'failed';
            if (!aborted) reject(error);
          },
        );
        done.then(() => {
          session.wait = undefined;
        });
        await new Promise<void>((settle) => {
          done.then(settle, settle);
          signal.addEventListener('abort', () => settle(), { once: true });
        });
        signal.removeEventListener('abort', onAbort);
        if (!aborted) {
          if (ended === 'granted') resolve();
          else await this.#undoFailedWait(session, mode);
          return;
        }
        if (ended === undefined) {
          // Still waiting on the server: cancel it there, then see how it ended.
          const bound = this.#settings.renewInterval * 2;
          const confirmed = await this.#side
            .query(AbortSignal.timeout(bound), 'SELECT pg_cancel_backend($1)', [session.pid], true)
            .then(
              () => true,
              () => false,
            );
          await Promise.race([done, delay(bound)]);
          if (!confirmed) {
            // The cancel may still be on its way and land on whatever runs next on this
            // backend (an unlock, another caller's wait): never send it anything again.
            this.#lost(
              session,
              new Error(
                'A lock wait was cancelled without confirmation; the lock session was discarded',
              ),
            );
            return;
          }
        }
        if (ended === 'granted') {
          await this.#giveBack(session, mode);
        } else if (ended === 'failed') {
          await this.#undoFailedWait(session, mode);
        } else {
          this.#lost(
            session,
            new Error('A cancelled lock wait did not end; the lock session was discarded'),
          );
        }
      }).catch((error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      });
    });
  }

  /**
   * After a lock wait failed (a cancel, ours or anyone's): the server may have granted the lock
   * just before the cancel landed, and this session would keep it while it renews. A write's
   * unlock is a no-op when nothing was granted. A read's is not when other reads of this
   * process hold the shared lock on this session (it would drop one of theirs): then nothing is
   * given back now, and the last read's give-back unlocks all (see {@link PgCoordinator.giveBack}).
   */
  #undoFailedWait(session: Session, mode: LockMode): Promise<void> {
    if (mode === 'read' && session.shared > 0) return Promise.resolve();
    return this.#unlock(session, mode === 'write' ? 'write' : 'all');
  }

  /**
   * Gives back one granted lock of `mode` (inside a step). The last shared lock out unlocks
   * every lock of the session: that also drops a hold a failed read wait may have left.
   */
  #giveBack(session: Session, mode: LockMode): Promise<void> {
    if (mode === 'write') return this.#unlock(session, 'write');
    session.shared = Math.max(0, session.shared - 1);
    return this.#unlock(session, session.shared === 0 ? 'all' : 'read');
  }

  /**
   * An unlock (inside a step). One that fails leaves the session holding what it meant to give
   * back (an outside cancel can fail it too) while it renews: the session is discarded instead.
   */
  #unlock(session: Session, what: LockMode | 'all'): Promise<void> {
    const query =
      what === 'all'
        ? this.#send(session, 'SELECT pg_advisory_unlock_all()')
        : this.#send(session, `SELECT ${unlockFn(what)}($1::bigint)`, [this.#lockKey]);
    return query.then(noop, (error: unknown) =>
      this.#lost(
        session,
        new Error(
          `Giving back a lock failed (${error instanceof Error ? error.message : String(error)}); the lock session was discarded`,
          { cause: error },
        ),
      ),
    );
  }

  #grant(
    session: Session,
    mode: LockMode,
    local: Lease,
    options: ClusterAcquireOptions,
  ): Promise<ClusterLease> {
    const { sequence } = fenceObjects(this.schema);
    // The renewal clock starts at this query's send, after the grant (the wait may be long).
    const sentAt = performance.now();
    return this.#step(session, () =>
      this.#send(session, `SELECT nextval('${sequence}')::text AS fence`),
    ).then(
      (result) => {
        // Answered past the holder's own deadline (a slow route, a stalled loop): the server may
        // already have ended the session and granted the lock to another; never hand it out.
        if (performance.now() - sentAt >= this.#settings.lossAfter) {
          const late = new Error(
            `The fence query of a grant was answered after the holder's deadline (${this.#settings.lossAfter} ms)`,
          );
          this.#lost(session, late);
          throw new PgCoordinatorError(
            'session',
            `The lock session of pgCoordinator "${this.key}" failed: ${late.message}`,
            { cause: late },
          );
        }
        // Lost meanwhile (its socket closed as the answer came in): nothing to hand out.
        if (session.gone !== undefined) throw session.gone;
        const held: Held = {
          mode,
          fence: toFence((result.rows[0] as { fence: string }).fence),
          controller: new AbortController(),
          isAlive: options.isAlive,
          label: options.label,
          local,
          session,
          since: performance.now(),
          anchor: sentAt,
          timer: undefined,
          done: false,
        };
        this.#held.add(held);
        this.#arm(held);
        if (options.signal?.aborted || this.#closing.signal.aborted) {
          void this.#release(held);
          throw options.signal?.aborted ? options.signal.reason : this.#closedError();
        }
        return {
          mode,
          fence: held.fence,
          signal: held.controller.signal,
          release: () => this.#release(held),
        };
      },
      (error: unknown) => {
        void this.#step(session, () => this.#giveBack(session, mode)).catch(noop);
        throw error;
      },
    );
  }

  /** The holder's own deadline: before the server's, counted from the last answered send. */
  #arm(held: Held): void {
    clearTimeout(held.timer);
    const left = held.anchor + this.#settings.lossAfter - performance.now();
    held.timer = setTimeout(() => this.#lost(held.session, this.#overdue()), Math.max(0, left));
    held.timer.unref();
  }

  #overdue(): Error {
    const { lossAfter, leaseTimeout } = this.#settings;
    return new Error(
      `No renewal of the lock session was answered for ${lossAfter} ms (the server ends it after ${leaseTimeout} ms)`,
    );
  }

  async #release(held: Held): Promise<void> {
    if (held.done) return;
    held.done = true;
    clearTimeout(held.timer);
    this.#held.delete(held);
    held.local.release();
    if (held.session.gone !== undefined) return;
    await this.#step(held.session, () => this.#giveBack(held.session, held.mode)).catch(noop);
  }

  // ---------------------------------------------------------------------------------------------
  // Renewals and losses.

  #startRenewing(): void {
    // A session that finished connecting in the turn close() was called must not restart it.
    if (this.#renewer !== undefined || this.#closed !== undefined) return;
    this.#renewer = setInterval(() => this.#renew(), this.#settings.renewInterval);
    this.#renewer.unref();
  }

  #renew(): void {
    const session = this.#current;
    if (session === undefined || session.gone !== undefined) return;
    const { lossAfter } = this.#settings;
    // Every query but a lock wait is answered at once, so one unanswered this long means the
    // server is out of reach, whatever it is (a renewal, a fence query, a release's unlock):
    // drop the session, or what is queued behind it (the acquires, with no loss timer armed
    // when no lease is held) would wait for TCP to give up, many minutes.
    if (session.sentAt !== undefined && performance.now() - session.sentAt > lossAfter) {
      this.#lost(
        session,
        new Error(`A query of the lock session went unanswered for ${lossAfter} ms`),
      );
      return;
    }
    if (session.wait !== undefined) {
      this.#watchWait(session, session.wait);
      return;
    }
    // A step in flight (a wait, a grant) keeps the session busy, hence not idle, by itself.
    if (session.busy > 0) return;
    const leases = [...this.#held].filter((h) => h.session === session);
    // Renewals stop once an op is not alive: the server then ends the session by itself.
    for (const lease of leases) {
      let alive = false;
      try {
        alive = lease.isAlive() === true;
      } catch {
        alive = false;
      }
      if (!alive) return;
    }
    const sentAt = performance.now();
    this.#step(session, () => this.#send(session, 'SELECT pg_backend_pid() AS pid')).then(
      (result) => {
        const pid = (result.rows[0] as { pid: number } | undefined)?.pid;
        if (pid !== session.pid) {
          this.#lost(
            session,
            new PgCoordinatorError(
              'pooler',
              `The lock session moved from backend ${session.pid} to ${String(pid)}: a pooler sits between; session locks cannot hold there`,
            ),
          );
          return;
        }
        for (const lease of leases) {
          if (lease.done || sentAt <= lease.anchor) continue;
          lease.anchor = sentAt;
          this.#arm(lease);
        }
      },
      (error: unknown) => this.#lost(session, error as Error),
    );
  }

  /**
   * A lock wait may last as long as another process holds the lock, so its silence proves
   * nothing by itself: once it has gone on for `renewInterval`, each renewal tick asks the side
   * connection whether the server still works on it (its backend `active`). A wait not seen so
   * for `lossAfter` is dropped when the server says its backend is gone or no longer waiting
   * (its answer was lost), or when the server does not answer the question either (the route
   * is silent). A question that fails otherwise (a refused connect, too many connections), or
   * that may not see the backend's state, proves nothing: the wait goes on.
   */
  #watchWait(session: Session, wait: WaitWatch): void {
    const { renewInterval, lossAfter } = this.#settings;
    const now = performance.now();
    if (now - wait.seenAt > lossAfter && wait.verdict === 'silent') {
      this.#lost(
        session,
        new Error(
          `A lock wait went unanswered and the server did not show it waiting for ${lossAfter} ms`,
        ),
      );
      return;
    }
    if (wait.checking || now - wait.seenAt < renewInterval) return;
    wait.checking = true;
    const askedAt = now;
    this.#side
      .query<{ state: string | null }>(
        AbortSignal.timeout(renewInterval),
        'SELECT state FROM pg_stat_activity WHERE pid = $1',
        [session.pid],
      )
      .then(
        (rows) => {
          const state = rows[0]?.state;
          if (rows.length === 0) {
            this.#lost(session, new Error(`The lock session's backend ${session.pid} is gone`));
          } else if (state === 'active') {
            wait.seenAt = Math.max(wait.seenAt, askedAt);
            wait.verdict = undefined;
          } else {
            // null: the side connection may not see that session's state (another role).
            wait.verdict = state === null ? undefined : 'silent';
          }
        },
        (error: unknown) => {
          wait.verdict = isTimeout(error) ? 'silent' : undefined;
        },
      )
      .finally(() => {
        wait.checking = false;
      });
  }

  /** The session is gone or no longer trusted: every lease on it is lost. */
  #lost(session: Session, error: Error): void {
    if (session.gone !== undefined) return;
    session.gone = error;
    if (this.#closed === undefined) this.#noteError(error);
    if (this.#current === session) {
      this.#current = undefined;
      this.#session = undefined;
    }
    // Cut at once: a server that still sees the socket must not keep the lock for a holder that
    // gave it up (it ends the backend when the socket closes, or at its own bound).
    destroySocket(session.client);
    for (const held of [...this.#held]) {
      if (held.session !== session) continue;
      held.done = true;
      clearTimeout(held.timer);
      this.#held.delete(held);
      held.local.release();
      held.controller.abort(
        new LeaseLostError({
          mode: held.mode,
          fence: held.fence,
          message: `Cluster ${held.mode} lease "${this.key}" (fence ${String(held.fence)}) was lost: ${error.message}${held.mode === 'write' ? '; the write is indeterminate' : ''}`,
          cause: error,
        }),
      );
    }
  }

  #noteError(error: unknown): void {
    this.#lastError = {
      message: error instanceof Error ? error.message : String(error),
      at: Date.now(),
    };
  }
}

function unlockFn(mode: LockMode): string {
  return mode === 'write' ? 'pg_advisory_unlock' : 'pg_advisory_unlock_shared';
}

/** True for the error of a signal from `AbortSignal.timeout`. */
function isTimeout(error: unknown): boolean {
  return (error as { name?: unknown } | null)?.name === 'TimeoutError';
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/** One signal aborting with the first of `signals`, or with `onTimeout()` after `timeout`. */
function boundSignal(
  signals: readonly (AbortSignal | undefined)[],
  timeout: number | undefined,
  onTimeout: () => Error,
): { signal: AbortSignal; dispose(): void } {
  const controller = new AbortController();
  const cleanups: (() => void)[] = [];
  for (const signal of signals) {
    if (signal === undefined) continue;
    if (signal.aborted) {
      controller.abort(signal.reason);
      break;
    }
    const onAbort = (): void => controller.abort(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    cleanups.push(() => signal.removeEventListener('abort', onAbort));
  }
  if (timeout !== undefined && !controller.signal.aborted) {
    const timer = setTimeout(() => controller.abort(onTimeout()), timeout);
    cleanups.push(() => clearTimeout(timer));
  }
  return {
    signal: controller.signal,
    dispose: () => {
      for (const cleanup of cleanups) cleanup();
    },
  };
}

/**
 * A cluster coordinator on PostgreSQL for an {@link EngineGuard}'s `coordinator` option.
 *
 * ```ts
 * const coordinator = pgCoordinator(cfg, { key: 'warehouse-1' });
 * const guard = new EngineGuard({ ...pgGuardOptions({ config: cfg }), coordinator });
 * await guard.write(async (pg, ctx) => {
 *   await pgQuery(pg, ctx, 'BEGIN');
 *   await pgCheckFence(pg, ctx, coordinator);
 *   ...
 *   await pgQuery(pg, ctx, 'COMMIT');
 * });
 * ```
 * With the defaults, a frozen or partitioned holder loses the lease within `leaseTimeout`
 * (5 s) of its last renewal, plus one round trip; a holder that died (its socket closed) as soon
 * as the server sees the close (well under 1 s on a live network).
 * @param config The `pg.ClientConfig` of a direct connection (not a transaction-mode pooler).
 * @throws TypeError | RangeError when an option is invalid or unknown, naming it.
 */
export function pgCoordinator(
  config: PgClientConfig,
  options: PgCoordinatorOptions,
): PgCoordinator {
  return new PgCoordinator(config, options);
}

export {
  PgCoordinatorError,
  type PgCoordinatorErrorReason,
  type PgCoordinatorOptions,
} from './pg-coordinator-settings.js';
