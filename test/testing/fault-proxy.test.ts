import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { FaultProxy } from '../../src/testing/index.js';

/** A real TCP server on 127.0.0.1 that records its sockets. */
interface TestServer {
  readonly port: number;
  readonly sockets: Socket[];
  /** Resolves with the next accepted server-side socket. */
  nextSocket(): Promise<Socket>;
  close(): Promise<void>;
}

async function startServer(onSocket: (socket: Socket) => void): Promise<TestServer> {
  const sockets: Socket[] = [];
  const waiters: ((socket: Socket) => void)[] = [];
  const server: Server = createServer((socket) => {
    socket.on('error', () => {});
    sockets.push(socket);
    onSocket(socket);
    waiters.shift()?.(socket);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no address');
  return {
    port: address.port,
    sockets,
    nextSocket: () => new Promise((resolve) => waiters.push(resolve)),
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Echo server: every byte comes back; ends when the client ends. */
const startEcho = (): Promise<TestServer> => startServer((socket) => socket.pipe(socket));

/** A client socket that accumulates what it receives. */
interface Client {
  readonly socket: Socket;
  readonly received: () => Buffer;
  /** Resolves once at least `n` bytes have arrived; rejects on close before that. */
  waitFor(n: number): Promise<Buffer>;
  readonly closed: Promise<{ error: (Error & { code?: string }) | undefined }>;
}

async function connectClient(port: number): Promise<Client> {
  const socket = connect({ host: '127.0.0.1', port, noDelay: true });
  const chunks: Buffer[] = [];
  let error: (Error & { code?: string }) | undefined;
  socket.on('error', (err) => {
    error = err;
  });
  const closed = new Promise<{ error: (Error & { code?: string }) | undefined }>((resolve) => {
    socket.on('close', () => resolve({ error }));
  });
  const listeners = new Set<() => void>();
  socket.on('data', (chunk: Buffer) => {
    chunks.push(chunk);
    for (const listener of listeners) listener();
  });
  await once(socket, 'connect');
  const received = (): Buffer => Buffer.concat(chunks);
  return {
    socket,
    received,
    closed,
    waitFor: (n) =>
      new Promise((resolve, reject) => {
        const check = (): void => {
          if (received().length >= n) {
            listeners.delete(check);
            resolve(received());
          }
        };
        listeners.add(check);
        check();
        void closed.then(() => {
          listeners.delete(check);
          if (received().length < n) reject(new Error(`closed after ${received().length} bytes`));
        });
      }),
  };
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

async function setup(kind: 'echo' | TestServer = 'echo') {
  const server = kind === 'echo' ? await startEcho() : kind;
  const proxy = await FaultProxy.start({ target: { port: server.port } });
  cleanups.push(() => server.close());
  cleanups.push(() => proxy.close());
  return { server, proxy };
}

async function client(proxy: FaultProxy): Promise<Client> {
  const c = await connectClient(proxy.port);
  cleanups.push(() => {
    c.socket.destroy();
  });
  return c;
}

describe('FaultProxy', () => {
  it('listens on 127.0.0.1 and forwards bytes in both directions', async () => {
    const server = await startServer((socket) => {
      socket.write('hello from server\n');
      socket.on('data', (chunk) => socket.write(`server got: ${chunk.toString()}`));
    });
    const { proxy } = await setup(server);
    expect(proxy.host).toBe('127.0.0.1');
    expect(proxy.port).toBeGreaterThan(0);
    expect(proxy.port).not.toBe(server.port);

    const c = await client(proxy);
    await c.waitFor('hello from server\n'.length);
    c.socket.write('ping');
    const all = await c.waitFor('hello from server\nserver got: ping'.length);
    expect(all.toString()).toBe('hello from server\nserver got: ping');
    expect(proxy.connections).toBe(1);
    expect(proxy.stats.accepted).toBe(1);
    expect(proxy.stats.bytesToServer).toBe(4);
    expect(proxy.stats.bytesToClient).toBe(all.length);
  });

  it('propagates a clean end in both directions and forgets the connection', async () => {
    const { proxy, server } = await setup();
    const c = await client(proxy);
    const serverSocket = server.sockets[0] ?? (await server.nextSocket());
    c.socket.end('bye');
    const [closed] = await Promise.all([c.closed, once(serverSocket, 'end')]);
    expect(closed.error).toBeUndefined();
    expect(c.received().toString()).toBe('bye');
    await expect.poll(() => proxy.connections).toBe(0);
  });

  it('blackhole: no bytes either way, sockets stay open, new connections wedge too', async () => {
    const { proxy, server } = await setup();
    const c = await client(proxy);
    c.socket.write('a');
    await c.waitFor(1);

    proxy.blackhole();
    expect(proxy.blackholed).toBe(true);
    c.socket.write('lost');
    const late = await client(proxy); // accepted, but nothing flows
    late.socket.write('lost too');
    await sleep(300);
    expect(c.received().toString()).toBe('a');
    expect(late.received().length).toBe(0);
    expect(c.socket.destroyed).toBe(false);
    expect(late.socket.destroyed).toBe(false);
    expect(proxy.connections).toBe(2);
    // The server-side socket of the first connection saw only the byte sent before.
    expect(server.sockets[0]?.bytesRead).toBe(1);
    expect(proxy.stats.bytesDropped).toBe('lost'.length + 'lost too'.length);
  });

  it('blackhole: closes (FIN and RST) from the server are held until heal', async () => {
    const { proxy, server } = await setup();
    const fin = await client(proxy);
    fin.socket.write('x');
    await fin.waitFor(1); // server.sockets[0] is fin's upstream
    const rst = await client(proxy);
    rst.socket.write('y');
    await rst.waitFor(1);
    proxy.blackhole();
    server.sockets[0]?.end();
    server.sockets[1]?.resetAndDestroy();
    await sleep(200);
    expect(fin.socket.destroyed).toBe(false);
    expect(rst.socket.destroyed).toBe(false);
    expect(proxy.connections).toBe(2);
    proxy.heal();
    const [finClosed, rstClosed] = await Promise.all([fin.closed, rst.closed]);
    expect(finClosed.error).toBeUndefined();
    expect(rstClosed.error?.code).toBe('ECONNRESET');
  });

  it('blackhole drops bytes already waiting under latency', async () => {
    const { proxy } = await setup();
    const c = await client(proxy);
    proxy.latency(300);
    c.socket.write('queued');
    await sleep(20);
    proxy.blackhole(); // 'queued' is still waiting in the proxy: it is dropped
    await sleep(50);
    proxy.heal();
    proxy.latency(0);
    await sleep(500); // had it been kept, its echo would have arrived by now
    expect(c.received().length).toBe(0);
    c.socket.write('fresh');
    expect((await c.waitFor(5)).toString()).toBe('fresh');
  });

  it('heal: new data flows again on old and new connections; blackholed bytes are dropped', async () => {
    const { proxy } = await setup();
    const c = await client(proxy);
    proxy.blackhole();
    const late = await client(proxy);
    c.socket.write('dropped');
    late.socket.write('dropped');
    await sleep(100);
    proxy.heal();
    expect(proxy.blackholed).toBe(false);
    c.socket.write('again');
    late.socket.write('late');
    const fresh = await client(proxy);
    fresh.socket.write('fresh');
    expect((await c.waitFor(5)).toString()).toBe('again');
    expect((await late.waitFor(4)).toString()).toBe('late');
    expect((await fresh.waitFor(5)).toString()).toBe('fresh');
  });

  it('reset: RSTs every current connection on both sides', async () => {
    const { proxy, server } = await setup();
    const a = await client(proxy);
    const b = await client(proxy);
    a.socket.write('1');
    b.socket.write('2');
    await Promise.all([a.waitFor(1), b.waitFor(1)]);
    const serverErrors = server.sockets.map(
      (s) =>
        new Promise<string | undefined>((resolve) => {
          let code: string | undefined;
          s.on('error', (e: Error & { code?: string }) => {
            code = e.code;
          });
          s.on('close', () => resolve(code));
        }),
    );
    proxy.reset();
    const [ca, cb] = await Promise.all([a.closed, b.closed]);
    expect(ca.error?.code).toBe('ECONNRESET');
    expect(cb.error?.code).toBe('ECONNRESET');
    expect(await Promise.all(serverErrors)).toEqual(['ECONNRESET', 'ECONNRESET']);
    expect(proxy.stats.resets).toBe(2);
    await expect.poll(() => proxy.connections).toBe(0);

    // Later connections are unaffected.
    const c = await client(proxy);
    c.socket.write('ok');
    expect((await c.waitFor(2)).toString()).toBe('ok');
  });

  it('latency delays each direction by at least ms', async () => {
    const { proxy } = await setup();
    const c = await client(proxy);
    proxy.latency(100);
    const start = performance.now();
    c.socket.write('x');
    await c.waitFor(1);
    const elapsed = performance.now() - start;
    // client→server and server→client are each delayed by 100 ms.
    expect(elapsed).toBeGreaterThanOrEqual(190);
    expect(elapsed).toBeLessThan(5000);

    // latency(0) turns it off: with 2.5 s still on, the echo would take >= 5 s.
    proxy.latency(2500);
    proxy.latency(0);
    const t1 = performance.now();
    c.socket.write('y');
    await c.waitFor(2);
    expect(performance.now() - t1).toBeLessThan(2500);
  });

  it('latency with jitter never reorders chunks', async () => {
    const { proxy } = await setup();
    const c = await client(proxy);
    proxy.latency(15, 15);
    const parts: string[] = [];
    for (let i = 0; i < 200; i++) {
      const part = `<${i}>`;
      parts.push(part);
      c.socket.write(part);
      if (i % 10 === 0) await sleep(2); // spread the writes over many chunks
    }
    const expected = parts.join('');
    const got = await c.waitFor(expected.length);
    expect(got.toString()).toBe(expected);
  });

  it('slowClose delays propagating an end by ms', async () => {
    const { proxy, server } = await setup();
    const c = await client(proxy);
    c.socket.write('x');
    await c.waitFor(1);
    const serverSocket = server.sockets[0]!;
    proxy.slowClose(300);
    const start = performance.now();
    c.socket.end();
    await once(serverSocket, 'end');
    const elapsed = performance.now() - start;
    expect(elapsed).toBeGreaterThanOrEqual(280);
    expect(elapsed).toBeLessThan(5000);
    // The server's own end (echo) is delayed too on its way back.
    const { error } = await c.closed;
    expect(error).toBeUndefined();
    expect(performance.now() - start).toBeGreaterThanOrEqual(560);
  });

  it('limit cuts a connection after N more server→client bytes', async () => {
    const payload = Buffer.alloc(1 << 20, 'z');
    const server = await startServer((socket) => {
      socket.on('data', (chunk) => {
        if (chunk.toString() === 'big') socket.write(payload);
        else socket.write(chunk);
      });
    });
    const { proxy } = await setup(server);
    const c = await client(proxy);
    c.socket.write('0123456789');
    await c.waitFor(10);

    proxy.limit(1000); // counted from now on: 10 bytes already delivered do not count
    c.socket.write('big');
    const { error } = await c.closed;
    expect(error).toBeUndefined(); // a FIN after the bytes that fit
    expect(c.received().length).toBeLessThanOrEqual(1010);
    expect(c.received().length).toBe(1010);
    expect(proxy.stats.cuts).toBe(1);
    await expect.poll(() => proxy.connections).toBe(0);

    proxy.limit(null);
    const d = await client(proxy);
    d.socket.write('big');
    expect((await d.waitFor(payload.length)).length).toBe(payload.length);
  });

  it('limit(0) cuts at the next server byte; limit(Infinity) turns it off', async () => {
    const { proxy } = await setup();
    proxy.limit(0);
    const c = await client(proxy);
    c.socket.write('x');
    await c.closed;
    expect(c.received().length).toBe(0);
    proxy.limit(Number.POSITIVE_INFINITY);
    const d = await client(proxy);
    d.socket.write('xyz');
    expect((await d.waitFor(3)).toString()).toBe('xyz');
  });

  it('resets the client when the target refuses the connection', async () => {
    const server = await startEcho();
    const port = server.port;
    await server.close();
    const proxy = await FaultProxy.start({ target: { port } });
    cleanups.push(() => proxy.close());
    const c = await connectClient(proxy.port);
    const { error } = await c.closed;
    expect(error?.code).toBe('ECONNRESET');
  });

  it('close is idempotent, destroys every connection and leaves no handle behind', async () => {
    const server = await startEcho();
    cleanups.push(() => server.close());
    const tcpHandles = (): number =>
      process.getActiveResourcesInfo().filter((r) => r.startsWith('TCP')).length;
    const timers = (): number =>
      process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    const baseTcp = tcpHandles();
    const baseTimers = timers();

    const proxy = await FaultProxy.start({ target: { port: server.port } });
    proxy.latency(1000);
    proxy.slowClose(1000);
    const a = await connectClient(proxy.port);
    const b = await connectClient(proxy.port);
    a.socket.write('pending'); // a latency timer is armed
    await expect.poll(() => proxy.connections).toBe(2);

    const first = proxy.close();
    const second = proxy.close();
    expect(second).toBe(first);
    await first;
    await proxy[Symbol.asyncDispose]();
    expect(proxy.connections).toBe(0);
    await Promise.all([a.closed, b.closed]);
    expect(a.received().length).toBe(0);
    await expect.poll(() => tcpHandles()).toBe(baseTcp);
    expect(timers()).toBeLessThanOrEqual(baseTimers);

    const late = connect({ host: '127.0.0.1', port: proxy.port });
    const [err] = (await once(late, 'error')) as [Error & { code?: string }];
    expect(err.code).toBe('ECONNREFUSED');
  });

  it('supports await using', async () => {
    const server = await startEcho();
    cleanups.push(() => server.close());
    let port = 0;
    {
      await using proxy = await FaultProxy.start({ target: { port: server.port } });
      port = proxy.port;
      const c = await connectClient(port);
      c.socket.write('hi');
      expect((await c.waitFor(2)).toString()).toBe('hi');
    }
    const late = connect({ host: '127.0.0.1', port });
    const [err] = (await once(late, 'error')) as [Error & { code?: string }];
    expect(err.code).toBe('ECONNREFUSED');
  });

  it('rejects bad input with errors naming the argument', async () => {
    const { proxy } = await setup();
    expect(() => proxy.latency(-1)).toThrow(RangeError);
    expect(() => proxy.latency(Number.NaN)).toThrow(/ms/);
    expect(() => proxy.latency(Number.POSITIVE_INFINITY)).toThrow(RangeError);
    expect(() => proxy.latency('5' as unknown as number)).toThrow(TypeError);
    expect(() => proxy.latency(10, -1)).toThrow(/jitter/);
    expect(() => proxy.slowClose(-5)).toThrow(RangeError);
    expect(() => proxy.slowClose(undefined as unknown as number)).toThrow(TypeError);
    expect(() => proxy.limit(-1)).toThrow(/bytes/);
    expect(() => proxy.limit(1.5)).toThrow(RangeError);
    expect(() => proxy.limit('10' as unknown as number)).toThrow(TypeError);

    await expect(
      FaultProxy.start({ target: { port: 1 }, host: '0.0.0.0' as '127.0.0.1' }),
    ).rejects.toThrow(RangeError);
    await expect(FaultProxy.start({ target: { port: 70000 } })).rejects.toThrow(
      /options\.target\.port/,
    );
    await expect(FaultProxy.start({ target: { port: 1 }, listenPort: -1 })).rejects.toThrow(
      /options\.listenPort/,
    );
    await expect(
      FaultProxy.start({} as unknown as Parameters<typeof FaultProxy.start>[0]),
    ).rejects.toThrow(TypeError);
    // A bad call leaves the settings untouched: forwarding still works without delay.
    const c = await client(proxy);
    c.socket.write('ok');
    expect((await c.waitFor(2)).toString()).toBe('ok');
  });
});
