/**
 * The CPU floor of the per-byte work a backup and a served snapshot must do, on this machine:
 * zstd compression (levels 1 and -4), zstd decompression and BLAKE3 over the data chunks (1 MiB,
 * all-zero chunks skipped) of the bench ext4 image, on one thread and on two worker threads at
 * once. The seconds it prints for the whole data set are lower bounds for any tool that does this
 * work in the same libraries (zstd-napi, @napi-rs/blake-hash), before reading a byte from QEMU.
 *
 *   npx tsx bench/cpu-floor.ts
 */
import { openSync, readSync, closeSync, fstatSync } from 'node:fs';
import { createRequire } from 'node:module';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { blake3 } from '@napi-rs/blake-hash';
import type * as ZstdBinding from 'zstd-napi/binding.js';

const zstd = createRequire(import.meta.url)('zstd-napi/binding.js') as typeof ZstdBinding;
const CHUNK = 1 << 20;

type Op = 'zstd:1' | 'zstd:-4' | 'unzstd' | 'blake3';
interface Job {
  path: string;
  op: Op;
  /** This thread takes chunks i with i % of === part. */
  part: number;
  of: number;
}

/** Runs one job over the image's data chunks; returns [bytes of plaintext, seconds of wall time]. */
function runJob({ path, op, part, of }: Job): [number, number] {
  const fd = openSync(path, 'r');
  const size = fstatSync(fd).size;
  const buf = Buffer.allocUnsafe(CHUNK);
  const zero = Buffer.alloc(CHUNK);
  const out = Buffer.allocUnsafe(zstd.compressBound(CHUNK));
  const back = Buffer.allocUnsafe(CHUNK);
  const cctx = new zstd.CCtx();
  const dctx = new zstd.DCtx();
  let bytes = 0;
  let seconds = 0;
  for (let i = 0, off = 0; off < size; i++, off += CHUNK) {
    const n = readSync(fd, buf, 0, Math.min(CHUNK, size - off), off);
    const data = buf.subarray(0, n);
    if (i % of !== part || data.equals(zero.subarray(0, n))) continue;
    // Decompression is timed alone: the chunk is compressed (level 1, the default) first.
    const packed = op === 'unzstd' ? out.subarray(0, cctx.compress(out, data, 1)) : undefined;
    const t0 = process.hrtime.bigint();
    if (op === 'zstd:1') cctx.compress(out, data, 1);
    else if (op === 'zstd:-4') cctx.compress(out, data, -4);
    else if (op === 'unzstd') dctx.decompress(back, packed!);
    else blake3(data);
    seconds += Number(process.hrtime.bigint() - t0) / 1e9;
    bytes += n;
  }
  closeSync(fd);
  return [bytes, seconds];
}

if (!isMainThread) {
  parentPort!.postMessage(runJob(workerData as Job));
} else {
  const { ext4Images } = await import('./lib/datasets.js');
  const path = (await ext4Images()).base;
  const inWorker = (job: Job): Promise<[number, number]> =>
    new Promise((resolve, reject) => {
      // Worker threads ignore --import: register tsx's loader first, then load this file.
      const boot =
        `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))})` +
        `.then((m) => { m.register(); return import(${JSON.stringify(import.meta.url)}); })`;
      const w = new Worker(boot, { eval: true, workerData: job });
      w.once('message', resolve);
      w.once('error', reject);
    });
  console.log(`data chunks of ${path} (1 MiB, zeros skipped)\n`);
  console.log('| work | 1 thread | 2 threads at once | whole data set, 2 threads |');
  console.log('|---|---|---|---|');
  for (const op of ['zstd:1', 'zstd:-4', 'unzstd', 'blake3'] as const) {
    const [bytes, s1] = runJob({ path, op, part: 0, of: 1 });
    // Two threads, each timing its own half: the slower one bounds the pair.
    const halves = await Promise.all([0, 1].map((part) => inWorker({ path, op, part, of: 2 })));
    const s2 = Math.max(...halves.map((h) => h[1]));
    const mbs = (b: number, s: number): string => `${(b / 1e6 / s).toFixed(0)} MB/s`;
    console.log(
      `| ${op === 'unzstd' ? 'zstd decompress' : op === 'blake3' ? 'BLAKE3' : `zstd compress ${op.slice(5)}`} | ${mbs(bytes, s1)} | ${mbs(bytes, s2)} (${(s1 / s2).toFixed(2)}x one) | ${s2.toFixed(2)} s for ${(bytes / 1e6).toFixed(0)} MB |`,
    );
  }
}
