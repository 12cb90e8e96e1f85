/**
 * Throughput of vmvault's NBD server read by `nbdcopy URI null:`, vs qemu-nbd serving the same raw
 * file (in the page cache):
 *  - `vmvault serve` of a snapshot made by `vmvault backup-image` of that file (every chunk read
 *    from the repository, decompressed and verified against its BLAKE3 id), through the CLI;
 *  - NbdServer serving the file itself (a FileExport): the protocol engine alone.
 *
 *   npm run build && npx tsx bench/nbd-serve.ts [--data ext4|random] [--size 2G] [--reps 5]
 *
 * `--data ext4` (default) serves the first SIZE of the realistic ext4 image (bench/lib/datasets.ts:
 * real files, compresses to ~0.4); `random` serves SIZE of /dev/urandom (stored uncompressed).
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
import { CACHE, ext4Images } from './lib/datasets.js';
import { measure, sh } from './lib/harness.js';

const { values } = parseArgs({
  options: {
    serve: { type: 'string' },
    file: { type: 'string' },
    data: { type: 'string', default: 'ext4' },
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
  const img = join(dir, `${values.data}-${values.size}.raw`);
  if (!existsSync(img)) {
    if (values.data === 'random') await sh(`head -c ${sizeBytes} /dev/urandom > ${img}.tmp`);
    else if (values.data === 'ext4')
      await sh(`head -c ${sizeBytes} ${(await ext4Images()).base} > ${img}.tmp`);
    else throw new Error(`--data is ext4 or random, not ${values.data}`);
    await sh(`mv ${img}.tmp ${img}`);
  }
  await sh(`cat ${img} > /dev/null`);
  const sock = join(dir, 'serve.sock');
  const uri = `nbd+unix:///?socket=${sock}`;
  const vmvault = join(process.cwd(), 'bin/vmvault');
  const repo = join(CACHE, `serve-repo-${values.data}-${values.size}`);
  if (!existsSync(join(repo, 'config'))) {
    await sh(`rm -rf ${repo} && ${vmvault} init ${repo} >/dev/null`);
    await sh(`${vmvault} -q backup-image -r ${repo} --vm serve ${img}:vda >/dev/null`);
  }
  await sh(`cat $(find ${repo} -type f) > /dev/null`);

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

  async function snapshot(): Promise<{ pid: number; stop: () => Promise<void> }> {
    await sh(`rm -f ${sock}`);
    const child = spawn(vmvault, ['serve', 'serve@latest', '-r', repo, '--socket', sock], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => d.toString().includes('Ctrl-C') && resolve());
      child.once('exit', (code) => reject(new Error(`vmvault serve exited with ${code}`)));
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

  const SNAP = 'vmvault serve (snapshot)';
  const OURS = 'vmvault NbdServer (FileExport)';
  const QEMU = 'qemu-nbd (same raw file)';
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
      const m = await measure(name, 'nbdcopy', [
        name === SNAP ? uri.replace(':///', ':///vda') : uri,
        'null:',
      ]);
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

  console.log(`data: ${values.data}, ${values.size}`);
  console.log('| server (read by nbdcopy → null:) | wall | MB/s | server peak RSS |');
  console.log('|---|---|---|---|');
  const servers: Array<[string, () => Promise<{ pid: number; stop: () => Promise<void> }>]> = [
    [SNAP, snapshot],
    [OURS, ours],
    [QEMU, qemu],
  ];
  for (const [name, start] of servers) await run(name, start, true);
  for (let rep = 0; rep < Number(values.reps); rep++)
    for (const [name, start] of servers) await run(name, start, false);
  const q = results.get(QEMU)!;
  console.log('\nmedians:');
  for (const [name] of servers) {
    const r = results.get(name)!;
    console.log(
      `  ${name}: ${(median(r.wall) / 1000).toFixed(2)} s (${mbps(median(r.wall))} MB/s, peak RSS ${(Math.max(...r.rss) / 1024).toFixed(0)} MiB), ` +
        `${(median(r.wall) / median(q.wall)).toFixed(2)}x qemu-nbd's time`,
    );
  }
}
