/**
 * Sans-IO parser for NBD transmission replies (simple and structured). It is fed whatever bytes
 * arrive, in any split, and reports each reply through a `ReplyHandler`; it never touches a socket.
 *
 * Anything that breaks framing (bad magic, a cookie nobody waits for, an unknown non-error chunk
 * type, inconsistent lengths, content outside the request) throws NbdProtocolError: the caller must
 * then kill the connection. The parser is unusable after a throw.
 *
 * READ payloads are never buffered here: `data()` receives views of the input (copy them before
 * the input buffer is reused), and while a payload is being received, `dataTarget()` tells the
 * caller where the next bytes belong so it can have the kernel write them straight into the
 * destination and report them with `consumedDirect(n)` (zero-copy receive).
 */
import { NbdProtocolError } from '../errors.js';
import {
  NBD_ERRNO,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE,
  NBD_REPLY_TYPE_ERROR_BIT,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_SIZE,
  NBD_STRUCTURED_REPLY_MAGIC,
} from '../protocol.js';
import { safeU64 } from '../wire.js';

export type RequestKind = 'read' | 'block-status' | 'other';

/** What the parser needs to know about a request in flight. */
export interface InFlightRequest {
  kind: RequestKind;
  /** The request's offset and length (READ: the range content chunks must stay in). */
  offset: number;
  length: number;
}

export interface ReplyHandler {
  /** The request in flight under `cookie`, or undefined (then the reply is a protocol error). */
  lookup(cookie: bigint): InFlightRequest | undefined;
  /** READ content at absolute `offset`; `bytes` is a view of the parser's input. */
  data(cookie: bigint, offset: number, bytes: Buffer): void;
  /** READ content that the caller received in place (see `dataTarget`). */
  dataInPlace(cookie: bigint, offset: number, length: number): void;
  /** A READ range that reads as zeros. */
  hole(cookie: bigint, offset: number, length: number): void;
  /** One BLOCK_STATUS chunk: extents of one context, in order from the request's offset. */
  blockStatus(cookie: bigint, contextId: number, extents: Array<{ length: number; flags: number }>): void;
  /** An error for the request (simple reply error, or an error chunk). */
  error(cookie: bigint, errno: number, message: string, offset: number | undefined): void;
  /** The reply to `cookie` is complete. */
  done(cookie: bigint): void;
}

const State = {
  Header: 0,
  SimpleData: 1,
  ChunkOffset: 2,
  ChunkData: 3,
  ChunkPayload: 4,
} as const;
type State = (typeof State)[keyof typeof State];

/** Largest non-data chunk payload accepted: 2^20 extents (the spec's SHOULD) plus slack. */
const MAX_META_PAYLOAD = 4 + 8 * (1 << 21);
const MAX_ERROR_PAYLOAD = 14 + 65536;

export class ReplyParser {
  private state: State = State.Header;
  private readonly hdr = Buffer.alloc(NBD_SIZE.STRUCTURED_REPLY_HEADER);
  private hdrFill = 0;
  private cookie = 0n;
  private chunkFlags = 0;
  private chunkType = 0;
  private chunkLength = 0;
  private request: InFlightRequest | undefined;
  /** DATA states: absolute offset of the next byte and bytes left. */
  private pos = 0;
  private remaining = 0;
  /** ChunkPayload / ChunkOffset: accumulated bytes. */
  private payload: Buffer = Buffer.alloc(0);
  private payloadFill = 0;

  constructor(private readonly handler: ReplyHandler) {}

  /** True between replies (no partial reply buffered). */
  get isIdle(): boolean {
    return this.state === State.Header && this.hdrFill === 0;
  }

  /** Where the next payload bytes belong, when a READ payload is being received. */
  dataTarget(): { cookie: bigint; offset: number; length: number } | undefined {
    if ((this.state === State.SimpleData || this.state === State.ChunkData) && this.remaining > 0)
      return { cookie: this.cookie, offset: this.pos, length: this.remaining };
    return undefined;
  }

  /** `n` payload bytes (≤ dataTarget().length) were placed at the target by the caller. */
  consumedDirect(n: number): void {
    if (n <= 0) return;
    if (!(this.state === State.SimpleData || this.state === State.ChunkData) || n > this.remaining)
      throw new Error('ReplyParser.consumedDirect without a matching data target');
    this.handler.dataInPlace(this.cookie, this.pos, n);
    this.pos += n;
    this.remaining -= n;
    if (this.remaining === 0) this.endData();
  }

  push(input: Buffer): void {
    let at = 0;
    const end = input.length;
    while (at < end) {
      switch (this.state) {
        case State.Header: {
          // Magic first (4 bytes), then the rest of a simple (16) or structured (20) header.
          const want =
            this.hdrFill < 4
              ? 4
              : this.hdr.readUInt32BE(0) === NBD_SIMPLE_REPLY_MAGIC
                ? NBD_SIZE.SIMPLE_REPLY_HEADER
                : NBD_SIZE.STRUCTURED_REPLY_HEADER;
          const k = Math.min(want - this.hdrFill, end - at);
          input.copy(this.hdr, this.hdrFill, at, at + k);
          this.hdrFill += k;
          at += k;
          if (this.hdrFill === 4) {
            const magic = this.hdr.readUInt32BE(0);
            if (magic !== NBD_SIMPLE_REPLY_MAGIC && magic !== NBD_STRUCTURED_REPLY_MAGIC)
              throw new NbdProtocolError(`bad reply magic 0x${magic.toString(16)}`);
          } else if (this.hdrFill === want) {
            this.hdrFill = 0;
            if (want === NBD_SIZE.SIMPLE_REPLY_HEADER) this.simpleHeader();
            else this.chunkHeader();
          }
          break;
        }
        case State.SimpleData:
        case State.ChunkData: {
          const k = Math.min(this.remaining, end - at);
          this.handler.data(this.cookie, this.pos, input.subarray(at, at + k));
          at += k;
          this.pos += k;
          this.remaining -= k;
          if (this.remaining === 0) this.endData();
          break;
        }
        case State.ChunkOffset:
        case State.ChunkPayload: {
          const k = Math.min(this.payload.length - this.payloadFill, end - at);
          input.copy(this.payload, this.payloadFill, at, at + k);
          this.payloadFill += k;
          at += k;
          if (this.payloadFill === this.payload.length) {
            if (this.state === State.ChunkOffset) this.dataOffset();
            else this.chunkPayload();
          }
          break;
        }
      }
    }
  }

  private lookup(cookie: bigint): InFlightRequest {
    const r = this.handler.lookup(cookie);
    if (!r) throw new NbdProtocolError(`reply for cookie ${cookie}, which no request is waiting for`);
    return r;
  }

  private simpleHeader(): void {
    const errno = this.hdr.readUInt32BE(4);
    this.cookie = this.hdr.readBigUInt64BE(8);
    const r = this.lookup(this.cookie);
    if (errno !== 0) {
      this.handler.error(this.cookie, errno, '', undefined);
      this.handler.done(this.cookie);
      return;
    }
    if (r.kind === 'read' && r.length > 0) {
      this.request = r;
      this.pos = r.offset;
      this.remaining = r.length;
      this.chunkFlags = NBD_REPLY_FLAG_DONE;
      this.state = State.SimpleData;
      return;
    }
    this.handler.done(this.cookie);
  }

  private chunkHeader(): void {
    this.chunkFlags = this.hdr.readUInt16BE(4);
    this.chunkType = this.hdr.readUInt16BE(6);
    this.cookie = this.hdr.readBigUInt64BE(8);
    this.chunkLength = this.hdr.readUInt32BE(16);
    const r = this.lookup(this.cookie);
    this.request = r;
    const len = this.chunkLength;
    const type = this.chunkType;
    const bad = (why: string): never => {
      throw new NbdProtocolError(`${why} (chunk type ${type}, length ${len}, cookie ${this.cookie})`);
    };
    switch (type) {
      case NBD_REPLY_TYPE.NBD_REPLY_TYPE_NONE:
        if (len !== 0) bad('NONE chunk with a payload');
        if (!(this.chunkFlags & NBD_REPLY_FLAG_DONE)) bad('NONE chunk without the DONE flag');
        this.handler.done(this.cookie);
        return;
      case NBD_REPLY_TYPE.NBD_REPLY_TYPE_OFFSET_DATA:
        if (r.kind !== 'read') bad('OFFSET_DATA chunk for a request that is not a READ');
        if (len < 9 || len - 8 > r.length) bad('OFFSET_DATA chunk of an impossible length');
        return this.collect(State.ChunkOffset, 8);
      case NBD_REPLY_TYPE.NBD_REPLY_TYPE_OFFSET_HOLE:
        if (r.kind !== 'read') bad('OFFSET_HOLE chunk for a request that is not a READ');
        if (len !== 12) bad('OFFSET_HOLE chunk of the wrong length');
        return this.collect(State.ChunkPayload, 12);
      case NBD_REPLY_TYPE.NBD_REPLY_TYPE_BLOCK_STATUS:
        if (r.kind !== 'block-status') bad('BLOCK_STATUS chunk for a request that is not BLOCK_STATUS');
        if (len < 12 || (len - 4) % 8 !== 0 || len > MAX_META_PAYLOAD)
          bad('BLOCK_STATUS chunk of a bad length');
        return this.collect(State.ChunkPayload, len);
      default:
        if (!(type & NBD_REPLY_TYPE_ERROR_BIT)) bad('unknown structured reply type');
        if (len < 6 || len > MAX_ERROR_PAYLOAD) bad('error chunk of a bad length');
        return this.collect(State.ChunkPayload, len);
    }
  }

  private collect(state: State, n: number): void {
    this.payload = Buffer.allocUnsafe(n);
    this.payloadFill = 0;
    this.state = state;
  }

  /** The u64 offset of an OFFSET_DATA chunk arrived: check it, then receive the data. */
  private dataOffset(): void {
    const r = this.request!;
    const offset = safeU64(this.payload, 0, 'OFFSET_DATA offset');
    const n = this.chunkLength - 8;
    if (offset < r.offset || offset + n > r.offset + r.length)
      throw new NbdProtocolError(
        `OFFSET_DATA ${offset}+${n} lies outside the request ${r.offset}+${r.length} (cookie ${this.cookie})`,
      );
    this.pos = offset;
    this.remaining = n;
    this.state = State.ChunkData;
  }

  private endData(): void {
    this.state = State.Header;
    if (this.chunkFlags & NBD_REPLY_FLAG_DONE) this.handler.done(this.cookie);
  }

  private chunkPayload(): void {
    const p = this.payload;
    const r = this.request!;
    const cookie = this.cookie;
    const type = this.chunkType;
    this.state = State.Header;
    this.payload = Buffer.alloc(0);
    if (type === NBD_REPLY_TYPE.NBD_REPLY_TYPE_OFFSET_HOLE) {
      const offset = safeU64(p, 0, 'OFFSET_HOLE offset');
      const n = p.readUInt32BE(8);
      if (n === 0 || offset < r.offset || offset + n > r.offset + r.length)
        throw new NbdProtocolError(
          `OFFSET_HOLE ${offset}+${n} lies outside the request ${r.offset}+${r.length} (cookie ${cookie})`,
        );
      this.handler.hole(cookie, offset, n);
    } else if (type === NBD_REPLY_TYPE.NBD_REPLY_TYPE_BLOCK_STATUS) {
      const id = p.readUInt32BE(0);
      const extents: Array<{ length: number; flags: number }> = [];
      for (let i = 4; i < p.length; i += 8) {
        const length = p.readUInt32BE(i);
        if (length === 0) throw new NbdProtocolError(`zero-length extent in BLOCK_STATUS (cookie ${cookie})`);
        extents.push({ length, flags: p.readUInt32BE(i + 4) });
      }
      this.handler.blockStatus(cookie, id, extents);
    } else {
      // Error chunks (known and unknown types with bit 15 set).
      const errno = p.readUInt32BE(0);
      const mlen = p.readUInt16BE(4);
      const isOffset = type === NBD_REPLY_TYPE.NBD_REPLY_TYPE_ERROR_OFFSET;
      if (6 + mlen + (isOffset ? 8 : 0) > p.length)
        throw new NbdProtocolError(`error chunk message longer than the chunk (cookie ${cookie})`);
      if (type === NBD_REPLY_TYPE.NBD_REPLY_TYPE_ERROR && 6 + mlen !== p.length)
        throw new NbdProtocolError(`error chunk with trailing bytes (cookie ${cookie})`);
      const message = p.subarray(6, 6 + mlen).toString('utf8');
      const offset = isOffset ? safeU64(p, 6 + mlen, 'error offset') : undefined;
      this.handler.error(cookie, errno === 0 ? NBD_ERRNO.NBD_EINVAL : errno, message, offset);
    }
    if (this.chunkFlags & NBD_REPLY_FLAG_DONE) this.handler.done(cookie);
  }
}
