import { createServer, type Server, type Socket } from 'node:net';
import { rm } from 'node:fs/promises';
import { ByteQueue } from '../byte-queue.js';
import {
  BASE_ALLOCATION,
  DEFAULT_MAX_PAYLOAD,
  IHAVEOPT,
  NBDMAGIC,
  NBD_CMD,
  NBD_CMD_FLAG,
  NBD_ERRNO,
  NBD_FLAG,
  NBD_FLAG_C,
  NBD_FLAG_T,
  NBD_INFO,
  NBD_OPT,
  NBD_REP,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE,
  NBD_REP_MAGIC,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
} from '../protocol.js';
import { isWritable, type ExportExtent, type NbdExport } from './export.js';

/** Longest option payload accepted (names and queries are ≤ 4 KiB each). */
const MAX_OPTION_BYTES = 64 * 1024;
const BASE_ALLOCATION_ID = 1;
/** Requests of one connection handled at once. */
const PARALLEL_REQUESTS = 16;
/** Holes shorter than this are sent as data (one chunk is cheaper than several). */
const MIN_HOLE_BYTES = 64 * 1024;

class Disconnect extends Error {}

export interface NbdServerOptions {
  /** Called with connection-level problems (bad clients); never throws into the server. */
  onClientError?: (err: Error) => void;
}

/**
 * An NBD server (fixed newstyle, structured replies, base:allocation). Serves a set of exports on
 * unix sockets and TCP; each connection is independent, and a misbehaving client only ever loses
 * its own connection.
 */
export class NbdServer {
  private readonly exports = new Map<string, NbdExport>();
  private readonly servers: Server[] = [];
  private readonly sockets = new Set<Socket>();
  private readonly unixPaths: string[] = [];

  constructor(
    exports: readonly NbdExport[],
    private readonly opts: NbdServerOptions = {},
  ) {
    for (const e of exports) this.exports.set(e.name, e);
  }

  get exportNames(): string[] {
    return [...this.exports.keys()];
  }

  private serve(): Server {
    const server = createServer((socket) => {
      this.sockets.add(socket);
      socket.setNoDelay?.(true);
      socket.on('close', () => this.sockets.delete(socket));
      void new Connection(socket, this.exports).run().catch((err: unknown) => {
        if (!(err instanceof Disconnect))
          this.opts.onClientError?.(err instanceof Error ? err : new Error(String(err)));
        socket.destroy();
      });
    });
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

  async close(): Promise<void> {
    for (const s of this.servers) s.close();
    for (const s of this.sockets) s.destroy();
    for (const p of this.unixPaths) await rm(p, { force: true });
    for (const e of this.exports.values()) await e.close?.();
  }
}

function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
}

class Connection {
  private readonly queue = new ByteQueue();
  private structured = false;
  private noZeroes = false;
  private contextSelected = false;
  private exp: NbdExport | undefined;

  constructor(
    private readonly socket: Socket,
    private readonly exports: Map<string, NbdExport>,
  ) {
    socket.on('data', (d: Buffer) => this.queue.push(d));
    socket.on('error', () => this.queue.fail(new Disconnect()));
    socket.on('close', () => this.queue.fail(new Disconnect()));
  }

  async run(): Promise<void> {
    const g = Buffer.allocUnsafe(18);
    g.writeBigUInt64BE(NBDMAGIC, 0);
    g.writeBigUInt64BE(IHAVEOPT, 8);
    g.writeUInt16BE(NBD_FLAG.NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG.NBD_FLAG_NO_ZEROES, 16);
    this.socket.write(g);
    const cflags = (await this.queue.read(4)).readUInt32BE(0);
    if (cflags & ~(NBD_FLAG_C.NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C.NBD_FLAG_C_NO_ZEROES))
      throw new Disconnect();
    this.noZeroes = (cflags & NBD_FLAG_C.NBD_FLAG_C_NO_ZEROES) !== 0;
    while (!this.exp) await this.option();
    await this.transmission();
  }

  // ---- handshake ----------------------------------------------------------------------------

  private reply(opt: number, type: number, data: Buffer = Buffer.alloc(0)): void {
    const h = Buffer.allocUnsafe(20);
    h.writeBigUInt64BE(NBD_REP_MAGIC, 0);
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(type >>> 0, 12);
    h.writeUInt32BE(data.length, 16);
    this.socket.write(data.length ? Buffer.concat([h, data]) : h);
  }

  private transmissionFlags(e: NbdExport): number {
    let f = NBD_FLAG_T.NBD_FLAG_HAS_FLAGS | NBD_FLAG_T.NBD_FLAG_SEND_FLUSH | NBD_FLAG_T.NBD_FLAG_SEND_CACHE;
    if (isWritable(e)) f |= NBD_FLAG_T.NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_T.NBD_FLAG_SEND_TRIM;
    else f |= NBD_FLAG_T.NBD_FLAG_READ_ONLY | NBD_FLAG_T.NBD_FLAG_CAN_MULTI_CONN;
    if (this.structured) f |= NBD_FLAG_T.NBD_FLAG_SEND_DF;
    return f;
  }

  private async option(): Promise<void> {
    const h = Buffer.from(await this.queue.read(16));
    if (h.readBigUInt64BE(0) !== IHAVEOPT) throw new Disconnect();
    const opt = h.readUInt32BE(8);
    const len = h.readUInt32BE(12);
    if (len > MAX_OPTION_BYTES) {
      await this.queue.readInto(undefined, 0, len); // keep the stream in sync
      return this.reply(opt, NBD_REP.NBD_REP_ERR_TOO_BIG, Buffer.from('option too long'));
    }
    const data = len ? Buffer.from(await this.queue.read(len)) : Buffer.alloc(0);
    switch (opt) {
      case NBD_OPT.NBD_OPT_EXPORT_NAME: {
        const e = this.exports.get(data.toString('utf8'));
        if (!e) throw new Disconnect(); // the protocol's only answer: hang up
        this.exp = e;
        const b = Buffer.alloc(this.noZeroes ? 10 : 134);
        b.writeBigUInt64BE(BigInt(e.sizeBytes), 0);
        b.writeUInt16BE(this.transmissionFlags(e), 8);
        this.socket.write(b);
        return;
      }
      case NBD_OPT.NBD_OPT_ABORT:
        this.reply(opt, NBD_REP.NBD_REP_ACK);
        throw new Disconnect();
      case NBD_OPT.NBD_OPT_LIST: {
        if (len !== 0) return this.reply(opt, NBD_REP.NBD_REP_ERR_INVALID);
        for (const e of this.exports.values()) {
          const name = Buffer.from(e.name, 'utf8');
          this.reply(
            opt,
            NBD_REP.NBD_REP_SERVER,
            Buffer.concat([u32(name.length), name, Buffer.from(e.description ?? '', 'utf8')]),
          );
        }
        return this.reply(opt, NBD_REP.NBD_REP_ACK);
      }
      case NBD_OPT.NBD_OPT_STRUCTURED_REPLY:
        if (len !== 0) return this.reply(opt, NBD_REP.NBD_REP_ERR_INVALID);
        this.structured = true;
        return this.reply(opt, NBD_REP.NBD_REP_ACK);
      case NBD_OPT.NBD_OPT_LIST_META_CONTEXT:
      case NBD_OPT.NBD_OPT_SET_META_CONTEXT:
        return this.metaContext(opt, data);
      case NBD_OPT.NBD_OPT_INFO:
      case NBD_OPT.NBD_OPT_GO:
        return this.infoGo(opt, data);
      default:
        return this.reply(opt, NBD_REP.NBD_REP_ERR_UNSUP);
    }
  }

  private parseNameAndList(
    data: Buffer,
    countIsU16: boolean,
  ): { name: string; items: Array<number | string> } | undefined {
    if (data.length < 4) return undefined;
    const nlen = data.readUInt32BE(0);
    if (4 + nlen + (countIsU16 ? 2 : 4) > data.length) return undefined;
    const name = data.subarray(4, 4 + nlen).toString('utf8');
    let at = 4 + nlen;
    const n = countIsU16 ? data.readUInt16BE(at) : data.readUInt32BE(at);
    at += countIsU16 ? 2 : 4;
    const items: Array<number | string> = [];
    for (let i = 0; i < n; i++) {
      if (countIsU16) {
        if (at + 2 > data.length) return undefined;
        items.push(data.readUInt16BE(at));
        at += 2;
      } else {
        if (at + 4 > data.length) return undefined;
        const ql = data.readUInt32BE(at);
        at += 4;
        if (at + ql > data.length) return undefined;
        items.push(data.subarray(at, at + ql).toString('utf8'));
        at += ql;
      }
    }
    return at === data.length ? { name, items } : undefined;
  }

  private metaContext(opt: number, data: Buffer): void {
    const p = this.parseNameAndList(data, false);
    if (!p)
      return this.reply(opt, NBD_REP.NBD_REP_ERR_INVALID, Buffer.from('malformed meta context request'));
    if (!this.exports.has(p.name))
      return this.reply(opt, NBD_REP.NBD_REP_ERR_UNKNOWN, Buffer.from(`no export '${p.name}'`));
    const set = opt === NBD_OPT.NBD_OPT_SET_META_CONTEXT;
    if (set && !this.structured)
      return this.reply(opt, NBD_REP.NBD_REP_ERR_INVALID, Buffer.from('structured replies first'));
    const queries = p.items as string[];
    const wants = (q: string): boolean => q === BASE_ALLOCATION || (!set && (q === 'base:' || q === ''));
    const matched = queries.length === 0 ? !set : queries.some(wants);
    if (set) this.contextSelected = matched;
    if (matched) {
      const name = Buffer.from(BASE_ALLOCATION, 'utf8');
      this.reply(opt, NBD_REP.NBD_REP_META_CONTEXT, Buffer.concat([u32(set ? BASE_ALLOCATION_ID : 0), name]));
    }
    this.reply(opt, NBD_REP.NBD_REP_ACK);
  }

  private infoGo(opt: number, data: Buffer): void {
    const p = this.parseNameAndList(data, true);
    if (!p) return this.reply(opt, NBD_REP.NBD_REP_ERR_INVALID, Buffer.from('malformed INFO/GO request'));
    const e = this.exports.get(p.name);
    if (!e) return this.reply(opt, NBD_REP.NBD_REP_ERR_UNKNOWN, Buffer.from(`no export '${p.name}'`));
    const info = Buffer.alloc(12);
    info.writeUInt16BE(NBD_INFO.NBD_INFO_EXPORT, 0);
    info.writeBigUInt64BE(BigInt(e.sizeBytes), 2);
    info.writeUInt16BE(this.transmissionFlags(e), 10);
    this.reply(opt, NBD_REP.NBD_REP_INFO, info);
    const bs = Buffer.alloc(14);
    bs.writeUInt16BE(NBD_INFO.NBD_INFO_BLOCK_SIZE, 0);
    bs.writeUInt32BE(1, 2);
    bs.writeUInt32BE(4096, 6);
    bs.writeUInt32BE(DEFAULT_MAX_PAYLOAD, 10);
    this.reply(opt, NBD_REP.NBD_REP_INFO, bs);
    const requested = new Set(p.items as number[]);
    if (requested.has(NBD_INFO.NBD_INFO_NAME)) {
      this.reply(
        opt,
        NBD_REP.NBD_REP_INFO,
        Buffer.concat([Buffer.from([0, NBD_INFO.NBD_INFO_NAME]), Buffer.from(e.name, 'utf8')]),
      );
    }
    if (requested.has(NBD_INFO.NBD_INFO_DESCRIPTION) && e.description) {
      this.reply(
        opt,
        NBD_REP.NBD_REP_INFO,
        Buffer.concat([Buffer.from([0, NBD_INFO.NBD_INFO_DESCRIPTION]), Buffer.from(e.description, 'utf8')]),
      );
    }
    this.reply(opt, NBD_REP.NBD_REP_ACK);
    if (opt === NBD_OPT.NBD_OPT_GO) this.exp = e;
  }

  // ---- transmission -------------------------------------------------------------------------

  private simpleReply(cookie: bigint, error: number, data?: Buffer): void {
    const h = Buffer.allocUnsafe(16);
    h.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
    h.writeUInt32BE(error, 4);
    h.writeBigUInt64BE(cookie, 8);
    if (data) {
      this.socket.cork();
      this.socket.write(h);
      this.socket.write(data);
      this.socket.uncork();
    } else this.socket.write(h);
  }

  private chunkHeader(cookie: bigint, flags: number, type: number, length: number): Buffer {
    const h = Buffer.allocUnsafe(20);
    h.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(cookie, 8);
    h.writeUInt32BE(length, 16);
    return h;
  }

  /** An error for one request, in the form the client negotiated. */
  private errorReply(cookie: bigint, errno: number, message = ''): void {
    if (!this.structured) return this.simpleReply(cookie, errno);
    const msg = Buffer.from(message, 'utf8');
    const payload = Buffer.allocUnsafe(6 + msg.length);
    payload.writeUInt32BE(errno, 0);
    payload.writeUInt16BE(msg.length, 4);
    msg.copy(payload, 6);
    this.socket.write(
      Buffer.concat([
        this.chunkHeader(cookie, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE.NBD_REPLY_TYPE_ERROR, payload.length),
        payload,
      ]),
    );
  }

  private okReply(cookie: bigint): void {
    if (this.structured)
      this.socket.write(this.chunkHeader(cookie, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE.NBD_REPLY_TYPE_NONE, 0));
    else this.simpleReply(cookie, 0);
  }

  private async transmission(): Promise<void> {
    const e = this.exp!;
    const inFlight = new Set<Promise<void>>();
    for (;;) {
      const h = Buffer.from(await this.queue.read(28));
      if (h.readUInt32BE(0) !== NBD_REQUEST_MAGIC) throw new Disconnect();
      const flags = h.readUInt16BE(4);
      const type = h.readUInt16BE(6);
      const cookie = h.readBigUInt64BE(8);
      const offBig = h.readBigUInt64BE(16);
      const length = h.readUInt32BE(24);
      const offset = offBig > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(offBig);
      const inRange = offset + length <= e.sizeBytes;

      if (type === NBD_CMD.NBD_CMD_DISC) {
        await Promise.allSettled(inFlight);
        throw new Disconnect();
      }
      let payload: Buffer | undefined;
      if (type === NBD_CMD.NBD_CMD_WRITE) {
        // Always consume the payload so the stream stays in sync, even for a rejected write.
        if (length > DEFAULT_MAX_PAYLOAD || !isWritable(e) || !inRange) {
          await this.queue.readInto(undefined, 0, length);
          const errno = !isWritable(e)
            ? NBD_ERRNO.NBD_EPERM
            : length > DEFAULT_MAX_PAYLOAD
              ? NBD_ERRNO.NBD_EOVERFLOW
              : NBD_ERRNO.NBD_ENOSPC;
          this.errorReply(cookie, errno, 'write refused');
          continue;
        }
        payload = Buffer.allocUnsafe(length);
        await this.queue.readInto(payload, 0, length);
      }
      while (inFlight.size >= PARALLEL_REQUESTS) await Promise.race(inFlight);
      const p = this.handle(e, type, flags, cookie, offset, length, inRange, payload).catch(
        (err: unknown) => {
          this.errorReply(
            cookie,
            NBD_ERRNO.NBD_EIO,
            err instanceof Error ? err.message.slice(0, 200) : 'I/O error',
          );
        },
      );
      const tracked: Promise<void> = p.finally(() => inFlight.delete(tracked));
      inFlight.add(tracked);
    }
  }

  private async handle(
    e: NbdExport,
    type: number,
    flags: number,
    cookie: bigint,
    offset: number,
    length: number,
    inRange: boolean,
    payload: Buffer | undefined,
  ): Promise<void> {
    const einval = (msg: string): void => this.errorReply(cookie, NBD_ERRNO.NBD_EINVAL, msg);
    switch (type) {
      case NBD_CMD.NBD_CMD_READ: {
        if (length > DEFAULT_MAX_PAYLOAD)
          return this.errorReply(
            cookie,
            this.structured ? NBD_ERRNO.NBD_EOVERFLOW : NBD_ERRNO.NBD_EINVAL,
            'read too large',
          );
        if (!inRange) return einval('read past the end of the export');
        if (length === 0) return this.okReply(cookie);
        if (!this.structured) return this.simpleReply(cookie, 0, await e.read(offset, length));
        return this.structuredRead(e, cookie, offset, length, (flags & NBD_CMD_FLAG.NBD_CMD_FLAG_DF) !== 0);
      }
      case NBD_CMD.NBD_CMD_WRITE:
        await e.write!(offset, payload!);
        return this.okReply(cookie);
      case NBD_CMD.NBD_CMD_WRITE_ZEROES:
      case NBD_CMD.NBD_CMD_TRIM:
        if (!isWritable(e)) return this.errorReply(cookie, NBD_ERRNO.NBD_EPERM, 'read-only export');
        if (!inRange) return this.errorReply(cookie, NBD_ERRNO.NBD_ENOSPC, 'past the end of the export');
        if (type === NBD_CMD.NBD_CMD_TRIM) await (e.trim ?? e.writeZeroes)?.call(e, offset, length);
        else if (e.writeZeroes) await e.writeZeroes(offset, length);
        else await e.write!(offset, Buffer.alloc(length));
        return this.okReply(cookie);
      case NBD_CMD.NBD_CMD_FLUSH:
        await e.flush?.();
        return this.okReply(cookie);
      case NBD_CMD.NBD_CMD_CACHE:
        if (!inRange) return einval('cache past the end of the export');
        return this.okReply(cookie);
      case NBD_CMD.NBD_CMD_BLOCK_STATUS: {
        if (!this.structured || !this.contextSelected) return einval('no meta context selected');
        if (!inRange || length === 0) return einval('block status out of range');
        const extents = await this.extentsOf(e, offset, length);
        const list = flags & NBD_CMD_FLAG.NBD_CMD_FLAG_REQ_ONE ? extents.slice(0, 1) : extents;
        const body = Buffer.allocUnsafe(4 + 8 * list.length);
        body.writeUInt32BE(BASE_ALLOCATION_ID, 0);
        list.forEach((x, i) => {
          body.writeUInt32BE(x.length, 4 + i * 8);
          body.writeUInt32BE(x.flags, 8 + i * 8);
        });
        this.socket.write(
          Buffer.concat([
            this.chunkHeader(
              cookie,
              NBD_REPLY_FLAG_DONE,
              NBD_REPLY_TYPE.NBD_REPLY_TYPE_BLOCK_STATUS,
              body.length,
            ),
            body,
          ]),
        );
        return;
      }
      default:
        return einval(`unknown command ${type}`);
    }
  }

  private async extentsOf(e: NbdExport, offset: number, length: number): Promise<ExportExtent[]> {
    if (!e.extents) return [{ offset, length, flags: 0 }];
    const out = (await e.extents(offset, length)).filter((x) => x.length > 0);
    return out.length ? out : [{ offset, length, flags: 0 }];
  }

  /** READ with structured replies: zero ranges become OFFSET_HOLE chunks, the rest OFFSET_DATA. */
  private async structuredRead(
    e: NbdExport,
    cookie: bigint,
    offset: number,
    length: number,
    oneChunk: boolean,
  ): Promise<void> {
    const extents =
      !oneChunk && e.extents ? await this.extentsOf(e, offset, length) : [{ offset, length, flags: 0 }];
    const pieces: Array<{ offset: number; length: number; hole: boolean }> = [];
    let at = offset;
    for (const x of extents) {
      if (at >= offset + length) break;
      const len = Math.min(x.offset + x.length, offset + length) - at;
      if (len <= 0) continue;
      const hole = (x.flags & 2) !== 0 && len >= MIN_HOLE_BYTES;
      const last = pieces[pieces.length - 1];
      if (last && last.hole === hole) last.length += len;
      else pieces.push({ offset: at, length: len, hole });
      at += len;
    }
    if (at < offset + length) pieces.push({ offset: at, length: offset + length - at, hole: false });
    const datas = await Promise.all(
      pieces.map((p) => (p.hole ? Promise.resolve(undefined) : e.read(p.offset, p.length))),
    );
    const out: Buffer[] = [];
    pieces.forEach((p, i) => {
      const done = i === pieces.length - 1 ? NBD_REPLY_FLAG_DONE : 0;
      if (p.hole) {
        const b = Buffer.allocUnsafe(12);
        b.writeBigUInt64BE(BigInt(p.offset), 0);
        b.writeUInt32BE(p.length, 8);
        out.push(this.chunkHeader(cookie, done, NBD_REPLY_TYPE.NBD_REPLY_TYPE_OFFSET_HOLE, 12), b);
      } else {
        const off = Buffer.allocUnsafe(8);
        off.writeBigUInt64BE(BigInt(p.offset), 0);
        out.push(
          this.chunkHeader(cookie, done, NBD_REPLY_TYPE.NBD_REPLY_TYPE_OFFSET_DATA, 8 + p.length),
          off,
          datas[i]!,
        );
      }
    });
    this.socket.cork();
    for (const b of out) this.socket.write(b);
    this.socket.uncork();
  }
}
