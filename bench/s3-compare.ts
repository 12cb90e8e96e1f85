/**
 * S3 repositories (issue 12's "Benchmark and cost"): backup-image and restore of the bench image
 * into one S3 server on loopback (s3rver, a child process), side by side in one run with restic
 * (which speaks S3 and works against s3rver) and with `rclone copy` of the bytes vmvault stored
 * (the server's own upload ceiling for the same data). Targets: vmvault backup ≥ 1.5× restic's
 * speed, restore ≥ 2× restic's, backup within 1.3× of rclone's upload time; requests per GiB.
 *
 *   npm run build && npx tsx bench/s3-compare.ts [--quick] [--connections N]
 *     --quick        the 512 MiB slice of the bench image instead of the 4 GiB image
 *     --connections  vmvault's --s3-connections and rclone's --transfers (default 16)
 *
 * Every tool runs under /usr/bin/time -v (wall, peak RSS). The server runs on the same 2 cores as
 * the client, so its CPU is in every figure alike.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { startS3rver } from '../test/helpers/s3-servers.js';
import { benchImages, CACHE } from './lib/datasets.js';
import { measure, rate, reporter, rss, secs, sh } from './lib/harness.js';
import { cpuFloor as floor, cpuText as cpu, rcloneFor, s3Env, serverTimer } from './lib/s3.js';
import { BENCH_PASSWORD, currentBuild } from './lib/vmvault.js';

const { say, lines } = reporter();

const { values: opt } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    connections: { type: 'string', default: '16' },
  },
});
const conns = Number(opt.connections);
const GiB = 2 ** 30;

const images = await benchImages(opt.quick);
const current = await currentBuild();
const restic = (await sh('command -v restic || true')).trim();
const rclone = (await sh('command -v rclone || true')).trim();
const server = await startS3rver();
/** Runs a measured step and returns it with the server CPU it caused. */
const timed = await serverTimer();
const work = join(CACHE, 's3-compare');
rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });
const env = s3Env(server);

interface S3Json {
  s3?: { requests: Record<string, number>; bytesUp: number; bytesDown: number };
  disks?: Array<{ bytesStored: number; bytesRead: number }>;
}
const reqs = (j: S3Json): string => {
  const r = j.s3?.requests ?? {};
  return Object.entries(r)
    .filter(([, n]) => n > 0)
    .map(([k, n]) => `${k} ${n}`)
    .join(', ');
};
const perGiB = (j: S3Json, bytes: number): string => {
  const r = j.s3?.requests ?? {};
  const total = Object.values(r).reduce((a, b) => a + b, 0);
  return (total / (bytes / GiB)).toFixed(0);
};

try {
  say(`# S3 compare (${opt.quick ? '512 MiB slice' : '4 GiB bench image'}, s3rver on loopback, ${conns} connections)`);
  say(`vmvault ${current.commit}; restic ${restic ? (await sh(`${restic} version`)).trim() : 'missing'}; rclone ${rclone ? (await sh(`${rclone} version | head -1`)).trim() : 'missing'}`);
  say('');
  say('| tool | step | wall | rate (of image) | peak RSS | CPU client + server | requests | requests/GiB |');
  say('|---|---|---|---|---|---|---|---|');

  // vmvault
  const repo = `s3:${server.endpoint}/vmvault-bench/r`;
  const vm = current.bin;
  await measure('init', vm, ['init', repo], env);
  const vb = await timed(
    'vmvault backup-image',
    vm,
    ['--s3-connections', String(conns), 'backup-image', '-r', repo, '--vm', 'bench', images.base, '--json'],
    env,
  );
  const vbj = JSON.parse(vb.stdout) as S3Json;
  const stored = (vbj.disks ?? []).reduce((a, d) => a + d.bytesStored, 0);
  say(`| vmvault | backup-image | ${secs(vb)} | ${rate(images.sizeBytes, vb)} | ${rss(vb)} | ${cpu(vb)} | ${reqs(vbj)} | ${perGiB(vbj, images.sizeBytes)} |`);
  const out = join(work, 'vmvault.raw');
  const vr = await timed(
    'vmvault restore',
    vm,
    ['--s3-connections', String(conns), 'restore', '-r', repo, 'bench@latest', '--disk', 'vda', '-o', out, '--json'],
    env,
  );
  const vrj = JSON.parse(vr.stdout) as S3Json;
  say(`| vmvault | restore → raw | ${secs(vr)} | ${rate(images.sizeBytes, vr)} | ${rss(vr)} | ${cpu(vr)} | ${reqs(vrj)} | ${perGiB(vrj, images.sizeBytes)} |`);
  await sh(`cmp ${out} ${images.base}`);
  rmSync(out, { force: true });

  // encrypted vmvault
  const erepo = `s3:${server.endpoint}/vmvault-bench/enc`;
  const eenv = { ...env, VMVAULT_PASSWORD: BENCH_PASSWORD };
  await measure('init', vm, ['init', erepo, '--encryption', 'aes-256-gcm'], eenv);
  const eb = await timed('vmvault enc backup-image', vm, ['--s3-connections', String(conns), 'backup-image', '-r', erepo, '--vm', 'bench', images.base, '--json'], eenv);
  say(`| vmvault encrypted | backup-image | ${secs(eb)} | ${rate(images.sizeBytes, eb)} | ${rss(eb)} | ${cpu(eb)} | ${reqs(JSON.parse(eb.stdout) as S3Json)} | |`);
  const er = await timed('vmvault enc restore', vm, ['--s3-connections', String(conns), 'restore', '-r', erepo, 'bench@latest', '--disk', 'vda', '-o', out], eenv);
  say(`| vmvault encrypted | restore → raw | ${secs(er)} | ${rate(images.sizeBytes, er)} | ${rss(er)} | ${cpu(er)} | | |`);
  rmSync(out, { force: true });

  // restic
  let rb: Awaited<ReturnType<typeof timed>> | undefined;
  let rr: Awaited<ReturnType<typeof timed>> | undefined;
  if (restic) {
    const rrepo = `s3:${server.endpoint}/restic-bench`;
    const renv = { ...env, RESTIC_PASSWORD: BENCH_PASSWORD, RESTIC_REPOSITORY: rrepo };
    await measure('restic init', restic, ['init', '-q'], renv);
    rb = await timed('restic backup', restic, ['backup', '-q', '-o', `s3.connections=${conns}`, images.base], renv);
    say(`| restic | backup (file) | ${secs(rb)} | ${rate(images.sizeBytes, rb)} | ${rss(rb)} | ${cpu(rb)} | | |`);
    const target = join(work, 'restic-out');
    rr = await timed('restic restore', restic, ['restore', '-q', '-o', `s3.connections=${conns}`, 'latest', '--target', target], renv);
    say(`| restic | restore | ${secs(rr)} | ${rate(images.sizeBytes, rr)} | ${rss(rr)} | ${cpu(rr)} | | |`);
    rmSync(target, { recursive: true, force: true });
  }

  // rclone copy of the bytes vmvault stored (its packs from a local repository of the same image)
  let rc: Awaited<ReturnType<typeof timed>> | undefined;
  if (rclone) {
    const local = join(work, 'local-repo');
    await measure('init', vm, ['init', local], {});
    await measure('local backup', vm, ['backup-image', '-r', local, '--vm', 'bench', images.base], {});
    const rcl = rcloneFor(rclone, server);
    await measure('rclone mkdir', rcl.cmd, rcl.args('mkdir', `${rcl.remote}rclone-bench`), rcl.env);
    rc = await timed('rclone copy', rcl.cmd, rcl.args('copy', '--transfers', String(conns), '--s3-upload-cutoff', '200M', local, `${rcl.remote}rclone-bench/r`), rcl.env);
    say(`| rclone | copy of vmvault's stored bytes (${(stored / 1e6).toFixed(0)} MB) | ${secs(rc)} | ${rate(stored, rc)} (of stored) | ${rss(rc)} | ${cpu(rc)} | | |`);
  }

  say('');
  if (rb && rr) {
    say(`- backup speed vmvault ÷ restic: ${(rb.wallMs / vb.wallMs).toFixed(2)}× (target ≥ 1.5×); encrypted: ${(rb.wallMs / eb.wallMs).toFixed(2)}×`);
    say(`- restore speed vmvault ÷ restic: ${(rr.wallMs / vr.wallMs).toFixed(2)}× (target ≥ 2×); encrypted: ${(rr.wallMs / er.wallMs).toFixed(2)}×`);
    say(
      `- CPU floor of the restore here (client + server CPU over ${availableParallelism()} cores): vmvault ${floor(vr).toFixed(2)} s, restic ${floor(rr).toFixed(2)} s; ` +
        `2× restic's speed needs ≤ ${(rr.wallMs / 2000).toFixed(2)} s`,
    );
  } else say('- restic is not installed (apt-get install restic): no restic ratios');
  if (rc) {
    say(`- vmvault backup time ÷ rclone upload of the same stored bytes: ${(vb.wallMs / rc.wallMs).toFixed(2)} (target ≤ 1.3)`);
    say(`- CPU floor of the backup here: vmvault ${floor(vb).toFixed(2)} s (rclone only uploads: ${floor(rc).toFixed(2)} s)`);
  }
  mkdirSync(join(process.cwd(), 'bench/results'), { recursive: true });
  writeFileSync(join(process.cwd(), `bench/results/s3-compare-${new Date().toISOString().slice(0, 16)}.md`), `${lines.join('\n')}\n`);
} finally {
  await server.stop();
  rmSync(work, { recursive: true, force: true });
}
