import { createRequire } from 'node:module';
import type * as ZstdBinding from 'zstd-napi/binding.js';

/**
 * This thread's zstd contexts (compression for sealing, decompression for opening records and
 * objects: src/repo/codec.ts) and the error every damaged record, trailer or object raises
 * (`BlobFormatError`). Pure functions over per-thread state, safe in worker threads.
 */
export class BlobFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BlobFormatError';
  }
}

// One compression and one decompression context per thread, and a reusable scratch buffer:
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
