import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IMAGE_WRITE_ERROR, ImageWriteError } from '../../src/restore/image-writer.js';
import { createRawWriter } from '../../src/restore/raw-writer.js';
import { isAllZero } from '../../src/restore/zero.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** Data chunks, all-zero chunks, chunks with short and long zero runs; the last chunk partial. */
function makeDisk(sizeBytes: number, chunkBytes: number): Buffer {
  const raw = Buffer.alloc(sizeBytes);
  for (let off = 0, c = 0; off < sizeBytes; off += chunkBytes, c++) {
    const len = Math.min(chunkBytes, sizeBytes - off);
    if (c % 4 === 2) continue; // all zero
    seededBytes(len, c + 1).copy(raw, off);
    if (c % 4 === 1) {
      raw.fill(0, off + 4 * KiB, off + Math.min(len, 12 * KiB)); // short run: written
      raw.fill(0, off + len / 2, off + len / 2 + Math.min(len / 4, 256 * KiB)); // long run: a hole
    }
  }
  return raw;
}

describe('isAllZero', () => {
  it('finds a single non-zero byte anywhere, for any length', () => {
    for (const len of [0, 1, 7, 8, 4096, 256 * KiB, 256 * KiB + 3, 3 * MiB]) {
      const b = Buffer.alloc(len);
      expect(isAllZero(b)).toBe(true);
      for (const at of [0, Math.floor(len / 2), len - 1]) {
        if (len === 0) continue;
        b[at] = 1;
        expect(isAllZero(b), `len ${len} at ${at}`).toBe(false);
        b[at] = 0;
      }
    }
    expect(isAllZero(new Uint8Array(100).subarray(10, 20))).toBe(true);
  });
});

describe('raw writer', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => ({ dir, cleanup } = await makeTmpDir('vmvault-raw-')));
  afterAll(async () => cleanup());

  for (const chunkBytes of [64 * KiB, MiB, 4 * MiB]) {
    it(`sparse by default: ${chunkBytes / KiB} KiB chunks, identical content, zero chunks and long zero runs are holes`, async () => {
      const sizeBytes = 32 * MiB + 12800;
      const raw = makeDisk(sizeBytes, chunkBytes);
      const out = join(dir, `s-${chunkBytes}.raw`);
      const w = await createRawWriter(out, sizeBytes);
      for (let off = 0, c = 0; off < sizeBytes; off += chunkBytes, c++) {
        if (c % 8 === 6) continue; // a hole: never handed to the writer (it is all zero)
        await w.write(off, raw.subarray(off, Math.min(off + chunkBytes, sizeBytes)));
      }
      await w.finish();
      const st = await stat(out);
      expect(st.size).toBe(sizeBytes);
      expect((await readFile(out)).equals(raw)).toBe(true);
      let nonZero = 0;
      for (let at = 0; at < sizeBytes; at += 4 * KiB)
        if (!isAllZero(raw.subarray(at, at + 4 * KiB))) nonZero += 4 * KiB;
      // Allocated: the non-zero blocks plus the zero runs under 64 KiB written with them (at
      // most 24 KiB in every fourth chunk), well below the virtual size.
      expect(st.blocks * 512).toBeGreaterThanOrEqual(nonZero);
      expect(st.blocks * 512).toBeLessThan(nonZero + (sizeBytes / chunkBytes / 4 + 1) * 24 * KiB + MiB);
      expect(st.blocks * 512).toBeLessThan(sizeBytes * 0.8); // a quarter of the chunks are zero;
    });
  }

  it('sparse: false writes every byte, gaps included (a fully allocated file)', async () => {
    const sizeBytes = 8 * MiB;
    const out = join(dir, 'full.raw');
    const w = await createRawWriter(out, sizeBytes, { sparse: false });
    await w.write(MiB, Buffer.alloc(MiB)); // zeros, written
    await w.write(3 * MiB, Buffer.alloc(MiB, 5));
    await w.finish(); // fills [4 MiB, 8 MiB)
    const st = await stat(out);
    expect(st.size).toBe(sizeBytes);
    expect(st.blocks * 512).toBeGreaterThanOrEqual(sizeBytes);
    const want = Buffer.alloc(sizeBytes);
    want.fill(5, 3 * MiB, 4 * MiB);
    expect((await readFile(out)).equals(want)).toBe(true);
  });

  it('takes unaligned pieces and an odd size; copies its input (the caller may reuse buffers)', async () => {
    const sizeBytes = 3 * MiB + 1001;
    const out = join(dir, 'odd.raw');
    const want = Buffer.alloc(sizeBytes);
    const buf = Buffer.alloc(300_001);
    const w = await createRawWriter(out, sizeBytes, { writeBufferBytes: 100_000 });
    for (let off = 777, i = 0; off + buf.length <= sizeBytes; off += buf.length + 12_345, i++) {
      seededBytes(buf.length, i + 10).copy(buf);
      buf.copy(want, off);
      await w.write(off, buf);
    }
    const tail = seededBytes(1001, 3);
    tail.copy(want, sizeBytes - 1001);
    await w.write(sizeBytes - 1001, tail);
    await w.finish();
    expect((await readFile(out)).equals(want)).toBe(true);
  });

  it('refuses out-of-order, overlapping and past-the-end writes with typed errors; an existing file; abort removes it', async () => {
    const out = join(dir, 'bad.raw');
    const w = await createRawWriter(out, 4 * MiB);
    await w.write(MiB, Buffer.alloc(MiB, 1));
    await expect(w.write(0, Buffer.alloc(10, 1))).rejects.toMatchObject({ code: IMAGE_WRITE_ERROR.ORDER });
    await expect(w.write(2 * MiB - 1, Buffer.alloc(10, 1))).rejects.toBeInstanceOf(ImageWriteError);
    await expect(w.write(4 * MiB - 5, Buffer.alloc(10, 1))).rejects.toMatchObject({
      code: IMAGE_WRITE_ERROR.RANGE,
    });
    await w.write(2 * MiB, Buffer.alloc(10, 2)); // still usable
    await expect(createRawWriter(out, MiB)).rejects.toMatchObject({
      code: 'OUTPUT_FAILED',
      message: /exists/,
    });
    await w.abort();
    await expect(stat(out)).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(w.write(3 * MiB, Buffer.alloc(1))).rejects.toMatchObject({ code: IMAGE_WRITE_ERROR.STATE });
  });

  it('finish is idempotent and later writes fail', async () => {
    const out = join(dir, 'done.raw');
    const w = await createRawWriter(out, MiB);
    await w.write(0, Buffer.alloc(512, 9));
    await w.finish();
    await w.finish();
    await expect(w.write(512, Buffer.alloc(512, 9))).rejects.toMatchObject({ code: IMAGE_WRITE_ERROR.STATE });
    expect((await stat(out)).size).toBe(MiB);
  });
});
