/**
 * All-zero detection for the image writers. `Buffer.equals` against a slice of one shared zero
 * buffer is a memcmp: it stops at the first non-zero byte (random data costs nothing) and scans a
 * zero cluster at memory speed.
 */
const ZERO_SLICE_BYTES = 256 * 1024;
const ZERO = Buffer.alloc(ZERO_SLICE_BYTES);

/** Whether every byte of `buf` is zero. */
export function isAllZero(buf: Uint8Array): boolean {
  const view = Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  for (let at = 0; at < view.length; at += ZERO_SLICE_BYTES) {
    const n = Math.min(ZERO_SLICE_BYTES, view.length - at);
    if (!view.subarray(at, at + n).equals(ZERO.subarray(0, n))) return false;
  }
  return true;
}
