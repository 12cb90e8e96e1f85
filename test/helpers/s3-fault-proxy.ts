/**
 * A fault-injecting HTTP proxy for S3 tests (issue 12): the client talks to the proxy's endpoint,
 * the proxy forwards each request to the upstream S3 server, and with a fixed seed it instead
 * answers 503 SlowDown or 500 InternalError without forwarding, resets the connection before
 * forwarding, forwards and then drops the response (the server committed, the client never
 * hears), cuts a response body off half way, flips a byte of a response body, or delays the
 * response.
 *
 * Signatures stay valid: SigV4 signs the Host header, which the client set to the proxy's
 * address; the proxy forwards it unchanged, and both test servers use path-style requests, so
 * they don't care that Host is not their own address. `Expect` (unsigned) is dropped and the
 * body is sent with a Content-Length, as the proxy holds the whole request before deciding.
 *
 * Decisions come from one seeded PRNG, two draws per request in arrival order, so a sequential
 * client sees the same faults on every run. Listing lag (eventual consistency) is not simulated.
 */
import {
  createServer,
  request as httpRequest,
  Agent,
  type IncomingMessage,
  type ServerResponse,
} from 'node:http';
import type { Socket } from 'node:net';
import type { Answer, ObjectLockEmulator } from './s3-object-lock.js';

export interface FaultOptions {
  /** PRNG seed (default 1). */
  seed?: number;
  /** Rate (0..1) of `503 SlowDown` answered by the proxy, request not forwarded. */
  slowDown?: number;
  /** Rate of `500 InternalError` answered by the proxy, request not forwarded. */
  internalError?: number;
  /** Rate of connection resets after the request was read, before forwarding it. */
  resetBefore?: number;
  /** Rate of lost responses: forwarded, the server answered (committed), then the connection is reset. */
  lostResponse?: number;
  /** Rate of responses whose body is cut off half way (status and Content-Length sent, then reset). Only bodies ≥ 2 bytes. */
  truncateBody?: number;
  /** Rate of 2xx GET responses with one byte of the body flipped (length and headers unchanged). */
  corruptBody?: number;
  /** Rate of delayed responses (independent of the faults above). */
  slow?: number;
  /** Delay of a slow response, ms (default 300). */
  slowMs?: number;
  /** Which requests may get faults (default: all). Others are forwarded untouched. */
  only?: (req: { method: string; url: string }) => boolean;
  /** Faults off entirely (forward everything) while true. */
  paused?: boolean;
  /**
   * Answers matching requests with this S3 error instead of forwarding them, always (not drawn):
   * a permission a key lacks for one operation, a clock the server finds skewed.
   */
  deny?: (req: {
    method: string;
    url: string;
  }) => { status: number; code: string; message: string } | undefined;
  /** Object Lock and versioning emulated in front of the upstream server (s3-object-lock.ts). */
  objectLock?: ObjectLockEmulator;
}

export type FaultKind =
  'slowDown' | 'internalError' | 'resetBefore' | 'lostResponse' | 'truncateBody' | 'corruptBody';
const FAULT_KINDS: readonly FaultKind[] = [
  'slowDown',
  'internalError',
  'resetBefore',
  'lostResponse',
  'truncateBody',
  'corruptBody',
];

export interface FaultStats {
  /** Requests received. */
  requests: number;
  /** Requests forwarded to the upstream server (including lost/truncated/corrupted ones). */
  forwarded: number;
  slowDown: number;
  internalError: number;
  resetBefore: number;
  lostResponse: number;
  truncateBody: number;
  corruptBody: number;
  slow: number;
  /** Upstream unreachable or failed mid-request (answered 502). */
  upstreamErrors: number;
  /** Sum of the fault counters (slow responses not included). */
  faults: number;
  /** The faults in order: `${kind} ${method} ${url}`. */
  log: string[];
}

export interface FaultProxy {
  /** `http://127.0.0.1:PORT`: give this to the client instead of the server's endpoint. */
  endpoint: string;
  /** Live counters. */
  stats: FaultStats;
  /** Changes options from now on (the PRNG keeps its sequence unless `seed` is given). */
  configure(opts: Partial<FaultOptions>): void;
  /** Closes the listener and every open connection. Idempotent. */
  stop(): Promise<void>;
}

/** mulberry32: small, fast, deterministic. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const HOP_BY_HOP = [
  'connection',
  'keep-alive',
  'transfer-encoding',
  'proxy-connection',
  'upgrade',
  'te',
  'trailer',
];

function errorXml(code: string, message: string, id: string): string {
  return `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${message}</Message><RequestId>${id}</RequestId></Error>`;
}

function readAll(stream: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    stream.on('data', (d: Buffer) => parts.push(d));
    stream.once('end', () => resolve(Buffer.concat(parts)));
    stream.once('error', reject);
    stream.once('aborted', () => reject(new Error('aborted')));
  });
}

export async function startFaultProxy(upstream: string, opts: FaultOptions = {}): Promise<FaultProxy> {
  const up = new URL(upstream);
  if (up.protocol !== 'http:') throw new Error(`fault proxy: only http upstreams (${upstream})`);
  let options: FaultOptions = { ...opts };
  let random = prng(options.seed ?? 1);
  const stats: FaultStats = {
    requests: 0,
    forwarded: 0,
    slowDown: 0,
    internalError: 0,
    resetBefore: 0,
    lostResponse: 0,
    truncateBody: 0,
    corruptBody: 0,
    slow: 0,
    upstreamErrors: 0,
    faults: 0,
    log: [],
  };
  const agent = new Agent({ keepAlive: true, maxSockets: 64 });
  const sockets = new Set<Socket>();
  let seq = 0;

  const count = (kind: FaultKind, req: IncomingMessage): void => {
    stats[kind]++;
    stats.faults++;
    stats.log.push(`${kind} ${req.method} ${req.url}`);
  };

  /** Picks at most one fault by cumulative rate; `draw` in [0,1). */
  const pick = (draw: number, method: string, url: string): FaultKind | undefined => {
    if (options.paused) return undefined;
    if (options.only && !options.only({ method, url })) return undefined;
    let acc = 0;
    for (const k of FAULT_KINDS) {
      acc += options[k] ?? 0;
      if (draw < acc) return k;
    }
    return undefined;
  };

  const forward = (req: IncomingMessage, body: Buffer): Promise<Answer> =>
    new Promise((resolve, reject) => {
      const headers: Record<string, string | string[]> = {};
      for (const [k, v] of Object.entries(req.headers)) {
        if (v === undefined || HOP_BY_HOP.includes(k) || k === 'expect') continue;
        headers[k] = v; // host included, unchanged: it is signed
      }
      if (body.length > 0 || req.headers['content-length'] !== undefined)
        headers['content-length'] = String(body.length);
      const u = httpRequest(
        { host: up.hostname, port: up.port || 80, method: req.method, path: req.url, headers, agent },
        (res) => {
          readAll(res).then((b) => {
            const h: Record<string, string | string[]> = {};
            for (const [k, v] of Object.entries(res.headers)) if (v !== undefined) h[k] = v;
            resolve({ status: res.statusCode ?? 502, headers: h, body: b });
          }, reject);
        },
      );
      u.once('error', reject);
      u.end(body);
    });

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    stats.requests++;
    const id = `vmvault-fault-${++seq}`;
    const method = req.method ?? 'GET';
    const url = req.url ?? '/';
    const d1 = random();
    const d2 = random();
    let body: Buffer;
    try {
      body = await readAll(req);
    } catch {
      return; // the client went away
    }
    const fault = pick(d1, method, url);
    const slow =
      !options.paused && (!options.only || options.only({ method, url })) && d2 < (options.slow ?? 0);
    const isHead = method === 'HEAD';

    const denied = options.deny?.({ method, url });
    if (denied) {
      const xml = Buffer.from(errorXml(denied.code, denied.message, id));
      res.writeHead(denied.status, {
        'content-type': 'application/xml',
        'content-length': isHead ? 0 : xml.length,
        'x-amz-request-id': id,
      });
      res.end(isHead ? undefined : xml);
      return;
    }
    if (fault === 'slowDown' || fault === 'internalError') {
      count(fault, req);
      const [status, code, msg] =
        fault === 'slowDown'
          ? [503, 'SlowDown', 'Please reduce your request rate.']
          : [500, 'InternalError', 'We encountered an internal error. Please try again.'];
      const xml = Buffer.from(errorXml(code, msg, id));
      res.writeHead(status, {
        'content-type': 'application/xml',
        'content-length': isHead ? 0 : xml.length,
        'x-amz-request-id': id,
      });
      res.end(isHead ? undefined : xml);
      return;
    }
    if (fault === 'resetBefore') {
      count(fault, req);
      req.socket.destroy();
      return;
    }

    let answer: Answer;
    try {
      const lock = options.objectLock;
      if (lock)
        answer = await lock.handle(method, url, req.headers, body, () => {
          stats.forwarded++;
          return forward(req, body);
        });
      else {
        stats.forwarded++;
        answer = await forward(req, body);
      }
    } catch (e) {
      stats.upstreamErrors++;
      if (!res.headersSent) {
        const xml = Buffer.from(errorXml('BadGateway', `fault proxy: upstream: ${(e as Error).message}`, id));
        res.writeHead(502, { 'content-type': 'application/xml', 'content-length': xml.length });
        res.end(xml);
      }
      return;
    }
    if (slow) {
      stats.slow++;
      await new Promise((r) => setTimeout(r, options.slowMs ?? 300));
    }
    if (fault === 'lostResponse') {
      count(fault, req);
      req.socket.destroy();
      return;
    }
    const headers: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(answer.headers)) {
      if (HOP_BY_HOP.includes(k)) continue;
      headers[k] = v;
    }
    const status = answer.status;
    let out = answer.body;
    if (!isHead && headers['content-length'] === undefined && status !== 204 && status !== 304)
      headers['content-length'] = String(out.length);
    if (fault === 'corruptBody' && method === 'GET' && status >= 200 && status < 300 && out.length > 0) {
      count(fault, req);
      out = Buffer.from(out);
      const at = Math.floor(d2 * out.length);
      out[at] = out[at]! ^ 0x01;
    }
    if (fault === 'truncateBody' && !isHead && out.length >= 2) {
      count(fault, req);
      res.writeHead(status, headers);
      res.write(out.subarray(0, out.length >> 1), () => req.socket.destroy());
      return;
    }
    res.writeHead(status, headers);
    res.end(isHead ? undefined : out);
  };

  const server = createServer((req, res) => {
    handle(req, res).catch(() => req.socket.destroy());
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  server.on('clientError', (_e, s: Socket) => s.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const a = server.address();
  const port = typeof a === 'object' && a ? a.port : 0;

  let stopping: Promise<void> | undefined;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    stats,
    configure(next) {
      options = { ...options, ...next };
      if (next.seed !== undefined) random = prng(next.seed);
    },
    stop: () =>
      (stopping ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
        agent.destroy();
      })),
  };
}
