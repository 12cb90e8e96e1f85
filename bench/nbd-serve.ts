/**
 * nbdcopy reading (to null:) a 2 GiB disk served by `vmvault serve` (from a snapshot) vs by
 * qemu-nbd serving the same raw file. Prints wall time, MB/s and the server's peak RSS.
 *   npm run build && npx tsx bench/nbd-serve.ts
 */
import { spawn } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { CACHE, ext4Images } from './lib/datasets.js';
import { measure, sh } from './lib/harness.js';

const { base } = await ext4Images();
const img = join(CACHE, 'nbd-read-2g.raw');
if (!existsSync(img)) await sh(`head -c 2G ${base} > ${img}.tmp && mv ${img}.tmp ${img}`);
const size = 2 * 1024 ** 3;
const repo = join(CACHE, 'serve-repo');
const vmvault = join(process.cwd(), 'bin/vmvault');
if (!existsSync(repo)) await sh(`${vmvault} init ${repo} >/dev/null && ${vmvault} -q backup-image -r ${repo} --vm serve ${img}:vda >/dev/null`);
const sock = join(CACHE, 'serve.sock');

async function vmvaultServe(): Promise<{ stop: () => Promise<number> }> {
  rmSync(sock, { force: true });
  const p = spawn('/usr/bin/time', ['-f', '%M', vmvault, 'serve', 'serve@latest', '-r', repo, '--socket', sock], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  p.stderr.on('data', (d: Buffer) => (err += d.toString()));
  await new Promise<void>((resolve) => p.stdout.on('data', (d: Buffer) => d.toString().includes('Ctrl-C') && resolve()));
  return {
    stop: () =>
      new Promise((resolve) => {
        p.on('close', () => resolve(Number(err.trim().split('\n').pop())));
        spawn('pkill', ['-INT', '-f', `serve serve@latest -r ${repo}`]);
      }),
  };
}

const rows: string[] = [];
for (let rep = 0; rep < 2; rep++) {
  const v = await vmvaultServe();
  const a = await measure('nbdcopy ← vmvault serve', 'nbdcopy', [`nbd+unix:///vda?socket=${sock}`, 'null:']);
  const rss = await v.stop();
  await sh(`rm -f ${sock}; qemu-nbd -r -t --shared=8 -f raw -k ${sock} --pid-file ${sock}.pid --fork ${img}`);
  const b = await measure('nbdcopy ← qemu-nbd (raw file)', 'nbdcopy', [`nbd+unix:///?socket=${sock}`, 'null:']);
  await sh(`kill $(cat ${sock}.pid); rm -f ${sock} ${sock}.pid`);
  for (const [m, r] of [[a, `${(rss / 1024).toFixed(0)} MiB`], [b, '']] as const) {
    const line = `| ${m.name} | ${(m.wallMs / 1000).toFixed(2)} s | ${((size / 1e6) / (m.wallMs / 1000)).toFixed(0)} MB/s | ${r} |`;
    rows.push(line);
    console.log(line);
  }
}
