/**
 * The side connection of engine-guard/pg's busy-handle probes and cancels, and the login-free
 * check that the server still accepts connections.
 */
import { connect as netConnect } from 'node:net';
import {
  clients,
  closeClient,
  connect,
  destroySocket,
  END_GRACE_MS,
  noop,
  onAbort,
  type RawClient,
  raceSignal,
} from './pg-client.js';
import type { PgClientConfig } from './pg-types.js';

/** Bound of connecting the side connection when the probe's own signal does not bound it sooner. */
export const SIDE_CONNECT_TIMEOUT_MS = 10_000;

/**
 * The side connection of one {@link pgGuardOptions} result, for busy-handle probes and cancels:
 * kept open between them (a probe is then one round trip, not a TCP connect plus authentication
 * plus a backend start), opened on first use, never trusted: a query on it that fails or outlives
 * its caller's signal discards it (the caller's probe fails), and the next use opens a new one.
 * Its socket is unref'd (it never keeps the process alive) and it is closed when the last handle
 * of the guard is destroyed.
 */
export class SideConnection {
  readonly #config: PgClientConfig;
  #client: Promise<RawClient> | undefined;

  constructor(config: PgClientConfig) {
    this.#config = config;
  }

  /**
   * Runs one query on the side connection. A kept connection found dead before use fails the
   * query (a probe must not hide a dead route behind a fresh connect), unless `reconnectIfGone`:
   * a cancel is sent once and must not be lost to a connection that died while idle.
   */
  async query<R extends object>(
    signal: AbortSignal,
    text: string,
    values: unknown[],
    reconnectIfGone = false,
  ): Promise<R[]> {
    const pending = this.#connected();
    const client = await raceSignal(pending, signal);
    const state = clients.get(client);
    if (state?.gone !== undefined) {
      // Forgotten now, not in a later turn: the retry below must open a new connection.
      if (this.#client === pending) this.#client = undefined;
      this.#discard(client);
      if (reconnectIfGone) return this.query(signal, text, values, false);
      throw new Error(`The probe side connection is gone: ${state.gone.message}`, {
        cause: state.gone,
      });
    }
    try {
      const result = await raceSignal(client.query(text, values), signal);
      return result.rows as R[];
    } catch (error) {
      // A slow or failed answer leaves the side connection in doubt: never reuse it.
      this.#discard(client);
      throw error;
    }
  }

  /** Opens the side connection ahead of its first use (a failure is left to that use). */
  warm(): void {
    this.#connected().catch(noop);
  }

  /** Closes the side connection (the next use opens a new one). */
  close(): void {
    const pending = this.#client;
    this.#client = undefined;
    pending?.then((client) => closeClient(client, END_GRACE_MS), noop);
  }

  #connected(): Promise<RawClient> {
    if (this.#client !== undefined) return this.#client;
    // Its own bound, not the first caller's signal: a short probe must not doom the connect
    // that later probes share.
    const attempt = connect(this.#config, AbortSignal.timeout(SIDE_CONNECT_TIMEOUT_MS), true);
    this.#client = attempt;
    attempt.catch(() => {
      if (this.#client === attempt) this.#client = undefined;
    });
    return attempt;
  }

  #discard(client: RawClient): void {
    this.#client?.then((current) => {
      if (current === client) this.#client = undefined;
    }, noop);
    destroySocket(client);
  }
}

/** How long a passed accept check is reused by the other busy-handle probes of a guard, ms. */
export const ACCEPT_CHECK_REUSE_MS = 500;

/** GSSENCRequest: the smallest message a PostgreSQL server answers before any authentication. */
const GSSENC_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]);

/**
 * Checks that the server at `route` still accepts connections, without logging in:
 * a TCP connect and a GSSENCRequest, to which the server answers one byte (or closes), then the
 * socket is closed. No authentication, no catalog access, nothing logged by the server. This
 * catches a server whose postmaster is frozen while the side connection's backend still answers.
 * Rejects when `signal` aborts first or the connect fails.
 */
export function acceptsConnections(
  route: { host?: string | undefined; port?: number | undefined },
  signal: AbortSignal,
): Promise<void> {
  const { host, port } = route;
  if (host === undefined || port === undefined) return Promise.resolve();
  signal.throwIfAborted();
  return new Promise<void>((resolve, reject) => {
    const socket = host.startsWith('/')
      ? netConnect({ path: `${host}/.s.PGSQL.${port}` })
      : netConnect({ host, port });
    const done = (error?: Error): void => {
      unsubscribe();
      socket.destroy();
      if (error === undefined) resolve();
      else reject(error);
    };
    const unsubscribe = onAbort(signal, () => done(signal.reason as Error));
    // A check left pending on a dead route must not keep the process alive.
    socket.unref();
    socket.once('connect', () => socket.write(GSSENC_REQUEST));
    socket.once('data', () => done());
    socket.once('end', () => done());
    socket.once('error', (error) => done(error));
  });
}
