import { randomBytes } from 'node:crypto';
import type { Backend } from './backend/backend.js';
import type { IndexEntry } from './chunk-index/entry.js';
import {
  BlobFormatError,
  PACK_HEADER_BYTES,
  packNameOf,
  RECORD_OVERHEAD,
  TRAILER_OVERHEAD,
  type BlobCodec,
  type RecordKind,
  type RecordMeta,
} from './codec.js';
import { BackendError } from './errors.js';

/**
 * Packs (docs/format.md "Packs"; design §1.2–§1.3): immutable objects of many sealed records,
 * `header 48 ‖ records ‖ sealed trailer ‖ footer 16`, named by BLAKE3-128 of all their bytes.
 * The trailer lists every record (id, offset, length, plaintext length, kind, codec), so the chunk
 * index can be rebuilt from packs alone. Data packs hold disk chunks (kind 1) and file chunks
 * (kind 2); meta packs hold disk index pages (3 leaf, 4 inner).
 */
export type PackKind = 'data' | 'meta';

export const PACK_MAGIC = 0x564d5650; // "VMVP"
export const FOOTER_MAGIC = 0x564d5654; // "VMVT"
export const PACK_VERSION = 2;
export const PACK_FOOTER_BYTES = 16;
export const TRAILER_ENTRY_BYTES = 48;
/** Trailer plaintext: count u32, reserved u32, then the entries. */
const TRAILER_HEAD_BYTES = 8;
export const MAX_PACK_RECORDS = 65536;
/** A pack object larger than this is damage: never read. */
export const MAX_PACK_BYTES = 128 * 1024 * 1024;
/** The first ranged read of a pack's tail (trailer and footer). */
export const TRAILER_READ_BYTES = 65536;
const MAX_TRAILER_PLAIN = TRAILER_HEAD_BYTES + TRAILER_ENTRY_BYTES * MAX_PACK_RECORDS;

const KIND_BYTE: Record<PackKind, number> = { data: 1, meta: 2 };
const NAME_RE = /^(data|meta)\/([0-9a-f]{2})\/([0-9a-f]{32})$/;

/** data/<hh>/<32 hex> or meta/<hh>/<32 hex>. */
export function packKeyOf(kind: PackKind, name: Buffer): string {
  if (name.length !== 16) throw new RangeError(`a pack name is 16 bytes, not ${name.length}`);
  const hex = name.toString('hex');
  return `${kind}/${hex.slice(0, 2)}/${hex}`;
}

/** The kind and name of a pack key, or undefined for any other key. */
export function parsePackKey(key: string): { kind: PackKind; name: Buffer } | undefined {
  const m = NAME_RE.exec(key);
  if (!m || m[3]!.slice(0, 2) !== m[2]) return undefined;
  return { kind: m[1] as PackKind, name: Buffer.from(m[3]!, 'hex') };
}

/** Whether a record kind belongs in a pack kind. */
export function kindFits(pack: PackKind, kind: number): kind is RecordKind {
  return pack === 'data' ? kind === 1 || kind === 2 : kind === 3 || kind === 4;
}

export interface PackHeader {
  kind: PackKind;
  encrypted: boolean;
  salt: Buffer;
  sessionId: Buffer;
}

export interface SealedPack {
  kind: PackKind;
  /** 16 B: BLAKE3-128 of the pack's bytes. */
  name: Buffer;
  key: string;
  /** header, records…, trailer, footer: one create-if-absent of the gather list. */
  parts: Buffer[];
  sizeBytes: number;
  /** One per record, in record order. */
  entries: IndexEntry[];
}

/**
 * Assembles one pack as a gather list (records are not copied). `add` returns a record's offset;
 * `finish` seals the trailer, appends the footer and names the pack.
 */
export class PackWriter {
  private readonly header: Buffer;
  private readonly parts: Buffer[] = [];
  private readonly metas: Array<{ meta: RecordMeta; offset: number; length: number }> = [];
  private size = PACK_HEADER_BYTES;
  private done = false;

  constructor(
    private readonly codec: BlobCodec,
    readonly kind: PackKind,
    sessionId: Buffer,
  ) {
    if (sessionId.length !== 16) throw new RangeError(`a session id is 16 bytes, not ${sessionId.length}`);
    const h = Buffer.alloc(PACK_HEADER_BYTES);
    h.writeUInt32BE(PACK_MAGIC, 0);
    h[4] = PACK_VERSION;
    h[5] = KIND_BYTE[kind];
    h[6] = codec.encrypted ? 1 : 0;
    randomBytes(16).copy(h, 8);
    Buffer.from(sessionId).copy(h, 24);
    this.header = h;
    this.parts.push(h);
  }

  /** Header and records so far (not the trailer and footer). */
  get sizeBytes(): number {
    return this.size;
  }

  get count(): number {
    return this.metas.length;
  }

  add(record: Buffer, meta: RecordMeta): number {
    if (this.done) throw new Error('pack already finished');
    if (!kindFits(this.kind, meta.kind))
      throw new RangeError(`a record of kind ${meta.kind} does not belong in a ${this.kind} pack`);
    if (this.metas.length >= MAX_PACK_RECORDS)
      throw new RangeError(`a pack holds at most ${MAX_PACK_RECORDS} records`);
    if (record.length < RECORD_OVERHEAD) throw new RangeError('a record is at least 28 bytes');
    if (this.size + record.length > MAX_PACK_BYTES - 4 * 1024 * 1024)
      throw new RangeError('the pack is full');
    const offset = this.size;
    this.parts.push(record);
    this.metas.push({ meta, offset, length: record.length });
    this.size += record.length;
    return offset;
  }

  finish(): SealedPack {
    if (this.done) throw new Error('pack already finished');
    this.done = true;
    const plain = Buffer.alloc(TRAILER_HEAD_BYTES + TRAILER_ENTRY_BYTES * this.metas.length);
    plain.writeUInt32BE(this.metas.length, 0);
    this.metas.forEach(({ meta, offset, length }, i) => {
      const at = TRAILER_HEAD_BYTES + i * TRAILER_ENTRY_BYTES;
      meta.id.copy(plain, at);
      plain.writeUInt32BE(offset, at + 32);
      plain.writeUInt32BE(length, at + 36);
      plain.writeUInt32BE(meta.plaintextBytes, at + 40);
      plain[at + 44] = meta.kind;
      plain[at + 45] = meta.codec;
    });
    const trailer = this.codec.sealTrailer(this.header, plain);
    const footer = Buffer.alloc(PACK_FOOTER_BYTES);
    footer.writeBigUInt64BE(BigInt(this.size), 0);
    footer.writeUInt32BE(FOOTER_MAGIC, 8);
    footer[12] = PACK_VERSION;
    this.parts.push(trailer, footer);
    const name = packNameOf(this.parts);
    const sizeBytes = this.size + trailer.length + footer.length;
    const entries: IndexEntry[] = this.metas.map(({ meta, offset, length }) => ({
      id: meta.id,
      pack: name,
      offset,
      length,
      plaintextBytes: meta.plaintextBytes,
      kind: meta.kind,
      codec: meta.codec,
    }));
    return { kind: this.kind, name, key: packKeyOf(this.kind, name), parts: this.parts, sizeBytes, entries };
  }
}

/** A pack header's fields; damage → BlobFormatError. */
export function parsePackHeader(header: Buffer, codec: BlobCodec): PackHeader {
  if (header.length !== PACK_HEADER_BYTES) throw new BlobFormatError('pack header too short');
  if (header.readUInt32BE(0) !== PACK_MAGIC) throw new BlobFormatError('not a pack (bad magic)');
  if (header[4] !== PACK_VERSION) throw new BlobFormatError(`pack version ${header[4]} is not 2`);
  const kind = header[5] === 1 ? 'data' : header[5] === 2 ? 'meta' : undefined;
  if (kind === undefined) throw new BlobFormatError(`unknown pack kind ${header[5]}`);
  const flags = header[6]!;
  if ((flags & ~1) !== 0 || header[7] !== 0 || !isZero(header.subarray(40, 48)))
    throw new BlobFormatError('pack header has reserved bits set');
  const encrypted = (flags & 1) === 1;
  if (encrypted !== codec.encrypted)
    throw new BlobFormatError(
      encrypted
        ? 'pack is encrypted in an unencrypted repository'
        : 'pack is not encrypted in an encrypted repository',
    );
  return { kind, encrypted, salt: header.subarray(8, 24), sessionId: header.subarray(24, 40) };
}

function isZero(b: Uint8Array): boolean {
  for (const x of b) if (x !== 0) return false;
  return true;
}

/** The trailer's offset from a footer; damage → BlobFormatError. */
function parseFooter(footer: Buffer, sizeBytes: number): number {
  if (footer.readUInt32BE(8) !== FOOTER_MAGIC) throw new BlobFormatError('pack footer damaged (bad magic)');
  if (footer[12] !== PACK_VERSION || footer[13] !== 0 || footer[14] !== 0 || footer[15] !== 0)
    throw new BlobFormatError('pack footer damaged (version or reserved bytes)');
  const t = Number(footer.readBigUInt64BE(0));
  if (t < PACK_HEADER_BYTES || t + TRAILER_OVERHEAD + TRAILER_HEAD_BYTES + PACK_FOOTER_BYTES > sizeBytes)
    throw new BlobFormatError(`pack trailer offset ${t} is out of range for a pack of ${sizeBytes} bytes`);
  return t;
}

/** The entries of an opened trailer, checked against the pack's layout. */
function parseTrailer(plain: Buffer, name: Buffer, kind: PackKind, trailerAt: number): IndexEntry[] {
  if (plain.length < TRAILER_HEAD_BYTES) throw new BlobFormatError('pack trailer too short');
  const n = plain.readUInt32BE(0);
  if (n > MAX_PACK_RECORDS || plain.readUInt32BE(4) !== 0)
    throw new BlobFormatError(`pack trailer lists ${n} records (at most ${MAX_PACK_RECORDS})`);
  if (plain.length !== TRAILER_HEAD_BYTES + n * TRAILER_ENTRY_BYTES)
    throw new BlobFormatError(`pack trailer of ${plain.length} bytes does not fit its ${n} entries`);
  const entries: IndexEntry[] = [];
  let expect = PACK_HEADER_BYTES;
  for (let i = 0; i < n; i++) {
    const at = TRAILER_HEAD_BYTES + i * TRAILER_ENTRY_BYTES;
    const offset = plain.readUInt32BE(at + 32);
    const length = plain.readUInt32BE(at + 36);
    const plaintextBytes = plain.readUInt32BE(at + 40);
    const k = plain[at + 44]!;
    const codec = plain[at + 45]!;
    if (offset !== expect)
      throw new BlobFormatError(`pack record ${i} at ${offset}, expected at ${expect} (gap or overlap)`);
    if (length < RECORD_OVERHEAD)
      throw new BlobFormatError(`pack record ${i} is ${length} bytes, less than a record`);
    if (!kindFits(kind, k)) throw new BlobFormatError(`pack record ${i} of kind ${k} in a ${kind} pack`);
    if (codec !== 0 && codec !== 1) throw new BlobFormatError(`pack record ${i} has unknown codec ${codec}`);
    if (plain[at + 46] !== 0 || plain[at + 47] !== 0)
      throw new BlobFormatError(`pack record ${i}: reserved bytes set`);
    expect = offset + length;
    entries.push({
      id: Buffer.from(plain.subarray(at, at + 32)),
      pack: name,
      offset,
      length,
      plaintextBytes,
      kind: k,
      codec,
    });
  }
  if (expect !== trailerAt)
    throw new BlobFormatError(`pack records end at ${expect}, its trailer starts at ${trailerAt}`);
  return entries;
}

function keyOrDamage(key: string): { kind: PackKind; name: Buffer } {
  const k = parsePackKey(key);
  if (!k) throw new BlobFormatError(`${key} is not a pack key`);
  return k;
}

/**
 * Reads and checks a pack's trailer: the tail (≤ 64 KiB) in one ranged read, a second only when
 * the trailer starts earlier, and the header. Damage → BlobFormatError; a missing pack → the
 * backend's not-found error.
 */
export async function readPackTrailer(
  backend: Backend,
  key: string,
  codec: BlobCodec,
  sizeBytes?: number,
): Promise<{ header: PackHeader; entries: IndexEntry[]; sizeBytes: number }> {
  const { kind, name } = keyOrDamage(key);
  let size = sizeBytes;
  if (size === undefined) {
    const st = await backend.stat(key);
    if (st === undefined) throw new BackendError('not-found', `pack ${key} is missing`);
    size = st.sizeBytes;
  }
  if (size > MAX_PACK_BYTES)
    throw new BlobFormatError(`pack of ${size} bytes, more than any pack (${MAX_PACK_BYTES})`);
  if (size < PACK_HEADER_BYTES + TRAILER_OVERHEAD + TRAILER_HEAD_BYTES + PACK_FOOTER_BYTES)
    throw new BlobFormatError(`pack of ${size} bytes is too short`);
  const read = async (offset: number, length: number): Promise<Buffer> => {
    const b = Buffer.alloc(length);
    try {
      await backend.getRangeInto(key, offset, b);
    } catch (err) {
      if (err instanceof BackendError && err.kind === 'range')
        throw new BlobFormatError(`pack is shorter than ${size} bytes`);
      throw err;
    }
    return b;
  };
  const tailLen = Math.min(size, TRAILER_READ_BYTES);
  const tail = await read(size - tailLen, tailLen);
  const trailerAt = parseFooter(tail.subarray(tailLen - PACK_FOOTER_BYTES), size);
  const header = size === tailLen ? tail.subarray(0, PACK_HEADER_BYTES) : await read(0, PACK_HEADER_BYTES);
  const h = parsePackHeader(Buffer.from(header), codec);
  if (h.kind !== kind) throw new BlobFormatError(`a ${h.kind} pack under ${kind}/`);
  const sealedLen = size - PACK_FOOTER_BYTES - trailerAt;
  if (sealedLen - TRAILER_OVERHEAD > MAX_TRAILER_PLAIN)
    throw new BlobFormatError('pack trailer is larger than any trailer');
  const sealed =
    trailerAt >= size - tailLen
      ? tail.subarray(trailerAt - (size - tailLen), tailLen - PACK_FOOTER_BYTES)
      : await read(trailerAt, sealedLen);
  const plain = codec.openTrailer(Buffer.from(header), sealed, MAX_TRAILER_PLAIN);
  return { header: h, entries: parseTrailer(plain, name, kind, trailerAt), sizeBytes: size };
}

/** `readPackTrailer`'s checks on a whole pack in memory, plus its name (BLAKE3-128 of the bytes). */
export function parsePack(
  bytes: Buffer,
  key: string,
  codec: BlobCodec,
  opts: { checkName?: boolean } = {},
): { entries: IndexEntry[]; header: PackHeader } {
  const { kind, name } = keyOrDamage(key);
  const size = bytes.length;
  if (size > MAX_PACK_BYTES) throw new BlobFormatError(`pack of ${size} bytes, more than any pack`);
  if (size < PACK_HEADER_BYTES + TRAILER_OVERHEAD + TRAILER_HEAD_BYTES + PACK_FOOTER_BYTES)
    throw new BlobFormatError(`pack of ${size} bytes is too short`);
  if ((opts.checkName ?? true) && !nameMatches(bytes, name))
    throw new BlobFormatError('pack content does not match its name (BLAKE3 mismatch)');
  const trailerAt = parseFooter(bytes.subarray(size - PACK_FOOTER_BYTES), size);
  const header = parsePackHeader(bytes.subarray(0, PACK_HEADER_BYTES), codec);
  if (header.kind !== kind) throw new BlobFormatError(`a ${header.kind} pack under ${kind}/`);
  const sealed = bytes.subarray(trailerAt, size - PACK_FOOTER_BYTES);
  const plain = codec.openTrailer(bytes.subarray(0, PACK_HEADER_BYTES), sealed, MAX_TRAILER_PLAIN);
  return { entries: parseTrailer(plain, name, kind, trailerAt), header };
}

export interface PackProblem {
  /** Record offset, or '*' for the pack as a whole. */
  offset: number | '*';
  id?: Buffer;
  reason: string;
}

function nameMatches(bytes: Buffer, name: Buffer): boolean {
  return packNameOf([bytes]).equals(name);
}

/**
 * check --read-data: the pack parsed and every record opened; problems collected, not thrown.
 * A name mismatch that damaged records explain (every byte of a pack is under a seal: header
 * and trailer by the trailer's, records by their own) yields those records' problems only, so
 * `check --repair` voids just them; one that no record explains is the pack's ('*').
 */
export function verifyPack(
  bytes: Buffer,
  key: string,
  codec: BlobCodec,
  maxPlaintextBytes: (kind: RecordKind) => number,
): { entries: IndexEntry[]; problems: PackProblem[] } {
  let entries: IndexEntry[];
  try {
    entries = parsePack(bytes, key, codec, { checkName: false }).entries;
  } catch (err) {
    if (!(err instanceof BlobFormatError)) throw err;
    return { entries: [], problems: [{ offset: '*', reason: err.message }] };
  }
  const problems: PackProblem[] = [];
  // One plaintext buffer for every record (opened, checked, dropped): no allocation per record.
  let scratch = Buffer.alloc(0);
  for (const e of entries) {
    try {
      const max = maxPlaintextBytes(e.kind);
      if (e.plaintextBytes > max)
        throw new BlobFormatError(
          `record plaintext is ${e.plaintextBytes} bytes, more than this kind holds (${max})`,
        );
      if (scratch.length < e.plaintextBytes) scratch = Buffer.allocUnsafe(Math.max(e.plaintextBytes, 65536));
      codec.openRecordInto(
        { kind: e.kind, codec: e.codec, plaintextBytes: e.plaintextBytes, id: e.id },
        bytes.subarray(e.offset, e.offset + e.length),
        scratch.subarray(0, e.plaintextBytes),
      );
    } catch (err) {
      problems.push({ offset: e.offset, id: e.id, reason: err instanceof Error ? err.message : String(err) });
    }
  }
  if (problems.length === 0 && !nameMatches(bytes, keyOrDamage(key).name))
    problems.push({ offset: '*', reason: 'pack content does not match its name (BLAKE3 mismatch)' });
  return { entries, problems };
}
