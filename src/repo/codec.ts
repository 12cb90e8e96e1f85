import { createCipheriv, createDecipheriv, randomFillSync } from 'node:crypto';
import { blake3, Blake3Hasher } from '@napi-rs/blake-hash';
import { scratchBuffer, zstdBound, zstdCompressTo, zstdDecompressInto, BlobFormatError } from './blob.js';
import type { ChunkId } from './chunk-id.js';
import type { RepoConfig } from './config.js';
import { Codec, MAX_ZSTD_LEVEL, METADATA_ZSTD_LEVEL, MIN_ZSTD_LEVEL, ZSTD_MAX_EXPANSION } from './format.js';

/** The bytes of a keyed id function's key (BLAKE3's key is 32 bytes). */
export const ID_KEY_BYTES = 32;
/** The bytes of the encryption key (AES-256). */
export const ENC_KEY_BYTES = 32;

// ---- format 2 (docs/format-2-design.md §1.3, §1.4, §6) ------------------------------------------

/** What a record in a pack holds: 1 disk chunk, 2 file chunk, 3 leaf page, 4 inner page. */
export type RecordKind = 1 | 2 | 3 | 4;

/** What opens a record: kept in the pack trailer and the chunk index, never beside the record. */
export interface RecordMeta {
  kind: RecordKind;
  /** 0 stored raw, 1 zstd. */
  codec: 0 | 1;
  plaintextBytes: number;
  /** 32 B: the codec's id of the plaintext. */
  id: Buffer;
}

/** A record's bytes beyond its payload: nonce 12 ‖ payload ‖ tag 16. */
export const RECORD_OVERHEAD = 28;
/** A sealed trailer's bytes beyond its plaintext (nonce and tag, as a record). */
export const TRAILER_OVERHEAD = RECORD_OVERHEAD;
export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;
/** The 48-byte pack header a trailer is bound to. */
export const PACK_HEADER_BYTES = 48;
/** Where the pack salt lies in the pack header (bytes 8..23). */
const PACK_SALT_AT = 8;
const PACK_SALT_BYTES = 16;

/** Blob v2 (whole objects): magic "VMVB", version 2, header of 44 bytes, tag of 16. */
export const OBJECT_MAGIC = 0x564d5642;
export const OBJECT_VERSION = 2;
export const OBJECT_HEADER_BYTES = 44;
export const OBJECT_BINDER_BYTES = 16;
/** The most plaintext one object may hold (its u32 field could say more; no writer does). */
export const MAX_OBJECT_PLAINTEXT_BYTES = 16 * 1024 * 1024;
/** Flags bit 0 of objects (and pack headers): encrypted. */
export const FLAG_ENCRYPTED = 0x01;

/** What a whole object is; its number is byte 7 of the blob v2 header. */
export type ObjectKindV2 = 'manifest' | 'index-section' | 'void' | 'session' | 'gc' | 'status';
const OBJECT_KIND_NUMBER: Record<ObjectKindV2, number> = {
  manifest: 1,
  'index-section': 2,
  void: 3,
  session: 4,
  gc: 5,
  status: 6,
};
const OBJECT_KIND_NAME = new Map<number, ObjectKindV2>(
  Object.entries(OBJECT_KIND_NUMBER).map(([k, v]) => [v, k as ObjectKindV2]),
);

const RECORD_AAD_MAGIC = Buffer.from('VMVR');
const TRAILER_AAD_MAGIC = Buffer.from('VMVT');
const RECORD_AAD_BYTES = 43;
const U32_MAX = 0xffff_ffff;

/** The contexts of every key derived from encKey: keyed BLAKE3(encKey, context ‖ data). */
const KEY_CONTEXT = {
  record: Buffer.from('vmvault-v2 record'),
  object: Buffer.from('vmvault-v2 object'),
  trailer: Buffer.from('vmvault-v2 trailer'),
} as const;

// Per-thread state (the codec is synchronous: no call interleaves with another on a thread).
/** Unkeyed BLAKE3 for the tags of unencrypted units (reset after each use). */
const tagHasher = new Blake3Hasher();
/** The AAD of the record being sealed or opened. */
const recordAad = Buffer.alloc(RECORD_AAD_BYTES);
/** Random nonces, drawn 12 bytes at a time from a pool refilled by randomFillSync. */
const noncePool = Buffer.alloc(NONCE_BYTES * 256);
let nonceAt = noncePool.length;

function nextNonce(dest: Buffer, at: number): void {
  if (nonceAt + NONCE_BYTES > noncePool.length) {
    randomFillSync(noncePool);
    nonceAt = 0;
  }
  noncePool.copy(dest, at, nonceAt, nonceAt + NONCE_BYTES);
  // A nonce is used once: wipe it from the pool.
  noncePool.fill(0, nonceAt, nonceAt + NONCE_BYTES);
  nonceAt += NONCE_BYTES;
}

/** BLAKE3-128 of `parts` concatenated, into `dest` at `at`. */
function tagOf(parts: readonly Uint8Array[], dest?: Buffer, at = 0): Buffer {
  for (const p of parts) tagHasher.update(p);
  const digest = tagHasher.digestBuffer();
  tagHasher.reset();
  if (dest) {
    digest.copy(dest, at, 0, TAG_BYTES);
    return dest;
  }
  return digest.subarray(0, TAG_BYTES);
}

function asBuffer(u: Uint8Array): Buffer {
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

/** Constant-time enough for tags: Buffer.compare on 16 bytes (a tag is no secret once stored). */
function tagsEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0;
}

function isZero(b: Uint8Array): boolean {
  for (const x of b) if (x !== 0) return false;
  return true;
}

function writeRecordAad(kind: RecordKind, codec: 0 | 1, plaintextBytes: number, id: Uint8Array): Buffer {
  RECORD_AAD_MAGIC.copy(recordAad, 0);
  recordAad[4] = 2;
  recordAad[5] = kind;
  recordAad[6] = codec;
  recordAad.writeUInt32BE(plaintextBytes, 7);
  recordAad.set(id, 11);
  return recordAad;
}

function isRecordKind(k: unknown): k is RecordKind {
  return k === 1 || k === 2 || k === 3 || k === 4;
}

/** AES-256-GCM of `src` under `key`/`nonce`/`aad` into `dest` at `at`; the tag follows it. */
function gcmSealInto(
  key: Buffer,
  nonce: Uint8Array,
  aad: Uint8Array,
  src: Uint8Array,
  dest: Buffer,
  at: number,
): void {
  const cipher = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG_BYTES });
  cipher.setAAD(aad);
  const ct = cipher.update(src);
  const rest = cipher.final();
  ct.copy(dest, at);
  rest.copy(dest, at + ct.length);
  cipher.getAuthTag().copy(dest, at + src.length);
}

/** The plaintext of an AES-256-GCM ciphertext; a wrong key, nonce, AAD, tag or byte → BlobFormatError. */
function gcmOpen(
  key: Buffer,
  nonce: Uint8Array,
  aad: Uint8Array,
  ct: Uint8Array,
  tag: Uint8Array,
  what: string,
): Buffer {
  const decipher = createDecipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG_BYTES });
  decipher.setAAD(aad);
  decipher.setAuthTag(tag);
  const out = decipher.update(ct);
  try {
    decipher.final();
  } catch {
    throw new BlobFormatError(`${what} does not authenticate (damaged, or moved from another place)`);
  }
  return out;
}

/**
 * Everything a `BlobCodec` is built from, as plain JSON: the chunk store sends it to each worker
 * thread once, at start (workerData), so every thread encodes, decodes and hashes alike.
 */
export interface CodecSpec {
  /** zstd levels (1..19, -7..-1 fast; 0 = stored raw) per kind of object. */
  compression: { chunk: number; metadata: number };
  /**
   * The id function of chunks and objects: `blake3-256` (unkeyed), or keyed BLAKE3-256 with a
   * 32-byte key (hex), so that nobody without the key can test for a known block.
   */
  id: { fn: 'blake3-256' } | { fn: 'blake3-256-keyed'; key: string };
  /**
   * Encryption: AES-256-GCM under keys derived from `key` (encKey, 64 hex). Needs a
   * keyed id function: an unkeyed id of an encrypted chunk would tell anyone a known block is there.
   */
  enc?: { key: string };
}

export interface CodecKeys {
  /** A 32-byte key for chunk and object ids (keyed BLAKE3); none: unkeyed BLAKE3-256. */
  idKey?: Buffer;
  /** A 32-byte encryption key (needs idKey): every record, trailer and object is AES-256-GCM. */
  encKey?: Buffer;
}

/**
 * The one place that seals, opens and hashes repository objects (docs/architecture.md): built
 * from the repository config and its unlocked keys (compression, id function, encryption key),
 * pure and synchronous, one instance per thread.
 */
export class BlobCodec {
  readonly spec: CodecSpec;
  /** Every record, trailer and object is AES-256-GCM (the spec has `enc`). */
  readonly encrypted: boolean;
  private readonly hasher: Blake3Hasher | undefined;
  /** Keyed BLAKE3 with encKey: derives the key of each record, trailer and object. */
  private readonly deriver: Blake3Hasher | undefined;

  private constructor(spec: CodecSpec) {
    this.spec = spec;
    if (spec.id.fn === 'blake3-256-keyed') {
      this.hasher = Blake3Hasher.newKeyed(hexKey(spec.id.key, ID_KEY_BYTES, 'an id key'));
    } else if (spec.id.fn !== 'blake3-256')
      throw new RangeError(`unknown id function ${String((spec.id as { fn: unknown }).fn)}`);
    if (spec.enc !== undefined) {
      if (this.hasher === undefined) throw new RangeError('an encrypted codec needs a keyed id function');
      this.deriver = Blake3Hasher.newKeyed(hexKey(spec.enc.key, ENC_KEY_BYTES, 'an encryption key'));
    }
    this.encrypted = this.deriver !== undefined;
    for (const level of [spec.compression.chunk, spec.compression.metadata])
      if (!Number.isInteger(level) || level < MIN_ZSTD_LEVEL || level > MAX_ZSTD_LEVEL)
        throw new RangeError(`invalid zstd level ${level}`);
  }

  /** The codec of a repository: its config's compression, and its keys (none when unencrypted). */
  static fromConfig(config: Pick<RepoConfig, 'compression' | 'chunkId'>, keys: CodecKeys = {}): BlobCodec {
    if (config.chunkId !== 'blake3-256' && config.chunkId !== 'blake3-256-keyed')
      throw new RangeError(`unknown id function ${String(config.chunkId)}`);
    if ((config.chunkId === 'blake3-256-keyed') !== (keys.idKey !== undefined))
      throw new RangeError(`chunk id function ${String(config.chunkId)} does not match the keys given`);
    return BlobCodec.fromSpec(
      codecSpec(config.compression.codec === 'none' ? 0 : config.compression.level, keys),
    );
  }

  /** Builds a codec from a spec (e.g. the one a worker thread received); validates it. */
  static fromSpec(spec: CodecSpec): BlobCodec {
    return new BlobCodec({
      compression: { chunk: spec.compression.chunk, metadata: spec.compression.metadata },
      id: spec.id.fn === 'blake3-256-keyed' ? { fn: spec.id.fn, key: spec.id.key } : { fn: spec.id.fn },
      ...(spec.enc === undefined ? {} : { enc: { key: spec.enc.key } }),
    });
  }

  /**
   * Whether a chunk record this codec sealed is one `other` could have sealed: the same id
   * function, the same encryption key (or none on both) and the same chunk compression level.
   * Then a record moves between the two repositories verbatim (sync), and opens there as here.
   */
  sealsLike(other: BlobCodec): boolean {
    const a = this.spec;
    const b = other.spec;
    const idKey = (s: CodecSpec): string => (s.id.fn === 'blake3-256-keyed' ? s.id.key : '');
    return (
      a.id.fn === b.id.fn &&
      idKey(a) === idKey(b) &&
      (a.enc?.key ?? '') === (b.enc?.key ?? '') &&
      a.compression.chunk === b.compression.chunk
    );
  }

  /** The id of a chunk's plaintext (32 bytes). */
  chunkIdBytes(plaintext: Uint8Array): Buffer {
    const h = this.hasher;
    if (h === undefined) return blake3(plaintext);
    const digest = h.update(plaintext).digestBuffer();
    h.reset();
    return digest;
  }

  /** The id of a chunk's plaintext, as 64 lowercase hex digits. */
  chunkId(plaintext: Uint8Array): ChunkId {
    return this.chunkIdBytes(plaintext).toString('hex') as ChunkId;
  }

  /**
   * The id (and name) of a disk index or manifest from its plaintext. The same function as chunk
   * ids: objects and chunks live under different prefixes, so sharing it costs nothing.
   */
  objectId(plaintext: Uint8Array): string {
    return this.chunkIdBytes(plaintext).toString('hex');
  }

  /** Whether `plaintext` is the content of chunk or object `id` (hex). */
  verify(plaintext: Uint8Array, id: string): boolean {
    return this.chunkIdBytes(plaintext).toString('hex') === id;
  }

  // ---- format 2: records, trailers, objects ---------------------------------------------------

  /** keyed BLAKE3(encKey, context ‖ data): the AES key of one record, trailer or object. */
  private deriveKey(context: Buffer, data: Uint8Array): Buffer {
    const d = this.deriver;
    if (d === undefined) throw new Error('deriveKey on an unencrypted codec');
    const key = d.update(context).update(data).digestBuffer();
    d.reset();
    return key;
  }

  /**
   * Seals one record (design §1.3): nonce 12 ‖ payload ‖ tag 16. The payload is zstd at the chunk
   * level (kinds 1 and 2) or the metadata level (pages), or the plaintext itself when zstd saves
   * less than 1/64. `id` is the caller's id of the plaintext (`chunkIdBytes`), bound through the
   * AAD. The record owns its ArrayBuffer (transferable between threads).
   */
  sealRecord(kind: RecordKind, id: Buffer, plaintext: Uint8Array): { record: Buffer; meta: RecordMeta } {
    return this.sealRecordWith(kind, id, plaintext, (n) => Buffer.from(new ArrayBuffer(n)));
  }

  /**
   * `sealRecord` into `out` (from its start): the record is `out.subarray(0, length)`. `out` must
   * hold at least `recordBound(plaintext.length)` bytes (RangeError otherwise). For callers that
   * pack many records into one reused buffer (no allocation per record).
   */
  sealRecordInto(
    kind: RecordKind,
    id: Buffer,
    plaintext: Uint8Array,
    out: Buffer,
  ): { record: Buffer; meta: RecordMeta } {
    if (out.length < recordBound(plaintext.length))
      throw new RangeError(
        `a record of ${plaintext.length} bytes needs ${recordBound(plaintext.length)} bytes`,
      );
    return this.sealRecordWith(kind, id, plaintext, (n) => out.subarray(0, n));
  }

  private sealRecordWith(
    kind: RecordKind,
    id: Buffer,
    plaintext: Uint8Array,
    alloc: (bytes: number) => Buffer,
  ): { record: Buffer; meta: RecordMeta } {
    if (!isRecordKind(kind)) throw new RangeError(`unknown record kind ${String(kind)}`);
    if (id.length !== 32) throw new RangeError(`a record id is 32 bytes, not ${id.length}`);
    if (plaintext.length > U32_MAX) throw new RangeError(`a record holds at most ${U32_MAX} bytes`);
    const level = kind <= 2 ? this.spec.compression.chunk : this.spec.compression.metadata;
    const { codec, payload } = compressed(plaintext, level);
    const n = payload.length;
    const record = alloc(RECORD_OVERHEAD + n);
    if (this.deriver === undefined) record.fill(0, 0, NONCE_BYTES); // a reused buffer: zero nonce
    const aad = writeRecordAad(kind, codec, plaintext.length, id);
    this.sealUnit(record, 0, NONCE_BYTES, aad, payload, KEY_CONTEXT.record, id);
    return { record, meta: { kind, codec, plaintextBytes: plaintext.length, id: Buffer.from(id) } };
  }

  /**
   * Opens a record: checks `meta` (plaintext bound before anything is allocated), the tag (GCM
   * when encrypted) against the AAD of `meta`, decompresses, and checks that the codec's id of the
   * plaintext is `meta.id`. Any damage, and a record moved to another id, kind, codec or length:
   * BlobFormatError. The result may be a view of `record` (stored raw, unencrypted).
   */
  openRecord(meta: RecordMeta, record: Uint8Array, maxPlaintextBytes: number): Buffer {
    const payload = this.recordPayload(meta, record, maxPlaintextBytes);
    let plain: Buffer;
    if (meta.codec === 0) plain = payload;
    else {
      plain = Buffer.from(new ArrayBuffer(meta.plaintextBytes));
      zstdDecompressInto(plain, payload, meta.plaintextBytes);
    }
    this.checkRecordId(meta, plain);
    return plain;
  }

  /** `openRecord` into `dest` (reused memory); returns the plaintext length (≤ dest.length, else damage). */
  openRecordInto(meta: RecordMeta, record: Uint8Array, dest: Uint8Array): number {
    const payload = this.recordPayload(meta, record, dest.length);
    if (meta.codec === 0) dest.set(payload);
    else zstdDecompressInto(dest, payload, meta.plaintextBytes);
    const plain = dest.subarray(0, meta.plaintextBytes);
    this.checkRecordId(meta, plain);
    return meta.plaintextBytes;
  }

  /**
   * Checks a record's seal only (its bounds, then the tag or GCM over the payload and the AAD of
   * `meta`), without decompressing or hashing the plaintext: enough to copy it verbatim (prune's
   * repack), since the copy's every reader verifies it in full. Damage → BlobFormatError.
   */
  checkRecordSeal(meta: RecordMeta, record: Uint8Array, maxPlaintextBytes: number): void {
    this.recordPayload(meta, record, maxPlaintextBytes);
  }

  /** A record's payload (decrypted; still compressed when meta.codec is 1), authenticated. */
  private recordPayload(meta: RecordMeta, record: Uint8Array, maxPlaintextBytes: number): Buffer {
    const { kind, codec, plaintextBytes, id } = meta;
    if (!isRecordKind(kind)) throw new BlobFormatError(`unknown record kind ${String(kind)}`);
    if (codec !== 0 && codec !== 1) throw new BlobFormatError(`unknown record codec ${String(codec)}`);
    if (!Buffer.isBuffer(id) || id.length !== 32) throw new BlobFormatError('a record id is 32 bytes');
    if (!Number.isSafeInteger(plaintextBytes) || plaintextBytes < 0 || plaintextBytes > U32_MAX)
      throw new BlobFormatError(`record plaintext length ${String(plaintextBytes)} is out of range`);
    if (plaintextBytes > maxPlaintextBytes)
      throw new BlobFormatError(
        `record plaintext is ${plaintextBytes} bytes, more than this kind of record holds (${maxPlaintextBytes})`,
      );
    if (record.length < RECORD_OVERHEAD)
      throw new BlobFormatError(`record too short (${record.length} bytes)`);
    const n = record.length - RECORD_OVERHEAD;
    if (codec === 0 && n !== plaintextBytes)
      throw new BlobFormatError(`record of ${n} payload bytes, its entry says ${plaintextBytes} stored raw`);
    if (codec === 1 && (n === 0 || plaintextBytes > n * ZSTD_MAX_EXPANSION))
      throw new BlobFormatError(
        `record entry claims ${plaintextBytes} plaintext bytes, more than ${n} bytes of zstd can hold`,
      );
    const rec = asBuffer(record);
    const nonce = rec.subarray(0, NONCE_BYTES);
    const payload = rec.subarray(NONCE_BYTES, NONCE_BYTES + n);
    const tag = rec.subarray(NONCE_BYTES + n);
    const aad = writeRecordAad(kind, codec, plaintextBytes, id);
    return this.openUnit(
      nonce,
      aad,
      payload,
      tag,
      KEY_CONTEXT.record,
      id,
      'record',
      'damaged, or moved from another id',
    );
  }

  /**
   * Seals `payload` into `out` at `payloadAt`, the nonce at `nonceAt` and the tag right after the
   * payload: unencrypted, a zero nonce (`out` is fresh) and BLAKE3-128(AAD ‖ payload); encrypted,
   * AES-256-GCM under the key derived from `context` ‖ `keyInput`. Every sealed unit (records,
   * trailers, objects) goes through here and `openUnit`.
   */
  private sealUnit(
    out: Buffer,
    nonceAt: number,
    payloadAt: number,
    aad: Uint8Array,
    payload: Uint8Array,
    context: Buffer,
    keyInput: Uint8Array,
  ): void {
    if (this.deriver === undefined) {
      out.set(payload, payloadAt);
      tagOf([aad, payload], out, payloadAt + payload.length);
      return;
    }
    nextNonce(out, nonceAt);
    const key = this.deriveKey(context, keyInput);
    gcmSealInto(key, out.subarray(nonceAt, nonceAt + NONCE_BYTES), aad, payload, out, payloadAt);
  }

  /** Opens what `sealUnit` sealed; `what` names the unit and `moved` the likely cause in messages. */
  private openUnit(
    nonce: Buffer,
    aad: Uint8Array,
    body: Buffer,
    tag: Buffer,
    context: Buffer,
    keyInput: Uint8Array,
    what: string,
    moved: string,
  ): Buffer {
    if (this.deriver !== undefined)
      return gcmOpen(this.deriveKey(context, keyInput), nonce, aad, body, tag, what);
    if (!isZero(nonce)) throw new BlobFormatError(`${what} nonce is not zero in an unencrypted repository`);
    if (!tagsEqual(tagOf([aad, body]), tag))
      throw new BlobFormatError(`${what} integrity tag mismatch (${moved})`);
    return body;
  }

  private checkRecordId(meta: RecordMeta, plain: Uint8Array): void {
    if (!this.chunkIdBytes(plain).equals(meta.id)) throw new BlobFormatError('record does not match its id');
  }

  /**
   * Seals a pack trailer (design §1.3): nonce 12 ‖ plaintext ‖ tag 16 (never compressed: its
   * entries are mostly ids), AAD "VMVT" ‖ the 48-byte pack header, key derived from the pack salt.
   */
  sealTrailer(packHeader: Buffer, plaintext: Uint8Array): Buffer {
    if (packHeader.length !== PACK_HEADER_BYTES)
      throw new RangeError(`a pack header is ${PACK_HEADER_BYTES} bytes, not ${packHeader.length}`);
    const n = plaintext.length;
    const out = Buffer.from(new ArrayBuffer(TRAILER_OVERHEAD + n));
    const aad = Buffer.concat([TRAILER_AAD_MAGIC, packHeader]);
    this.sealUnit(out, 0, NONCE_BYTES, aad, plaintext, KEY_CONTEXT.trailer, packSalt(packHeader));
    return out;
  }

  /** Opens a sealed trailer of the pack whose header is `packHeader`; damage → BlobFormatError. */
  openTrailer(packHeader: Buffer, sealed: Uint8Array, maxPlaintextBytes: number): Buffer {
    if (packHeader.length !== PACK_HEADER_BYTES)
      throw new BlobFormatError(`a pack header is ${PACK_HEADER_BYTES} bytes, not ${packHeader.length}`);
    if (sealed.length < TRAILER_OVERHEAD)
      throw new BlobFormatError(`trailer too short (${sealed.length} bytes)`);
    const n = sealed.length - TRAILER_OVERHEAD;
    if (n > maxPlaintextBytes)
      throw new BlobFormatError(
        `trailer of ${n} bytes, more than a pack's trailer can be (${maxPlaintextBytes})`,
      );
    const s = asBuffer(sealed);
    const nonce = s.subarray(0, NONCE_BYTES);
    const body = s.subarray(NONCE_BYTES, NONCE_BYTES + n);
    const tag = s.subarray(NONCE_BYTES + n);
    const aad = Buffer.concat([TRAILER_AAD_MAGIC, packHeader]);
    return this.openUnit(
      nonce,
      aad,
      body,
      tag,
      KEY_CONTEXT.trailer,
      packSalt(packHeader),
      'trailer',
      'damaged, or of another pack',
    );
  }

  /**
   * Seals a whole object as a blob v2 (design §1.4). `binder` (16 B) is the object's salt or the
   * first 16 bytes of its id; `name` is its key when fixed before sealing (snapshots/…, keys/…,
   * quarantine/…), `section` the section number of an index object. Index sections are always
   * stored raw (codec none) so that their offsets can be computed (`sealedObjectBytes`); other
   * kinds are zstd at the metadata level unless it saves less than 1/64. Owns its ArrayBuffer.
   */
  sealObject(
    kind: ObjectKindV2,
    plaintext: Uint8Array,
    binder: Buffer,
    opts: { name?: string; section?: number } = {},
  ): Buffer {
    const kindNo = OBJECT_KIND_NUMBER[kind];
    if (kindNo === undefined) throw new RangeError(`unknown object kind ${String(kind)}`);
    if (binder.length !== OBJECT_BINDER_BYTES)
      throw new RangeError(`an object binder is ${OBJECT_BINDER_BYTES} bytes, not ${binder.length}`);
    if (plaintext.length > MAX_OBJECT_PLAINTEXT_BYTES)
      throw new RangeError(
        `an object holds at most ${MAX_OBJECT_PLAINTEXT_BYTES} bytes, not ${plaintext.length}`,
      );
    const level = kind === 'index-section' ? 0 : this.spec.compression.metadata;
    const { codec, payload } = compressed(plaintext, level);
    const n = payload.length;
    const out = Buffer.from(new ArrayBuffer(OBJECT_HEADER_BYTES + n + TAG_BYTES));
    out.writeUInt32BE(OBJECT_MAGIC, 0);
    out[4] = OBJECT_VERSION;
    out[5] = codec;
    out[6] = this.encrypted ? FLAG_ENCRYPTED : 0;
    out[7] = kindNo;
    out.writeUInt32BE(plaintext.length, 8);
    out.writeUInt32BE(n, 12);
    binder.copy(out, 16);
    const aad = objectAad(out, opts.section ?? 0, opts.name);
    this.sealUnit(out, 32, OBJECT_HEADER_BYTES, aad, payload, KEY_CONTEXT.object, binder);
    return out;
  }

  /**
   * Opens a blob v2 of `kind`, checking in this order: magic, version, lengths against the
   * blob's size, kind and flags (an encrypted repository accepts only encrypted objects, and the
   * other way round), the tag (GCM) against `name` and `section`, codec, plaintext length. The
   * caller checks a content id where the object has one. Damage → BlobFormatError; the result
   * may be a view of `blob` (stored raw, unencrypted).
   */
  openObject(
    kind: ObjectKindV2,
    blob: Uint8Array,
    opts: { name?: string; section?: number; maxPlaintextBytes: number },
  ): Buffer {
    const b = asBuffer(blob);
    if (b.length < OBJECT_HEADER_BYTES + TAG_BYTES)
      throw new BlobFormatError(`blob too short (${b.length} bytes)`);
    if (b.readUInt32BE(0) !== OBJECT_MAGIC) throw new BlobFormatError('bad blob magic');
    if (b[4] !== OBJECT_VERSION) throw new BlobFormatError(`unknown blob version ${b[4]}`);
    const plaintextBytes = b.readUInt32BE(8);
    const n = b.readUInt32BE(12);
    if (n !== b.length - OBJECT_HEADER_BYTES - TAG_BYTES)
      throw new BlobFormatError(`blob length ${b.length} does not match its header (payload ${n})`);
    const kindName = OBJECT_KIND_NAME.get(b[7]!);
    if (kindName !== kind)
      throw new BlobFormatError(
        `blob is ${kindName === undefined ? `of unknown kind ${b[7]}` : `a ${kindName}`}, not a ${kind}`,
      );
    const flags = b[6]!;
    if ((flags & ~FLAG_ENCRYPTED) !== 0) throw new BlobFormatError(`unknown blob flags ${flags}`);
    if (((flags & FLAG_ENCRYPTED) !== 0) !== this.encrypted)
      throw new BlobFormatError(
        this.encrypted
          ? 'blob is not encrypted in an encrypted repository'
          : 'blob is encrypted in an unencrypted repository',
      );
    const codec = b[5]!;
    const max = Math.min(opts.maxPlaintextBytes, MAX_OBJECT_PLAINTEXT_BYTES);
    if (plaintextBytes > max)
      throw new BlobFormatError(
        `blob header claims ${plaintextBytes} plaintext bytes, more than a ${kind} holds (${max})`,
      );
    if (codec !== Codec.NONE && codec !== Codec.ZSTD) throw new BlobFormatError(`unknown codec ${codec}`);
    if (codec === Codec.NONE && n !== plaintextBytes)
      throw new BlobFormatError(`plaintext is ${n} bytes, header says ${plaintextBytes}`);
    if (codec === Codec.ZSTD && (n === 0 || plaintextBytes > n * ZSTD_MAX_EXPANSION))
      throw new BlobFormatError(
        `blob header claims ${plaintextBytes} plaintext bytes, more than ${n} bytes of zstd can hold`,
      );
    const aad = objectAad(b, opts.section ?? 0, opts.name);
    const nonce = b.subarray(32, OBJECT_HEADER_BYTES);
    const body = b.subarray(OBJECT_HEADER_BYTES, OBJECT_HEADER_BYTES + n);
    const tag = b.subarray(OBJECT_HEADER_BYTES + n);
    const payload = this.openUnit(
      nonce,
      aad,
      body,
      tag,
      KEY_CONTEXT.object,
      b.subarray(16, 32),
      `${kind} blob`,
      'damaged, or moved from another name',
    );
    if (codec === Codec.NONE) return payload;
    const out = Buffer.from(new ArrayBuffer(plaintextBytes));
    zstdDecompressInto(out, payload, plaintextBytes);
    return out;
  }

  /** The size of a sealed object of `plaintextBytes` stored raw (index sections always are). */
  sealedObjectBytes(plaintextBytes: number): number {
    return OBJECT_HEADER_BYTES + plaintextBytes + TAG_BYTES;
  }
}

/** 32 bytes from 64 hex digits; the native binding aborts the process on another length: check first. */
function hexKey(hex: string, bytes: number, what: string): Buffer {
  const key = Buffer.from(hex, 'hex');
  if (key.length !== bytes || key.toString('hex') !== hex.toLowerCase())
    throw new RangeError(`${what} is ${bytes} bytes (${bytes * 2} hex digits)`);
  return key;
}

/** A pack's name: BLAKE3-128 of the concatenation of `parts` (hashed part by part, no copy). */
export function packNameOf(parts: readonly Uint8Array[]): Buffer {
  const h = new Blake3Hasher();
  for (const p of parts) h.update(p);
  return h.digestBuffer().subarray(0, 16);
}

/** The most bytes a record of `plaintextBytes` can take (nonce, payload at worst stored raw, tag). */
export function recordBound(plaintextBytes: number): number {
  return RECORD_OVERHEAD + plaintextBytes;
}

/**
 * `plaintext` zstd-compressed at `level` into this thread's scratch buffer (codec 1), or the
 * plaintext itself (codec 0) when the level is 0 or zstd saves less than 1/64.
 */
function compressed(plaintext: Uint8Array, level: number): { codec: 0 | 1; payload: Uint8Array } {
  const len = plaintext.length;
  if (level === 0 || len === 0) return { codec: 0, payload: plaintext };
  const bound = zstdBound(len);
  const buf = scratchBuffer(bound);
  const n = zstdCompressTo(buf.subarray(0, bound), plaintext, level);
  if (n > 0 && n < len - (len >> 6)) return { codec: 1, payload: buf.subarray(0, n) };
  return { codec: 0, payload: plaintext };
}

function packSalt(packHeader: Buffer): Buffer {
  return packHeader.subarray(PACK_SALT_AT, PACK_SALT_AT + PACK_SALT_BYTES);
}

/** An object's AAD: header bytes 0..31 ‖ u32 section ‖ the object's key (UTF-8) when given. */
function objectAad(header: Buffer, section: number, name: string | undefined): Buffer {
  if (!Number.isInteger(section) || section < 0 || section > U32_MAX)
    throw new RangeError(`invalid section number ${section}`);
  const nameBytes = name === undefined ? 0 : Buffer.byteLength(name);
  const aad = Buffer.allocUnsafe(36 + nameBytes);
  header.copy(aad, 0, 0, 32);
  aad.writeUInt32BE(section, 32);
  if (name !== undefined) aad.write(name, 36);
  return aad;
}

/** The spec of a codec with chunk compression level `chunkLevel` (0: none) and `keys`. */
export function codecSpec(chunkLevel: number, keys: CodecKeys = {}): CodecSpec {
  const { idKey, encKey } = keys;
  if (idKey !== undefined && idKey.length !== ID_KEY_BYTES)
    throw new RangeError(`an id key is ${ID_KEY_BYTES} bytes, not ${idKey.length}`);
  if (encKey !== undefined && encKey.length !== ENC_KEY_BYTES)
    throw new RangeError(`an encryption key is ${ENC_KEY_BYTES} bytes, not ${encKey.length}`);
  if (encKey !== undefined && idKey === undefined) throw new RangeError('an encryption key needs an id key');
  return {
    compression: { chunk: chunkLevel, metadata: METADATA_ZSTD_LEVEL },
    id: idKey === undefined ? { fn: 'blake3-256' } : { fn: 'blake3-256-keyed', key: idKey.toString('hex') },
    ...(encKey === undefined ? {} : { enc: { key: encKey.toString('hex') } }),
  };
}

/**
 * Keyed BLAKE3-256 of `parts` concatenated (`key` 32 bytes): key derivation and MACs outside the
 * sealed units (the config's keyId and mac, src/repo/keys.ts).
 */
export function keyedHash(key: Buffer, ...parts: Uint8Array[]): Buffer {
  if (key.length !== 32) throw new RangeError(`a BLAKE3 key is 32 bytes, not ${key.length}`);
  const h = Blake3Hasher.newKeyed(key);
  for (const p of parts) h.update(p);
  return h.digestBuffer();
}

/**
 * A format-internal checksum (the name of an index object is its first 16 bytes): unkeyed
 * BLAKE3-256 whatever the id function, because it guards structure, not content identity.
 */
export function checksum(data: Uint8Array): Buffer {
  return blake3(data);
}

export { BlobFormatError };
