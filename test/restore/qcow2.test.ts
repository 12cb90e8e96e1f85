import { stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createQcow2Writer, ImageWriteError } from '../../src/restore/index.js';
import { exec } from '../../src/util/index.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const run = requireTools(['qemu-img', 'qemu-io']);

/** A disk image with data, zero runs and holes at chunk-aligned places, the last chunk partial. */
function makeDisk(size: number, chunk: number, seed: number): Buffer {
  const raw = Buffer.alloc(size);
  const chunks = Math.ceil(size / chunk);
  for (let c = 0; c < chunks; c += 3) {
    const off = c * chunk;
    const len = Math.min(chunk, size - off);
    seededBytes(len, seed + c).copy(raw, off);
    raw.fill(0, off + Math.floor(len / 2), off + Math.floor(len / 2) + Math.min(len / 4, 65536)); // a zero run inside
  }
  raw.fill(0x77, size - 512, size);
  return raw;
}

async function writeQcow2(path: string, raw: Buffer, chunk: number, clusterSizeBytes: number): Promise<void> {
  const w = await createQcow2Writer(path, raw.length, { clusterSizeBytes });
  for (let off = 0; off < raw.length; off += chunk)
    await w.write(off, raw.subarray(off, Math.min(off + chunk, raw.length)));
  await w.finish();
}

describe.runIf(run)('qcow2 writer', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => ({ dir, cleanup } = await makeTmpDir('vmvault-qcow2-')));
  afterAll(async () => cleanup());

  for (const [size, chunk, cluster] of [
    [64 * MiB + 12800, MiB, 65536],
    [24 * MiB, 64 * 1024, 65536],
    [40 * MiB + 512, 4 * MiB, 512 * 1024],
    [20 * MiB, MiB, 4096], // many L2 tables and refcount blocks
    [4 * MiB, 65536, 512],
  ] as const) {
    it(`${size} bytes, ${chunk}-byte chunks, ${cluster}-byte clusters: qemu-img check clean, identical, sparse`, async () => {
      const raw = makeDisk(size, chunk, size);
      const q = join(dir, `d-${size}-${cluster}.qcow2`);
      const r = join(dir, `d-${size}-${cluster}.raw`);
      await writeFile(r, raw);
      await writeQcow2(q, raw, chunk, cluster);
      const check = await exec('qemu-img', ['check', q], { allowFailure: true });
      expect(check.code, check.stdout + check.stderr).toBe(0);
      expect(check.stdout).toMatch(/No errors were found on the image/);
      expect(check.stdout).not.toMatch(/[Ll]eaked/);
      const cmp = await exec('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', q, r], {
        allowFailure: true,
      });
      expect(cmp.stdout + cmp.stderr).toMatch(/Images are identical/);
      const map = JSON.parse((await exec('qemu-img', ['map', '--output=json', q])).stdout) as Array<{
        start: number;
        length: number;
        data: boolean;
      }>;
      const allocated = map.filter((e) => e.data).reduce((a, e) => a + e.length, 0);
      expect(allocated).toBeLessThan(size * 0.6); // holes and zero runs stay unallocated
    });
  }

  it('a 1 TiB virtual disk with a few MiB of data: small file, clean check, data where it was written', async () => {
    const TiB = 1024 ** 4;
    const q = join(dir, 'huge.qcow2');
    const w = await createQcow2Writer(q, TiB);
    const offsets = [0, 300 * MiB, 5 * 1024 * MiB, 512 * 1024 * MiB, TiB - MiB];
    for (const [i, off] of offsets.entries()) await w.write(off, Buffer.alloc(MiB, 0x10 + i));
    await w.finish();
    const st = await stat(q);
    expect(st.blocks * 512).toBeLessThan(16 * MiB);
    const check = await exec('qemu-img', ['check', q], { allowFailure: true });
    expect(check.code, check.stdout).toBe(0);
    for (const [i, off] of offsets.entries()) {
      const io = await exec('qemu-io', [
        '-f',
        'qcow2',
        '-r',
        '-c',
        `read -P 0x${(0x10 + i).toString(16)} ${off} ${MiB}`,
        q,
      ]);
      expect(io.stdout, `offset ${off}`).not.toMatch(/Pattern verification failed/);
    }
    const zero = await exec('qemu-io', [
      '-f',
      'qcow2',
      '-r',
      '-c',
      `read -P 0 ${100 * 1024 * MiB} ${MiB}`,
      q,
    ]);
    expect(zero.stdout).not.toMatch(/Pattern verification failed/);
  });

  it('refuses out-of-order, misaligned and past-the-end writes; an existing file; abort removes the output', async () => {
    const q = join(dir, 'bad.qcow2');
    const w = await createQcow2Writer(q, 8 * MiB);
    await w.write(MiB, Buffer.alloc(MiB, 1));
    await expect(w.write(0, Buffer.alloc(MiB, 1))).rejects.toThrow(ImageWriteError);
    await expect(w.write(3 * MiB + 5, Buffer.alloc(MiB))).rejects.toThrow(/not aligned/);
    await expect(w.write(8 * MiB, Buffer.alloc(MiB))).rejects.toThrow(/past the end/);
    await expect(createQcow2Writer(q, 8 * MiB)).rejects.toThrow(/exists/);
    await w.abort();
    await expect(stat(q)).rejects.toThrow();
  });
});
