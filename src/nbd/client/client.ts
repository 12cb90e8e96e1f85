import { readFileSync } from 'node:fs';
import { connect as netConnect, isIP, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { Semaphore } from '../../util/index.js';
import { ByteQueue } from '../byte-queue.js';
import {
  NbdClosedError,
  NbdOptionError,
  NbdProtocolError,
  NbdRequestError,
  NbdTimeoutError,
} from '../errors.js';
import {
  DEFAULT_MAX_PAYLOAD,
  IHAVEOPT,
  NBDMAGIC,
  NBD_CMD,
  NBD_FLAG,
  NBD_FLAG_C,
  NBD_FLAG_T,
  NBD_INFO,
  NBD_OPT,
  NBD_REP,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE,
  NBD_REPLY_TYPE_ERROR_BIT,
  NBD_REP_FLAG_ERROR,
  NBD_REP_MAGIC,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
} from '../protocol.js';

export interface NbdConnectOptions {
  /** Unix socket path, or host + port for TCP. */
  socketPath?: string;
  host?: string;
  port?: number;
  /** Export name ('' = default export). */
  exportName?: string;
  /** Meta contexts to select (e.g. base:allocation, qemu:dirty-bitmap:backup-vda). */
  metaContexts?: readonly string[];
  /** Requests in flight at once (QEMU serves 16 per connection). */
  maxInFlight?: number;
  /** Handshake timeout. */
  timeoutMs?: number;
  /** A request not answered within this time kills the connection (NbdTimeoutError). */
  requestTimeoutMs?: number;
  /** Upgrade to TLS with NBD_OPT_STARTTLS before anything else (x509). */
  tls?: NbdTlsOptions;
}

export interface NbdTlsOptions {
  /** CA certificate(s) that signed the server certificate (PEM file). */
  caFile: string;
  /** Client certificate and key for servers that verify clients. */
  certFile?: string;
  keyFile?: string;
  /** Name the server certificate must carry (default: the TCP host, or 'localhost'). */
  servername?: string;
}

export interface BlockSizeConstraints {
  minimum: number;
  preferred: number;
  maximum: number;
}

/** One extent of a block status reply: `length` bytes with the context's `flags`. */
export interface NbdExtent {
  offset: number;
  length: number;
  flags: number;
}

interface Pending {
  kind: 'read' | 'block-status' | 'other';
  name: string;
  resolve(): void;
  reject(err: Error): void;
  /** READ: destination and the request's offset. */
  dest?: Buffer;
  offset?: number;
  length?: number;
  /** BLOCK_STATUS: extents per context id. */
  extents?: Map<number, NbdExtent[]>;
  error?: NbdRequestError;
}

/**
 * An NBD client (fixed newstyle, structured replies, meta contexts). Requests are pipelined up
 * to `maxInFlight`, matched by cookie; a framing error fails every pending request and closes the
 * connection.
 */
export class NbdClient {
  private nextCookie = 1n;
  private readonly pending = new Map<bigint, Pending>();
  private readonly slots: Semaphore;
  private failure: Error | undefined;
  private closing = false;
  readonly contexts = new Map<string, number>();
  private readonly contextNames = new Map<number, string>();

  private constructor(
    private readonly socket: Socket,
    private readonly queue: ByteQueue,
    private readonly requestTimeoutMs: number,
    readonly exportName: string,
    readonly sizeBytes: number,
    readonly transmissionFlags: number,
    readonly blockSize: BlockSizeConstraints,
    readonly structuredReplies: boolean,
    contexts: Map<string, number>,
    maxInFlight: number,
  ) {
    this.slots = new Semaphore(maxInFlight);
    for (const [name, id] of contexts) {
      this.contexts.set(name, id);
      this.contextNames.set(id, name);
    }
    void this.replyLoop();
  }

  get isReadOnly(): boolean {
    return (this.transmissionFlags & NBD_FLAG_T.NBD_FLAG_READ_ONLY) !== 0;
  }

  static async connect(opts: NbdConnectOptions): Promise<NbdClient> {
    let queue = new ByteQueue();
    let socket = await openSocket(opts, queue);
    attach(socket, queue);
    const timer = opts.timeoutMs
      ? setTimeout(() => socket.destroy(new Error('NBD handshake timed out')), opts.timeoutMs)
      : undefined;
    try {
      const noZeroes = await greeting(socket, queue);
      if (opts.tls) ({ socket, queue } = await startTls(socket, queue, opts));
      const h = await handshake(socket, queue, opts, noZeroes);
      return new NbdClient(
        socket,
        queue,
        opts.requestTimeoutMs ?? 0,
        opts.exportName ?? '',
        h.size,
        h.flags,
        h.blockSize,
        h.structured,
        h.contexts,
        opts.maxInFlight ?? 16,
      );
    } catch (err) {
      socket.destroy();
      throw err;
    } finally {
      if (timer) clearTimeout(timer);
    }
  }

  /**
   * Opens a connection for option haggling only (LIST, INFO, LIST_META_CONTEXT), then ends it
   * with NBD_OPT_ABORT.
   */
  private static async haggle<T>(
    opts: NbdConnectOptions,
    fn: (socket: Socket, queue: ByteQueue) => Promise<T>,
  ): Promise<T> {
    let queue = new ByteQueue();
    let socket = await openSocket(opts, queue);
    attach(socket, queue);
    try {
      await greeting(socket, queue);
      if (opts.tls) ({ socket, queue } = await startTls(socket, queue, opts));
      const result = await fn(socket, queue);
      option(socket, NBD_OPT.NBD_OPT_ABORT);
      await optionReply(queue, NBD_OPT.NBD_OPT_ABORT).catch(() => undefined);
      return result;
    } finally {
      socket.destroy();
    }
  }

  /** The server's exports (NBD_OPT_LIST). */
  static list(opts: NbdConnectOptions): Promise<Array<{ name: string; description: string }>> {
    return NbdClient.haggle(opts, async (socket, queue) => {
      option(socket, NBD_OPT.NBD_OPT_LIST);
      const out: Array<{ name: string; description: string }> = [];
      for (;;) {
        const r = await optionReply(queue, NBD_OPT.NBD_OPT_LIST);
        if (r.type === NBD_REP.NBD_REP_ACK) return out;
        if (r.type & NBD_REP_FLAG_ERROR)
          throw new NbdOptionError(
            r.type,
            `the NBD server refused to list its exports${r.data.length ? `: ${r.data.toString('utf8')}` : ''}`,
          );
        if (r.type === NBD_REP.NBD_REP_SERVER && r.data.length >= 4) {
          const n = r.data.readUInt32BE(0);
          out.push({
            name: r.data.subarray(4, 4 + n).toString('utf8'),
            description: r.data.subarray(4 + n).toString('utf8'),
          });
        }
      }
    });
  }

  /** Size, flags and block sizes of an export without entering transmission (NBD_OPT_INFO). */
  static info(
    opts: NbdConnectOptions,
  ): Promise<{ sizeBytes: number; transmissionFlags: number; blockSize: BlockSizeConstraints }> {
    return NbdClient.haggle(opts, async (socket, queue) => {
      const name = nameBuf(opts.exportName ?? '');
      option(
        socket,
        NBD_OPT.NBD_OPT_INFO,
        Buffer.concat([name, Buffer.from([0, 1, 0, NBD_INFO.NBD_INFO_BLOCK_SIZE])]),
      );
      const blockSize: BlockSizeConstraints = { minimum: 1, preferred: 4096, maximum: DEFAULT_MAX_PAYLOAD };
      let sizeBytes = -1;
      let transmissionFlags = 0;
      for (;;) {
        const r = await optionReply(queue, NBD_OPT.NBD_OPT_INFO);
        if (r.type === NBD_REP.NBD_REP_ACK) break;
        if (r.type & NBD_REP_FLAG_ERROR)
          throw new NbdOptionError(
            r.type,
            `NBD server refused INFO for '${opts.exportName ?? ''}'${r.data.length ? `: ${r.data.toString('utf8')}` : ''}`,
          );
        if (r.type !== NBD_REP.NBD_REP_INFO) continue;
        const it = r.data.readUInt16BE(0);
        if (it === NBD_INFO.NBD_INFO_EXPORT && r.data.length >= 12) {
          sizeBytes = Number(r.data.readBigUInt64BE(2));
          transmissionFlags = r.data.readUInt16BE(10);
        } else if (it === NBD_INFO.NBD_INFO_BLOCK_SIZE && r.data.length >= 14) {
          blockSize.minimum = r.data.readUInt32BE(2);
          blockSize.preferred = r.data.readUInt32BE(6);
          blockSize.maximum = r.data.readUInt32BE(10);
        }
      }
      if (sizeBytes < 0) throw new NbdProtocolError('INFO reply without the export size');
      return { sizeBytes, transmissionFlags, blockSize };
    });
  }

  /** Meta contexts an export offers for the queries (NBD_OPT_LIST_META_CONTEXT; [] = all). */
  static listMetaContexts(opts: NbdConnectOptions, queries: readonly string[] = []): Promise<string[]> {
    return NbdClient.haggle(opts, async (socket, queue) => {
      option(socket, NBD_OPT.NBD_OPT_STRUCTURED_REPLY);
      await optionReply(queue, NBD_OPT.NBD_OPT_STRUCTURED_REPLY);
      const count = Buffer.alloc(4);
      count.writeUInt32BE(queries.length, 0);
      option(
        socket,
        NBD_OPT.NBD_OPT_LIST_META_CONTEXT,
        Buffer.concat([nameBuf(opts.exportName ?? ''), count, ...queries.map(nameBuf)]),
      );
      const out: string[] = [];
      for (;;) {
        const r = await optionReply(queue, NBD_OPT.NBD_OPT_LIST_META_CONTEXT);
        if (r.type === NBD_REP.NBD_REP_ACK) return out;
        if (r.type & NBD_REP_FLAG_ERROR)
          throw new NbdOptionError(
            r.type,
            `NBD server refused LIST_META_CONTEXT${r.data.length ? `: ${r.data.toString('utf8')}` : ''}`,
          );
        if (r.type === NBD_REP.NBD_REP_META_CONTEXT) out.push(r.data.subarray(4).toString('utf8'));
      }
    });
  }

  /** Discards a range (content afterwards is unspecified); a no-op where the server has no TRIM. */
  async trim(offset: number, length: number): Promise<void> {
    this.checkRange(offset, length, 'trim');
    if (!(this.transmissionFlags & NBD_FLAG_T.NBD_FLAG_SEND_TRIM)) return;
    await this.request(
      (resolve, reject) => ({ kind: 'other', name: 'TRIM', resolve, reject }),
      (p) => this.send(NBD_CMD.NBD_CMD_TRIM, 0, offset, length, p),
    );
  }

  /** Largest READ/WRITE payload this server accepts. */
  get maxPayload(): number {
    return Math.min(this.blockSize.maximum, DEFAULT_MAX_PAYLOAD);
  }

  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    this.queue.fail(err);
    this.socket.destroy();
  }

  private send(
    type: number,
    flags: number,
    offset: number,
    length: number,
    pending: Pending,
    payload?: Buffer,
  ): void {
    const cookie = this.nextCookie++;
    const hdr = Buffer.allocUnsafe(28);
    hdr.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
    hdr.writeUInt16BE(flags, 4);
    hdr.writeUInt16BE(type, 6);
    hdr.writeBigUInt64BE(cookie, 8);
    hdr.writeBigUInt64BE(BigInt(offset), 16);
    hdr.writeUInt32BE(length, 24);
    this.pending.set(cookie, pending);
    if (payload) {
      this.socket.cork();
      this.socket.write(hdr);
      this.socket.write(payload);
      this.socket.uncork();
    } else this.socket.write(hdr);
  }

  private async request(
    build: (resolve: () => void, reject: (e: Error) => void) => Pending,
    send: (p: Pending) => void,
  ): Promise<void> {
    if (this.failure) throw this.failure;
    await this.slots.acquire();
    try {
      if (this.failure) throw this.failure;
      await new Promise<void>((resolve, reject) => {
        let timer: NodeJS.Timeout | undefined;
        const done = (): void => {
          if (timer) clearTimeout(timer);
        };
        const p = build(
          () => {
            done();
            resolve();
          },
          (e) => {
            done();
            reject(e);
          },
        );
        if (this.requestTimeoutMs > 0) {
          // The server's state is unknown after a timeout: the connection cannot be trusted.
          timer = setTimeout(
            () =>
              this.fail(new NbdTimeoutError(`NBD ${p.name} not answered within ${this.requestTimeoutMs} ms`)),
            this.requestTimeoutMs,
          );
        }
        send(p);
      });
    } finally {
      this.slots.release();
    }
  }

  private checkRange(offset: number, length: number, what: string): void {
    if (offset < 0 || length < 0 || offset + length > this.sizeBytes) {
      throw new RangeError(
        `NBD ${what} ${offset}+${length} is past the end of the export (${this.sizeBytes} bytes)`,
      );
    }
  }

  /** Reads `length` bytes at `offset` (split to the server's maximum payload). Holes read as zeros. */
  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    this.checkRange(offset, length, 'read');
    const dest = into && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafe(length);
    const max = this.maxPayload;
    const parts: Array<Promise<void>> = [];
    for (let at = 0; at < length; at += max) {
      const n = Math.min(max, length - at);
      const view = dest.subarray(at, at + n);
      parts.push(
        this.request(
          (resolve, reject) => ({
            kind: 'read',
            name: 'READ',
            resolve,
            reject,
            dest: view,
            offset: offset + at,
            length: n,
          }),
          (p) => this.send(NBD_CMD.NBD_CMD_READ, 0, offset + at, n, p),
        ),
      );
    }
    await Promise.all(parts);
    return dest;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    this.checkRange(offset, data.length, 'write');
    const max = this.maxPayload;
    const parts: Array<Promise<void>> = [];
    for (let at = 0; at < data.length; at += max) {
      const piece = data.subarray(at, Math.min(at + max, data.length));
      parts.push(
        this.request(
          (resolve, reject) => ({ kind: 'other', name: 'WRITE', resolve, reject }),
          (p) => this.send(NBD_CMD.NBD_CMD_WRITE, 0, offset + at, piece.length, p, piece),
        ),
      );
    }
    await Promise.all(parts);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    this.checkRange(offset, length, 'write-zeroes');
    if (!(this.transmissionFlags & NBD_FLAG_T.NBD_FLAG_SEND_WRITE_ZEROES)) {
      return this.write(offset, Buffer.alloc(length));
    }
    await this.request(
      (resolve, reject) => ({ kind: 'other', name: 'WRITE_ZEROES', resolve, reject }),
      (p) => this.send(NBD_CMD.NBD_CMD_WRITE_ZEROES, 0, offset, length, p),
    );
  }

  async flush(): Promise<void> {
    if (!(this.transmissionFlags & NBD_FLAG_T.NBD_FLAG_SEND_FLUSH)) return;
    await this.request(
      (resolve, reject) => ({ kind: 'other', name: 'FLUSH', resolve, reject }),
      (p) => this.send(NBD_CMD.NBD_CMD_FLUSH, 0, 0, 0, p),
    );
  }

  /**
   * Block status for [offset, offset+length) in every selected context. A server may answer for
   * less than asked; each context's extents start at `offset` and are clamped to the request.
   */
  async blockStatus(offset: number, length: number): Promise<Map<string, NbdExtent[]>> {
    this.checkRange(offset, length, 'block status');
    if (this.contexts.size === 0) throw new NbdProtocolError('block status needs a meta context');
    const extents = new Map<number, NbdExtent[]>();
    const len = Math.min(length, 0xffffffff - (0xffffffff % Math.max(1, this.blockSize.minimum)));
    await this.request(
      (resolve, reject) => ({
        kind: 'block-status',
        name: 'BLOCK_STATUS',
        resolve,
        reject,
        extents,
        offset,
        length: len,
      }),
      (p) => this.send(NBD_CMD.NBD_CMD_BLOCK_STATUS, 0, offset, len, p),
    );
    const out = new Map<string, NbdExtent[]>();
    for (const [id, list] of extents) out.set(this.contextNames.get(id) ?? `#${id}`, list);
    return out;
  }

  /** Ends the session politely (NBD_CMD_DISC) and closes the socket. Idempotent. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    if (!this.failure) {
      const hdr = Buffer.alloc(28);
      hdr.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
      hdr.writeUInt16BE(NBD_CMD.NBD_CMD_DISC, 6);
      await new Promise<void>((resolve) => {
        this.socket.end(hdr, () => resolve());
        setTimeout(resolve, 1000).unref();
      });
    }
    this.fail(new NbdClosedError('NBD client closed'));
  }

  private async replyLoop(): Promise<void> {
    try {
      for (;;) {
        const head = await this.queue.read(4);
        const magic = head.readUInt32BE(0);
        if (magic === NBD_SIMPLE_REPLY_MAGIC) await this.simpleReply();
        else if (magic === NBD_STRUCTURED_REPLY_MAGIC) await this.structuredChunk();
        else throw new NbdProtocolError(`bad reply magic 0x${magic.toString(16)}`);
      }
    } catch (err) {
      this.fail(err instanceof Error ? err : new Error(String(err)));
    }
  }

  private take(cookie: bigint): Pending {
    const p = this.pending.get(cookie);
    if (!p) throw new NbdProtocolError(`reply for unknown cookie ${cookie}`);
    return p;
  }

  private async simpleReply(): Promise<void> {
    const b = await this.queue.read(12);
    const error = b.readUInt32BE(0);
    const cookie = b.readBigUInt64BE(4);
    const p = this.take(cookie);
    this.pending.delete(cookie);
    if (error !== 0) return p.reject(new NbdRequestError(error, p.name));
    if (p.kind === 'read') await this.queue.readInto(p.dest, 0, p.length!);
    p.resolve();
  }

  private async structuredChunk(): Promise<void> {
    const h = Buffer.from(await this.queue.read(16));
    const flags = h.readUInt16BE(0);
    const type = h.readUInt16BE(2);
    const cookie = h.readBigUInt64BE(4);
    const len = h.readUInt32BE(12);
    const p = this.take(cookie);
    switch (type) {
      case NBD_REPLY_TYPE.NBD_REPLY_TYPE_NONE:
        if (len !== 0) throw new NbdProtocolError('NONE chunk with a payload');
        break;
      case NBD_REPLY_TYPE.NBD_REPLY_TYPE_OFFSET_DATA: {
        if (p.kind !== 'read' || len < 8) throw new NbdProtocolError('unexpected OFFSET_DATA chunk');
        const off = Number((await this.queue.read(8)).readBigUInt64BE(0));
        const n = len - 8;
        const rel = off - p.offset!;
        if (rel < 0 || rel + n > p.length!) throw new NbdProtocolError('OFFSET_DATA outside the request');
        await this.queue.readInto(p.dest, rel, n);
        break;
      }
      case NBD_REPLY_TYPE.NBD_REPLY_TYPE_OFFSET_HOLE: {
        if (p.kind !== 'read' || len !== 12) throw new NbdProtocolError('unexpected OFFSET_HOLE chunk');
        const b = await this.queue.read(12);
        const off = Number(b.readBigUInt64BE(0));
        const n = b.readUInt32BE(8);
        const rel = off - p.offset!;
        if (rel < 0 || rel + n > p.length!) throw new NbdProtocolError('OFFSET_HOLE outside the request');
        p.dest!.fill(0, rel, rel + n);
        break;
      }
      case NBD_REPLY_TYPE.NBD_REPLY_TYPE_BLOCK_STATUS: {
        if (p.kind !== 'block-status' || len < 12 || (len - 4) % 8 !== 0)
          throw new NbdProtocolError('unexpected BLOCK_STATUS chunk');
        const b = Buffer.from(await this.queue.read(len));
        const id = b.readUInt32BE(0);
        const list: NbdExtent[] = [];
        let at = p.offset!;
        const end = p.offset! + p.length!;
        for (let i = 4; i < len && at < end; i += 8) {
          const l = Math.min(b.readUInt32BE(i), end - at);
          if (l === 0) throw new NbdProtocolError('zero-length extent');
          list.push({ offset: at, length: l, flags: b.readUInt32BE(i + 4) });
          at += l;
        }
        p.extents!.set(id, list);
        break;
      }
      default: {
        if (type & NBD_REPLY_TYPE_ERROR_BIT) {
          if (len < 6) throw new NbdProtocolError('short error chunk');
          const b = Buffer.from(await this.queue.read(len));
          const errno = b.readUInt32BE(0);
          const mlen = b.readUInt16BE(4);
          const msg = b.subarray(6, 6 + mlen).toString('utf8');
          p.error ??= new NbdRequestError(errno, p.name, msg);
          break;
        }
        throw new NbdProtocolError(`unknown structured reply type ${type}`);
      }
    }
    if (flags & NBD_REPLY_FLAG_DONE) {
      this.pending.delete(cookie);
      if (p.error) p.reject(p.error);
      else p.resolve();
    }
  }
}

/** Socket reads land in one reusable 1 MiB buffer: few syscalls, no per-read allocation. */
const READ_BUFFER_BYTES = 1024 * 1024;

function openSocket(opts: NbdConnectOptions, queue: ByteQueue): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const onread = {
      buffer: Buffer.allocUnsafe(READ_BUFFER_BYTES),
      callback: (n: number, buf: Buffer): boolean => {
        queue.push(Buffer.from(buf.subarray(0, n)));
        return true;
      },
    };
    const s = opts.socketPath
      ? netConnect({ path: opts.socketPath, onread })
      : netConnect({ host: opts.host ?? '127.0.0.1', port: opts.port ?? 10809, onread });
    s.once('connect', () => {
      s.setNoDelay(true);
      s.off('error', onError);
      resolve(s);
    });
    const onError = (e: Error): void =>
      reject(
        new NbdClosedError(
          `cannot connect to the NBD server at ${opts.socketPath ?? `${opts.host}:${opts.port}`}: ${e.message}`,
        ),
      );
    s.once('error', onError);
  });
}

interface HandshakeResult {
  size: number;
  flags: number;
  blockSize: BlockSizeConstraints;
  structured: boolean;
  contexts: Map<string, number>;
}

function option(socket: Socket, opt: number, data: Buffer = Buffer.alloc(0)): void {
  const b = Buffer.allocUnsafe(16);
  b.writeBigUInt64BE(IHAVEOPT, 0);
  b.writeUInt32BE(opt, 8);
  b.writeUInt32BE(data.length, 12);
  socket.write(Buffer.concat([b, data]));
}

async function optionReply(queue: ByteQueue, opt: number): Promise<{ type: number; data: Buffer }> {
  const h = Buffer.from(await queue.read(20));
  if (h.readBigUInt64BE(0) !== NBD_REP_MAGIC) throw new NbdProtocolError('bad option reply magic');
  if (h.readUInt32BE(8) !== opt)
    throw new NbdProtocolError(`option reply for ${h.readUInt32BE(8)}, expected ${opt}`);
  const type = h.readUInt32BE(12);
  const len = h.readUInt32BE(16);
  if (len > 64 * 1024 * 1024) throw new NbdProtocolError('option reply too large');
  const data = len ? Buffer.from(await queue.read(len)) : Buffer.alloc(0);
  return { type, data };
}

function nameBuf(s: string): Buffer {
  const n = Buffer.from(s, 'utf8');
  const b = Buffer.allocUnsafe(4 + n.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  return b;
}

function attach(socket: Socket, queue = new ByteQueue(), viaData = false): ByteQueue {
  if (viaData) socket.on('data', (d: Buffer) => queue.push(d));
  socket.on('error', (e) => queue.fail(new NbdClosedError(`NBD connection failed: ${e.message}`)));
  socket.on('close', () => queue.fail(new NbdClosedError('NBD server closed the connection')));
  return queue;
}

/** Reads the server greeting and sends the client flags; returns whether NO_ZEROES was agreed. */
async function greeting(socket: Socket, queue: ByteQueue): Promise<boolean> {
  const g = Buffer.from(await queue.read(18));
  if (g.readBigUInt64BE(0) !== NBDMAGIC) throw new NbdProtocolError('not an NBD server (bad magic)');
  if (g.readBigUInt64BE(8) !== IHAVEOPT)
    throw new NbdProtocolError('server does not speak the newstyle protocol');
  const hflags = g.readUInt16BE(16);
  if (!(hflags & NBD_FLAG.NBD_FLAG_FIXED_NEWSTYLE))
    throw new NbdProtocolError('server does not support fixed newstyle');
  const noZeroes = (hflags & NBD_FLAG.NBD_FLAG_NO_ZEROES) !== 0;
  const cflags = Buffer.allocUnsafe(4);
  cflags.writeUInt32BE(
    NBD_FLAG_C.NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_C.NBD_FLAG_C_NO_ZEROES : 0),
    0,
  );
  socket.write(cflags);
  return noZeroes;
}

/** NBD_OPT_STARTTLS, then TLS on the same socket; option haggling continues encrypted. */
async function startTls(
  socket: Socket,
  queue: ByteQueue,
  opts: NbdConnectOptions,
): Promise<{ socket: Socket; queue: ByteQueue }> {
  const t = opts.tls!;
  option(socket, NBD_OPT.NBD_OPT_STARTTLS);
  const r = await optionReply(queue, NBD_OPT.NBD_OPT_STARTTLS);
  if (r.type !== NBD_REP.NBD_REP_ACK) {
    throw new NbdOptionError(
      r.type,
      `the NBD server does not offer TLS${r.data.length ? `: ${r.data.toString('utf8')}` : ''}`,
    );
  }
  socket.removeAllListeners('data');
  socket.removeAllListeners('close');
  socket.removeAllListeners('error');
  const read = (f: string, what: string): Buffer => {
    try {
      return readFileSync(f);
    } catch (err) {
      throw new NbdOptionError(0, `cannot read the TLS ${what} ${f}: ${(err as Error).message}`);
    }
  };
  const tlsSocket = tlsConnect({
    socket,
    ca: read(t.caFile, 'CA certificate'),
    ...(t.certFile ? { cert: read(t.certFile, 'client certificate') } : {}),
    ...(t.keyFile ? { key: read(t.keyFile, 'client key') } : {}),
    // Verify the certificate against the host name (or IP) we dialled, unless told otherwise.
    ...(t.servername || !isIP(opts.host ?? '')
      ? { servername: t.servername ?? opts.host ?? 'localhost' }
      : { host: opts.host! }),
  });
  const tq = attach(tlsSocket, new ByteQueue(), true);
  await new Promise<void>((resolve, reject) => {
    tlsSocket.once('secureConnect', () => resolve());
    tlsSocket.once('error', (e) => reject(new NbdClosedError(`NBD TLS handshake failed: ${e.message}`)));
  });
  return { socket: tlsSocket, queue: tq };
}

async function handshake(
  socket: Socket,
  queue: ByteQueue,
  opts: NbdConnectOptions,
  noZeroes: boolean,
): Promise<HandshakeResult> {
  const exportName = opts.exportName ?? '';

  // Structured replies (needed for holes and block status).
  option(socket, NBD_OPT.NBD_OPT_STRUCTURED_REPLY);
  const sr = await optionReply(queue, NBD_OPT.NBD_OPT_STRUCTURED_REPLY);
  const structured = sr.type === NBD_REP.NBD_REP_ACK;

  const contexts = new Map<string, number>();
  const wanted = opts.metaContexts ?? [];
  if (wanted.length) {
    if (!structured)
      throw new NbdOptionError(
        NBD_REP.NBD_REP_ERR_UNSUP,
        'the NBD server has no structured replies, so it cannot report block status',
      );
    const parts = [nameBuf(exportName), Buffer.from([0, 0, 0, 0])];
    parts[1]!.writeUInt32BE(wanted.length, 0);
    for (const q of wanted) parts.push(nameBuf(q));
    option(socket, NBD_OPT.NBD_OPT_SET_META_CONTEXT, Buffer.concat(parts));
    for (;;) {
      const r = await optionReply(queue, NBD_OPT.NBD_OPT_SET_META_CONTEXT);
      if (r.type === NBD_REP.NBD_REP_ACK) break;
      if (r.type === NBD_REP.NBD_REP_META_CONTEXT)
        contexts.set(r.data.subarray(4).toString('utf8'), r.data.readUInt32BE(0));
      else if (r.type & NBD_REP_FLAG_ERROR)
        throw new NbdOptionError(
          r.type,
          `NBD server refused the meta contexts: ${r.data.toString('utf8') || r.type}`,
        );
    }
    const missing = wanted.filter((w) => !contexts.has(w));
    if (missing.length)
      throw new NbdOptionError(
        NBD_REP.NBD_REP_ERR_UNKNOWN,
        `NBD export '${exportName}' does not offer ${missing.join(', ')}`,
      );
  }

  // GO with the block size constraints.
  const req = Buffer.concat([nameBuf(exportName), Buffer.from([0, 1, 0, NBD_INFO.NBD_INFO_BLOCK_SIZE])]);
  option(socket, NBD_OPT.NBD_OPT_GO, req);
  let size = -1;
  let flags = 0;
  const blockSize: BlockSizeConstraints = { minimum: 1, preferred: 4096, maximum: DEFAULT_MAX_PAYLOAD };
  for (;;) {
    const r = await optionReply(queue, NBD_OPT.NBD_OPT_GO);
    if (r.type === NBD_REP.NBD_REP_ACK) break;
    if (r.type === NBD_REP.NBD_REP_INFO) {
      const it = r.data.readUInt16BE(0);
      if (it === NBD_INFO.NBD_INFO_EXPORT && r.data.length >= 12) {
        size = Number(r.data.readBigUInt64BE(2));
        flags = r.data.readUInt16BE(10);
      } else if (it === NBD_INFO.NBD_INFO_BLOCK_SIZE && r.data.length >= 14) {
        blockSize.minimum = r.data.readUInt32BE(2);
        blockSize.preferred = r.data.readUInt32BE(6);
        blockSize.maximum = r.data.readUInt32BE(10);
      }
      continue;
    }
    if (r.type === NBD_REP.NBD_REP_ERR_UNSUP) {
      // Old server: EXPORT_NAME, which answers with size + flags (+ 124 zeros) and no reply header.
      option(socket, NBD_OPT.NBD_OPT_EXPORT_NAME, Buffer.from(exportName, 'utf8'));
      const b = Buffer.from(await queue.read(10));
      size = Number(b.readBigUInt64BE(0));
      flags = b.readUInt16BE(8);
      if (!noZeroes) await queue.read(124);
      break;
    }
    if (r.type & NBD_REP_FLAG_ERROR) {
      const msg = r.data.toString('utf8');
      throw new NbdOptionError(r.type, `NBD server refused export '${exportName}'${msg ? `: ${msg}` : ''}`);
    }
  }
  if (size < 0) throw new NbdProtocolError('server sent no export size');
  return { size, flags, blockSize, structured, contexts };
}
