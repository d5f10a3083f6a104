/**
 * Streamable HTTP for the example server: `POST/GET/DELETE /mcp` on 127.0.0.1, one MCP session
 * (and one `McpServer`) per client, all sessions sharing the app's one engine guard.
 *
 * Every request is checked before it reaches the MCP transport:
 * 1. DNS-rebinding protection: the `Host` header must name the loopback interface (`127.0.0.1`,
 *    `localhost` or `[::1]`, any port) and an `Origin` header, when present, too. A page on
 *    another site that rebinds its DNS name to 127.0.0.1 sends its own name: 403.
 * 2. With a token: `Authorization: Bearer <token>`, compared in constant time: else 401.
 *
 * With `metrics`, `GET /metrics` is served by it, under the same two checks.
 */
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import type { App } from './app.js';
import { createMcpServer } from './server.js';

export interface HttpOptions {
  port: number;
  token: string | undefined;
  /** Serves `GET /metrics` (see metrics.ts); without it, /metrics is a 404 like any other path. */
  metrics?: ((req: IncomingMessage, res: ServerResponse) => void) | undefined;
}

export interface HttpHandle {
  /** `http://127.0.0.1:<port>/mcp` */
  url: string;
  port: number;
  /** Closes every session and the listener. */
  close(): Promise<void>;
}

const HOST = '127.0.0.1';
const LOOPBACK_NAMES = new Set(['127.0.0.1', 'localhost', '[::1]']);

/** Hostname of a `Host` header value (`name:port`, `[v6]:port`), lower-cased; null if malformed. */
function hostnameOf(hostHeader: string): string | null {
  try {
    return new URL(`http://${hostHeader}`).hostname.toLowerCase();
  } catch {
    return null;
  }
}

function originAllowed(origin: string): boolean {
  try {
    return LOOPBACK_NAMES.has(new URL(origin).hostname.toLowerCase());
  } catch {
    return false;
  }
}

function digest(value: string): Buffer {
  return createHash('sha256').update(value).digest();
}

function tokenMatches(header: string | undefined, expected: Buffer): boolean {
  const match = /^Bearer\s+(.+)$/i.exec(header ?? '');
  if (match === null) return false;
  return timingSafeEqual(digest(match[1]!.trim()), expected);
}

function reject(res: ServerResponse, status: number, message: string): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ jsonrpc: '2.0', error: { code: -32000, message }, id: null }));
}

interface Session {
  transport: StreamableHTTPServerTransport;
  server: McpServer;
}

export async function startHttp<H>(app: App<H>, options: HttpOptions): Promise<HttpHandle> {
  const { log } = app;
  const expected = options.token === undefined ? undefined : digest(options.token);
  const sessions = new Map<string, Session>();

  const closeSession = async (session: Session): Promise<void> => {
    try {
      await session.server.close();
    } catch (error) {
      log.debug('session close failed', { error });
    }
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const hostname = hostnameOf(req.headers.host ?? '');
    if (hostname === null || !LOOPBACK_NAMES.has(hostname)) {
      log.warn('http: refused a request with a foreign Host header', { host: req.headers.host });
      return reject(res, 403, 'Forbidden: invalid Host header (DNS-rebinding protection)');
    }
    const origin = req.headers.origin;
    if (origin !== undefined && !originAllowed(origin)) {
      log.warn('http: refused a request with a foreign Origin header', { origin });
      return reject(res, 403, 'Forbidden: invalid Origin header (DNS-rebinding protection)');
    }
    const path = (req.url ?? '/').split('?')[0];
    const metrics = path === '/metrics' ? options.metrics : undefined;
    if (path !== '/mcp' && metrics === undefined) {
      return reject(res, 404, 'Not found: the MCP endpoint is /mcp');
    }
    if (expected !== undefined && !tokenMatches(req.headers.authorization, expected)) {
      log.warn('http: refused a request without a valid bearer token');
      res.setHeader('www-authenticate', 'Bearer realm="engine-guard-mcp"');
      return reject(res, 401, 'Unauthorized: missing or wrong bearer token');
    }
    if (metrics !== undefined) {
      if (req.method !== 'GET') return reject(res, 405, 'Method not allowed: GET /metrics');
      return metrics(req, res);
    }

    const sessionId = req.headers['mcp-session-id'];
    if (typeof sessionId === 'string') {
      const session = sessions.get(sessionId);
      if (session === undefined) return reject(res, 404, 'Session not found');
      await session.transport.handleRequest(req, res);
      return;
    }
    if (req.method !== 'POST') {
      return reject(res, 400, 'Bad request: no session; start one with an initialize request');
    }
    // A new session: the transport accepts only an initialize request here.
    const transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (id) => {
        sessions.set(id, session);
        log.info('http: session opened', { session: id, sessions: sessions.size });
      },
    });
    const server = createMcpServer(app);
    const session: Session = { transport, server };
    transport.onclose = () => {
      const id = transport.sessionId;
      if (id !== undefined && sessions.delete(id)) {
        log.info('http: session closed', { session: id, sessions: sessions.size });
      }
    };
    await server.connect(transport);
    await transport.handleRequest(req, res);
    if (transport.sessionId === undefined) await closeSession(session);
  };

  const http = createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      log.error('http: request failed', { error });
      reject(res, 500, 'Internal server error');
    });
  });
  await new Promise<void>((resolve, reject) => {
    http.once('error', reject);
    http.listen({ host: HOST, port: options.port }, () => {
      http.off('error', reject);
      resolve();
    });
  });
  const port = (http.address() as AddressInfo).port;
  const url = `http://${HOST}:${port}/mcp`;

  let closing: Promise<void> | undefined;
  return {
    url,
    port,
    close() {
      closing ??= (async () => {
        const all = [...sessions.values()];
        sessions.clear();
        await Promise.all(all.map(closeSession));
        await new Promise<void>((resolve) => {
          http.close(() => resolve());
          http.closeAllConnections();
        });
      })();
      return closing;
    },
  };
}
