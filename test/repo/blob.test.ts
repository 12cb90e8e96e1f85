import { describe, expect, it } from 'vitest';
import {
  decodeBlob,
  encodeBlob,
  parseCompression,
  readBlobHeader,
  BlobFormatError,
  format,
} from '../../src/repo/index.js';
import { seededBytes } from '../helpers/tmp.js';

describe('blob format', () => {
  it('round-trips compressible data with zstd and incompressible data raw', () => {
    const text = Buffer.from('vmvault '.repeat(10000));
    const zb = encodeBlob(text, { levelZstd: 3 });
    expect(readBlobHeader(zb).codec).toBe(format.Codec.ZSTD);
    expect(zb.length).toBeLessThan(text.length / 10);
    expect(decodeBlob(zb).equals(text)).toBe(true);

    const random = seededBytes(65536, 42);
    const rb = encodeBlob(random, { levelZstd: 3 });
    expect(readBlobHeader(rb).codec).toBe(format.Codec.NONE);
    expect(rb.length).toBe(random.length + format.BLOB_HEADER_BYTES + format.BLOB_TAG_BYTES);
    expect(decodeBlob(rb).equals(random)).toBe(true);
  });

  it("zstd's fast levels compress less but decode the same; the level grammar", () => {
    const text = Buffer.from('fast level text 0123456789 '.repeat(5000));
    const fast = encodeBlob(text, { levelZstd: -4 });
    expect(readBlobHeader(fast).codec).toBe(format.Codec.ZSTD);
    expect(decodeBlob(fast).equals(text)).toBe(true);
    expect(parseCompression('zstd:-4')).toBe(-4);
    expect(parseCompression('zstd:19')).toBe(19);
    expect(parseCompression('zstd')).toBe(format.DEFAULT_ZSTD_LEVEL);
    expect(parseCompression('none')).toBe(0);
    for (const bad of ['zstd:0', 'zstd:-8', 'zstd:20', 'zstd:x', 'lz4'])
      expect(() => parseCompression(bad), bad).toThrow(/invalid/);
  });

  it('level 0 stores raw', () => {
    const text = Buffer.from('a'.repeat(4096));
    expect(readBlobHeader(encodeBlob(text, { levelZstd: 0 })).codec).toBe(format.Codec.NONE);
  });

  it('detects a flipped bit anywhere in the blob', () => {
    const blob = encodeBlob(Buffer.from('hello world '.repeat(100)), { levelZstd: 3 });
    for (const at of [0, 5, 9, 20, 40, blob.length - 20, blob.length - 1]) {
      const bad = Buffer.from(blob);
      bad[at] = bad[at]! ^ 0x01;
      expect(() => decodeBlob(bad), `byte ${at}`).toThrow(BlobFormatError);
    }
  });

  it('rejects truncated blobs and reserved encryption flag', () => {
    const blob = encodeBlob(Buffer.from('xyz'), { levelZstd: 3 });
    expect(() => decodeBlob(blob.subarray(0, blob.length - 1))).toThrow(BlobFormatError);
    expect(() => decodeBlob(blob.subarray(0, 10))).toThrow(BlobFormatError);
  });
});
