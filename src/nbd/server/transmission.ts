/**
 * The transmission phase of one server connection: validate each request (one validator), hand it
 * to the export, and send simple or structured replies. Up to `maxInFlight` requests run at once;
 * beyond that, and while the socket's send buffer is full, reading from the client pauses. Bytes
 * of READ data held in memory are bounded by a byte budget shared by all connections.
 */
import type { Socket } from 'node:net';
import { errnoCode, type ByteBudget } from '../../util/index.js';
import {
  NBD_CMD,
  NBD_CMD_FLAG,
  NBD_ERRNO,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE,
  NBD_SIZE,
  nbdCmdName,
  nbdErrnoFromCode,
} from '../protocol.js';
import { encodeChunkHeader, encodeSimpleReply, writeChunkHeader, type RequestHeader } from '../wire.js';
import type { BufferPool } from './buffer-pool.js';
import {
  isWritable,
  readPieces,
  releasePieces,
  type ExportBlockSize,
  type ExportExtent,
  type NbdExport,
  type ReadPiece,
} from './export.js';
import { BASE_ALLOCATION_ID, DEFAULT_EXPORT_BLOCK_SIZE, type Negotiated } from './handshake.js';
import { RequestParser, type RequestSink } from './request-parser.js';

/** Most extents sent in one BLOCK_STATUS chunk (the spec's SHOULD: at most 2^20). */
const MAX_EXTENTS = 1 << 20;

/** Command flags each command accepts (others → EINVAL). */
const ALLOWED_FLAGS: Record<number, number> = {
  [NBD_CMD.NBD_CMD_READ]: NBD_CMD_FLAG.NBD_CMD_FLAG_DF,
  [NBD_CMD.NBD_CMD_WRITE]: NBD_CMD_FLAG.NBD_CMD_FLAG_FUA,
  [NBD_CMD.NBD_CMD_WRITE_ZEROES]: NBD_CMD_FLAG.NBD_CMD_FLAG_FUA | NBD_CMD_FLAG.NBD_CMD_FLAG_NO_HOLE,
  [NBD_CMD.NBD_CMD_TRIM]: NBD_CMD_FLAG.NBD_CMD_FLAG_FUA,
  [NBD_CMD.NBD_CMD_FLUSH]: 0,
  [NBD_CMD.NBD_CMD_CACHE]: 0,
  [NBD_CMD.NBD_CMD_BLOCK_STATUS]: NBD_CMD_FLAG.NBD_CMD_FLAG_REQ_ONE,
  [NBD_CMD.NBD_CMD_DISC]: 0,
};

export interface ValidationContext {
  sizeBytes: number;
  writable: boolean;
  structured: boolean;
  baseAllocation: boolean;
  blockSize: ExportBlockSize;
}

/** The errno a request must fail with, or 0 when it is valid (doc/proto.md "Error values"). */
export function validateRequest(h: RequestHeader, c: ValidationContext): number {
  const allowed = ALLOWED_FLAGS[h.type];
  if (allowed === undefined) return NBD_ERRNO.NBD_EINVAL; // unknown command
  if (h.flags & ~allowed) return NBD_ERRNO.NBD_EINVAL;
  if (h.flags & NBD_CMD_FLAG.NBD_CMD_FLAG_DF && !c.structured) return NBD_ERRNO.NBD_EINVAL;
  const isWrite =
    h.type === NBD_CMD.NBD_CMD_WRITE ||
    h.type === NBD_CMD.NBD_CMD_WRITE_ZEROES ||
    h.type === NBD_CMD.NBD_CMD_TRIM;
  if (isWrite && !c.writable) return NBD_ERRNO.NBD_EPERM;
  if (h.type === NBD_CMD.NBD_CMD_FLUSH) return 0;
  if (h.type === NBD_CMD.NBD_CMD_BLOCK_STATUS && (!c.structured || !c.baseAllocation))
    return NBD_ERRNO.NBD_EINVAL;
  if (h.type === NBD_CMD.NBD_CMD_WRITE && h.length > c.blockSize.maximum) return NBD_ERRNO.NBD_EINVAL;
  if (h.type === NBD_CMD.NBD_CMD_READ && h.length > c.blockSize.maximum)
    return c.structured ? NBD_ERRNO.NBD_EOVERFLOW : NBD_ERRNO.NBD_EINVAL;
  const end = h.offset + BigInt(h.length);
  if (end > BigInt(c.sizeBytes))
    return h.type === NBD_CMD.NBD_CMD_WRITE || h.type === NBD_CMD.NBD_CMD_WRITE_ZEROES
      ? NBD_ERRNO.NBD_ENOSPC
      : NBD_ERRNO.NBD_EINVAL;
  const m = BigInt(c.blockSize.minimum);
  if (m > 1n && (h.offset % m !== 0n || BigInt(h.length) % m !== 0n)) return NBD_ERRNO.NBD_EINVAL;
  if (h.type === NBD_CMD.NBD_CMD_BLOCK_STATUS && h.length === 0) return NBD_ERRNO.NBD_EINVAL;
  return 0;
}

export interface TransmissionOptions {
  maxInFlight: number;
  readBudget: ByteBudget;
  bufferPool: BufferPool;
  /** The client broke framing (the connection is closed). */
  onProtocolError: (err: Error) => void;
}

interface Queued {
  h: RequestHeader;
  payload: Buffer | undefined;
  errno: number;
}

export class Transmission implements RequestSink {
  private readonly parser = new RequestParser(this);
  private readonly ctx: ValidationContext;
  private readonly queue: Queued[] = [];
  private active = 0;
  private paused = false;
  private disconnecting = false;
  private closed = false;

  constructor(
    private readonly socket: Socket,
    private readonly neg: Negotiated,
    private readonly opts: TransmissionOptions,
  ) {
    const e = neg.exp;
    this.ctx = {
      sizeBytes: e.sizeBytes,
      writable: isWritable(e),
      structured: neg.structured,
      baseAllocation: neg.baseAllocation,
      blockSize: e.blockSize ?? DEFAULT_EXPORT_BLOCK_SIZE,
    };
    socket.on('drain', () => this.flow());
    socket.on('close', () => (this.closed = true));
  }

  /** Bytes from the client (the handshake's leftovers first, then socket data). */
  push(b: Buffer): void {
    if (this.disconnecting || this.closed) return;
    try {
      this.parser.push(b);
    } catch (err) {
      this.closed = true;
      this.opts.onProtocolError(err instanceof Error ? err : new Error(String(err)));
      this.socket.destroy();
    }
  }

  // ---- RequestSink ------------------------------------------------------------------------------

  acceptPayload(h: RequestHeader): number {
    return validateRequest(h, this.ctx);
  }

  request(h: RequestHeader, payload: Buffer | undefined, refusedErrno: number): void {
    if (this.disconnecting) return;
    if (h.type === NBD_CMD.NBD_CMD_DISC) {
      // Finish what is outstanding, then close; anything after DISC is ignored.
      this.disconnecting = true;
      this.maybeEnd();
      return;
    }
    this.queue.push({ h, payload, errno: refusedErrno });
    this.pump();
  }

  // ---- scheduling ---------------------------------------------------------------------------------

  private pump(): void {
    while (this.active < this.opts.maxInFlight && this.queue.length > 0) {
      const q = this.queue.shift()!;
      this.active++;
      void this.handle(q).finally(() => {
        this.active--;
        this.pump();
        this.maybeEnd();
      });
    }
    this.flow();
  }

  /** Pause reading while requests queue up or the send buffer is full; resume otherwise. */
  private flow(): void {
    const stop = this.queue.length > 0 || this.socket.writableNeedDrain;
    if (stop && !this.paused) {
      this.paused = true;
      this.socket.pause();
    } else if (!stop && this.paused) {
      this.paused = false;
      this.socket.resume();
    }
  }

  private maybeEnd(): void {
    if (this.disconnecting && this.active === 0 && this.queue.length === 0 && !this.closed) {
      this.closed = true;
      this.socket.end();
    }
  }

  // ---- replies ----------------------------------------------------------------------------------

  /** Writes one reply in one batch; `written` runs once the socket is done with the buffers. */
  private send(parts: Buffer[], written?: () => void): void {
    if ((this.closed && !this.disconnecting) || this.socket.destroyed) {
      written?.();
      return;
    }
    if (parts.length === 1) this.socket.write(parts[0]!, written);
    else {
      this.socket.cork();
      for (let i = 0; i < parts.length; i++)
        this.socket.write(parts[i]!, i === parts.length - 1 ? written : undefined);
      this.socket.uncork();
    }
    if (this.socket.writableNeedDrain) this.flow();
  }

  private ok(cookie: bigint): void {
    this.send([
      this.neg.structured
        ? encodeChunkHeader(cookie, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE.NBD_REPLY_TYPE_NONE, 0)
        : encodeSimpleReply(cookie, 0),
    ]);
  }

  private fail(cookie: bigint, errno: number, message: string): void {
    if (!this.neg.structured) return this.send([encodeSimpleReply(cookie, errno)]);
    const msg = Buffer.from(message.slice(0, 1000), 'utf8');
    const b = Buffer.allocUnsafe(NBD_SIZE.STRUCTURED_REPLY_HEADER + 6 + msg.length);
    writeChunkHeader(b, 0, cookie, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE.NBD_REPLY_TYPE_ERROR, 6 + msg.length);
    b.writeUInt32BE(errno, 20);
    b.writeUInt16BE(msg.length, 24);
    msg.copy(b, 26);
    this.send([b]);
  }

  // ---- commands ---------------------------------------------------------------------------------

  private async handle(q: Queued): Promise<void> {
    const { h } = q;
    const errno = q.errno || validateRequest(h, this.ctx);
    if (errno) return this.fail(h.cookie, errno, `${nbdCmdName(h.type)} refused`);
    const e = this.neg.exp;
    const offset = Number(h.offset);
    try {
      switch (h.type) {
        case NBD_CMD.NBD_CMD_READ:
          return await this.read(
            e,
            h.cookie,
            offset,
            h.length,
            (h.flags & NBD_CMD_FLAG.NBD_CMD_FLAG_DF) !== 0,
          );
        case NBD_CMD.NBD_CMD_WRITE:
          if (h.length > 0) await e.write!(offset, q.payload!);
          break;
        case NBD_CMD.NBD_CMD_WRITE_ZEROES:
          if (h.length > 0)
            await writeZeroes(e, offset, h.length, (h.flags & NBD_CMD_FLAG.NBD_CMD_FLAG_NO_HOLE) !== 0);
          break;
        case NBD_CMD.NBD_CMD_TRIM:
          if (h.length > 0) await e.trim?.(offset, h.length);
          break;
        case NBD_CMD.NBD_CMD_FLUSH:
          await e.flush?.();
          break;
        case NBD_CMD.NBD_CMD_CACHE:
          if (h.length > 0) await e.prefetch?.(offset, h.length);
          break;
        case NBD_CMD.NBD_CMD_BLOCK_STATUS:
          return await this.blockStatus(
            e,
            h.cookie,
            offset,
            h.length,
            (h.flags & NBD_CMD_FLAG.NBD_CMD_FLAG_REQ_ONE) !== 0,
          );
      }
      if (h.flags & NBD_CMD_FLAG.NBD_CMD_FLAG_FUA) await e.flush?.();
      this.ok(h.cookie);
    } catch (err) {
      this.fail(
        h.cookie,
        err instanceof RangeError ? NBD_ERRNO.NBD_EINVAL : nbdErrnoFromCode(errnoCode(err)),
        err instanceof Error ? err.message : String(err),
      );
    }
  }

  private async read(
    e: NbdExport,
    cookie: bigint,
    offset: number,
    length: number,
    df: boolean,
  ): Promise<void> {
    if (length === 0) return this.ok(cookie);
    const budget = this.opts.readBudget;
    await budget.acquire(length);
    try {
      if (e.readInto && (df || !this.neg.structured || (!e.readExtents && !e.extents)))
        return await this.readPooled(e, cookie, offset, length);
      if (!this.neg.structured) {
        const data = await e.read(offset, length);
        return this.send([encodeSimpleReply(cookie, 0), data]);
      }
      const pieces: ReadPiece[] = df
        ? [{ offset, length, data: await e.read(offset, length) }]
        : await readPieces(e, offset, length);
      const parts: Buffer[] = [];
      pieces.forEach((p, i) => {
        const flags = i === pieces.length - 1 ? NBD_REPLY_FLAG_DONE : 0;
        if (p.data) {
          const hdr = Buffer.allocUnsafe(NBD_SIZE.STRUCTURED_REPLY_HEADER + 8);
          writeChunkHeader(hdr, 0, cookie, flags, NBD_REPLY_TYPE.NBD_REPLY_TYPE_OFFSET_DATA, 8 + p.length);
          hdr.writeBigUInt64BE(BigInt(p.offset), 20);
          parts.push(hdr, p.data);
        } else {
          const hole = Buffer.allocUnsafe(NBD_SIZE.STRUCTURED_REPLY_HEADER + 12);
          writeChunkHeader(hole, 0, cookie, flags, NBD_REPLY_TYPE.NBD_REPLY_TYPE_OFFSET_HOLE, 12);
          hole.writeBigUInt64BE(BigInt(p.offset), 20);
          hole.writeUInt32BE(p.length, 28);
          parts.push(hole);
        }
      });
      this.send(parts, pieces.some((p) => p.release) ? () => releasePieces(pieces) : undefined);
    } finally {
      budget.release(length);
    }
  }

  /** READ into a pooled buffer, returned to the pool once the socket has written it. */
  private async readPooled(e: NbdExport, cookie: bigint, offset: number, length: number): Promise<void> {
    const pool = this.opts.bufferPool;
    const buf = pool.get(length);
    try {
      await e.readInto!(offset, buf);
    } catch (err) {
      pool.put(buf);
      throw err;
    }
    let hdr: Buffer;
    if (this.neg.structured) {
      hdr = Buffer.allocUnsafe(NBD_SIZE.STRUCTURED_REPLY_HEADER + 8);
      writeChunkHeader(
        hdr,
        0,
        cookie,
        NBD_REPLY_FLAG_DONE,
        NBD_REPLY_TYPE.NBD_REPLY_TYPE_OFFSET_DATA,
        8 + length,
      );
      hdr.writeBigUInt64BE(BigInt(offset), 20);
    } else hdr = encodeSimpleReply(cookie, 0);
    this.send([hdr, buf], () => pool.put(buf));
  }

  private async blockStatus(
    e: NbdExport,
    cookie: bigint,
    offset: number,
    length: number,
    reqOne: boolean,
  ): Promise<void> {
    const list = sanitizeExtents(e.extents ? await e.extents(offset, length) : [], offset, length);
    const n = reqOne ? 1 : Math.min(list.length, MAX_EXTENTS);
    const b = Buffer.allocUnsafe(NBD_SIZE.STRUCTURED_REPLY_HEADER + 4 + 8 * n);
    writeChunkHeader(
      b,
      0,
      cookie,
      NBD_REPLY_FLAG_DONE,
      NBD_REPLY_TYPE.NBD_REPLY_TYPE_BLOCK_STATUS,
      4 + 8 * n,
    );
    b.writeUInt32BE(BASE_ALLOCATION_ID, 20);
    for (let i = 0; i < n; i++) {
      b.writeUInt32BE(list[i]!.length, 24 + 8 * i);
      b.writeUInt32BE(list[i]!.flags & 3, 28 + 8 * i);
    }
    this.send([b]);
  }
}

/** The contiguous prefix of `list` from `offset`, clamped to the request; never empty. */
export function sanitizeExtents(
  list: readonly ExportExtent[],
  offset: number,
  length: number,
): ExportExtent[] {
  const end = offset + length;
  const out: ExportExtent[] = [];
  let at = offset;
  for (const x of list) {
    if (at >= end) break;
    if (x.offset > at || x.offset + x.length <= at) break;
    const stop = Math.min(end, x.offset + x.length);
    const last = out[out.length - 1];
    if (last && last.flags === x.flags) last.length += stop - at;
    else out.push({ offset: at, length: stop - at, flags: x.flags });
    at = stop;
  }
  return out.length ? out : [{ offset, length, flags: 0 }];
}

/** WRITE_ZEROES through the export's own method, or plain writes of zeros in ≤ 1 MiB pieces. */
async function writeZeroes(e: NbdExport, offset: number, length: number, noHole: boolean): Promise<void> {
  if (e.writeZeroes) return e.writeZeroes(offset, length, { noHole });
  const zeros = Buffer.alloc(Math.min(length, 1024 * 1024));
  for (let at = 0; at < length; at += zeros.length)
    await e.write!(offset + at, zeros.subarray(0, Math.min(zeros.length, length - at)));
}
