/**
 * Pure encoders and decoders for the fixed NBD wire structures (doc/proto.md). Nothing here touches
 * a socket: encoders return Buffers, decoders take Buffers and throw NbdProtocolError on anything
 * malformed. u64 fields are read as bigint and converted only after a safe-integer check.
 */
import { NbdProtocolError } from './errors.js';
import {
  IHAVEOPT,
  NBDMAGIC,
  NBD_INFO,
  NBD_MAX_STRING,
  NBD_REP_MAGIC,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_SIZE,
  NBD_STRUCTURED_REPLY_MAGIC,
} from './protocol.js';

/** A u64 from the wire as a number, or a protocol error when it is beyond 2^53. */
export function safeU64(buf: Buffer, at: number, what: string): number {
  const v = buf.readBigUInt64BE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new NbdProtocolError(`${what} ${v} is out of range`);
  return Number(v);
}

// ---- handshake ------------------------------------------------------------------------------

export function encodeGreeting(handshakeFlags: number): Buffer {
  const b = Buffer.allocUnsafe(NBD_SIZE.GREETING);
  b.writeBigUInt64BE(NBDMAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(handshakeFlags, 16);
  return b;
}

/** The server greeting's handshake flags; throws when it is not a newstyle NBD server. */
export function decodeGreeting(b: Buffer): number {
  if (b.length < NBD_SIZE.GREETING) throw new NbdProtocolError('short greeting');
  if (b.readBigUInt64BE(0) !== NBDMAGIC) throw new NbdProtocolError('not an NBD server (bad magic)');
  if (b.readBigUInt64BE(8) !== IHAVEOPT)
    throw new NbdProtocolError('the server does not speak the newstyle protocol (oldstyle server)');
  return b.readUInt16BE(16);
}

export function encodeU32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
}

export function encodeOption(opt: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.allocUnsafe(NBD_SIZE.OPTION_HEADER + data.length);
  b.writeBigUInt64BE(IHAVEOPT, 0);
  b.writeUInt32BE(opt, 8);
  b.writeUInt32BE(data.length, 12);
  data.copy(b, NBD_SIZE.OPTION_HEADER);
  return b;
}

export interface OptionHeader {
  option: number;
  length: number;
}

/** An option request header (server side); throws on a bad magic. */
export function decodeOptionHeader(b: Buffer): OptionHeader {
  if (b.readBigUInt64BE(0) !== IHAVEOPT) throw new NbdProtocolError('bad option magic');
  return { option: b.readUInt32BE(8), length: b.readUInt32BE(12) };
}

export function encodeOptionReply(opt: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.allocUnsafe(NBD_SIZE.OPTION_REPLY_HEADER + data.length);
  b.writeBigUInt64BE(NBD_REP_MAGIC, 0);
  b.writeUInt32BE(opt, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, NBD_SIZE.OPTION_REPLY_HEADER);
  return b;
}

export interface OptionReplyHeader {
  option: number;
  type: number;
  length: number;
}

export function decodeOptionReplyHeader(b: Buffer): OptionReplyHeader {
  if (b.readBigUInt64BE(0) !== NBD_REP_MAGIC) throw new NbdProtocolError('bad option reply magic');
  return { option: b.readUInt32BE(8), type: b.readUInt32BE(12), length: b.readUInt32BE(16) };
}

/** A length-prefixed UTF-8 string (u32 length, bytes). */
export function encodeString(s: string): Buffer {
  const n = Buffer.from(s, 'utf8');
  if (n.length > NBD_MAX_STRING) throw new RangeError(`NBD string longer than ${NBD_MAX_STRING} bytes`);
  const b = Buffer.allocUnsafe(4 + n.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  return b;
}

/** INFO / GO request data: export name, then the info types asked for. */
export function encodeInfoRequest(exportName: string, infos: readonly number[]): Buffer {
  const list = Buffer.allocUnsafe(2 + 2 * infos.length);
  list.writeUInt16BE(infos.length, 0);
  infos.forEach((t, i) => list.writeUInt16BE(t, 2 + 2 * i));
  return Buffer.concat([encodeString(exportName), list]);
}

/** LIST_META_CONTEXT / SET_META_CONTEXT request data: export name, then the queries. */
export function encodeMetaContextRequest(exportName: string, queries: readonly string[]): Buffer {
  return Buffer.concat([encodeString(exportName), encodeU32(queries.length), ...queries.map(encodeString)]);
}

/** Server side: INFO/GO data. Undefined when malformed. */
export function decodeInfoRequest(d: Buffer): { name: string; infos: number[] } | undefined {
  if (d.length < 6) return undefined;
  const nlen = d.readUInt32BE(0);
  if (nlen > NBD_MAX_STRING || 4 + nlen + 2 > d.length) return undefined;
  const name = d.subarray(4, 4 + nlen).toString('utf8');
  const n = d.readUInt16BE(4 + nlen);
  if (4 + nlen + 2 + 2 * n !== d.length) return undefined;
  const infos: number[] = [];
  for (let i = 0; i < n; i++) infos.push(d.readUInt16BE(4 + nlen + 2 + 2 * i));
  return { name, infos };
}

/** Server side: LIST/SET_META_CONTEXT data. Undefined when malformed. */
export function decodeMetaContextRequest(d: Buffer): { name: string; queries: string[] } | undefined {
  if (d.length < 8) return undefined;
  const nlen = d.readUInt32BE(0);
  if (nlen > NBD_MAX_STRING || 4 + nlen + 4 > d.length) return undefined;
  const name = d.subarray(4, 4 + nlen).toString('utf8');
  let at = 4 + nlen;
  const n = d.readUInt32BE(at);
  at += 4;
  const queries: string[] = [];
  for (let i = 0; i < n; i++) {
    if (at + 4 > d.length) return undefined;
    const ql = d.readUInt32BE(at);
    at += 4;
    if (ql > NBD_MAX_STRING || at + ql > d.length) return undefined;
    queries.push(d.subarray(at, at + ql).toString('utf8'));
    at += ql;
  }
  return at === d.length ? { name, queries } : undefined;
}

/** What INFO replies say about an export. */
export interface ExportInfo {
  sizeBytes: number;
  transmissionFlags: number;
  blockSize?: { minimum: number; preferred: number; maximum: number };
  name?: string;
  description?: string;
}

/** Folds one NBD_REP_INFO payload into `into`; unknown info types are ignored (as the spec asks). */
export function decodeInfoReply(d: Buffer, into: Partial<ExportInfo>): void {
  if (d.length < 2) throw new NbdProtocolError('empty NBD_REP_INFO');
  const type = d.readUInt16BE(0);
  switch (type) {
    case NBD_INFO.NBD_INFO_EXPORT:
      if (d.length !== 12) throw new NbdProtocolError('NBD_INFO_EXPORT of the wrong length');
      into.sizeBytes = safeU64(d, 2, 'export size');
      into.transmissionFlags = d.readUInt16BE(10);
      return;
    case NBD_INFO.NBD_INFO_NAME:
      into.name = d.subarray(2).toString('utf8');
      return;
    case NBD_INFO.NBD_INFO_DESCRIPTION:
      into.description = d.subarray(2).toString('utf8');
      return;
    case NBD_INFO.NBD_INFO_BLOCK_SIZE:
      if (d.length !== 14) throw new NbdProtocolError('NBD_INFO_BLOCK_SIZE of the wrong length');
      into.blockSize = {
        minimum: d.readUInt32BE(2),
        preferred: d.readUInt32BE(6),
        maximum: d.readUInt32BE(10),
      };
      return;
    default:
      return;
  }
}

export function encodeInfoExport(sizeBytes: number, transmissionFlags: number): Buffer {
  const b = Buffer.allocUnsafe(12);
  b.writeUInt16BE(NBD_INFO.NBD_INFO_EXPORT, 0);
  b.writeBigUInt64BE(BigInt(sizeBytes), 2);
  b.writeUInt16BE(transmissionFlags, 10);
  return b;
}

export function encodeInfoBlockSize(minimum: number, preferred: number, maximum: number): Buffer {
  const b = Buffer.allocUnsafe(14);
  b.writeUInt16BE(NBD_INFO.NBD_INFO_BLOCK_SIZE, 0);
  b.writeUInt32BE(minimum, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(maximum, 10);
  return b;
}

export function encodeInfoString(type: number, s: string): Buffer {
  const t = Buffer.allocUnsafe(2);
  t.writeUInt16BE(type, 0);
  return Buffer.concat([t, Buffer.from(s, 'utf8')]);
}

/** NBD_REP_SERVER payload: u32 name length, name, description (rest). */
export function encodeRepServer(name: string, description: string): Buffer {
  return Buffer.concat([encodeString(name), Buffer.from(description, 'utf8')]);
}

export function decodeRepServer(d: Buffer): { name: string; description: string } {
  if (d.length < 4) throw new NbdProtocolError('short NBD_REP_SERVER');
  const n = d.readUInt32BE(0);
  if (4 + n > d.length) throw new NbdProtocolError('NBD_REP_SERVER name runs past its reply');
  return { name: d.subarray(4, 4 + n).toString('utf8'), description: d.subarray(4 + n).toString('utf8') };
}

/** NBD_REP_META_CONTEXT payload: u32 id, name. */
export function encodeRepMetaContext(id: number, name: string): Buffer {
  return Buffer.concat([encodeU32(id), Buffer.from(name, 'utf8')]);
}

export function decodeRepMetaContext(d: Buffer): { id: number; name: string } {
  if (d.length < 4) throw new NbdProtocolError('short NBD_REP_META_CONTEXT');
  return { id: d.readUInt32BE(0), name: d.subarray(4).toString('utf8') };
}

/** The answer to NBD_OPT_EXPORT_NAME: size, flags, and 124 zeros unless NO_ZEROES was agreed. */
export function encodeExportNameReply(
  sizeBytes: number,
  transmissionFlags: number,
  noZeroes: boolean,
): Buffer {
  const b = Buffer.alloc(noZeroes ? NBD_SIZE.EXPORT_NAME_REPLY_NO_ZEROES : NBD_SIZE.EXPORT_NAME_REPLY);
  b.writeBigUInt64BE(BigInt(sizeBytes), 0);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

// ---- transmission ---------------------------------------------------------------------------

export interface RequestHeader {
  flags: number;
  type: number;
  cookie: bigint;
  /** As sent (u64); the server range-checks it before any use. */
  offset: bigint;
  length: number;
}

/** Writes a 28-byte request header at `at` of `b` (so a WRITE's header and payload can share a buffer). */
export function writeRequestHeader(
  b: Buffer,
  at: number,
  flags: number,
  type: number,
  cookie: bigint,
  offset: number,
  length: number,
): void {
  b.writeUInt32BE(NBD_REQUEST_MAGIC, at);
  b.writeUInt16BE(flags, at + 4);
  b.writeUInt16BE(type, at + 6);
  b.writeBigUInt64BE(cookie, at + 8);
  b.writeBigUInt64BE(BigInt(offset), at + 16);
  b.writeUInt32BE(length, at + 24);
}

export function encodeRequest(
  flags: number,
  type: number,
  cookie: bigint,
  offset: number,
  length: number,
): Buffer {
  const b = Buffer.allocUnsafe(NBD_SIZE.REQUEST_HEADER);
  writeRequestHeader(b, 0, flags, type, cookie, offset, length);
  return b;
}

export function decodeRequestHeader(b: Buffer, at = 0): RequestHeader {
  if (b.readUInt32BE(at) !== NBD_REQUEST_MAGIC) throw new NbdProtocolError('bad request magic');
  return {
    flags: b.readUInt16BE(at + 4),
    type: b.readUInt16BE(at + 6),
    cookie: b.readBigUInt64BE(at + 8),
    offset: b.readBigUInt64BE(at + 16),
    length: b.readUInt32BE(at + 24),
  };
}

export function encodeSimpleReply(cookie: bigint, error: number): Buffer {
  const b = Buffer.allocUnsafe(NBD_SIZE.SIMPLE_REPLY_HEADER);
  b.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  b.writeBigUInt64BE(cookie, 8);
  return b;
}

export function writeChunkHeader(
  b: Buffer,
  at: number,
  cookie: bigint,
  flags: number,
  type: number,
  payloadLength: number,
): void {
  b.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, at);
  b.writeUInt16BE(flags, at + 4);
  b.writeUInt16BE(type, at + 6);
  b.writeBigUInt64BE(cookie, at + 8);
  b.writeUInt32BE(payloadLength, at + 16);
}

export function encodeChunkHeader(
  cookie: bigint,
  flags: number,
  type: number,
  payloadLength: number,
): Buffer {
  const b = Buffer.allocUnsafe(NBD_SIZE.STRUCTURED_REPLY_HEADER);
  writeChunkHeader(b, 0, cookie, flags, type, payloadLength);
  return b;
}
