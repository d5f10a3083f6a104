import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Timer } from '../internal/promises.js';

/** The only address a {@link FaultProxy} listens on. */
const LOOPBACK = '127.0.0.1';

/** Where a {@link FaultProxy} forwards its connections to. */
export interface FaultProxyTarget {
  /** Host of the real server. Default `'127.0.0.1'`. */
  host?: string;
  /** TCP port of the real server (1 to 65535). */
  port: number;
}

/** Options of {@link FaultProxy.start}. */
export interface FaultProxyOptions {
  /** The real server the proxy stands in front of. */
  target: FaultProxyTarget;
  /** Port to listen on. Default `0`: a free port chosen by the OS, see {@link FaultProxy.port}. */
  listenPort?: number;
  /**
   * Address to listen on. Only `'127.0.0.1'` is accepted: a fault-injection proxy must never be
   * reachable from another machine. Any other value throws a `RangeError`.
   */
  host?: '127.0.0.1';
}

/** Counters of a {@link FaultProxy}, cumulative since {@link FaultProxy.start}. */
export interface FaultProxyStats {
  /** Client connections accepted. */
  accepted: number;
  /** Bytes delivered from clients to the server. */
  bytesToServer: number;
  /** Bytes delivered from the server to clients. */
  bytesToClient: number;
  /** Bytes received and thrown away because the proxy was blackholed (both directions). */
  bytesDropped: number;
  /** Connections torn down with a TCP RST by {@link FaultProxy.reset}. */
  resets: number;
  /** Connections cut by {@link FaultProxy.limit}. */
  cuts: number;
}

/** How the closing side of a direction went away. */
type CloseKind = 'end' | 'reset';

/** One chunk waiting for its delivery time. */
interface QueuedChunk {
  readonly chunk: Buffer;
  /** `performance.now()` time at which the chunk may be delivered. */
  readonly due: number;
}

/** One direction of a proxied connection: bytes read from `source`, written to `dest`. */
interface Direction {
  readonly toClient: boolean;
  readonly source: Socket;
  readonly dest: Socket;
  readonly queue: QueuedChunk[];
  /** Due time of the last queued chunk: later chunks are never delivered before it. */
  lastDue: number;
  timer: Timer | undefined;
  /** The source ended (FIN) or went away (RST/error) and the close is not yet propagated. */
  pendingClose: CloseKind | undefined;
  /** Delivery time of `pendingClose`, set when it can be scheduled. */
  closeDue: number | undefined;
  /** The close has been propagated to `dest`. */
  closeDone: boolean;
  /** `source` is paused until `dest` drains. */
  waitingDrain: boolean;
}

/** A client connection and its upstream connection to the real server. */
interface Connection {
  readonly client: Socket;
  readonly server: Socket;
  readonly toServer: Direction;
  readonly toClient: Direction;
  /** Bytes still allowed server→client before the connection is cut; `Infinity` when unlimited. */
  budget: number;
  /** The proxy tore this connection down itself (reset, limit, close): forward nothing more. */
  dead: boolean;
  clientClosed: boolean;
  serverClosed: boolean;
  readonly closed: Promise<void>;
  resolveClosed: () => void;
}

function checkDuration(name: string, value: unknown): number {
  if (typeof value !== 'number') {
    throw new TypeError(`${name} must be a number of milliseconds, got ${typeof value}`);
  }
  if (!Number.isFinite(value) || value < 0) {
    throw new RangeError(`${name} must be a finite number >= 0, got ${value}`);
  }
  return value;
}

function checkPort(name: string, value: unknown, min: number): number {
  if (typeof value !== 'number') {
    throw new TypeError(`${name} must be a number, got ${typeof value}`);
  }
  if (!Number.isInteger(value) || value < min || value > 65535) {
    throw new RangeError(`${name} must be an integer from ${min} to 65535, got ${value}`);
  }
  return value;
}

/** Sends a TCP RST if the socket is connected, else just destroys it. */
function resetSocket(socket: Socket): void {
  if (socket.destroyed) return;
  if (socket.connecting) {
    socket.destroy();
    return;
  }
  try {
    socket.resetAndDestroy();
  } catch {
    socket.destroy();
  }
}

/**
 * A TCP proxy on loopback in front of a real server, for fault-injection tests: it forwards bytes
 * unchanged until told to misbehave like a broken network.
 *
 * Faults apply to existing and new connections alike and combine freely:
 * {@link FaultProxy.blackhole} / {@link FaultProxy.heal}, {@link FaultProxy.reset},
 * {@link FaultProxy.latency}, {@link FaultProxy.slowClose} and {@link FaultProxy.limit}.
 *
 * The proxy only ever listens on `127.0.0.1`. Each accepted connection opens its own connection to
 * the target; when the target refuses or drops it, the client connection is reset. Byte order is
 * preserved within each direction under every fault.
 *
 * After {@link FaultProxy.close} no socket or timer of the proxy keeps the process alive.
 *
 * @example
 * ```ts
 * await using proxy = await FaultProxy.start({ target: { port: 5432 } });
 * const client = new pg.Client({ host: proxy.host, port: proxy.port });
 * await client.connect();
 * proxy.blackhole(); // the next query on `client` never gets an answer
 * ```
 */
export class FaultProxy {
  /** Address the proxy listens on: always `'127.0.0.1'`. */
  readonly host: '127.0.0.1' = LOOPBACK;
  /** Port the proxy listens on (the one chosen by the OS when started with port 0). */
  readonly port: number;
  /** The real server connections are forwarded to. */
  readonly target: Readonly<Required<FaultProxyTarget>>;

  readonly #server: Server;
  readonly #connections = new Set<Connection>();
  readonly #stats: FaultProxyStats = {
    accepted: 0,
    bytesToServer: 0,
    bytesToClient: 0,
    bytesDropped: 0,
    resets: 0,
    cuts: 0,
  };
  #blackholed = false;
  #latency = 0;
  #jitter = 0;
  #slowClose = 0;
  #limit = Number.POSITIVE_INFINITY;
  #closing: Promise<void> | undefined;

  private constructor(server: Server, port: number, target: Required<FaultProxyTarget>) {
    this.#server = server;
    this.port = port;
    this.target = Object.freeze({ ...target });
    server.on('connection', (client) => this.#accept(client));
  }

  /**
   * Starts a proxy listening on `127.0.0.1` that forwards every connection to `options.target`.
   *
   * @param options - Target server, listen port (default 0: any free port) and listen host (only
   *   `'127.0.0.1'`).
   * @returns The listening proxy; read its port from {@link FaultProxy.port}.
   * @throws TypeError when an option has the wrong type.
   * @throws RangeError when a port is out of range or the host is not `'127.0.0.1'`.
   */
  static async start(options: FaultProxyOptions): Promise<FaultProxy> {
    if (typeof options !== 'object' || options === null) {
      throw new TypeError('options must be an object with a target');
    }
    const { target } = options;
    if (typeof target !== 'object' || target === null) {
      throw new TypeError('options.target must be an object { host?, port }');
    }
    const targetPort = checkPort('options.target.port', target.port, 1);
    const targetHost = target.host ?? LOOPBACK;
    if (typeof targetHost !== 'string' || targetHost === '') {
      throw new TypeError('options.target.host must be a non-empty string');
    }
    const listenPort = checkPort('options.listenPort', options.listenPort ?? 0, 0);
    const host: unknown = options.host ?? LOOPBACK;
    if (host !== LOOPBACK) {
      throw new RangeError(
        `options.host must be '127.0.0.1' (the proxy listens on loopback only), got ${String(host)}`,
      );
    }

    const server = createServer({ allowHalfOpen: true });
    await new Promise<void>((resolve, reject) => {
      const onError = (error: Error): void => reject(error);
      server.once('error', onError);
      server.listen({ host: LOOPBACK, port: listenPort, exclusive: true }, () => {
        server.off('error', onError);
        resolve();
      });
    });
    // A listening server only emits errors for accept failures; never let them crash the process.
    server.on('error', () => {});
    const address = server.address();
    if (address === null || typeof address === 'string') {
      server.close();
      throw new Error('FaultProxy: could not read the listening address');
    }
    return new FaultProxy(server, address.port, { host: targetHost, port: targetPort });
  }

  /** Number of live proxied connections: those whose client or server socket is not yet closed. */
  get connections(): number {
    return this.#connections.size;
  }

  /** A snapshot of the proxy's counters. */
  get stats(): Readonly<FaultProxyStats> {
    return { ...this.#stats };
  }

  /** Whether the proxy is currently blackholed (see {@link FaultProxy.blackhole}). */
  get blackholed(): boolean {
    return this.#blackholed;
  }

  /**
   * Stops forwarding in both directions while keeping every socket open, like a half-open link
   * (a peer that went to sleep or a network that silently drops packets).
   *
   * - Existing connections stay open; bytes read from either side are **dropped**, not buffered:
   *   a real half-open link loses them too. Bytes already waiting in the proxy (under
   *   {@link FaultProxy.latency}) are dropped as well, so nothing is delivered while blackholed.
   * - New connections are accepted (the client's connect succeeds) and connected to the target,
   *   but nothing is forwarded on them either.
   * - Closes (FIN or RST) from either side are held back, not propagated, so the other side keeps
   *   waiting; {@link FaultProxy.heal} delivers them.
   *
   * Because the dropped bytes are gone for good, a byte stream that carried data during the
   * blackhole has a gap after {@link FaultProxy.heal}: for most protocols that connection is
   * corrupt. New connections made after `heal()` are fully healthy.
   *
   * Idempotent.
   */
  blackhole(): void {
    if (this.#blackholed) return;
    this.#blackholed = true;
    for (const conn of this.#connections) {
      for (const dir of [conn.toServer, conn.toClient]) {
        this.#dropQueue(dir);
        // Keep reading (and dropping): bytes must not pile up to be delivered after heal().
        if (dir.waitingDrain) {
          dir.waitingDrain = false;
          if (!dir.source.destroyed) dir.source.resume();
        }
      }
    }
  }

  /**
   * Resumes normal forwarding after {@link FaultProxy.blackhole}, for existing and new
   * connections. Only bytes received from now on are forwarded: bytes received while blackholed
   * were dropped. Closes held back during the blackhole are propagated now (after the configured
   * latency and {@link FaultProxy.slowClose} delay).
   *
   * Idempotent; a no-op when not blackholed.
   */
  heal(): void {
    if (!this.#blackholed) return;
    this.#blackholed = false;
    for (const conn of this.#connections) {
      for (const dir of [conn.toServer, conn.toClient]) {
        if (dir.pendingClose !== undefined && !dir.closeDone) {
          dir.closeDue = undefined;
          this.#pump(conn, dir);
        }
      }
    }
  }

  /**
   * Aborts every current connection with a TCP RST on both sides: the client and the server each
   * see `ECONNRESET` (or an abrupt close). Bytes waiting in the proxy are discarded. Connections
   * made afterwards are unaffected, as are the other faults.
   */
  reset(): void {
    for (const conn of this.#connections) {
      if (conn.dead) continue;
      this.#stats.resets++;
      this.#kill(conn);
      resetSocket(conn.client);
      resetSocket(conn.server);
    }
  }

  /**
   * Delays every chunk by `ms` ± a uniformly random `jitter` (never below 0), in both directions,
   * for chunks received from now on. Byte order per direction is always kept: a chunk is never
   * delivered before the one received before it, even when its own delay is shorter. Closes are
   * delayed the same way, after the last chunk. `latency(0)` turns it off (chunks already waiting
   * are still delivered in order).
   *
   * @param ms - Base delay in milliseconds, finite and >= 0.
   * @param jitter - Maximum random deviation in milliseconds, finite and >= 0. Default 0.
   * @throws TypeError when an argument is not a number.
   * @throws RangeError when an argument is negative, NaN or infinite.
   */
  latency(ms: number, jitter = 0): void {
    const base = checkDuration('ms', ms);
    const spread = checkDuration('jitter', jitter);
    this.#latency = base;
    this.#jitter = spread;
  }

  /**
   * When either side of a connection ends (FIN) or goes away (RST, error), waits `ms` before
   * propagating that close to the other side, which meanwhile keeps its socket open. Applies to
   * closes that happen from now on. `slowClose(0)` turns it off.
   *
   * @param ms - Delay in milliseconds, finite and >= 0.
   * @throws TypeError when `ms` is not a number.
   * @throws RangeError when `ms` is negative, NaN or infinite.
   */
  slowClose(ms: number): void {
    this.#slowClose = checkDuration('ms', ms);
  }

  /**
   * Cuts connections in the middle of a response: each connection may deliver at most `bytes`
   * more bytes from the server to the client, counted per connection from this call (new
   * connections start with the full budget). When server data would reach or exceed the budget,
   * the client receives exactly the bytes that fit, then the connection is torn down on both
   * sides: the client gets a FIN once those bytes are flushed and then its socket is destroyed,
   * and the server socket is destroyed at once. Client→server traffic is not counted.
   *
   * With `limit(0)`, the next server data on a connection cuts it without delivering anything.
   * `limit(Infinity)` or `limit(null)` turns the limit off for all connections.
   *
   * @param bytes - Byte budget per connection: an integer >= 0, `Infinity` or `null`.
   * @throws TypeError when `bytes` is neither a number nor null.
   * @throws RangeError when `bytes` is negative, NaN or not an integer.
   */
  limit(bytes: number | null): void {
    let budget: number;
    if (bytes === null || bytes === Number.POSITIVE_INFINITY) {
      budget = Number.POSITIVE_INFINITY;
    } else if (typeof bytes !== 'number') {
      throw new TypeError(`bytes must be a number or null, got ${typeof bytes}`);
    } else if (!Number.isInteger(bytes) || bytes < 0) {
      throw new RangeError(`bytes must be an integer >= 0, Infinity or null, got ${bytes}`);
    } else {
      budget = bytes;
    }
    this.#limit = budget;
    for (const conn of this.#connections) conn.budget = budget;
  }

  /**
   * Stops listening and destroys every connection on both sides (without RST), discarding bytes
   * waiting in the proxy and clearing every timer. Resolves once the listening socket and all
   * connection sockets are closed, so nothing of the proxy keeps the process alive afterwards.
   * Idempotent: later calls return the same promise.
   */
  close(): Promise<void> {
    if (this.#closing !== undefined) return this.#closing;
    const serverClosed = new Promise<void>((resolve) => {
      this.#server.close(() => resolve());
    });
    const pending: Promise<void>[] = [serverClosed];
    for (const conn of this.#connections) {
      this.#kill(conn);
      conn.client.destroy();
      conn.server.destroy();
      pending.push(conn.closed);
    }
    this.#closing = Promise.all(pending).then(() => undefined);
    return this.#closing;
  }

  /** Same as {@link FaultProxy.close}, for `await using proxy = await FaultProxy.start(...)`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #accept(client: Socket): void {
    if (this.#closing !== undefined) {
      client.on('error', () => {});
      client.destroy();
      return;
    }
    this.#stats.accepted++;
    client.setNoDelay(true);
    const server = createConnection({
      host: this.target.host,
      port: this.target.port,
      allowHalfOpen: true,
      noDelay: true,
    });
    const makeDirection = (toClient: boolean, source: Socket, dest: Socket): Direction => ({
      toClient,
      source,
      dest,
      queue: [],
      lastDue: 0,
      timer: undefined,
      pendingClose: undefined,
      closeDue: undefined,
      closeDone: false,
      waitingDrain: false,
    });
    let resolveClosed: () => void = () => {};
    const closed = new Promise<void>((resolve) => {
      resolveClosed = resolve;
    });
    const conn: Connection = {
      client,
      server,
      toServer: makeDirection(false, client, server),
      toClient: makeDirection(true, server, client),
      budget: this.#limit,
      dead: false,
      clientClosed: false,
      serverClosed: false,
      closed,
      resolveClosed,
    };
    this.#connections.add(conn);

    for (const dir of [conn.toServer, conn.toClient]) {
      const { source } = dir;
      // Errors surface as 'close' with hadError; they must never become uncaught exceptions.
      source.on('error', () => {});
      source.on('data', (chunk: Buffer) => this.#onData(conn, dir, chunk));
      source.on('end', () => this.#onSourceGone(conn, dir, 'end'));
      source.on('close', () => {
        if (dir.toClient) conn.serverClosed = true;
        else conn.clientClosed = true;
        // A source closed without FIN (RST, error, destroyed) is an abortive close.
        this.#onSourceGone(conn, dir, 'reset');
        if (conn.clientClosed && conn.serverClosed) this.#forget(conn);
      });
    }
  }

  #onData(conn: Connection, dir: Direction, chunk: Buffer): void {
    if (conn.dead) return;
    if (this.#blackholed) {
      this.#stats.bytesDropped += chunk.length;
      return;
    }
    const now = performance.now();
    const due = Math.max(now + this.#delay(), dir.lastDue);
    dir.lastDue = due;
    dir.queue.push({ chunk, due });
    this.#pump(conn, dir);
  }

  #onSourceGone(conn: Connection, dir: Direction, kind: CloseKind): void {
    if (dir.pendingClose !== undefined || conn.dead) return;
    dir.pendingClose = kind;
    if (this.#blackholed) return; // held until heal()
    this.#pump(conn, dir);
  }

  /** Random delay for one chunk under the current latency settings. */
  #delay(): number {
    if (this.#jitter === 0) return this.#latency;
    return Math.max(0, this.#latency + (Math.random() * 2 - 1) * this.#jitter);
  }

  /** Delivers what is due in `dir`, then the pending close, and arms a timer for the rest. */
  #pump(conn: Connection, dir: Direction): void {
    if (dir.timer !== undefined) {
      clearTimeout(dir.timer);
      dir.timer = undefined;
    }
    if (conn.dead || this.#blackholed) return;
    const now = performance.now();
    while (dir.queue.length > 0) {
      const head = dir.queue[0]!;
      if (head.due > now) {
        this.#arm(conn, dir, head.due - now);
        return;
      }
      dir.queue.shift();
      this.#deliver(conn, dir, head.chunk);
      if (conn.dead) return;
    }
    if (dir.pendingClose === undefined || dir.closeDone) return;
    if (dir.closeDue === undefined) {
      dir.closeDue = Math.max(now + this.#delay(), dir.lastDue) + this.#slowClose;
    }
    if (dir.closeDue > now) {
      this.#arm(conn, dir, dir.closeDue - now);
      return;
    }
    dir.closeDone = true;
    if (dir.dest.destroyed) return;
    if (dir.pendingClose === 'end') dir.dest.end();
    else resetSocket(dir.dest);
  }

  #arm(conn: Connection, dir: Direction, ms: number): void {
    dir.timer = setTimeout(
      () => {
        dir.timer = undefined;
        this.#pump(conn, dir);
      },
      Math.max(1, Math.ceil(ms)),
    );
  }

  #deliver(conn: Connection, dir: Direction, chunk: Buffer): void {
    const { dest, source } = dir;
    if (dest.destroyed || dest.writableEnded) return;
    let data = chunk;
    let cut = false;
    if (dir.toClient && conn.budget !== Number.POSITIVE_INFINITY) {
      if (data.length >= conn.budget) {
        data = data.subarray(0, conn.budget);
        cut = true;
      }
      conn.budget -= data.length;
    }
    if (dir.toClient) this.#stats.bytesToClient += data.length;
    else this.#stats.bytesToServer += data.length;
    if (cut) {
      this.#stats.cuts++;
      this.#kill(conn);
      conn.server.destroy();
      conn.client.end(data, () => conn.client.destroy());
      return;
    }
    if (data.length === 0) return;
    if (!dest.write(data) && !dir.waitingDrain) {
      dir.waitingDrain = true;
      source.pause();
      dest.once('drain', () => {
        if (!dir.waitingDrain) return;
        dir.waitingDrain = false;
        if (!source.destroyed) source.resume();
      });
    }
  }

  /** Marks a connection as torn down by the proxy: nothing more is forwarded, timers cleared. */
  #kill(conn: Connection): void {
    conn.dead = true;
    for (const dir of [conn.toServer, conn.toClient]) {
      dir.queue.length = 0;
      if (dir.timer !== undefined) {
        clearTimeout(dir.timer);
        dir.timer = undefined;
      }
    }
  }

  #dropQueue(dir: Direction): void {
    for (const { chunk } of dir.queue) this.#stats.bytesDropped += chunk.length;
    dir.queue.length = 0;
    dir.lastDue = 0;
    if (dir.timer !== undefined) {
      clearTimeout(dir.timer);
      dir.timer = undefined;
    }
    // A close already scheduled is held again; heal() reschedules it.
    dir.closeDue = undefined;
  }

  #forget(conn: Connection): void {
    this.#kill(conn);
    this.#connections.delete(conn);
    conn.resolveClosed();
  }
}
