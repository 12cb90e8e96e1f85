/**
 * Restore of the realistic image to qcow2 and raw, and of a 1 TiB sparse disk with 8 MiB of data.
 *   npm run build && npx tsx bench/restore.ts
 */
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { CACHE, ext4Images } from './lib/datasets.js';
import { measure, sh } from './lib/harness.js';

const work = join(CACHE, 'run-restore');
rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });
const vmvault = join(process.cwd(), 'bin/vmvault');
const { base, sizeBytes } = await ext4Images();
const repo = join(work, 'repo');
await sh(`${vmvault} init ${repo} >/dev/null && ${vmvault} -q backup-image -r ${repo} --vm img ${base}:vda >/dev/null`);
const huge = join(work, 'huge.raw');
await sh(`truncate -s 1T ${huge} && for o in 0 1000 300000 700000 1048000; do head -c 1M /dev/urandom | dd of=${huge} bs=1M seek=$o conv=notrunc,sparse status=none; done; ${vmvault} -q backup-image -r ${repo} --vm huge ${huge}:vda >/dev/null`);
const row = (name: string, m: { wallMs: number; peakRssKiB: number }, bytes: number): void =>
  console.log(`| ${name} | ${(m.wallMs / 1000).toFixed(2)} s | ${((bytes / 1e6) / (m.wallMs / 1000)).toFixed(0)} MB/s | ${(m.peakRssKiB / 1024).toFixed(0)} MiB |`);
console.log('| restore | wall | MB/s (virtual / wall) | peak RSS |\n|---|---|---|---|');
row('ext4 image → qcow2', await measure('q', vmvault, ['-q', 'restore', 'img@latest', '-r', repo, '-o', join(work, 'q')]), sizeBytes);
row('ext4 image → raw', await measure('r', vmvault, ['-q', 'restore', 'img@latest', '-r', repo, '-o', join(work, 'r'), '--format', 'raw']), sizeBytes);
row('1 TiB sparse (5 MiB data) → qcow2', await measure('h', vmvault, ['-q', 'restore', 'huge@latest', '-r', repo, '-o', join(work, 'h')]), 2 ** 40);
await sh(`qemu-img check -q ${join(work, 'q', 'vda.qcow2')} && qemu-img check -q ${join(work, 'h', 'vda.qcow2')}`);
rmSync(work, { recursive: true, force: true });
