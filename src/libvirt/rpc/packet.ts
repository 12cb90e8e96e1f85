/**
 * libvirt RPC framing (src/rpc/virnetprotocol.x): a u32 length that counts the whole packet
 * including itself, a 24-byte header, then the XDR payload. Sans-IO: the decoder is fed chunks and
 * returns whole packets; the encoder returns Buffers.
 */
import { BufferReader, BufferWriter } from '../../util/index.js';
import { LibvirtProtocolError } from '../errors.js';

export const VIR_NET_MESSAGE_LEN_BYTES = 4;
export const VIR_NET_MESSAGE_HEADER_BYTES = 24;
/** Largest packet accepted (VIR_NET_MESSAGE_MAX, 32 MiB, plus the length word). */
export const VIR_NET_MESSAGE_MAX = 33554432;

export const VIR_NET_TYPE = {
  VIR_NET_CALL: 0,
  VIR_NET_REPLY: 1,
  VIR_NET_MESSAGE: 2,
  VIR_NET_STREAM: 3,
  VIR_NET_CALL_WITH_FDS: 4,
  VIR_NET_REPLY_WITH_FDS: 5,
  VIR_NET_STREAM_HOLE: 6,
} as const;

export const VIR_NET_STATUS = {
  VIR_NET_OK: 0,
  VIR_NET_ERROR: 1,
  VIR_NET_CONTINUE: 2,
} as const;

export interface PacketHeader {
  program: number;
  version: number;
  procedure: number;
  type: number;
  serial: number;
  status: number;
}

export interface Packet {
  header: PacketHeader;
  payload: Buffer;
}

export function encodePacket(header: PacketHeader, payload: Buffer = Buffer.alloc(0)): Buffer {
  const total = VIR_NET_MESSAGE_LEN_BYTES + VIR_NET_MESSAGE_HEADER_BYTES + payload.length;
  if (total > VIR_NET_MESSAGE_MAX + VIR_NET_MESSAGE_LEN_BYTES) {
    throw new LibvirtProtocolError(
      `outgoing packet of ${total} bytes exceeds the ${VIR_NET_MESSAGE_MAX}-byte limit`,
    );
  }
  const w = new BufferWriter(total);
  w.u32(total)
    .u32(header.program)
    .u32(header.version)
    .i32(header.procedure)
    .i32(header.type)
    .u32(header.serial)
    .i32(header.status)
    .bytes(payload);
  return w.toBuffer();
}

export function decodeHeader(buf: Buffer): PacketHeader {
  const r = new BufferReader(buf);
  return {
    program: r.u32(),
    version: r.u32(),
    procedure: r.i32(),
    type: r.i32(),
    serial: r.u32(),
    status: r.i32(),
  };
}

/**
 * Accumulates stream chunks and yields complete packets. A length below the header size or above
 * the limit throws LibvirtProtocolError: the stream can no longer be trusted.
 */
export class PacketDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;

  /** Feeds bytes; returns every packet that is now complete (possibly none). */
  push(chunk: Buffer): Packet[] {
    if (chunk.length > 0) {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
    }
    const out: Packet[] = [];
    while (this.buffered >= VIR_NET_MESSAGE_LEN_BYTES) {
      const length = this.peekLength();
      if (length < VIR_NET_MESSAGE_LEN_BYTES + VIR_NET_MESSAGE_HEADER_BYTES) {
        throw new LibvirtProtocolError(`packet length ${length} is shorter than the header`);
      }
      if (length > VIR_NET_MESSAGE_MAX + VIR_NET_MESSAGE_LEN_BYTES) {
        throw new LibvirtProtocolError(
          `packet length ${length} exceeds the ${VIR_NET_MESSAGE_MAX}-byte limit`,
        );
      }
      if (this.buffered < length) break;
      const whole = this.take(length);
      out.push({
        header: decodeHeader(
          whole.subarray(VIR_NET_MESSAGE_LEN_BYTES, VIR_NET_MESSAGE_LEN_BYTES + VIR_NET_MESSAGE_HEADER_BYTES),
        ),
        payload: whole.subarray(VIR_NET_MESSAGE_LEN_BYTES + VIR_NET_MESSAGE_HEADER_BYTES),
      });
    }
    return out;
  }

  /** Bytes received but not yet part of a complete packet. */
  get pendingBytes(): number {
    return this.buffered;
  }

  private peekLength(): number {
    const first = this.chunks[0]!;
    if (first.length >= 4) return first.readUInt32BE(0);
    const head = Buffer.concat(this.chunks).subarray(0, 4);
    return head.readUInt32BE(0);
  }

  private take(n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      this.buffered -= n;
      return out;
    }
    const all = Buffer.concat(this.chunks);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.buffered -= n;
    return out;
  }
}
