import { blake3, Blake3Hasher } from '@napi-rs/blake-hash';
import {
  blobBound,
  decodeBlob,
  decodeBlobInto,
  encodeBlob,
  encodeBlobTo,
  parseBlobHeader,
  BlobFormatError,
} from './blob.js';
import type { ChunkId } from './chunk-id.js';
import type { RepoConfig } from './config.js';
import { BLOB_HEADER_BYTES, Codec, MAX_ZSTD_LEVEL, METADATA_ZSTD_LEVEL, MIN_ZSTD_LEVEL } from './format.js';

/**
 * What a blob holds. Chunks (disk data and a snapshot's files) are compressed at the repository's
 * level; disk indexes and manifests at METADATA_ZSTD_LEVEL. Encryption will bind a blob to its
 * kind and name through the authenticated data.
 */
export type ObjectKind = 'chunk' | 'index' | 'manifest';

/** The bytes of a keyed id function's key (BLAKE3's key is 32 bytes). */
export const ID_KEY_BYTES = 32;

/**
 * Everything a `BlobCodec` is built from, as plain JSON: the chunk store sends it to each worker
 * thread once, at start (workerData), so every thread encodes, decodes and hashes alike.
 */
export interface CodecSpec {
  /** zstd levels (1..19, -7..-1 fast; 0 = stored raw) per kind of object. */
  compression: { chunk: number; metadata: number };
  /**
   * The id function of chunks and objects: `blake3-256` (format 1: unkeyed), or keyed BLAKE3-256
   * with a 32-byte key (hex), so that nobody without the key can test for a known block.
   */
  id: { fn: 'blake3-256' } | { fn: 'blake3-256-keyed'; key: string };
}

export interface CodecKeys {
  /** A 32-byte key for chunk and object ids (keyed BLAKE3); none: unkeyed BLAKE3-256 (format 1). */
  idKey?: Buffer;
}

export interface DecodeOptions {
  /**
   * Check the blob's integrity tag (default true). A caller that verifies the plaintext against
   * its id (`verify`) may skip it: a damaged blob fails that check instead, one hash pass saved.
   */
  verifyTag?: boolean;
  /** The most plaintext the header may claim (checked before anything is allocated). */
  maxPlaintextBytes?: number;
}

/**
 * The one place that encodes, decodes and hashes repository objects (docs/architecture.md):
 * built from the repository config (compression, id function; encryption keys later), pure and
 * synchronous, one instance per thread. Format 1 (unkeyed BLAKE3-256 ids, zstd blobs) is
 * byte-identical to what vmvault wrote before the codec existed.
 */
export class BlobCodec {
  readonly spec: CodecSpec;
  private readonly hasher: Blake3Hasher | undefined;

  private constructor(spec: CodecSpec) {
    this.spec = spec;
    if (spec.id.fn === 'blake3-256-keyed') {
      const key = Buffer.from(spec.id.key, 'hex');
      // The native binding aborts the process on a key of another length: check it first.
      if (key.length !== ID_KEY_BYTES || key.toString('hex') !== spec.id.key.toLowerCase())
        throw new RangeError(`an id key is ${ID_KEY_BYTES} bytes (${ID_KEY_BYTES * 2} hex digits)`);
      this.hasher = Blake3Hasher.newKeyed(key);
    } else if (spec.id.fn !== 'blake3-256')
      throw new RangeError(`unknown id function ${String((spec.id as { fn: unknown }).fn)}`);
    for (const level of [spec.compression.chunk, spec.compression.metadata])
      if (!Number.isInteger(level) || level < MIN_ZSTD_LEVEL || level > MAX_ZSTD_LEVEL)
        throw new RangeError(`invalid zstd level ${level}`);
  }

  /** The codec of a repository: its config's compression, and its keys (none in format 1). */
  static fromConfig(config: Pick<RepoConfig, 'compression' | 'hash'>, keys: CodecKeys = {}): BlobCodec {
    if (config.hash !== 'blake3-256') throw new RangeError(`unknown id function ${String(config.hash)}`);
    return BlobCodec.fromSpec(
      codecSpec(config.compression.codec === 'none' ? 0 : config.compression.level, keys),
    );
  }

  /** Builds a codec from a spec (e.g. the one a worker thread received); validates it. */
  static fromSpec(spec: CodecSpec): BlobCodec {
    return new BlobCodec({
      compression: { chunk: spec.compression.chunk, metadata: spec.compression.metadata },
      id: spec.id.fn === 'blake3-256-keyed' ? { fn: spec.id.fn, key: spec.id.key } : { fn: spec.id.fn },
    });
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
   * ids: objects and chunks live under different prefixes, so sharing it costs nothing, and
   * format 1 names both by unkeyed BLAKE3-256.
   */
  objectId(plaintext: Uint8Array): string {
    return this.chunkIdBytes(plaintext).toString('hex');
  }

  /** Whether `plaintext` is the content of chunk or object `id` (hex). */
  verify(plaintext: Uint8Array, id: string): boolean {
    return this.chunkIdBytes(plaintext).toString('hex') === id;
  }

  private level(kind: ObjectKind): number {
    return kind === 'chunk' ? this.spec.compression.chunk : this.spec.compression.metadata;
  }

  /** The most bytes a blob of `plaintextBytes` can take (the `out` buffer `encode` needs). */
  blobBound(plaintextBytes: number): number {
    return blobBound(plaintextBytes);
  }

  /**
   * Encodes `plaintext` as a blob. With `out` (at least `blobBound` bytes), the blob is written
   * there and a view of it returned (nothing allocated); without, into a buffer that owns its
   * ArrayBuffer (transferable between threads).
   */
  encode(kind: ObjectKind, plaintext: Uint8Array, out?: Buffer): Buffer {
    const opts = { levelZstd: this.level(kind) };
    return out ? encodeBlobTo(plaintext, opts, out) : encodeBlob(plaintext, opts);
  }

  /**
   * Returns a blob's plaintext, throwing BlobFormatError on any damage (see DecodeOptions). The
   * result may be a view of `blob` (a payload stored raw).
   */
  decode(kind: ObjectKind, blob: Uint8Array, opts: DecodeOptions = {}): Buffer {
    void kind;
    return decodeBlob(blob, opts);
  }

  /** Decodes into `dest` and returns the plaintext length; a longer plaintext is damage. */
  decodeInto(
    kind: ObjectKind,
    blob: Uint8Array,
    dest: Uint8Array,
    opts: { verifyTag?: boolean } = {},
  ): number {
    void kind;
    return decodeBlobInto(blob, dest, opts);
  }

  /**
   * Where a blob of `blobLength` bytes whose first BLOB_HEADER_BYTES are `head` holds its
   * plaintext verbatim (stored raw, not encrypted), so a reader can read it straight into place;
   * undefined when the payload must be decoded. Damage in the header throws BlobFormatError.
   */
  verbatimPayload(head: Uint8Array, blobLength: number): { offset: number; length: number } | undefined {
    const h = parseBlobHeader(head, blobLength);
    if (h.codec === Codec.NONE && h.flags === 0 && h.payloadBytes === h.plaintextBytes)
      return { offset: BLOB_HEADER_BYTES, length: h.payloadBytes };
    return undefined;
  }
}

/** The spec of a codec with chunk compression level `chunkLevel` (0: none) and `keys`. */
export function codecSpec(chunkLevel: number, keys: CodecKeys = {}): CodecSpec {
  const { idKey } = keys;
  if (idKey !== undefined && idKey.length !== ID_KEY_BYTES)
    throw new RangeError(`an id key is ${ID_KEY_BYTES} bytes, not ${idKey.length}`);
  return {
    compression: { chunk: chunkLevel, metadata: METADATA_ZSTD_LEVEL },
    id: idKey === undefined ? { fn: 'blake3-256' } : { fn: 'blake3-256-keyed', key: idKey.toString('hex') },
  };
}

/**
 * A format-internal checksum (the trailer of a disk index): unkeyed BLAKE3-256 whatever the id
 * function, because it guards structure, not content identity.
 */
export function checksum(data: Uint8Array): Buffer {
  return blake3(data);
}

/**
 * Format 1's id function (unkeyed BLAKE3-256), for tests and tools that build repository objects
 * by hand. Code that reads or writes a repository uses its codec (`Repository.codec`) instead.
 */
export function hashBytes(data: Uint8Array): Buffer {
  return blake3(data);
}

/** `hashBytes` as a chunk id (format 1). */
export function chunkIdOf(data: Uint8Array): ChunkId {
  return blake3(data).toString('hex') as ChunkId;
}

export { BlobFormatError };
