/**
 * Read throughput of vmvault's NbdClient vs `nbdcopy URI null:`, both reading every byte of the
 * same qemu-nbd export (a raw file of random data in /tmp, in the page cache).
 *
 *   npx tsx bench/nbd-read.ts [--size 2G] [--reps 5] [--request-size 256K] [--depth 16]
 *
 * 256 KiB requests, as nbdcopy's default: qemu-nbd serves them faster than 1-2 MiB ones (it
 * allocates a bounce buffer per request, and big ones cost page faults). One warm-up run of each
 * tool is discarded, then the tools alternate; the summary gives medians.
 *
 * Our client runs in a child process (`--client SOCKET`) under /usr/bin/time -v, so both sides are
 * measured the same way: wall time of the whole process and its peak RSS. The child also reports
 * the time of connect + reads alone (without Node/tsx start-up).
 */
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { NbdClient } from '../src/nbd/index.js';
import { parseSize } from '../src/util/index.js';
import { measure, sh } from './lib/harness.js';

const { values } = parseArgs({
  options: {
    client: { type: 'string' },
    size: { type: 'string', default: '2G' },
    reps: { type: 'string', default: '5' },
    'request-size': { type: 'string', default: '256K' },
    depth: { type: 'string', default: '16' },
  },
});
const requestBytes = parseSize(values['request-size']!);
const depth = Number(values.depth);

if (values.client) {
  // Child mode: read the whole export with `depth` requests of `requestBytes` in flight.
  const t0 = process.hrtime.bigint();
  const c = await NbdClient.connect({ socketPath: values.client, maxInFlight: depth });
  let next = 0;
  const bufs = Array.from({ length: depth }, () => Buffer.allocUnsafe(requestBytes));
  await Promise.all(
    bufs.map(async (buf) => {
      while (next < c.sizeBytes) {
        const off = next;
        next += requestBytes;
        await c.read(off, Math.min(requestBytes, c.sizeBytes - off), buf);
      }
    }),
  );
  await c.close();
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  process.stdout.write(
    `${JSON.stringify({ bytes: c.sizeBytes, ms, maxRssKiB: process.resourceUsage().maxRSS })}\n`,
  );
  process.exit(0);
}

const sizeBytes = parseSize(values.size!);
const dir = process.env.VMVAULT_BENCH_TMP ?? '/tmp/vmvault-bench-nbd';
mkdirSync(dir, { recursive: true });
const img = join(dir, `random-${values.size}.raw`);
if (!existsSync(img)) await sh(`head -c ${sizeBytes} /dev/urandom > ${img}.tmp && mv ${img}.tmp ${img}`);
const sock = join(dir, 'qemu-nbd-read.sock');
const pid = join(dir, 'qemu-nbd-read.pid');
await sh(
  `rm -f ${sock}; qemu-nbd -r -t --shared=8 -f raw -k ${sock} --pid-file ${pid} --fork ${img}; cat ${img} > /dev/null`,
);

const mbps = (ms: number): string => ((sizeBytes / 1e6) * (1000 / ms)).toFixed(0);
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const ourArgs = [
  '--import',
  'tsx',
  import.meta.filename,
  '--client',
  sock,
  '--request-size',
  values['request-size']!,
  '--depth',
  String(depth),
];
const peerArgs = [`nbd+unix:///?socket=${sock}`, 'null:'];
console.log(`| run | wall | MB/s | peak RSS | connect + read loop |`);
console.log(`|---|---|---|---|---|`);
const ours: { wall: number[]; loop: number[]; rss: number[] } = { wall: [], loop: [], rss: [] };
const peer: { wall: number[]; rss: number[] } = { wall: [], rss: [] };
try {
  await measure('warm-up', process.execPath, ourArgs);
  await measure('warm-up', 'nbdcopy', peerArgs);
  for (let rep = 0; rep < Number(values.reps); rep++) {
    const o = await measure('vmvault NbdClient', process.execPath, ourArgs);
    const inner = JSON.parse(o.stdout.trim().split('\n').pop()!) as { ms: number; maxRssKiB: number };
    const p = await measure('nbdcopy → null:', 'nbdcopy', peerArgs);
    ours.wall.push(o.wallMs);
    ours.loop.push(inner.ms);
    ours.rss.push(inner.maxRssKiB); // the Node process itself (time -v also sees tsx's esbuild)
    peer.wall.push(p.wallMs);
    peer.rss.push(p.peakRssKiB);
    console.log(
      `| ${o.name} | ${(o.wallMs / 1000).toFixed(2)} s | ${mbps(o.wallMs)} | ${(inner.maxRssKiB / 1024).toFixed(0)} MiB | ${(inner.ms / 1000).toFixed(2)} s, ${mbps(inner.ms)} MB/s |`,
    );
    console.log(
      `| ${p.name} | ${(p.wallMs / 1000).toFixed(2)} s | ${mbps(p.wallMs)} | ${(p.peakRssKiB / 1024).toFixed(0)} MiB | |`,
    );
  }
  const mo = median(ours.wall);
  const ml = median(ours.loop);
  const mp = median(peer.wall);
  console.log(
    `\nmedians: vmvault ${mbps(mo)} MB/s (process), ${mbps(ml)} MB/s (read loop), peak RSS ${(Math.max(...ours.rss) / 1024).toFixed(0)} MiB`,
  );
  console.log(`         nbdcopy ${mbps(mp)} MB/s, peak RSS ${(Math.max(...peer.rss) / 1024).toFixed(0)} MiB`);
  console.log(
    `vmvault / nbdcopy speed: ${((mp / mo) * 100).toFixed(0)}% (process), ${((mp / ml) * 100).toFixed(0)}% (read loop)`,
  );
} finally {
  await sh(`kill $(cat ${pid}) 2>/dev/null; rm -f ${sock} ${pid}`);
}
