import { describe, expect, it } from 'vitest';
import { scratchBuffer, zstdBound, zstdCompressTo, zstdDecompressInto } from '../../src/repo/blob.js';
import { BlobFormatError, format, parseCompression } from '../../src/repo/index.js';
import { seededBytes } from '../helpers/tmp.js';

/** A zstd frame of `src` at `level`, through this thread's context. */
function frameOf(src: Uint8Array, level: number): Buffer {
  const dest = Buffer.alloc(zstdBound(src.length));
  const n = zstdCompressTo(dest, src, level);
  expect(n, `level ${level}`).toBeGreaterThan(0);
  return dest.subarray(0, n);
}

describe('zstd contexts of the thread (src/repo/blob.ts)', () => {
  const text = Buffer.from('vmvault zstd text 0123456789 '.repeat(5000));

  it('compresses and decompresses at normal and fast levels', () => {
    for (const level of [1, 3, 19, -4, -7]) {
      const frame = frameOf(text, level);
      expect(frame.length, `level ${level}`).toBeLessThan(text.length / 10);
      const out = Buffer.alloc(text.length);
      zstdDecompressInto(out, frame, text.length);
      expect(out.equals(text), `level ${level}`).toBe(true);
    }
    // Fast levels compress less than the slowest.
    expect(frameOf(text, -7).length).toBeGreaterThan(frameOf(text, 19).length);
  });

  it('incompressible data fits zstdBound and round trips', () => {
    const random = seededBytes(65536, 42);
    const frame = frameOf(random, 3);
    expect(frame.length).toBeGreaterThanOrEqual(random.length);
    expect(frame.length).toBeLessThanOrEqual(zstdBound(random.length));
    const out = Buffer.alloc(random.length);
    zstdDecompressInto(out, frame, random.length);
    expect(out.equals(random)).toBe(true);
  });

  it('a destination too small yields 0 (the caller stores the plaintext raw), not an exception', () => {
    expect(zstdCompressTo(Buffer.alloc(8), seededBytes(65536, 1), 3)).toBe(0);
  });

  it('a damaged frame, or one of another length than claimed, is a BlobFormatError', () => {
    const frame = frameOf(text, 3);
    const out = Buffer.alloc(text.length + 1);
    const cases: Array<[string, Buffer, number, RegExp]> = [
      ['truncated', frame.subarray(0, frame.length - 4), text.length, /does not decompress/],
      ['not a frame', Buffer.from('not a zstd frame at all'), text.length, /does not decompress/],
      ['empty', Buffer.alloc(0), text.length, /plaintext is 0 bytes/],
      ['claims less plaintext', frame, text.length - 1, /does not decompress/],
      ['claims more plaintext', frame, text.length + 1, new RegExp(`plaintext is ${text.length} bytes`)],
    ];
    for (const [name, src, claimed, msg] of cases) {
      expect(() => zstdDecompressInto(out, src, claimed), name).toThrow(BlobFormatError);
      expect(() => zstdDecompressInto(out, src, claimed), name).toThrow(msg);
    }
  });

  it('the scratch buffer is reused and grows to what is asked', () => {
    const a = scratchBuffer(1000);
    expect(a.length).toBeGreaterThanOrEqual(1000);
    expect(scratchBuffer(10)).toBe(a);
    const b = scratchBuffer(a.length + 1);
    expect(b.length).toBeGreaterThan(a.length);
    expect(scratchBuffer(a.length)).toBe(b);
  });

  it('the compression level grammar of the config', () => {
    expect(parseCompression('zstd:-4')).toBe(-4);
    expect(parseCompression('zstd:19')).toBe(19);
    expect(parseCompression('zstd')).toBe(format.DEFAULT_ZSTD_LEVEL);
    expect(parseCompression('none')).toBe(0);
    for (const bad of ['zstd:0', 'zstd:-8', 'zstd:20', 'zstd:x', 'lz4'])
      expect(() => parseCompression(bad), bad).toThrow(/invalid/);
  });
});
