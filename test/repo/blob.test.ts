import { describe, expect, it } from 'vitest';
import {
  decodeBlob,
  encodeBlob,
  hashBytes,
  isPlausibleBlobSize,
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

  /** A blob with hand-set length fields and a correct tag: only the fields are hostile. */
  function crafted(
    codec: number,
    plaintext: bigint,
    payload: Buffer,
    payloadField = BigInt(payload.length),
  ): Buffer {
    const head = Buffer.alloc(format.BLOB_HEADER_BYTES);
    head.writeUInt32BE(format.BLOB_MAGIC, 0);
    head.writeUInt8(format.BLOB_VERSION, 4);
    head.writeUInt8(codec, 5);
    head.writeBigUInt64BE(plaintext, 8);
    head.writeBigUInt64BE(payloadField, 16);
    const body = Buffer.concat([head, payload]);
    return Buffer.concat([body, hashBytes(body).subarray(0, format.BLOB_TAG_BYTES)]);
  }

  it('bounds every length field before allocating: 2^53, 2^64-1, more than zstd can expand to, more than the kind holds', () => {
    const p = Buffer.alloc(64, 1);
    const cases: Array<[string, Buffer, RegExp]> = [
      ['plaintext 2^53', crafted(format.Codec.ZSTD, 2n ** 53n, p), /out of range/],
      ['plaintext 2^64-1', crafted(format.Codec.ZSTD, 2n ** 64n - 1n, p), /out of range/],
      ['payload 2^53', crafted(format.Codec.NONE, 64n, p, 2n ** 53n), /out of range/],
      [
        'plaintext 2 GiB from 64 bytes of zstd',
        crafted(format.Codec.ZSTD, 2n ** 31n, p),
        /more than 64 bytes of zstd/,
      ],
      [
        'plaintext beyond any object',
        crafted(format.Codec.ZSTD, BigInt(format.MAX_BLOB_PLAINTEXT_BYTES) + 1n, Buffer.alloc(1 << 20)),
        /more than any object/,
      ],
    ];
    for (const [name, blob, msg] of cases) {
      expect(() => decodeBlob(blob), name).toThrow(BlobFormatError);
      expect(() => decodeBlob(blob), name).toThrow(msg);
    }
    const big = encodeBlob(Buffer.alloc(256 * 1024, 7), { levelZstd: 1 });
    expect(() => decodeBlob(big, { maxPlaintextBytes: 64 * 1024 })).toThrow(
      /more than this kind of object holds/,
    );
    expect(decodeBlob(big, { maxPlaintextBytes: 256 * 1024 })).toHaveLength(256 * 1024);
  });

  it('a plausible blob size for a chunk: the envelope plus 1 byte up to the plaintext length', () => {
    const env = format.BLOB_HEADER_BYTES + format.BLOB_TAG_BYTES;
    expect(isPlausibleBlobSize(0, 100)).toBe(false);
    expect(isPlausibleBlobSize(env, 100)).toBe(false);
    expect(isPlausibleBlobSize(env + 1, 100)).toBe(true);
    expect(isPlausibleBlobSize(env + 100, 100)).toBe(true);
    expect(isPlausibleBlobSize(env + 101, 100)).toBe(false);
    for (const data of [seededBytes(65536, 1), Buffer.alloc(65536, 3), Buffer.from('x')])
      for (const levelZstd of [0, 1, 19, -7])
        expect(isPlausibleBlobSize(encodeBlob(data, { levelZstd }).length, data.length)).toBe(true);
  });
});
