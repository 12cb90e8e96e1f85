import { readFile, stat, truncate, writeFile, open } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createQcow2Writer,
  IMAGE_WRITE_ERROR,
  ImageWriteError,
  QCOW2_MAGIC,
  type Qcow2Writer,
} from '../../src/restore/qcow2/index.js';
import { exec, isVmvaultError } from '../../src/util/index.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;
const run = requireTools(['qemu-img', 'qemu-io']);

/** What a restore hands the writer: chunks in order; `undefined` marks a chunk never written. */
interface Disk {
  raw: Buffer;
  chunkBytes: number;
  /** Chunk indexes not handed to the writer (holes: zero slots of the snapshot). */
  holes: Set<number>;
}

/**
 * Chunks of five kinds, cycling with a seed: random data; data with cluster-aligned and unaligned
 * zero runs; an all-zero chunk that is written (must stay unallocated); a hole (never written);
 * a chunk with one non-zero cluster. The last chunk is partial when the size asks for it.
 */
function makeDisk(sizeBytes: number, chunkBytes: number, clusterBytes: number, seed: number): Disk {
  const raw = Buffer.alloc(sizeBytes);
  const holes = new Set<number>();
  const chunks = Math.ceil(sizeBytes / chunkBytes);
  for (let c = 0; c < chunks; c++) {
    const off = c * chunkBytes;
    const len = Math.min(chunkBytes, sizeBytes - off);
    const kind = (c * 7 + seed) % 5;
    if (kind === 0 || kind === 1) {
      seededBytes(len, seed * 1000 + c).copy(raw, off);
      if (kind === 1) {
        const clusterRun = Math.min(len, 3 * clusterBytes);
        const at = off + Math.floor(len / clusterBytes / 3) * clusterBytes;
        raw.fill(0, at, Math.min(off + len, at + clusterRun)); // whole zero clusters
        raw.fill(0, off + 100, off + Math.min(len, 700)); // a zero run inside a data cluster
      }
    } else if (kind === 3) holes.add(c);
    else if (kind === 4) {
      const at = off + Math.floor(len / clusterBytes / 2) * clusterBytes;
      seededBytes(Math.min(clusterBytes, off + len - at), seed + c).copy(raw, at);
    }
    // kind 2: all zero, written.
  }
  // The last bytes are data, so the final (partial) cluster is allocated.
  raw.fill(0x77, sizeBytes - 512, sizeBytes);
  holes.delete(chunks - 1);
  return { raw, chunkBytes, holes };
}

async function writeDisk(w: Qcow2Writer, d: Disk): Promise<void> {
  for (let c = 0, off = 0; off < d.raw.length; c++, off += d.chunkBytes) {
    if (d.holes.has(c)) continue;
    await w.write(off, d.raw.subarray(off, Math.min(off + d.chunkBytes, d.raw.length)));
  }
  await w.finish();
}

async function expectCleanCheck(path: string): Promise<void> {
  const check = await exec('qemu-img', ['check', path], { allowFailure: true });
  expect(check.code, check.stdout + check.stderr).toBe(0);
  expect(check.stdout).toMatch(/No errors were found on the image/);
  expect(check.stdout + check.stderr).not.toMatch(/[Ll]eaked|ERROR|corrupt/);
}

async function expectIdentical(qcow2: string, raw: string): Promise<void> {
  const cmp = await exec('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', qcow2, raw], {
    allowFailure: true,
  });
  expect(cmp.code, cmp.stdout + cmp.stderr).toBe(0);
  expect(cmp.stdout).toMatch(/Images are identical/);
}

interface MapEntry {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
}

async function qemuMap(path: string): Promise<MapEntry[]> {
  return JSON.parse(
    (await exec('qemu-img', ['map', '-f', 'qcow2', '--output=json', path])).stdout,
  ) as MapEntry[];
}

/** Exactly the clusters holding a non-zero byte are allocated; everything else reads as a hole. */
async function expectAllocationMatches(path: string, raw: Buffer, clusterBytes: number): Promise<void> {
  const clusters = Math.ceil(raw.length / clusterBytes);
  const want: boolean[] = [];
  for (let i = 0; i < clusters; i++) {
    const piece = raw.subarray(i * clusterBytes, Math.min(raw.length, (i + 1) * clusterBytes));
    want.push(piece.some((b) => b !== 0));
  }
  const have = new Array<boolean>(clusters).fill(false);
  for (const e of await qemuMap(path)) {
    if (!e.data) continue;
    expect(e.start % clusterBytes).toBe(0);
    for (let i = e.start / clusterBytes; i < Math.ceil((e.start + e.length) / clusterBytes); i++)
      have[i] = true;
  }
  expect(have).toEqual(want);
}

describe.runIf(run)('qcow2 writer', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => ({ dir, cleanup } = await makeTmpDir('vmvault-qcow2-')));
  afterAll(async () => cleanup());

  const cases: Array<[sizeBytes: number, chunkBytes: number, clusterBytes: number]> = [
    [24 * MiB + 12800, 64 * KiB, 64 * KiB], // final partial cluster
    [48 * MiB + 512, MiB, 64 * KiB],
    [40 * MiB + 3 * 512, 4 * MiB, 64 * KiB],
    [24 * MiB + 1024, 64 * KiB * 8, 512 * KiB], // 512 KiB chunks = one cluster each
    [40 * MiB, MiB, 512 * KiB],
    [36 * MiB + 512, 4 * MiB, 512 * KiB],
    [20 * MiB + 1536, MiB, 4 * KiB], // 40 L2 tables, several refcount blocks
    [5 * MiB + 512, 64 * KiB, 512], // 512 B clusters: L2 tables of 64 entries, many refcount blocks
  ];
  for (const [sizeBytes, chunkBytes, clusterBytes] of cases) {
    it(`${sizeBytes} B disk, ${chunkBytes / KiB} KiB chunks, ${clusterBytes} B clusters: clean, identical, zeros unallocated`, async () => {
      const d = makeDisk(sizeBytes, chunkBytes, clusterBytes, sizeBytes % 97);
      const q = join(dir, `m-${sizeBytes}-${chunkBytes}-${clusterBytes}.qcow2`);
      const r = join(dir, `m-${sizeBytes}-${chunkBytes}-${clusterBytes}.raw`);
      await writeFile(r, d.raw);
      const w = await createQcow2Writer(q, sizeBytes, { clusterSizeBytes: clusterBytes });
      await writeDisk(w, d);
      await expectCleanCheck(q);
      await expectIdentical(q, r);
      await expectAllocationMatches(q, d.raw, clusterBytes);
      const st = w.stats;
      expect(st.zeroClusters).toBeGreaterThan(0);
      expect(st.fileBytes).toBe((await stat(q)).size);
    });
  }

  it('writes a header QEMU reads as plain v3: 16-bit refcounts, no features, not corrupt', async () => {
    const q = join(dir, 'hdr.qcow2');
    const w = await createQcow2Writer(q, 8 * MiB);
    await w.write(0, Buffer.alloc(MiB, 3));
    await w.finish();
    const h = (await readFile(q)).subarray(0, 112);
    expect(h.readUInt32BE(0)).toBe(QCOW2_MAGIC);
    expect(h.readUInt32BE(4)).toBe(3); // version
    expect(h.readBigUInt64BE(8)).toBe(0n); // no backing file
    expect(h.readUInt32BE(20)).toBe(16); // cluster_bits
    expect(h.readBigUInt64BE(24)).toBe(BigInt(8 * MiB));
    expect(h.readBigUInt64BE(72)).toBe(0n); // incompatible features
    expect(h.readBigUInt64BE(80)).toBe(0n); // compatible
    expect(h.readBigUInt64BE(88)).toBe(0n); // autoclear
    expect(h.readUInt32BE(96)).toBe(4); // refcount_order
    expect(h.readUInt32BE(100)).toBe(104); // header_length
    expect(h.readBigUInt64BE(104)).toBe(0n); // end of header extensions
    const info = JSON.parse((await exec('qemu-img', ['info', '--output=json', q])).stdout) as {
      format: string;
      'virtual-size': number;
      'cluster-size': number;
      'format-specific': { data: { compat: string; 'refcount-bits': number; corrupt: boolean } };
    };
    expect(info.format).toBe('qcow2');
    expect(info['virtual-size']).toBe(8 * MiB);
    expect(info['cluster-size']).toBe(64 * KiB);
    expect(info['format-specific'].data).toMatchObject({
      compat: '1.1',
      'refcount-bits': 16,
      corrupt: false,
    });
  });

  it('a disk crossing several L2 tables at 64 KiB clusters, with data far apart', async () => {
    const sizeBytes = 3 * GiB + 64 * KiB;
    const q = join(dir, 'l2.qcow2');
    const r = join(dir, 'l2.raw');
    await writeFile(r, '');
    await truncate(r, sizeBytes);
    const pieces: Array<[number, Buffer]> = [
      [0, seededBytes(MiB, 1)],
      [511 * MiB + 960 * KiB, seededBytes(128 * KiB, 2)], // straddles the first L2 boundary
      [1300 * MiB, seededBytes(4 * MiB, 3)],
      [2 * GiB, Buffer.alloc(4 * MiB)], // all zero: no L2 table for this range
      [3 * GiB, seededBytes(64 * KiB, 4)], // the last, partial range
    ];
    const fh = await open(r, 'r+');
    for (const [off, buf] of pieces) await fh.write(buf, 0, buf.length, off);
    await fh.close();
    const w = await createQcow2Writer(q, sizeBytes);
    for (const [off, buf] of pieces) await w.write(off, buf);
    await w.finish();
    expect(w.stats.l2Tables).toBe(4); // ranges 0, 1, 2 and 6 (of 512 MiB each)
    await expectCleanCheck(q);
    await expectIdentical(q, r);
    const allocated = (await qemuMap(q)).filter((e) => e.data).reduce((a, e) => a + e.length, 0);
    expect(allocated).toBe(MiB + 128 * KiB + 4 * MiB + 64 * KiB);
  });

  it('refcount structures cover themselves at every block boundary (512 B clusters: 256 per block)', async () => {
    // Data cluster counts around the points where one more refcount block (and, past 64
    // blocks, one more refcount table cluster) is needed.
    const counts = [250, 251, 252, 253, 254, 255, 256, 500, 505, 506, 507, 16_250, 16_310, 16_320];
    for (const n of counts) {
      const q = join(dir, `rc-${n}.qcow2`);
      const sizeBytes = (n + 1) * 512;
      const data = seededBytes(n * 512, n);
      const w = await createQcow2Writer(q, sizeBytes, { clusterSizeBytes: 512 });
      await w.write(0, data);
      await w.finish();
      await expectCleanCheck(q);
      const check = JSON.parse(
        (await exec('qemu-img', ['check', '--output=json', q], { allowFailure: true })).stdout,
      ) as { 'image-end-offset': number; leaks?: number; corruptions?: number };
      expect(check.leaks ?? 0).toBe(0);
      expect(check.corruptions ?? 0).toBe(0);
      expect(check['image-end-offset']).toBe((await stat(q)).size);
    }
  });

  it('a 1 TiB virtual disk with 4 MiB of scattered data: small file, bounded memory, clean, data in place', async () => {
    const q = join(dir, 'huge.qcow2');
    const w = await createQcow2Writer(q, TiB);
    // The L1 table (16 KiB for 1 TiB) and one L2 table are all the metadata held.
    expect(w.metadataMemoryBytes).toBe(16 * KiB + 64 * KiB);
    const offsets = [0, 300 * MiB, 5 * GiB + 64 * KiB, 512 * GiB, 777 * GiB + 3 * MiB, TiB - 512 * KiB];
    for (const [i, off] of offsets.entries()) {
      const buf = Buffer.alloc(i === 0 ? MiB : 512 * KiB, 0x10 + i);
      await w.write(off, buf);
    }
    await w.finish();
    expect(w.metadataMemoryBytes).toBe(16 * KiB + 64 * KiB);
    expect(w.memoryBytes).toBeLessThanOrEqual(16 * KiB + 64 * KiB + 8 * MiB);
    const st = await stat(q);
    expect(st.size).toBeLessThan(8 * MiB);
    expect(st.blocks * 512).toBeLessThan(8 * MiB);
    await expectCleanCheck(q);
    for (const [i, off] of offsets.entries()) {
      const len = i === 0 ? MiB : 512 * KiB;
      const io = await exec('qemu-io', [
        '-f',
        'qcow2',
        '-r',
        '-c',
        `read -P 0x${(0x10 + i).toString(16)} ${off} ${len}`,
        q,
      ]);
      expect(io.stdout, `offset ${off}`).toMatch(/read \d+\/\d+ bytes/);
      expect(io.stdout, `offset ${off}`).not.toMatch(/Pattern verification failed/);
    }
    const zero = await exec('qemu-io', ['-f', 'qcow2', '-r', '-c', `read -P 0 ${100 * GiB} ${MiB}`, q]);
    expect(zero.stdout).not.toMatch(/Pattern verification failed/);
    const allocated = (await qemuMap(q)).filter((e) => e.data).reduce((a, e) => a + e.length, 0);
    expect(allocated).toBe(MiB + 5 * 512 * KiB);
  });

  it('refuses a virtual size that is not a multiple of 512 (QEMU counts sectors); a multiple of 512 is kept exactly', async () => {
    const sizeBytes = 3 * 64 * KiB + 1000;
    const q = join(dir, 'odd.qcow2');
    await expect(createQcow2Writer(q, sizeBytes)).rejects.toMatchObject({ code: IMAGE_WRITE_ERROR.SIZE });
    await expect(stat(q)).rejects.toMatchObject({ code: 'ENOENT' }); // nothing created
    const even = 3 * 64 * KiB + 1024; // not a whole cluster, but whole sectors
    const raw = seededBytes(even, 9);
    const r = join(dir, 'even.raw');
    await writeFile(r, raw);
    const w = await createQcow2Writer(q, even);
    await w.write(0, raw);
    await w.finish();
    await expectCleanCheck(q);
    await expectIdentical(q, r);
    const info = JSON.parse((await exec('qemu-img', ['info', '--output=json', q])).stdout) as {
      'virtual-size': number;
    };
    expect(info['virtual-size']).toBe(even);
  });

  it('copies what it is given: a caller may reuse its buffer once write() returns', async () => {
    const q = join(dir, 'reuse.qcow2');
    const r = join(dir, 'reuse.raw');
    const sizeBytes = 16 * MiB;
    const expected = Buffer.alloc(sizeBytes);
    const buf = Buffer.alloc(MiB);
    const w = await createQcow2Writer(q, sizeBytes, { writeBufferBytes: 3 * MiB });
    for (let i = 0; i < 16; i++) {
      buf.fill(i + 1);
      buf.copy(expected, i * MiB);
      await w.write(i * MiB, buf);
    }
    await w.finish();
    await writeFile(r, expected);
    await expectIdentical(q, r);
  });

  it('an empty disk and a disk written with zeros only: valid images with nothing allocated', async () => {
    for (const [name, write] of [
      ['empty', false],
      ['zeros', true],
    ] as const) {
      const q = join(dir, `${name}.qcow2`);
      const w = await createQcow2Writer(q, 64 * MiB);
      if (write) for (let off = 0; off < 64 * MiB; off += 4 * MiB) await w.write(off, Buffer.alloc(4 * MiB));
      await w.finish();
      await expectCleanCheck(q);
      expect((await qemuMap(q)).some((e) => e.data)).toBe(false);
      expect(w.stats.l2Tables).toBe(0);
    }
  });

  it('refuses out-of-order, misaligned and past-the-end writes with typed errors and stays usable', async () => {
    const q = join(dir, 'bad.qcow2');
    const r = join(dir, 'bad.raw');
    const w = await createQcow2Writer(q, 8 * MiB);
    await w.write(MiB, Buffer.alloc(MiB, 1));
    const codeOf = async (p: Promise<void>): Promise<string> =>
      p.then(
        () => 'resolved',
        (err: unknown) => {
          expect(err).toBeInstanceOf(ImageWriteError);
          return isVmvaultError(err) ? err.code : 'untyped';
        },
      );
    expect(await codeOf(w.write(0, Buffer.alloc(MiB, 1)))).toBe(IMAGE_WRITE_ERROR.ORDER);
    expect(await codeOf(w.write(MiB, Buffer.alloc(64 * KiB, 1)))).toBe(IMAGE_WRITE_ERROR.ORDER); // overlap
    expect(await codeOf(w.write(3 * MiB + 512, Buffer.alloc(64 * KiB)))).toBe(IMAGE_WRITE_ERROR.ALIGN);
    expect(await codeOf(w.write(3 * MiB, Buffer.alloc(1000, 1)))).toBe(IMAGE_WRITE_ERROR.ALIGN);
    expect(await codeOf(w.write(8 * MiB, Buffer.alloc(MiB)))).toBe(IMAGE_WRITE_ERROR.RANGE);
    expect(await codeOf(w.write(7 * MiB + 512 * KiB, Buffer.alloc(MiB)))).toBe(IMAGE_WRITE_ERROR.RANGE);
    // Two calls at once: the second is refused, the first completes.
    const first = w.write(2 * MiB, Buffer.alloc(MiB, 2));
    expect(await codeOf(w.write(4 * MiB, Buffer.alloc(MiB, 3)))).toBe(IMAGE_WRITE_ERROR.STATE);
    await first;
    await w.write(7 * MiB, Buffer.alloc(MiB, 4));
    await w.finish();
    await w.finish(); // idempotent
    expect(await codeOf(w.write(8 * MiB, Buffer.alloc(0)))).toBe(IMAGE_WRITE_ERROR.STATE);
    const expected = Buffer.alloc(8 * MiB);
    expected.fill(1, MiB, 2 * MiB);
    expected.fill(2, 2 * MiB, 3 * MiB);
    expected.fill(4, 7 * MiB);
    await writeFile(r, expected);
    await expectCleanCheck(q);
    await expectIdentical(q, r);
  });

  it('refuses an existing output, a bad cluster size and a disk too large for the cluster size; abort removes the file', async () => {
    const q = join(dir, 'abort.qcow2');
    const w = await createQcow2Writer(q, 8 * MiB);
    await w.write(0, Buffer.alloc(MiB, 1));
    await expect(createQcow2Writer(q, 8 * MiB)).rejects.toMatchObject({
      code: 'OUTPUT_FAILED',
      message: /exists/,
    });
    await w.abort();
    await w.abort(); // idempotent
    await expect(stat(q)).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(w.write(MiB, Buffer.alloc(MiB))).rejects.toMatchObject({ code: IMAGE_WRITE_ERROR.STATE });
    await expect(createQcow2Writer(join(dir, 'x.qcow2'), MiB, { clusterSizeBytes: 1000 })).rejects.toThrow(
      RangeError,
    );
    await expect(createQcow2Writer(join(dir, 'x.qcow2'), MiB, { clusterSizeBytes: 4 * MiB })).rejects.toThrow(
      RangeError,
    );
    // 1 TiB at 512 B clusters needs a 256 MiB L1 table; QEMU stops at 32 MiB.
    await expect(
      createQcow2Writer(join(dir, 'x.qcow2'), TiB, { clusterSizeBytes: 512 }),
    ).rejects.toMatchObject({
      code: IMAGE_WRITE_ERROR.TOO_LARGE,
    });
    await expect(stat(join(dir, 'x.qcow2'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
