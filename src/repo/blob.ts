import { blake3 } from '@napi-rs/blake-hash';
import { createRequire } from 'node:module';
import type * as ZstdBinding from 'zstd-napi/binding.js';
import {
  BLOB_HEADER_BYTES,
  BLOB_MAGIC,
  BLOB_NONCE_BYTES,
  BLOB_TAG_BYTES,
  BLOB_VERSION,
  BlobFlag,
  Codec,
  MAX_BLOB_PLAINTEXT_BYTES,
  ZSTD_MAX_EXPANSION,
} from './format.js';

/**
 * Blob encoding (docs/format.md "Blobs"): a 36-byte header, the payload (zstd or raw), and a
 * 16-byte integrity tag (BLAKE3-128 of header+payload). Pure functions, safe in worker threads.
 */
export interface EncodeOptions {
  /** zstd level (1..19, or -7..-1 for zstd's fast levels); 0 disables compression. */
  levelZstd: number;
}

export class BlobFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BlobFormatError';
  }
}

// One compression and one decompression context per thread, and a reusable encode buffer:
// no per-chunk native allocations (they bloat RSS long before the GC reclaims them).
// The binding is CommonJS whose exports Node's ESM loader cannot see by name: load it with require.
const zstd = createRequire(import.meta.url)('zstd-napi/binding.js') as typeof ZstdBinding;
let cctx: ZstdBinding.CCtx | undefined;
let dctx: ZstdBinding.DCtx | undefined;
let scratch = Buffer.alloc(0);

/** The most bytes zstd can make of `plaintextBytes` (a buffer `zstdCompressTo` may fill). */
export function zstdBound(plaintextBytes: number): number {
  return zstd.compressBound(plaintextBytes);
}

/**
 * Compresses `src` into `dest` with this thread's context and returns the frame's length, or 0
 * when `dest` is too small (the caller then stores the plaintext raw).
 */
export function zstdCompressTo(dest: Uint8Array, src: Uint8Array, level: number): number {
  cctx ??= new zstd.CCtx();
  try {
    return cctx.compress(dest, src, level);
  } catch {
    return 0;
  }
}

/** A per-thread scratch buffer of at least `bytes` (reused: valid until the next call). */
export function scratchBuffer(bytes: number): Buffer {
  if (scratch.length < bytes) scratch = Buffer.allocUnsafeSlow(Math.max(bytes, scratch.length * 2));
  return scratch;
}

/** Blob header fields for `plaintextBytes` of plaintext in `payloadBytes` of `codec` payload. */
function writeHeader(out: Buffer, codec: Codec, plaintextBytes: number, payloadBytes: number): void {
  out.writeUInt32BE(BLOB_MAGIC, 0);
  out.writeUInt8(BLOB_VERSION, 4);
  out.writeUInt8(codec, 5);
  out.writeUInt8(0, 6); // flags: not encrypted
  out.writeUInt8(0, 7);
  out.writeBigUInt64BE(BigInt(plaintextBytes), 8);
  out.writeBigUInt64BE(BigInt(payloadBytes), 16);
  out.fill(0, 24, 24 + BLOB_NONCE_BYTES);
}

/** The most bytes a blob of `plaintextBytes` can take (the buffer `encodeBlobTo` needs). */
export function blobBound(plaintextBytes: number): number {
  return BLOB_HEADER_BYTES + zstd.compressBound(plaintextBytes) + BLOB_TAG_BYTES;
}

/**
 * Whether a stored object of `sizeBytes` can be the blob of a `plaintextBytes`-byte chunk as any
 * vmvault writes it: the envelope plus a payload of 1 byte up to the plaintext itself (zstd is kept
 * only when it is smaller; otherwise the plaintext is stored raw). A file of any other size is
 * damage (emptied, truncated, or something else), and a backup replaces it instead of trusting it.
 */
export function isPlausibleBlobSize(sizeBytes: number, plaintextBytes: number): boolean {
  const envelope = BLOB_HEADER_BYTES + BLOB_TAG_BYTES;
  return sizeBytes > envelope && sizeBytes <= envelope + plaintextBytes;
}

/**
 * Encodes a blob into `out` (at least `blobBound(plaintext.length)` bytes) and returns a view of
 * it: zstd compresses straight to its place after the header, so nothing is allocated or copied
 * per chunk.
 */
export function encodeBlobTo(plaintext: Uint8Array, opts: EncodeOptions, out: Buffer): Buffer {
  const bound = blobBound(plaintext.length);
  if (out.length < bound) throw new RangeError(`blob buffer of ${out.length} bytes, ${bound} needed`);
  let codec: Codec = Codec.NONE;
  let payloadBytes = plaintext.length;
  if (opts.levelZstd !== 0 && plaintext.length > 0) {
    cctx ??= new zstd.CCtx();
    const n = cctx.compress(
      out.subarray(BLOB_HEADER_BYTES, bound - BLOB_TAG_BYTES),
      plaintext,
      opts.levelZstd,
    );
    // Store raw when compression does not pay for itself (≥ 1/64 saved).
    if (n < plaintext.length - (plaintext.length >> 6)) {
      codec = Codec.ZSTD;
      payloadBytes = n;
    }
  }
  if (codec === Codec.NONE) out.set(plaintext, BLOB_HEADER_BYTES);
  writeHeader(out, codec, plaintext.length, payloadBytes);
  const tagAt = BLOB_HEADER_BYTES + payloadBytes;
  blake3(out.subarray(0, tagAt)).copy(out, tagAt, 0, BLOB_TAG_BYTES);
  return out.subarray(0, tagAt + BLOB_TAG_BYTES);
}

/** Encodes a blob into a buffer that owns its ArrayBuffer (transferable between threads). */
export function encodeBlob(plaintext: Uint8Array, opts: EncodeOptions): Buffer {
  const bound = blobBound(plaintext.length);
  if (scratch.length < bound) scratch = Buffer.allocUnsafeSlow(Math.max(bound, scratch.length * 2));
  const view = encodeBlobTo(plaintext, opts, scratch);
  const out = Buffer.from(new ArrayBuffer(view.length));
  out.set(view);
  return out;
}

export interface BlobHeader {
  version: number;
  codec: number;
  flags: number;
  plaintextBytes: number;
  payloadBytes: number;
}

export function readBlobHeader(blob: Uint8Array): BlobHeader {
  return parseBlobHeader(blob, blob.length);
}

/**
 * Parses a blob's header from its first BLOB_HEADER_BYTES (or more) bytes, given the whole blob's
 * length (e.g. its file size), so a reader can decide how to read the rest.
 */
export function parseBlobHeader(head: Uint8Array, blobLength: number): BlobHeader {
  if (blobLength < BLOB_HEADER_BYTES + BLOB_TAG_BYTES || head.length < BLOB_HEADER_BYTES)
    throw new BlobFormatError(`blob too short (${blobLength} bytes)`);
  const b = Buffer.from(head.buffer, head.byteOffset, head.byteLength);
  if (b.readUInt32BE(0) !== BLOB_MAGIC) throw new BlobFormatError('bad blob magic');
  const version = b.readUInt8(4);
  if (version !== BLOB_VERSION) throw new BlobFormatError(`unknown blob version ${version}`);
  const h: BlobHeader = {
    version,
    codec: b.readUInt8(5),
    flags: b.readUInt8(6),
    plaintextBytes: lengthField(b, 8, 'plaintext'),
    payloadBytes: lengthField(b, 16, 'payload'),
  };
  if (h.payloadBytes !== blobLength - BLOB_HEADER_BYTES - BLOB_TAG_BYTES) {
    throw new BlobFormatError(
      `blob length ${blobLength} does not match its header (payload ${h.payloadBytes})`,
    );
  }
  if (h.plaintextBytes > MAX_BLOB_PLAINTEXT_BYTES)
    throw new BlobFormatError(
      `blob header claims ${h.plaintextBytes} plaintext bytes, more than any object (${MAX_BLOB_PLAINTEXT_BYTES})`,
    );
  if (h.codec === Codec.ZSTD && h.plaintextBytes > h.payloadBytes * ZSTD_MAX_EXPANSION)
    throw new BlobFormatError(
      `blob header claims ${h.plaintextBytes} plaintext bytes, more than ${h.payloadBytes} bytes of zstd can hold`,
    );
  return h;
}

/** A u64 length field; beyond 2^53 - 1 (which no object comes near) it is damage, not a number. */
function lengthField(b: Buffer, at: number, what: string): number {
  const v = b.readBigUInt64BE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER))
    throw new BlobFormatError(`blob header's ${what} length (${v}) is out of range`);
  return Number(v);
}

/** Checks the integrity tag without decompressing. */
export function verifyBlobTag(blob: Uint8Array): void {
  const h = readBlobHeader(blob);
  if (h.flags & BlobFlag.ENCRYPTED)
    throw new BlobFormatError('blob is encrypted; this version cannot read encrypted repositories');
  const tagAt = BLOB_HEADER_BYTES + h.payloadBytes;
  const expect = blake3(blob.subarray(0, tagAt)).subarray(0, BLOB_TAG_BYTES);
  if (Buffer.compare(expect, blob.subarray(tagAt, tagAt + BLOB_TAG_BYTES)) !== 0) {
    throw new BlobFormatError('integrity tag mismatch');
  }
}

/** Checks a blob's envelope (and its tag unless `verifyTag: false`); returns header and payload. */
function openBlob(blob: Uint8Array, verifyTag: boolean): { h: BlobHeader; payload: Uint8Array } {
  if (verifyTag) verifyBlobTag(blob);
  const h = readBlobHeader(blob);
  if (h.flags & BlobFlag.ENCRYPTED)
    throw new BlobFormatError('blob is encrypted; this version cannot read encrypted repositories');
  if (h.codec !== Codec.NONE && h.codec !== Codec.ZSTD) throw new BlobFormatError(`unknown codec ${h.codec}`);
  if (h.codec === Codec.NONE && h.payloadBytes !== h.plaintextBytes)
    throw new BlobFormatError(`plaintext is ${h.payloadBytes} bytes, header says ${h.plaintextBytes}`);
  return { h, payload: blob.subarray(BLOB_HEADER_BYTES, BLOB_HEADER_BYTES + h.payloadBytes) };
}

/** Decompresses a zstd frame of exactly `plaintextBytes` into `dest`; anything else is BlobFormatError. */
export function zstdDecompressInto(dest: Uint8Array, src: Uint8Array, plaintextBytes: number): void {
  dctx ??= new zstd.DCtx();
  let n: number;
  try {
    n = dctx.decompress(dest.subarray(0, plaintextBytes), src);
  } catch (err) {
    throw new BlobFormatError(
      `zstd payload does not decompress: ${err instanceof Error ? err.message : String(err)}`,
    );
  }
  if (n !== plaintextBytes)
    throw new BlobFormatError(`plaintext is ${n} bytes, header says ${plaintextBytes}`);
}

/**
 * Returns the plaintext, throwing BlobFormatError on any damage. The integrity tag is checked
 * unless the caller verifies the plaintext against its content id itself (`verifyTag: false`):
 * then a damaged blob fails that check instead, and one hash pass is saved. `maxPlaintextBytes`
 * bounds what the header may claim (a chunk: the chunk size) before anything is allocated.
 */
export function decodeBlob(
  blob: Uint8Array,
  opts: { verifyTag?: boolean; maxPlaintextBytes?: number } = {},
): Buffer {
  const { h, payload } = openBlob(blob, opts.verifyTag ?? true);
  if (opts.maxPlaintextBytes !== undefined && h.plaintextBytes > opts.maxPlaintextBytes)
    throw new BlobFormatError(
      `plaintext is ${h.plaintextBytes} bytes, more than this kind of object holds (${opts.maxPlaintextBytes})`,
    );
  if (h.codec === Codec.NONE) return Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  const out = Buffer.from(new ArrayBuffer(h.plaintextBytes));
  zstdDecompressInto(out, payload, h.plaintextBytes);
  return out;
}

/**
 * Decodes into `dest` (reused memory: no allocation, no page faults on fresh pages) and returns
 * the plaintext length. A plaintext longer than `dest` is damage (chunks never exceed the
 * repository's chunk size). Verification as in `decodeBlob`.
 */
export function decodeBlobInto(
  blob: Uint8Array,
  dest: Uint8Array,
  opts: { verifyTag?: boolean } = {},
): number {
  const { h, payload } = openBlob(blob, opts.verifyTag ?? true);
  if (h.plaintextBytes > dest.length)
    throw new BlobFormatError(`plaintext is ${h.plaintextBytes} bytes, more than a chunk (${dest.length})`);
  if (h.codec === Codec.NONE) dest.set(payload);
  else zstdDecompressInto(dest, payload, h.plaintextBytes);
  return h.plaintextBytes;
}
