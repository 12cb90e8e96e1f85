import { rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { ByteBudget } from '../../util/index.js';
import { ByteQueue } from '../byte-queue.js';
import { BufferPool } from './buffer-pool.js';
import { NbdClosedError } from '../errors.js';
import type { NbdExport } from './export.js';
import { ClientGone, serverHandshake } from './handshake.js';
import { Transmission } from './transmission.js';

export interface NbdServerOptions {
  /** Called with connection-level problems (clients that break the protocol); never throws into the server. */
  onClientError?: (err: Error) => void;
  /** Requests of one connection handled at once (default 16). */
  maxInFlight?: number;
  /** Bytes of READ data all connections together hold in memory at once (default 256 MiB). */
  readBudgetBytes?: number;
  /** Connections served at once; more are closed right away (default 256). */
  maxConnections?: number;
  /** A client that has not finished its handshake within this time is disconnected (default 30 s). */
  handshakeTimeoutMs?: number;
}

/**
 * An NBD server (fixed newstyle; structured replies with holes, base:allocation, simple replies for
 * clients without them). Serves a set of exports on unix sockets and TCP; every connection is
 * independent, and a misbehaving client only ever loses its own connection.
 */
export class NbdServer {
  private readonly exports = new Map<string, NbdExport>();
  private readonly servers: Server[] = [];
  private readonly sockets = new Set<Socket>();
  private readonly unixPaths: string[] = [];
  private readonly readBudget: ByteBudget;
  private readonly bufferPool = new BufferPool();
  private closing: Promise<void> | undefined;

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
    return this.sockets.size;
  }

  private report(err: Error): void {
    try {
      this.opts.onClientError?.(err);
    } catch {
      // a reporting callback must not take the server down
    }
  }

  private accept(socket: Socket): void {
    if (this.closing || this.sockets.size >= (this.opts.maxConnections ?? 256)) {
      socket.destroy();
      return;
    }
    this.sockets.add(socket);
    socket.setNoDelay?.(true);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => {}); // resets and the like: the 'close' that follows cleans up
    void this.session(socket).catch((err: unknown) => {
      if (!(err instanceof ClientGone) && !(err instanceof NbdClosedError))
        this.report(err instanceof Error ? err : new Error(String(err)));
      socket.destroy();
    });
  }

  private async session(socket: Socket): Promise<void> {
    const queue = new ByteQueue();
    const onData = (d: Buffer): void => queue.push(d);
    socket.on('data', onData);
    socket.on('close', () => queue.fail(new NbdClosedError('client disconnected')));
    const timer = setTimeout(
      () => queue.fail(new NbdClosedError('handshake timeout')),
      this.opts.handshakeTimeoutMs ?? 30_000,
    );
    timer.unref();
    let neg;
    try {
      neg = await serverHandshake({ queue, write: (b) => socket.write(b) }, this.exports);
    } finally {
      clearTimeout(timer);
      socket.off('data', onData);
    }
    const t = new Transmission(socket, neg, {
      maxInFlight: this.opts.maxInFlight ?? 16,
      readBudget: this.readBudget,
      bufferPool: this.bufferPool,
      onProtocolError: (err) => this.report(err),
    });
    for (const b of queue.takeAll()) t.push(b);
    socket.on('data', (d: Buffer) => t.push(d));
  }

  private serve(): Server {
    const server = createServer((socket) => this.accept(socket));
    this.servers.push(server);
    return server;
  }

  async listenUnix(path: string): Promise<void> {
    await rm(path, { force: true });
    const server = this.serve();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => resolve());
    });
    this.unixPaths.push(path);
  }

  /** Listens on TCP; returns the port (pass 0 for a free one). */
  async listenTcp(host: string, port: number): Promise<number> {
    const server = this.serve();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    const addr = server.address();
    return typeof addr === 'object' && addr ? addr.port : port;
  }

  /** Stops listening, drops every connection, closes the exports. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await Promise.all(
        this.servers
          .map((s) => new Promise<void>((r) => s.close(() => r())))
          .concat(
            [...this.sockets].map(
              (s) =>
                new Promise<void>((r) => {
                  if (s.destroyed) return r();
                  s.once('close', () => r());
                  s.destroy();
                }),
            ),
          ),
      );
      for (const p of this.unixPaths) await rm(p, { force: true });
      for (const e of this.exports.values()) await e.close?.();
    })();
    return this.closing;
  }
}
