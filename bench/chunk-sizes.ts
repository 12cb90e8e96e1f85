/**
 * The numbers behind the repository defaults (docs/format.md): for each chunk size and zstd level,
 * single-core hash + compress throughput and the compression ratio on a realistic ext4 image,
 * plus how much a near-identical clone adds at each chunk size.
 *   npx tsx bench/chunk-sizes.ts
 */
import { open } from 'node:fs/promises';
import { blake3 } from '@napi-rs/blake-hash';
import { compress } from 'zstd-napi';
import { ext4Images } from './lib/datasets.js';

const SAMPLE = 512 * 1024 * 1024;

async function readSample(path: string, offset: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  const buf = Buffer.alloc(SAMPLE);
  await fh.read(buf, 0, SAMPLE, offset);
  await fh.close();
  return buf;
}

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i += 8) if (b.readBigUInt64LE(i) !== 0n) return false;
  return true;
}

const { base, clone } = await ext4Images();
const data = await readSample(base, 0);
console.log(`sample: first ${SAMPLE / 1048576} MiB of ${base}`);
console.log('| chunk size | zstd level | hash+compress MB/s (1 core) | stored / data | zero chunks |');
console.log('|---|---|---|---|---|');
for (const cs of [64 * 1024, 256 * 1024, 1024 * 1024, 4 * 1024 * 1024]) {
  for (const level of [1, 3, 6]) {
    if (cs !== 1024 * 1024 && level !== 3) continue;
    let stored = 0;
    let dataBytes = 0;
    let zeros = 0;
    const t0 = process.hrtime.bigint();
    for (let off = 0; off < data.length; off += cs) {
      const c = data.subarray(off, off + cs);
      if (isZero(c)) {
        zeros++;
        continue;
      }
      blake3(c);
      const z = compress(c, { compressionLevel: level });
      stored += Math.min(z.length, c.length);
      dataBytes += c.length;
    }
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    console.log(
      `| ${cs / 1024} KiB | ${level} | ${(dataBytes / 1e6 / (ms / 1000)).toFixed(0)} | ${(stored / dataBytes).toFixed(3)} | ${zeros} of ${data.length / cs} |`,
    );
  }
}
// Dedup granularity: how many bytes of the clone's changed region each chunk size re-stores.
const a = await readSample(base, 1400 * 1048576);
const b = await readSample(clone, 1400 * 1048576);
console.log('\n| chunk size | clone: changed bytes stored again (64 MiB rewritten) | index bytes per TiB |');
console.log('|---|---|---|');
for (const cs of [64 * 1024, 256 * 1024, 1024 * 1024, 4 * 1024 * 1024]) {
  let changed = 0;
  for (let off = 0; off < a.length; off += cs)
    if (!a.subarray(off, off + cs).equals(b.subarray(off, off + cs))) changed += cs;
  console.log(
    `| ${cs / 1024} KiB | ${(changed / 1048576).toFixed(1)} MiB | ${(((2 ** 40 / cs) * 32) / 1048576).toFixed(0)} MiB |`,
  );
}
