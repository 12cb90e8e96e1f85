/**
 * Throughput of vmvault's NbdServer serving a FileExport of a raw file, read by
 * `nbdcopy URI null:`, vs qemu-nbd serving the same file (random data in /tmp, in the page cache).
 *
 *   npx tsx bench/nbd-serve.ts [--size 2G] [--reps 5]
 *
 * Each server runs as its own process; nbdcopy (default settings: 4 connections when the export
 * allows multi-conn, 64 requests of 256 KiB each) is timed under /usr/bin/time -v, and each
 * server's peak RSS is read from /proc/PID/status (VmHWM) before it is stopped. One warm-up run per
 * server is discarded; the summary gives medians.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { FileExport, NbdServer } from '../src/nbd/index.js';
import { parseSize } from '../src/util/index.js';
import { measure, sh } from './lib/harness.js';

const { values } = parseArgs({
  options: {
    serve: { type: 'string' },
    file: { type: 'string' },
    size: { type: 'string', default: '2G' },
    reps: { type: 'string', default: '5' },
  },
});

if (values.serve) {
  // Child mode: serve `file` on the unix socket until SIGTERM.
  const server = new NbdServer([await FileExport.open(values.file!, '')]);
  await server.listenUnix(values.serve);
  process.on('SIGTERM', () => void server.close().then(() => process.exit(0)));
  process.stdout.write('ready\n');
} else {
  const sizeBytes = parseSize(values.size!);
  const dir = process.env.VMVAULT_BENCH_TMP ?? '/tmp/vmvault-bench-nbd';
  mkdirSync(dir, { recursive: true });
  const img = join(dir, `random-${values.size}.raw`);
  if (!existsSync(img)) await sh(`head -c ${sizeBytes} /dev/urandom > ${img}.tmp && mv ${img}.tmp ${img}`);
  await sh(`cat ${img} > /dev/null`);
  const sock = join(dir, 'serve.sock');
  const uri = `nbd+unix:///?socket=${sock}`;

  const peakRssKiB = (pid: number): number =>
    Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN);

  async function stop(child: ChildProcess): Promise<void> {
    if (child.exitCode !== null) return;
    const closed = new Promise((r) => child.once('close', r));
    child.kill('SIGTERM');
    await closed;
  }

  async function ours(): Promise<{ pid: number; stop: () => Promise<void> }> {
    await sh(`rm -f ${sock}`);
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', import.meta.filename, '--serve', sock, '--file', img],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
      child.once('exit', (code) => reject(new Error(`server exited with ${code}`)));
    });
    return { pid: child.pid!, stop: () => stop(child) };
  }

  async function qemu(): Promise<{ pid: number; stop: () => Promise<void> }> {
    await sh(`rm -f ${sock}`);
    const pidFile = join(dir, 'serve-qemu.pid');
    await sh(`rm -f ${pidFile}`);
    const child = spawn(
      'qemu-nbd',
      ['-r', '-t', '--shared=8', '-f', 'raw', '-k', sock, '--pid-file', pidFile, img],
      {
        stdio: 'ignore',
      },
    );
    while (!existsSync(pidFile)) await new Promise((r) => setTimeout(r, 10)); // written once it listens
    return { pid: child.pid!, stop: () => stop(child) };
  }

  const mbps = (ms: number): string => ((sizeBytes / 1e6) * (1000 / ms)).toFixed(0);
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const results = new Map<string, { wall: number[]; rss: number[] }>();
  async function run(
    name: string,
    start: () => Promise<{ pid: number; stop: () => Promise<void> }>,
    warm: boolean,
  ) {
    const s = await start();
    try {
      const m = await measure(name, 'nbdcopy', [uri, 'null:']);
      const rss = peakRssKiB(s.pid);
      if (warm) return;
      const r = results.get(name) ?? { wall: [], rss: [] };
      r.wall.push(m.wallMs);
      r.rss.push(rss);
      results.set(name, r);
      console.log(
        `| ${name} | ${(m.wallMs / 1000).toFixed(2)} s | ${mbps(m.wallMs)} | ${(rss / 1024).toFixed(0)} MiB |`,
      );
    } finally {
      await s.stop();
    }
  }

  console.log('| server (read by nbdcopy → null:) | wall | MB/s | server peak RSS |');
  console.log('|---|---|---|---|');
  const OURS = 'vmvault NbdServer (FileExport)';
  const QEMU = 'qemu-nbd (same raw file)';
  await run(OURS, ours, true);
  await run(QEMU, qemu, true);
  for (let rep = 0; rep < Number(values.reps); rep++) {
    await run(OURS, ours, false);
    await run(QEMU, qemu, false);
  }
  const o = results.get(OURS)!;
  const q = results.get(QEMU)!;
  console.log(
    `\nmedians: vmvault ${(median(o.wall) / 1000).toFixed(2)} s (${mbps(median(o.wall))} MB/s, peak RSS ${(Math.max(...o.rss) / 1024).toFixed(0)} MiB), ` +
      `qemu-nbd ${(median(q.wall) / 1000).toFixed(2)} s (${mbps(median(q.wall))} MB/s, peak RSS ${(Math.max(...q.rss) / 1024).toFixed(0)} MiB)`,
  );
  console.log(`vmvault time / qemu-nbd time: ${(median(o.wall) / median(q.wall)).toFixed(2)}x`);
}
