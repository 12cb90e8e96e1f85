import { lstat, stat, unlink } from 'node:fs/promises';
import { createServer, isIP, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';
import { ByteBudget, ExitCode, errnoCode, errorMessage } from '../../util/index.js';
import { ByteQueue } from '../byte-queue.js';
import { BufferPool } from './buffer-pool.js';
import { NbdClosedError, NbdListenError } from '../errors.js';
import type { NbdExport } from './export.js';
import { ClientGone, serverHandshake } from './handshake.js';
import { socketIsLive } from '../transport.js';
import { Transmission } from './transmission.js';

export interface NbdServerOptions {
  /** Called with connection-level problems (clients that break the protocol); never throws into the server. */
  onClientError?: (err: Error) => void;
  /** Requests of one connection handled at once (default 16). */
  maxInFlight?: number;
  /**
   * Bytes of READ data all connections together hold at once, until the socket has taken them
   * (default 256 MiB).
   */
  readBudgetBytes?: number;
  /**
   * Reply bytes not yet taken by the socket (plus unhandled WRITE payloads) one connection may
   * hold before the server stops reading its requests (default 64 MiB).
   */
  maxConnectionBytes?: number;
  /**
   * A connection whose replies the client has not taken for this long, while other connections
   * wait for the READ budget, is closed (default 30 s).
   */
  replyStallTimeoutMs?: number;
  /** Connections open at once, handshaking or established (default 256). */
  maxConnections?: number;
  /** Connections in their handshake at once (default 32). */
  maxHandshakes?: number;
  /** TCP connections from one remote address (default 32); unix sockets have only the total bound. */
  maxConnectionsPerPeer?: number;
  /** A client that has not finished its handshake within this time is disconnected (default 5 s). */
  handshakeTimeoutMs?: number;
}

export interface NbdServerStats {
  /** Connections closed at once because a limit was reached and no handshake could make room. */
  refused: number;
  /** Connections closed in their handshake to make room for a new one. */
  evicted: number;
  /** Connections closed because their handshake took too long. */
  handshakeTimeouts: number;
  /** Connections closed because the client did not take its replies while others waited. */
  stalled: number;
}

interface Connection {
  socket: Socket;
  /** Remote address (TCP), undefined for unix sockets. */
  peer: string | undefined;
  transmission?: Transmission;
}

/** Longest unix socket path (sockaddr_un.sun_path, with its terminating NUL). */
const MAX_UNIX_PATH_BYTES = 107;

/**
 * An NBD server (fixed newstyle; structured replies with holes, base:allocation, simple replies for
 * clients without them). Serves a set of exports on unix sockets and TCP; every connection is
 * independent, and a misbehaving client only ever loses its own connection.
 *
 * Hostile clients are bounded: connections in total, per TCP peer and in their handshake (a new
 * connection over a limit evicts the oldest one still in its handshake, never an established
 * one; with none to evict it is refused at once); handshakes time out after a few seconds; memory
 * per connection and server-wide (see Transmission and the read budget).
 */
export class NbdServer {
  private readonly exports = new Map<string, NbdExport>();
  private readonly servers: Server[] = [];
  /** Open connections, oldest first. */
  private readonly conns = new Map<Socket, Connection>();
  private readonly unixPaths: string[] = [];
  private readonly readBudget: ByteBudget;
  private readonly bufferPool = new BufferPool();
  private stallTimer: NodeJS.Timeout | undefined;
  private closing: Promise<void> | undefined;
  readonly stats: NbdServerStats = { refused: 0, evicted: 0, handshakeTimeouts: 0, stalled: 0 };

  constructor(
    exports: readonly NbdExport[],
    private readonly opts: NbdServerOptions = {},
  ) {
    for (const e of exports) {
      if (this.exports.has(e.name)) throw new RangeError(`two NBD exports named '${e.name}'`);
      this.exports.set(e.name, e);
    }
    this.readBudget = new ByteBudget(opts.readBudgetBytes ?? 256 * 1024 * 1024);
  }

  get exportNames(): string[] {
    return [...this.exports.keys()];
  }

  /** Connections currently open. */
  get connectionCount(): number {
    return this.conns.size;
  }

  /** Connections still in their handshake. */
  get handshakeCount(): number {
    let n = 0;
    for (const c of this.conns.values()) if (!c.transmission) n++;
    return n;
  }

  /** READ bytes held server-wide now, and the most held at once (until the socket took them). */
  get readBytesInUse(): number {
    return this.readBudget.inUse;
  }
  get peakReadBytes(): number {
    return this.readBudget.peakInUse;
  }

  private report(err: Error): void {
    try {
      this.opts.onClientError?.(err);
    } catch {
      // a reporting callback must not take the server down
    }
  }

  private drop(c: Connection): void {
    this.conns.delete(c.socket);
    c.socket.destroy();
  }

  /** The oldest connection still in its handshake (of `peer`, when given). */
  private oldestHandshake(peer?: string): Connection | undefined {
    for (const c of this.conns.values())
      if (!c.transmission && (peer === undefined || c.peer === peer)) return c;
    return undefined;
  }

  /** Makes room for a new connection from `peer`; false when it must be refused. */
  private admit(peer: string | undefined): boolean {
    const evict = (c: Connection | undefined): boolean => {
      if (!c) return false;
      this.stats.evicted++;
      this.drop(c);
      return true;
    };
    if (peer !== undefined) {
      let fromPeer = 0;
      for (const c of this.conns.values()) if (c.peer === peer) fromPeer++;
      if (fromPeer >= (this.opts.maxConnectionsPerPeer ?? 32) && !evict(this.oldestHandshake(peer)))
        return false;
    }
    if (this.conns.size >= (this.opts.maxConnections ?? 256) && !evict(this.oldestHandshake())) return false;
    if (this.handshakeCount >= (this.opts.maxHandshakes ?? 32)) evict(this.oldestHandshake());
    return true;
  }

  private accept(socket: Socket): void {
    socket.on('error', () => {}); // resets and the like: the 'close' that follows cleans up
    const peer = socket.remoteAddress; // undefined on unix sockets
    if (this.closing || !this.admit(peer)) {
      if (!this.closing) this.stats.refused++;
      socket.destroy();
      return;
    }
    const c: Connection = { socket, peer };
    this.conns.set(socket, c);
    socket.setNoDelay?.(true);
    socket.on('close', () => this.conns.delete(socket));
    void this.session(c).catch((err: unknown) => {
      if (!(err instanceof ClientGone) && !(err instanceof NbdClosedError))
        this.report(err instanceof Error ? err : new Error(String(err)));
      socket.destroy();
    });
  }

  private async session(c: Connection): Promise<void> {
    const { socket } = c;
    const queue = new ByteQueue();
    const onData = (d: Buffer): void => queue.push(d);
    socket.on('data', onData);
    socket.on('close', () => queue.fail(new NbdClosedError('client disconnected')));
    const timer = setTimeout(() => {
      this.stats.handshakeTimeouts++;
      queue.fail(new NbdClosedError('handshake timeout'));
    }, this.opts.handshakeTimeoutMs ?? 5_000);
    timer.unref();
    let neg;
    try {
      neg = await serverHandshake({ queue, write: (b) => socket.write(b) }, this.exports);
    } finally {
      clearTimeout(timer);
      socket.off('data', onData);
    }
    if (socket.destroyed || !this.conns.has(socket)) throw new NbdClosedError('client disconnected');
    const t = new Transmission(socket, neg, {
      maxInFlight: this.opts.maxInFlight ?? 16,
      maxConnectionBytes: this.opts.maxConnectionBytes ?? 64 * 1024 * 1024,
      readBudget: this.readBudget,
      bufferPool: this.bufferPool,
      onProtocolError: (err) => this.report(err),
    });
    c.transmission = t;
    this.watchStalls();
    for (const b of queue.takeAll()) t.push(b);
    socket.on('data', (d: Buffer) => t.push(d));
  }

  /**
   * Closes connections that take no replies while others wait for the READ budget (they hold it,
   * and it is bounded): a client that stops reading cannot starve the ones that read.
   */
  private watchStalls(): void {
    if (this.stallTimer) return;
    const ms = this.opts.replyStallTimeoutMs ?? 30_000;
    this.stallTimer = setInterval(
      () => {
        if (this.readBudget.waiting === 0) return;
        for (const c of [...this.conns.values()])
          if (c.transmission?.stalledFor(ms)) {
            this.stats.stalled++;
            this.report(new NbdClosedError(`a client took no replies for ${ms} ms; disconnected`));
            this.drop(c);
          }
      },
      Math.max(10, Math.min(1000, Math.floor(ms / 4))),
    );
    this.stallTimer.unref();
  }

  private serve(): Server {
    const server = createServer((socket) => this.accept(socket));
    this.servers.push(server);
    return server;
  }

  private async listen(server: Server, start: () => void): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.once('listening', () => {
        server.off('error', reject);
        resolve();
      });
      start();
    });
    // Later errors (e.g. EMFILE on accept) must not take the process down.
    server.on('error', (err) => this.report(err));
  }

  /**
   * Listens on a unix socket. A socket file already at `path` is replaced only when nothing
   * listens on it (left by a killed server); anything else there is refused, never removed.
   */
  async listenUnix(path: string): Promise<void> {
    if (Buffer.byteLength(path) > MAX_UNIX_PATH_BYTES)
      throw new NbdListenError(
        `socket path ${path} is longer than ${MAX_UNIX_PATH_BYTES} bytes`,
        'choose a shorter --socket path',
        ExitCode.USAGE,
      );
    await removeStaleSocket(path);
    const server = this.serve();
    try {
      await this.listen(server, () => server.listen(path));
    } catch (err) {
      this.servers.splice(this.servers.indexOf(server), 1);
      throw unixListenError(path, err);
    }
    this.unixPaths.push(path);
  }

  /** Listens on TCP; returns the port (pass 0 for a free one). */
  async listenTcp(host: string, port: number): Promise<number> {
    if (!Number.isInteger(port) || port < 0 || port > 65535)
      throw new NbdListenError(
        `port ${port} is out of range`,
        'give a port from 1 to 65535 (0 picks a free one)',
        ExitCode.USAGE,
      );
    const server = this.serve();
    try {
      await this.listen(server, () => server.listen(port, host));
    } catch (err) {
      this.servers.splice(this.servers.indexOf(server), 1);
      throw tcpListenError(host, port, err);
    }
    const addr = server.address();
    return typeof addr === 'object' && addr ? addr.port : port;
  }

  /** Stops listening, drops every connection, closes the exports. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      if (this.stallTimer) clearInterval(this.stallTimer);
      await Promise.all(
        this.servers
          .map((s) => new Promise<void>((r) => s.close(() => r())))
          .concat(
            [...this.conns.keys()].map(
              (s) =>
                new Promise<void>((r) => {
                  if (s.destroyed) return r();
                  s.once('close', () => r());
                  s.destroy();
                }),
            ),
          ),
      );
      for (const p of this.unixPaths) await unlink(p).catch(() => {});
      for (const e of this.exports.values()) await e.close?.();
    })();
    return this.closing;
  }
}

async function removeStaleSocket(path: string): Promise<void> {
  // bind() reports a missing directory as EACCES: look first.
  const parent = await stat(dirname(path)).catch((err: unknown) => {
    if (errnoCode(err) === 'ENOENT' || errnoCode(err) === 'ENOTDIR') return undefined;
    throw unixListenError(path, err);
  });
  if (!parent?.isDirectory())
    throw unixListenError(path, Object.assign(new Error('no directory'), { code: 'ENOENT' }));
  let st;
  try {
    st = await lstat(path);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return;
    throw unixListenError(path, err);
  }
  if (st.isDirectory())
    throw new NbdListenError(
      `--socket ${path} is a directory`,
      `give the path of a new socket file, e.g. ${path.replace(/\/+$/, '')}/nbd.sock`,
      ExitCode.USAGE,
    );
  if (!st.isSocket())
    throw new NbdListenError(
      `${path} exists and is not a socket; it was left alone`,
      'choose another --socket path (only a stale socket is ever replaced)',
      ExitCode.USAGE,
    );
  if (await socketIsLive(path))
    throw new NbdListenError(
      `another server is listening on ${path}`,
      'stop it first or choose another --socket path',
    );
  await unlink(path).catch((err: unknown) => {
    if (errnoCode(err) !== 'ENOENT') throw unixListenError(path, err);
  });
}

function unixListenError(path: string, err: unknown): Error {
  if (err instanceof NbdListenError) return err;
  switch (errnoCode(err)) {
    case 'ENOENT':
    case 'ENOTDIR':
      return new NbdListenError(
        `cannot create socket ${path}: directory ${dirname(path)} does not exist`,
        'create it first or choose another --socket path',
      );
    case 'EACCES':
    case 'EPERM':
    case 'EROFS':
      return new NbdListenError(
        `cannot create socket ${path}: ${errnoCode(err) === 'EROFS' ? 'read-only file system' : 'permission denied'}`,
        'choose a --socket path in a directory you can write to',
      );
    case 'EADDRINUSE':
      return new NbdListenError(
        `${path} was created by someone else meanwhile`,
        'choose another --socket path',
      );
    default:
      return new NbdListenError(
        `cannot listen on ${path}: ${errorMessage(err)}`,
        'choose another --socket path',
      );
  }
}

function tcpListenError(host: string, port: number, err: unknown): Error {
  const where = `${isIP(host) === 6 ? `[${host}]` : host}:${port}`;
  switch (errnoCode(err)) {
    case 'EADDRINUSE':
      return new NbdListenError(
        `port ${port} on ${host} is already in use`,
        'stop what uses it or choose another port (0 picks a free one)',
      );
    case 'EACCES':
    case 'EPERM':
      return new NbdListenError(
        `not allowed to listen on ${where}`,
        'ports below 1024 need privileges: choose a port from 1024 to 65535',
      );
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
    case 'EAI_FAIL':
    case 'EAI_NONAME':
      return new NbdListenError(
        `unknown host '${host}'`,
        'give an IP address or a name this machine resolves, e.g. 127.0.0.1 or [::1]',
        ExitCode.USAGE,
      );
    case 'EADDRNOTAVAIL':
    case 'EAFNOSUPPORT':
      return new NbdListenError(
        `${host} is not an address of this machine`,
        'give one of its addresses, 127.0.0.1, [::1] or 0.0.0.0 (all)',
      );
    default:
      return new NbdListenError(
        `cannot listen on ${where}: ${errorMessage(err)}`,
        'choose another address or port',
      );
  }
}
