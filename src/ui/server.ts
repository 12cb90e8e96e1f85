/**
 * The HTTP(S) server of `vmvault ui` (docs/ui.md): the page's files and `GET /api/dashboard`,
 * read-only. hono routes the requests; the node:http / node:https server under it is ours, so that
 * it bounds headers, time and connections (in all and per client address).
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { createRequire } from 'node:module';
import { isIP, type AddressInfo, type Socket } from 'node:net';
import { hostname, networkInterfaces } from 'node:os';
import { fileURLToPath } from 'node:url';
import { getRequestListener } from '@hono/node-server';
import { Hono, type Context } from 'hono';
import { getCookie, setCookie } from 'hono/cookie';
import { errorMessage, printable } from '../util/index.js';
import type { Dashboard } from './dashboard.js';

/** What the server asks for the dashboard (a `DashboardSource`). */
export interface DashboardProvider {
  get(): Promise<{ data: Dashboard; error?: string }>;
}

export interface UiLimits {
  /** Open connections in all, and from one client address. */
  maxConnections: number;
  maxConnectionsPerClient: number;
  /** Request line and headers together. */
  maxHeaderBytes: number;
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  keepAliveTimeoutMs: number;
  /** TLS handshakes that take longer are dropped. */
  handshakeTimeoutMs: number;
  /** A connection without traffic for this long (a client that stopped reading) is closed. */
  idleTimeoutMs: number;
}

export const DEFAULT_UI_LIMITS: UiLimits = {
  maxConnections: 64,
  maxConnectionsPerClient: 16,
  maxHeaderBytes: 16 * 1024,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  keepAliveTimeoutMs: 5_000,
  handshakeTimeoutMs: 10_000,
  idleTimeoutMs: 60_000,
};

export interface UiServerOptions {
  source: DashboardProvider;
  /** The address to listen on (an IP address or `localhost`) and port (0: any free one). */
  host: string;
  port: number;
  /** When set, every request needs it (Bearer header, or the cookie the page URL's `?token=` sets). */
  token?: string;
  tls?: { cert: Buffer; key: Buffer };
  /** Further names a request's Host header may carry (a DNS name of this machine, a proxy's). */
  allowedHosts?: string[];
  limits?: Partial<UiLimits>;
}

const LOOPBACK_NAMES = ['localhost', '127.0.0.1', '::1'];

/** Whether an address given to listen on only accepts connections from this machine. */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase();
  if (h === 'localhost' || h === '::1') return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  return /^::ffff:127\.\d+\.\d+\.\d+$/.test(h);
}

const isWildcard = (host: string): boolean => host === '0.0.0.0' || host === '::';

/** `host` as it goes into a URL: IPv6 in brackets. */
export function urlHost(host: string): string {
  return isIP(host) === 6 ? `[${host}]` : host;
}

/** The page's files: from `assets/` next to this module (src/ui or dist/ui), and uPlot's dist. */
interface Asset {
  type: string;
  body: Buffer;
}

async function loadAssets(): Promise<Map<string, Asset>> {
  const dir = new URL('./assets/', import.meta.url);
  const files: Array<[string, string, URL | string]> = [
    ['/', 'text/html; charset=utf-8', new URL('index.html', dir)],
    ['/app.js', 'text/javascript; charset=utf-8', new URL('app.js', dir)],
    ['/app.css', 'text/css; charset=utf-8', new URL('app.css', dir)],
    ['/favicon.svg', 'image/svg+xml', new URL('favicon.svg', dir)],
  ];
  const require = createRequire(import.meta.url);
  files.push(
    ['/vendor/uplot.js', 'text/javascript; charset=utf-8', require.resolve('uplot/dist/uPlot.iife.min.js')],
    ['/vendor/uplot.css', 'text/css; charset=utf-8', require.resolve('uplot/dist/uPlot.min.css')],
  );
  const out = new Map<string, Asset>();
  for (const [path, type, file] of files) {
    try {
      out.set(path, { type, body: await readFile(file) });
    } catch (err) {
      const name = typeof file === 'string' ? file : fileURLToPath(file);
      throw new Error(`the page's file ${name} cannot be read (${errorMessage(err)}); run 'npm run build'`);
    }
  }
  return out;
}

/** A Buffer as the plain Uint8Array hono's body wants: a view, not a copy. */
const bytesOf = (b: Buffer): Uint8Array<ArrayBuffer> =>
  new Uint8Array(b.buffer as ArrayBuffer, b.byteOffset, b.length);

const sha256 = (s: string): Buffer => createHash('sha256').update(s).digest();

/** Equal strings, in time that does not depend on where they differ (hashes of both compared). */
function sameSecret(given: string, expectedHash: Buffer): boolean {
  return timingSafeEqual(sha256(given), expectedHash);
}

/**
 * The dashboard as JSON, `<`, `>`, `&` and the JavaScript line separators written as \u escapes:
 * names, tags and notes from the repository never appear as markup in the response.
 */
export function dashboardJson(value: unknown): Buffer {
  return Buffer.from(
    JSON.stringify(value).replace(
      /[<>&\u2028\u2029]/g,
      (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`,
    ),
  );
}

const SECURITY_HEADERS: Record<string, string> = {
  'Content-Security-Policy':
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'X-Frame-Options': 'DENY',
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Resource-Policy': 'same-origin',
};

/** A running dashboard server. */
export class UiServer {
  private constructor(
    private readonly server: Server,
    /** The base URL (without a token), e.g. `http://127.0.0.1:8080/`. */
    readonly url: string,
    readonly port: number,
  ) {}

  static async start(opts: UiServerOptions): Promise<UiServer> {
    const limits = { ...DEFAULT_UI_LIMITS, ...opts.limits };
    const assets = await loadAssets();
    let port = opts.port;
    const app = buildApp(opts, assets, () => port);
    const listener = getRequestListener(app.fetch, {
      overrideGlobalObjects: false,
      errorHandler: () => new Response('internal error\n', { status: 500 }),
    });
    // A request without a Host header (HTTP/1.0) never reaches hono, which builds its URL from it.
    const handler = (req: IncomingMessage, res: ServerResponse): void => {
      if (!req.headers.host) {
        res.writeHead(400, {
          ...SECURITY_HEADERS,
          'Content-Type': 'text/plain; charset=utf-8',
          Connection: 'close',
        });
        res.end('400 Bad Request: the request has no Host header\n');
        return;
      }
      void listener(req, res);
    };
    const common = {
      maxHeaderSize: limits.maxHeaderBytes,
      headersTimeout: limits.headersTimeoutMs,
      requestTimeout: limits.requestTimeoutMs,
      keepAliveTimeout: limits.keepAliveTimeoutMs,
    };
    const server: Server = opts.tls
      ? createHttpsServer(
          {
            ...common,
            cert: opts.tls.cert,
            key: opts.tls.key,
            minVersion: 'TLSv1.2',
            handshakeTimeout: limits.handshakeTimeoutMs,
          },
          handler,
        )
      : createHttpServer(common, handler);
    server.maxConnections = limits.maxConnections;
    server.maxRequestsPerSocket = 1000;
    server.timeout = limits.idleTimeoutMs;
    limitPerClient(server, limits.maxConnectionsPerClient);
    // A client that drops a TLS handshake or sends garbage: its socket goes, nothing is logged.
    server.on('clientError', (_err, socket: Socket) => socket.destroy());
    server.on('tlsClientError', (_err, socket: Socket) => socket.destroy());
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: opts.host, port: opts.port }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    port = (server.address() as AddressInfo).port;
    const shown = isWildcard(opts.host) ? hostname() : opts.host;
    return new UiServer(server, `${opts.tls ? 'https' : 'http'}://${urlHost(shown)}:${port}/`, port);
  }

  /** Stops listening and closes every connection. */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    await closed;
  }
}

/** At most `max` open connections from one client address; more are closed at once. */
function limitPerClient(server: Server, max: number): void {
  const open = new Map<string, number>();
  // node:https emits 'connection' for the TCP socket before the handshake: the cap holds for it.
  server.on('connection', (socket: Socket) => {
    const addr = socket.remoteAddress ?? '?';
    const n = (open.get(addr) ?? 0) + 1;
    if (n > max) {
      socket.destroy();
      return;
    }
    open.set(addr, n);
    socket.once('close', () => {
      const left = (open.get(addr) ?? 1) - 1;
      if (left <= 0) open.delete(addr);
      else open.set(addr, left);
    });
  });
}

/** The Host header's name and port (`name`, `name:port`, `[v6]:port`), lower case; undefined: malformed. */
function parseHostHeader(h: string): { name: string; port: number | undefined } | undefined {
  const m = /^\[([0-9a-f:.]+)\](?::(\d{1,5}))?$/i.exec(h) ?? /^([a-z0-9._-]+)(?::(\d{1,5}))?$/i.exec(h);
  if (!m) return undefined;
  return { name: m[1]!.toLowerCase(), port: m[2] === undefined ? undefined : Number(m[2]) };
}

/** The names a request may be addressed to: the listen address, and this machine's names for a wildcard or loopback one. */
function allowedNames(opts: UiServerOptions): { exact: Set<string>; anyPort: Set<string> } {
  const exact = new Set<string>();
  const host = opts.host.toLowerCase();
  if (!isWildcard(host)) exact.add(host);
  if (isLoopbackHost(host) || isWildcard(host)) for (const n of LOOPBACK_NAMES) exact.add(n);
  if (isWildcard(host)) {
    exact.add(hostname().toLowerCase());
    for (const list of Object.values(networkInterfaces()))
      for (const a of list ?? []) exact.add(a.address.toLowerCase().replace(/%.*$/, ''));
  }
  return { exact, anyPort: new Set((opts.allowedHosts ?? []).map((n) => n.toLowerCase())) };
}

function buildApp(opts: UiServerOptions, assets: Map<string, Asset>, port: () => number): Hono {
  const app = new Hono();
  const names = allowedNames(opts);
  const defaultPort = opts.tls ? 443 : 80;
  const tokenHash = opts.token === undefined ? undefined : sha256(opts.token);
  // The cookie holds a value derived from the token, not the token itself; named per port, as
  // cookies are shared between the ports of one host.
  const cookieName = (): string => `vmvault_ui_${port()}`;
  const cookieSecret =
    opts.token === undefined
      ? undefined
      : createHmac('sha256', opts.token).update('vmvault ui cookie').digest('hex');
  const cookieHash = cookieSecret === undefined ? undefined : sha256(cookieSecret);
  const jsonCache = new WeakMap<Dashboard, Buffer>();

  app.use('*', async (c, next) => {
    await next();
    for (const [k, v] of Object.entries(SECURITY_HEADERS)) c.res.headers.set(k, v);
  });

  // DNS rebinding: a page of another origin resolved to this address still names its own host.
  app.use('*', async (c, next) => {
    const host = parseHostHeader(c.req.header('host') ?? '');
    if (!host) return c.text('400 Bad Request: the request has no valid Host header\n', 400);
    const ok =
      names.anyPort.has(host.name) || (names.exact.has(host.name) && (host.port ?? defaultPort) === port());
    if (!ok)
      return c.text(
        '421 Misdirected Request: this server does not answer for that host name; use the address vmvault ui printed, or start it with --allow-host NAME\n',
        421,
      );
    await next();
  });

  app.use('*', async (c, next) => {
    if (c.req.method !== 'GET' && c.req.method !== 'HEAD') {
      c.header('Allow', 'GET, HEAD');
      return c.text('405 Method Not Allowed: the dashboard is read-only\n', 405);
    }
    await next();
  });

  if (tokenHash && cookieHash && cookieSecret) {
    app.use('*', async (c, next) => {
      const url = new URL(c.req.url);
      const given = url.searchParams.get('token');
      if (given !== null && url.pathname === '/') {
        if (!sameSecret(given, tokenHash)) return unauthorized(c);
        // The token leaves the address bar (and the history) at once; the cookie carries it on.
        url.searchParams.delete('token');
        setCookie(c, cookieName(), cookieSecret, {
          httpOnly: true,
          sameSite: 'Strict',
          path: '/',
          secure: opts.tls !== undefined,
        });
        c.header('Cache-Control', 'no-store');
        return c.redirect(`${url.pathname}${url.search}`, 303);
      }
      const bearer = /^Bearer\s+(\S+)\s*$/i.exec(c.req.header('authorization') ?? '')?.[1];
      const cookie = getCookie(c, cookieName());
      const ok =
        (bearer !== undefined && sameSecret(bearer, tokenHash)) ||
        (cookie !== undefined && sameSecret(cookie, cookieHash));
      if (!ok) return unauthorized(c);
      await next();
    });
  }

  app.get('/api/health', (c) => {
    c.header('Cache-Control', 'no-store');
    return c.json({ ok: true });
  });

  app.get('/api/dashboard', async (c) => {
    c.header('Cache-Control', 'no-store');
    c.header('Content-Type', 'application/json; charset=utf-8');
    let got: { data: Dashboard; error?: string };
    try {
      got = await opts.source.get();
    } catch (err) {
      return c.body(bytesOf(dashboardJson({ error: printable(errorMessage(err), 1000) })), 503);
    }
    let body: Buffer;
    if (got.error !== undefined)
      // An older read, and why the new one failed (the page says so).
      body = dashboardJson({ ...got.data, readError: printable(got.error, 1000) });
    else {
      body = jsonCache.get(got.data) ?? dashboardJson(got.data);
      jsonCache.set(got.data, body);
    }
    return c.body(bytesOf(body), 200);
  });

  for (const [path, asset] of assets)
    app.get(path, (c) => {
      c.header('Content-Type', asset.type);
      c.header('Cache-Control', 'no-cache');
      return c.body(bytesOf(asset.body), 200);
    });

  app.notFound((c) => c.text('404 Not Found\n', 404));
  app.onError((_err, c) => c.text('500 Internal Server Error\n', 500));
  return app;
}

function unauthorized(c: Context): Response {
  c.header('WWW-Authenticate', 'Bearer realm="vmvault"');
  c.header('Cache-Control', 'no-store');
  return c.text(
    "401 Unauthorized: this dashboard needs its token; open /?token=TOKEN once (TOKEN: the first line of vmvault ui's --token-file), or send 'Authorization: Bearer TOKEN'\n",
    401,
  );
}
