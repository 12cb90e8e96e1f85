/**
 * The transmission phase of one server connection: validate each request (one validator), hand it
 * to the export, and send simple or structured replies. Up to `maxInFlight` requests run at once.
 * Memory is bounded per connection and server-wide: reply bytes not yet taken by the socket (READ
 * data from the moment the READ starts) and WRITE payloads not yet handled count against
 * `maxConnectionBytes`; while a connection is over it, or its send buffer is full, no new request
 * starts and the socket is not read, so a client that does not read its replies stops being
 * served instead of filling memory. READ data also holds the server-wide read budget (a
 * `ByteBudget`) until the socket has taken it.
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
  /** Reply bytes not yet taken by the socket plus unhandled WRITE payloads, per connection. */
  maxConnectionBytes: number;
  readBudget: ByteBudget;
  bufferPool: BufferPool;
  /** The client broke framing (the connection is closed). */
  onProtocolError: (err: Error) => void;
}

/** Bytes of a connection's bound held for one reply; see `Transmission.reserve`. */
interface Reservation {
  release(): void;
  /** Runs `hook` when the reservation is released (at once if it already is). */
  then(hook: () => void): void;
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
  /** Reply bytes reserved or written and not yet taken by the socket. */
  private replyBytes = 0;
  /** WRITE payloads received and not yet handled. */
  private payloadBytes = 0;
  /** Releases of replies the socket has not taken yet (all run when the connection closes). */
  private readonly outstanding = new Set<() => void>();
  /** When the socket last took a reply (or this connection started holding reply bytes). */
  lastProgress = Date.now();

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
    socket.on('drain', () => this.pump());
    socket.on('close', () => {
      this.closed = true;
      // Whatever the socket did not take is dropped with it: give its memory back.
      for (const release of [...this.outstanding]) release();
    });
  }

  /** Bytes this connection holds for replies the socket has not taken (tests, stall detection). */
  get heldReplyBytes(): number {
    return this.replyBytes;
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
    this.payloadBytes += payload?.length ?? 0;
    this.queue.push({ h, payload, errno: refusedErrno });
    this.pump();
  }

  // ---- scheduling ---------------------------------------------------------------------------------

  /** Reply bytes a request reserves before it runs (READ data; other replies are counted when sent). */
  private static cost(q: Queued): number {
    return q.h.type === NBD_CMD.NBD_CMD_READ && !q.errno ? q.h.length : 0;
  }

  private canStart(q: Queued): boolean {
    if (this.active >= this.opts.maxInFlight || this.socket.writableNeedDrain) return false;
    // A connection holding nothing may always run one request, however large.
    return this.replyBytes === 0 || this.replyBytes + Transmission.cost(q) <= this.opts.maxConnectionBytes;
  }

  private pump(): void {
    while (this.queue.length > 0 && !this.closed && this.canStart(this.queue[0]!)) {
      const q = this.queue.shift()!;
      const cost = Transmission.cost(q);
      const reservation = cost > 0 ? this.reserve(cost) : undefined;
      this.active++;
      void this.handle(q, reservation).finally(() => {
        this.active--;
        this.payloadBytes -= q.payload?.length ?? 0;
        this.pump();
        this.maybeEnd();
      });
    }
    this.flow();
  }

  /**
   * Read from the client only while requests can start: nothing queued, the send buffer not
   * full, and the connection's reply bytes and payloads under their bound.
   */
  private flow(): void {
    const max = this.opts.maxConnectionBytes;
    const stop =
      this.queue.length > 0 ||
      this.socket.writableNeedDrain ||
      this.replyBytes >= max ||
      this.payloadBytes >= max;
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

  /**
   * A reservation of `bytes` of this connection's bound, given back once: when the socket has
   * taken the reply, or when the connection closes first. Hooks added with `then` run with it.
   */
  private reserve(bytes: number): Reservation {
    if (bytes > 0 && this.replyBytes === 0) this.lastProgress = Date.now();
    this.replyBytes += bytes;
    const hooks: Array<() => void> = [];
    let done = false;
    const release = (): void => {
      if (done) return;
      done = true;
      this.outstanding.delete(release);
      this.replyBytes -= bytes;
      this.lastProgress = Date.now();
      for (const h of hooks.splice(0)) h();
      if (!this.closed) this.pump();
    };
    this.outstanding.add(release);
    return {
      release,
      then: (h) => (done ? h() : hooks.push(h)),
    };
  }

  /**
   * Replies are written but the client has not taken any for `ms`: it is not reading. (A
   * connection only waiting for the server-wide budget is not stalled.)
   */
  stalledFor(ms: number): boolean {
    return this.socket.writableLength > 0 && Date.now() - this.lastProgress > ms;
  }

  // ---- replies ----------------------------------------------------------------------------------

  /**
   * Writes one reply in one batch; `written` runs once the socket is done with the buffers (or the
   * connection is gone). Its bytes count against the connection's bound until then, unless the
   * caller reserved them already (`written` then gives them back).
   */
  private send(parts: Buffer[], reserved?: Reservation): void {
    const r = reserved ?? this.reserve(parts.reduce((n, p) => n + p.length, 0));
    if ((this.closed && !this.disconnecting) || this.socket.destroyed) return r.release();
    if (this.socket.writableLength === 0) this.lastProgress = Date.now();
    // The write callback also runs (with an error) when the socket is destroyed first; the
    // connection's 'close' releases whatever is left in any case.
    const done = (): void => r.release();
    if (parts.length === 1) this.socket.write(parts[0]!, done);
    else {
      this.socket.cork();
      for (let i = 0; i < parts.length; i++)
        this.socket.write(parts[i]!, i === parts.length - 1 ? done : undefined);
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

  /** `reservation`: a READ's data bytes, reserved by `pump`; it goes with the reply. */
  private async handle(q: Queued, reservation: Reservation | undefined): Promise<void> {
    const { h } = q;
    const errno = q.errno || validateRequest(h, this.ctx);
    if (errno) {
      reservation?.release();
      return this.fail(h.cookie, errno, `${nbdCmdName(h.type)} refused`);
    }
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
            reservation ?? this.reserve(0),
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

  /**
   * READ: the server-wide budget is held, like the connection's `reservation`, until the socket
   * has taken the reply (or the connection is gone); on failure both are given back at once.
   */
  private async read(
    e: NbdExport,
    cookie: bigint,
    offset: number,
    length: number,
    df: boolean,
    reservation: Reservation,
  ): Promise<void> {
    if (length === 0) {
      reservation.release();
      return this.ok(cookie);
    }
    const budget = this.opts.readBudget;
    await budget.acquire(length);
    reservation.then(() => budget.release(length));
    try {
      if (e.readInto && (df || !this.neg.structured || (!e.readExtents && !e.extents)))
        return await this.readPooled(e, cookie, offset, length, reservation);
      if (!this.neg.structured) {
        const data = await e.read(offset, length);
        return this.send([encodeSimpleReply(cookie, 0), data], reservation);
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
      if (pieces.some((p) => p.release)) reservation.then(() => releasePieces(pieces));
      this.send(parts, reservation);
    } catch (err) {
      reservation.release();
      throw err;
    }
  }

  /** READ into a pooled buffer, returned to the pool once the socket has written it. */
  private async readPooled(
    e: NbdExport,
    cookie: bigint,
    offset: number,
    length: number,
    reservation: Reservation,
  ): Promise<void> {
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
    reservation.then(() => pool.put(buf));
    this.send([hdr, buf], reservation);
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
