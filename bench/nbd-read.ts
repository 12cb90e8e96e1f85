/**
 * Read throughput of vmvault's NBD client vs nbdcopy from the same qemu-nbd export (a 2 GiB raw
 * file of real data, in the page cache). Both read every byte; nbdcopy writes to null:.
 *   npm run build && npx tsx bench/nbd-read.ts
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { CACHE, ext4Images } from './lib/datasets.js';
import { measure, sh } from './lib/harness.js';

const { base } = await ext4Images();
const img = join(CACHE, 'nbd-read-2g.raw');
if (!existsSync(img)) await sh(`head -c 2G ${base} > ${img}.tmp && mv ${img}.tmp ${img}`);
const size = 2 * 1024 ** 3;
const sock = join(CACHE, 'nbd-read.sock');
await sh(
  `rm -f ${sock}; qemu-nbd -r -t --shared=8 -f raw -k ${sock} --pid-file ${sock}.pid --fork ${img}; cat ${img} > /dev/null`,
);
const reader = join(CACHE, 'nbd-read-client.mjs');
await sh(`cat > ${reader} <<'JS'
import { NbdClient } from '${process.cwd()}/dist/nbd/index.js';
const c = await NbdClient.connect({ socketPath: process.argv[2] });
const chunk = 2 * 1024 * 1024, depth = 16;
let next = 0;
const bufs = Array.from({ length: depth }, () => Buffer.allocUnsafe(chunk));
await Promise.all(bufs.map(async (buf) => { while (next < c.sizeBytes) { const off = next; next += chunk; await c.read(off, Math.min(chunk, c.sizeBytes - off), buf); } }));
await c.close();
JS`);
const rows: string[] = [];
for (let rep = 0; rep < 3; rep++) {
  const ours = await measure('vmvault NbdClient', 'node', [reader, sock]);
  const peer = await measure('nbdcopy → null:', 'nbdcopy', [`nbd+unix:///?socket=${sock}`, 'null:']);
  for (const m of [ours, peer]) {
    const line = `| ${m.name} | ${(m.wallMs / 1000).toFixed(2)} s | ${(size / 1e6 / (m.wallMs / 1000)).toFixed(0)} MB/s | ${(m.peakRssKiB / 1024).toFixed(0)} MiB |`;
    rows.push(line);
    console.log(line);
  }
}
await sh(`kill $(cat ${sock}.pid); rm -f ${sock} ${sock}.pid`);
