/**
 * Client transports: unix socket or TCP (TCP_NODELAY), and the STARTTLS upgrade of an existing
 * socket (x509 through node:tls). Incoming bytes go to a replaceable `Sink`, so the handshake
 * (exact-length reads through a ByteQueue) and the transmission phase (the sans-IO reply parser)
 * can share one socket.
 *
 * Plain sockets read through `onread` into one reusable buffer; when the sink names a destination
 * (a READ payload being received), the kernel writes straight into it: no copy at all.
 */
import { readFileSync } from 'node:fs';
import { connect as netConnect, isIP, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { ByteQueue } from './byte-queue.js';
import { NbdClosedError, NbdOptionError } from './errors.js';

export interface Sink {
  /** Bytes that arrived; `buf` may be reused once this returns. */
  bytes(buf: Buffer): void;
  /** A buffer the next socket read may fill directly, or undefined. */
  target?(): Buffer | undefined;
  /** `n` bytes were read straight into the last `target()`. */
  directBytes?(n: number): void;
  /** The connection ended (closed by the peer, or failed). */
  ended(err: Error): void;
}

export interface TlsOptions {
  /** CA certificate(s) that signed the server certificate (PEM file). */
  caFile: string;
  /** Client certificate and key, for servers that verify clients. */
  certFile?: string;
  keyFile?: string;
  /** Name the server certificate must carry (default: the TCP host, or 'localhost'). */
  servername?: string;
}

export interface Endpoint {
  socketPath?: string;
  host?: string;
  port?: number;
}

/** Socket reads land in one reusable buffer: few system calls, no per-read allocation. */
const READ_BUFFER_BYTES = 1024 * 1024;
/** Payload bytes still to come above which the kernel writes into the destination directly. */
const DIRECT_MIN_BYTES = 64 * 1024;

export function describeEndpoint(e: Endpoint): string {
  return e.socketPath ?? `${e.host ?? '127.0.0.1'}:${e.port ?? 10809}`;
}

/** A connected byte stream with a replaceable sink. */
export class Transport {
  private sink: Sink;
  private endedWith: Error | undefined;
  private lastError: Error | undefined;

  private constructor(
    public socket: Socket,
    sink: Sink,
  ) {
    this.sink = sink;
  }

  get isTls(): boolean {
    return (this.socket as Partial<TLSSocket>).encrypted === true;
  }

  /** Connects (unix socket or TCP); bytes go to `sink` until `setSink`. */
  static connect(e: Endpoint, sink: Sink, signal?: AbortSignal): Promise<Transport> {
    return new Promise((resolve, reject) => {
      let t: Transport | undefined;
      let direct = false;
      const scratch = Buffer.allocUnsafe(READ_BUFFER_BYTES);
      const onread = {
        buffer: (): Buffer => {
          const target = t?.sink.target?.();
          if (target && target.length >= DIRECT_MIN_BYTES) {
            direct = true;
            return target;
          }
          direct = false;
          return scratch;
        },
        callback: (n: number, buf: Buffer): boolean => {
          if (!t || t.endedWith) return true;
          try {
            if (direct) t.sink.directBytes!(n);
            else t.sink.bytes(buf.subarray(0, n));
          } catch (err) {
            t.end(err instanceof Error ? err : new Error(String(err)));
          }
          return true;
        },
      };
      const s = e.socketPath
        ? netConnect({ path: e.socketPath, onread })
        : netConnect({ host: e.host ?? '127.0.0.1', port: e.port ?? 10809, onread });
      const onAbort = (): void => {
        s.destroy();
        reject(new NbdClosedError(`connecting to ${describeEndpoint(e)} was cancelled`));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      const onError = (err: Error): void => {
        signal?.removeEventListener('abort', onAbort);
        reject(
          new NbdClosedError(`cannot connect to the NBD server at ${describeEndpoint(e)}: ${err.message}`),
        );
      };
      s.once('error', onError);
      s.once('connect', () => {
        signal?.removeEventListener('abort', onAbort);
        s.off('error', onError);
        if (!e.socketPath) s.setNoDelay(true);
        t = new Transport(s, sink);
        t.watch(s);
        resolve(t);
      });
    });
  }

  private watch(s: Socket): void {
    s.on('error', (err) => (this.lastError = err));
    s.on('close', () =>
      this.end(
        new NbdClosedError(
          this.lastError
            ? `NBD connection failed: ${this.lastError.message}`
            : 'the NBD server closed the connection',
        ),
      ),
    );
  }

  setSink(sink: Sink): void {
    this.sink = sink;
  }

  /** Ends the stream once: the sink hears about it, the socket is destroyed. */
  end(err: Error): void {
    if (this.endedWith) return;
    this.endedWith = err;
    this.socket.destroy();
    this.sink.ended(err);
  }

  get ended(): Error | undefined {
    return this.endedWith;
  }

  write(b: Buffer): boolean {
    return this.socket.write(b);
  }

  /**
   * Starts TLS on this socket (after the server ACKed NBD_OPT_STARTTLS). The sink keeps receiving,
   * now decrypted bytes; plain `onread` reads stop as node:tls takes over the socket.
   */
  async startTls(opts: TlsOptions, host: string | undefined): Promise<void> {
    const read = (f: string, what: string): Buffer => {
      try {
        return readFileSync(f);
      } catch (err) {
        throw new NbdOptionError(0, `cannot read the TLS ${what} ${f}: ${(err as Error).message}`);
      }
    };
    const raw = this.socket;
    raw.removeAllListeners('close');
    raw.removeAllListeners('error');
    const tls = tlsConnect({
      socket: raw,
      ca: read(opts.caFile, 'CA certificate'),
      ...(opts.certFile ? { cert: read(opts.certFile, 'client certificate') } : {}),
      ...(opts.keyFile ? { key: read(opts.keyFile, 'client key') } : {}),
      // Verify the certificate against the name or IP we dialled, unless told otherwise.
      ...(opts.servername || !isIP(host ?? '')
        ? { servername: opts.servername ?? host ?? 'localhost' }
        : { host: host! }),
    });
    this.socket = tls;
    await new Promise<void>((resolve, reject) => {
      const onError = (e: Error): void =>
        reject(new NbdClosedError(`NBD TLS handshake failed: ${e.message}`));
      tls.once('error', onError);
      tls.once('secureConnect', () => {
        tls.off('error', onError);
        resolve();
      });
    });
    tls.on('data', (d: Buffer) => {
      if (this.endedWith) return;
      try {
        this.sink.bytes(d);
      } catch (err) {
        this.end(err instanceof Error ? err : new Error(String(err)));
      }
    });
    this.watch(tls);
  }
}

/** A sink that queues bytes for exact-length reads (the handshake). */
export function queueSink(queue: ByteQueue): Sink {
  return {
    bytes: (b) => queue.push(Buffer.from(b)),
    ended: (err) => queue.fail(err),
  };
}

/** True when something accepts connections on the unix socket at `path`. */
export function socketIsLive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = netConnect(path);
    const done = (live: boolean): void => {
      s.destroy();
      resolve(live);
    };
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
    s.setTimeout(2000, () => done(true)); // a listener too busy to accept is still a listener
  });
}
