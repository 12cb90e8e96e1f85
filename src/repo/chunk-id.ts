import { CHUNK_ID_BYTES } from './format.js';

/** A chunk's id (its codec's id function, `BlobCodec.chunkId`), as 64 lowercase hex characters. */
export type ChunkId = string & { readonly __brand: 'ChunkId' };

/** The all-zero marker in an index slot: the chunk is all zero bytes and is never stored. */
export const ZERO_CHUNK_ID_BYTES = Buffer.alloc(CHUNK_ID_BYTES);

export function isChunkId(s: string): s is ChunkId {
  return /^[0-9a-f]{64}$/.test(s);
}

export function chunkIdFromBytes(b: Uint8Array): ChunkId {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex') as ChunkId;
}

let zeroScratch = Buffer.alloc(0);

/** True when every byte is zero (memcmp against a shared zero buffer). */
export function isAllZero(data: Uint8Array): boolean {
  if (zeroScratch.length < data.length) zeroScratch = Buffer.alloc(Math.max(data.length, 1 << 20));
  return Buffer.compare(data, zeroScratch.subarray(0, data.length)) === 0;
}
