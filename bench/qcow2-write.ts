/**
 * The qcow2 writer against the raw writer, `qemu-img convert -O qcow2` and `dd` (plain sequential
 * write), on a 2 GiB disk of mostly random data with zero runs and zero chunks. Every contender
 * reads the same cached raw file in 4 MiB pieces and ends with its output fsynced.
 *   npx tsx bench/qcow2-write.ts [--size 2G] [--rounds 3]
 * A child alone: npx tsx bench/qcow2-write.ts --child qcow2|raw SRC OUT [--cluster 64K] [--sync-every 64M]
 */
import { randomFillSync } from 'node:crypto';
import { existsSync, mkdirSync, promises as fs, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createQcow2Writer } from '../src/restore/qcow2/index.js';
import { createRawWriter } from '../src/restore/raw-writer.js';
import type { ImageWriter } from '../src/restore/image-writer.js';
import { parseSize } from '../src/util/index.js';
import { CACHE } from './lib/datasets.js';
import { measure, sh, type Measurement } from './lib/harness.js';

const CHUNK = 4 * 1024 * 1024;
const SELF = fileURLToPath(import.meta.url);

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
}

/** Child: 1 TiB virtual, 4 MiB of data in 64 KiB pieces at scattered offsets. */
async function childSparse(out: string): Promise<void> {
  const t0 = performance.now();
  const w = await createQcow2Writer(out, 1024 ** 4);
  for (let i = 0; i < 64; i++)
    await w.write(i * 16 * 1024 ** 3 + (i % 7) * 65536, Buffer.alloc(65536, i + 1));
  const t1 = performance.now();
  await w.finish();
  const t2 = performance.now();
  process.stdout.write(JSON.stringify({ writeMs: t1 - t0, finishMs: t2 - t1 }) + '\n');
}

/** Child: stream `src` through one of our writers into `out`. */
async function child(mode: string, src: string, out: string): Promise<void> {
  if (mode === 'sparse-1t') return childSparse(out);
  const size = (await fs.stat(src)).size;
  const syncEveryBytes = parseSize(arg('--sync-every', '64M'));
  const w: ImageWriter =
    mode === 'qcow2'
      ? await createQcow2Writer(out, size, {
          clusterSizeBytes: parseSize(arg('--cluster', '64K')),
          syncEveryBytes,
        })
      : await createRawWriter(out, size, { syncEveryBytes });
  const fh = await fs.open(src, 'r');
  const t0 = performance.now();
  for (let off = 0; off < size; off += CHUNK) {
    // A fresh buffer per chunk, as the restore pipeline hands over decompressed chunks.
    const buf = Buffer.allocUnsafe(Math.min(CHUNK, size - off));
    const { bytesRead } = await fh.read(buf, 0, buf.length, off);
    if (bytesRead !== buf.length) throw new Error('short read');
    await w.write(off, buf);
  }
  const t1 = performance.now();
  await w.finish();
  const t2 = performance.now();
  await fh.close();
  process.stdout.write(JSON.stringify({ writeMs: t1 - t0, finishMs: t2 - t1 }) + '\n');
}

/** 2 GiB: 1 in 8 chunks all zero; the others random with up to 3 zero runs of 64 KiB to 1 MiB. */
async function dataset(sizeBytes: number): Promise<string> {
  mkdirSync(CACHE, { recursive: true });
  const path = join(CACHE, `qcow2-write-${sizeBytes}.raw`);
  if (existsSync(path)) return path;
  const fh = await fs.open(`${path}.tmp`, 'w');
  let x = 0x2545f491;
  const rnd = (n: number): number => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x % n;
  };
  const buf = Buffer.alloc(CHUNK);
  for (let off = 0; off < sizeBytes; off += CHUNK) {
    const len = Math.min(CHUNK, sizeBytes - off);
    if (rnd(8) === 0) continue; // a hole in the raw file: reads as zeros
    randomFillSync(buf, 0, len);
    for (let r = rnd(4); r > 0; r--) {
      const at = rnd(len / 65536) * 65536;
      buf.fill(0, at, Math.min(len, at + (1 + rnd(16)) * 65536));
    }
    await fh.write(buf, 0, len, off);
  }
  await fh.truncate(sizeBytes);
  await fh.close();
  await fs.rename(`${path}.tmp`, path);
  return path;
}

async function main(): Promise<void> {
  const sizeBytes = parseSize(arg('--size', '2G'));
  const rounds = Number(arg('--rounds', '3'));
  const src = await dataset(sizeBytes);
  const work = join(CACHE, 'run-qcow2-write');
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  const nonZero = Number((await sh(`du -B1 ${src} | cut -f1`)).trim());
  console.log(
    `source: ${(sizeBytes / 1024 ** 3).toFixed(2)} GiB virtual, ${(nonZero / 1e6).toFixed(0)} MB allocated`,
  );

  const node = process.execPath;
  const contenders: Array<{ name: string; out: string; run: (out: string) => Promise<Measurement> }> = [
    {
      name: 'vmvault qcow2 writer',
      out: 'v.qcow2',
      run: (out) => measure('qcow2', node, ['--import', 'tsx', SELF, '--child', 'qcow2', src, out]),
    },
    {
      name: 'vmvault raw writer (sparse)',
      out: 'v.raw',
      run: (out) => measure('raw', node, ['--import', 'tsx', SELF, '--child', 'raw', src, out]),
    },
    {
      name: 'qemu-img convert -O qcow2 (cache=writeback: flushes at close)',
      out: 'q.qcow2',
      run: (out) =>
        measure('qemu-img', 'qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-t', 'writeback', src, out]),
    },
    {
      name: 'dd bs=4M conv=fsync (every byte, raw)',
      out: 'dd.raw',
      run: (out) => measure('dd', 'dd', [`if=${src}`, `of=${out}`, 'bs=4M', 'conv=fsync', 'status=none']),
    },
  ];
  const results = new Map<string, Array<{ m: Measurement; allocated: number }>>();
  for (let r = 0; r < rounds; r++) {
    for (const c of contenders) {
      const out = join(work, c.out);
      rmSync(out, { force: true });
      await sh('sync');
      const m = await c.run(out);
      const allocated = Number((await sh(`du -B1 ${out} | cut -f1`)).trim());
      if (r === 0 && out.endsWith('.qcow2'))
        await sh(`qemu-img check -q ${out} && qemu-img compare -q -f qcow2 -F raw ${out} ${src}`);
      if (r === 0 && c.out === 'v.raw') await sh(`cmp ${out} ${src}`);
      (results.get(c.name) ?? results.set(c.name, []).get(c.name)!).push({ m, allocated });
      rmSync(out, { force: true });
    }
  }
  console.log(
    '\n| writer | wall (median of ' +
      rounds +
      ') | MB/s (virtual / wall) | range | peak RSS | output allocated |',
  );
  console.log('|---|---|---|---|---|---|');
  for (const c of contenders) {
    const rs = results
      .get(c.name)!
      .slice()
      .sort((a, b) => a.m.wallMs - b.m.wallMs);
    const med = rs[Math.floor(rs.length / 2)]!;
    const rate = (ms: number): string => (sizeBytes / 1e6 / (ms / 1000)).toFixed(0);
    const rss = Math.max(...rs.map((x) => x.m.peakRssKiB));
    let extra = '';
    const j = med.m.stdout.trim();
    if (j.startsWith('{')) {
      const t = JSON.parse(j) as { writeMs: number; finishMs: number };
      extra = ` (writes ${(t.writeMs / 1000).toFixed(2)} s + finish ${(t.finishMs / 1000).toFixed(2)} s)`;
    }
    console.log(
      `| ${c.name} | ${(med.m.wallMs / 1000).toFixed(2)} s${extra} | ${rate(med.m.wallMs)} | ${rate(rs[rs.length - 1]!.m.wallMs)}–${rate(rs[0]!.m.wallMs)} | ${(rss / 1024).toFixed(0)} MiB | ${(med.allocated / 1e6).toFixed(0)} MB |`,
    );
  }
  const huge = join(work, 'huge.qcow2');
  const m = await measure('sparse', node, ['--import', 'tsx', SELF, '--child', 'sparse-1t', '-', huge]);
  const t = JSON.parse(m.stdout) as { writeMs: number; finishMs: number };
  await sh(`qemu-img check -q ${huge}`);
  const blocks = Number((await sh(`du -B1 ${huge} | cut -f1`)).trim());
  console.log(
    `\n1 TiB virtual, 4 MiB of data in 64 pieces → qcow2: writer ${(t.writeMs + t.finishMs).toFixed(0)} ms ` +
      `(finish ${t.finishMs.toFixed(0)} ms), process ${(m.wallMs / 1000).toFixed(2)} s, peak RSS ` +
      `${(m.peakRssKiB / 1024).toFixed(0)} MiB, file ${(blocks / 1e6).toFixed(1)} MB allocated`,
  );
  const base = await measure('node', node, ['--import', 'tsx', '-e', '0']);
  console.log(
    `(node --import tsx alone: ${(base.wallMs / 1000).toFixed(2)} s, ${(base.peakRssKiB / 1024).toFixed(0)} MiB)`,
  );
  rmSync(work, { recursive: true, force: true });
}

if (process.argv[2] === '--child') await child(process.argv[3]!, process.argv[4]!, process.argv[5]!);
else await main();
