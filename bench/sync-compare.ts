/**
 * Sync (issue 14's "Benchmark"): `vmvault sync` of a local repository into an S3 server on
 * loopback (s3rver, a child process), side by side in one run with `restic copy` of the same
 * image states between restic repositories (local → the same server) and with `rclone copy` of
 * the local vmvault repository's directory (the server's upload ceiling for the same bytes).
 *
 * The data: a working copy of the bench image (the 4 GiB ext4 image; `--quick`: its 512 MiB
 * slice; `--image-mib M` or VMVAULT_BENCH_IMAGE_MIB=M: its first M MiB), backed up in full
 * (tag `full`), then changed by a seeded churn of `--churn` % of the image (lib/churn.ts: half in
 * runs of whole MiB, half in 4 KiB–1 MiB writes; random, text and zeros) and backed up again (tag
 * `inc`), by `vmvault backup-image` into a local repository and by `restic backup` of the file
 * into a local restic repository. Then, each under /usr/bin/time -v:
 *   rclone copy LOCAL bench:… after the first backup, and again after the second (only new files);
 *   vmvault init s3:…/dest --from-repo LOCAL; vmvault sync -r LOCAL --to s3:… --tag full (the
 *     full snapshot only), then vmvault sync (all: the incremental is the one DEST lacks), then
 *     once more (nothing to copy: the fixed cost of a sync);
 *   restic init --copy-chunker-params --from-repo LOCAL on the server; restic copy ID_FULL, then
 *     restic copy ID_INC.
 * Finally both snapshots are restored from DEST and compared with their image states.
 *
 *   npm run build && npx tsx bench/sync-compare.ts [--quick] [--image-mib M] [--churn PERCENT]
 *       [--seed S] [--connections N] [--skip-verify] [--keep]
 *     --connections  vmvault's --s3-connections, restic's s3.connections, rclone's --transfers
 *                    (default 16)
 *     --keep         leave bench/.cache/sync-compare (local repositories, image) for inspection
 *
 * Targets (printed as PASS/FAIL): vmvault sync ≥ 2× restic copy's speed; sync time ≤ 1.2× rclone
 * copy's of the same repository bytes; the incremental sync under 3 s; peak RSS ≤ 256 MiB. The
 * server runs on the same cores as the client, so its CPU is in every figure alike. A copy of the
 * report goes to bench/results/.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { startS3rver } from '../test/helpers/s3-servers.js';
import { applyWrites, churnWrites, SeededStream } from './lib/churn.js';
import { CACHE, ext4Images, ext4Slice } from './lib/datasets.js';
import {
  mb,
  measure,
  pass,
  rate,
  repoUsage,
  reporter,
  rss,
  secs,
  sh,
  type Measurement,
} from './lib/harness.js';
import { cpuFloor, cpuText, rcloneFor, s3Env, serverTimer, type ServerMeasurement } from './lib/s3.js';
import { BENCH_PASSWORD, currentBuild } from './lib/vmvault.js';

const { say, lines } = reporter();

const { values: opt } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    'image-mib': { type: 'string' },
    churn: { type: 'string', default: '3' },
    seed: { type: 'string', default: '14' },
    connections: { type: 'string', default: '16' },
    'skip-verify': { type: 'boolean', default: false },
    keep: { type: 'boolean', default: false },
  },
});
const imageMibArg =
  opt['image-mib'] ?? process.env.VMVAULT_BENCH_IMAGE_MIB ?? (opt.quick ? '512' : undefined);
const imageMiB = imageMibArg === undefined ? undefined : Number(imageMibArg);
if (imageMiB !== undefined && !(Number.isInteger(imageMiB) && imageMiB >= 16 && imageMiB <= 4096))
  throw new Error(`--image-mib ${imageMibArg}: a whole number of MiB, 16–4096`);
const churnPercent = Number(opt.churn);
if (!(churnPercent > 0 && churnPercent < 100)) throw new Error(`--churn ${opt.churn}: a percentage`);
const conns = Number(opt.connections);
if (!(Number.isInteger(conns) && conns >= 1))
  throw new Error(`--connections ${opt.connections}: a whole number`);

const images = imageMiB === undefined ? await ext4Images() : await ext4Slice(imageMiB);
const size = images.sizeBytes;
const current = await currentBuild();
const vm = current.bin;
const restic = (await sh('command -v restic || true')).trim();
const rclone = (await sh('command -v rclone || true')).trim();
if (!restic || !rclone) throw new Error('restic and rclone are needed: apt-get install restic rclone');

const work = join(CACHE, 'sync-compare');
rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });

interface SyncJson {
  sameIds: boolean;
  snapshots: { selected: number; copied: number; present: number; failed: number };
  copied: Array<{ source: string; destination: string; vm: string; time: string }>;
  chunks: { copied: number; present: number };
  bytes: { copied: number; stored: number };
  s3?: { requests: Record<string, number>; bytesUp: number; bytesDown: number };
}
const reqs = (j: SyncJson): string =>
  Object.entries(j.s3?.requests ?? {})
    .filter(([, n]) => n > 0)
    .map(([k, n]) => `${k} ${n}`)
    .join(', ');

/** rclone's own count of what it sent: the "Transferred:" lines of its final stats (-v). */
function rcloneSent(stderr: string): { bytes: number; files: number } {
  const unit: Record<string, number> = { B: 1, KiB: 2 ** 10, MiB: 2 ** 20, GiB: 2 ** 30, TiB: 2 ** 40 };
  const b = /Transferred:\s+([\d.]+) (B|KiB|MiB|GiB|TiB) \//.exec(stderr);
  const f = /Transferred:\s+(\d+) \/ \d+, /.exec(stderr);
  return { bytes: b ? Number(b[1]) * unit[b[2]!]! : NaN, files: f ? Number(f[1]) : NaN };
}

const server = await startS3rver();
try {
  const timed = await serverTimer();
  const env = s3Env(server);
  const image = join(work, 'image.raw');
  const imageName = imageMiB === undefined ? '4 GiB bench image' : `${imageMiB} MiB slice of the bench image`;
  say(
    `# Sync: vmvault sync vs restic copy vs rclone copy (${imageName}, ${churnPercent} % churn, seed ${opt.seed}, ` +
      `s3rver on loopback, ${conns} connections, ${availableParallelism()} cores; ${new Date().toISOString().slice(0, 16)}Z)`,
  );
  say(
    `vmvault ${current.commit}; ${(await sh(`${restic} version`)).trim()}; ${(await sh(`${rclone} version | head -1`)).trim()}`,
  );
  say('');

  // The local repositories: a full backup and an incremental after the churn, of each tool.
  console.log('building the local repositories …');
  await sh(`cp --sparse=always '${images.base}' '${image}'`);
  const allocated = Number((await sh(`du -B1 '${image}' | cut -f1`)).trim());
  const vlocal = join(work, 'vmvault-local');
  const rlocal = join(work, 'restic-local');
  const renv: NodeJS.ProcessEnv = {
    ...env,
    RESTIC_PASSWORD: BENCH_PASSWORD,
    RESTIC_FROM_PASSWORD: BENCH_PASSWORD,
    RESTIC_CACHE_DIR: join(work, 'restic-cache'),
  };
  await measure('vmvault init', vm, ['init', vlocal], {});
  await measure('restic init', restic, ['-r', rlocal, 'init', '-q'], renv);
  const backup = async (tag: string): Promise<{ vb: Measurement; rb: Measurement; stored: number }> => {
    const vb = await measure(
      'vmvault backup-image',
      vm,
      ['backup-image', '-r', vlocal, '--vm', 'bench', '--tag', tag, image, '--json'],
      {},
    );
    const stored = (JSON.parse(vb.stdout) as { disks: Array<{ bytesStored: number }> }).disks.reduce(
      (a, d) => a + d.bytesStored,
      0,
    );
    const rb = await measure(
      'restic backup',
      restic,
      ['-r', rlocal, 'backup', '-q', '--host', 'bench', '--tag', tag, image],
      renv,
    );
    return { vb, rb, stored };
  };
  const b1 = await backup('full');
  const usage1 = await repoUsage(vlocal);
  const rusage1 = await repoUsage(rlocal);

  // rclone: the local vmvault repository as it is after the full backup, then after the incremental.
  const rcl = rcloneFor(rclone, server);
  await measure('rclone mkdir', rcl.cmd, rcl.args('mkdir', `${rcl.remote}rclone-bench`), rcl.env);
  const rcloneCopy = (): Promise<ServerMeasurement> =>
    timed(
      'rclone copy',
      rcl.cmd,
      rcl.args(
        'copy',
        '-v',
        // One recursive listing of the destination: s3rver answers rclone's per-directory
        // (delimiter) listings without the objects two levels down (data/xx/…), so without it
        // the second copy uploads every pack again.
        '--fast-list',
        '--transfers',
        String(conns),
        '--s3-upload-cutoff',
        '200M',
        vlocal,
        `${rcl.remote}rclone-bench/r`,
      ),
      rcl.env,
    );
  const rc1 = await rcloneCopy();

  const churned = churnWrites(new SeededStream(`sync-compare:${opt.seed}`), size, churnPercent);
  applyWrites(image, churned.writes);
  const b2 = await backup('inc');
  const usage2 = await repoUsage(vlocal);
  const rusage2 = await repoUsage(rlocal);
  const rc2 = await rcloneCopy();
  say(
    `Local repositories: vmvault ${mb(usage1.bytes)} after the full backup (${usage1.objects} files; backup ${secs(b1.vb)}), ` +
      `+${mb(usage2.bytes - usage1.bytes)} after the incremental (${usage2.objects - usage1.objects} files; ${secs(b2.vb)}, ` +
      `${mb(b2.stored)} of new chunks stored); restic ${mb(rusage1.bytes)} (backup ${secs(b1.rb)}), +${mb(rusage2.bytes - rusage1.bytes)} (${secs(b2.rb)}). ` +
      `Image: ${mb(size)}, ${mb(allocated)} allocated; the churn wrote ${mb(churned.bytes)} in ${churned.writes.length} writes.`,
  );
  say('');

  // vmvault sync into a destination made from the source (same ids, layout and keys).
  const dest = `s3:${server.endpoint}/vmvault-bench/dest`;
  const s3args = ['--s3-connections', String(conns)];
  await measure('vmvault init --from-repo', vm, [...s3args, 'init', dest, '--from-repo', vlocal], env);
  const sync = async (...filter: string[]): Promise<{ m: ServerMeasurement; j: SyncJson }> => {
    const m = await timed(
      'vmvault sync',
      vm,
      [...s3args, 'sync', '-r', vlocal, '--to', dest, ...filter, '--json'],
      env,
    );
    return { m, j: JSON.parse(m.stdout) as SyncJson };
  };
  const s1 = await sync('--tag', 'full');
  const s2 = await sync();
  const s3 = await sync();
  const open = await timed('vmvault snapshots', vm, [...s3args, 'snapshots', '-r', dest, '--json'], env);

  // restic copy of the same two image states.
  const rdest = `s3:${server.endpoint}/restic-bench/copy`;
  const ro = ['-o', `s3.connections=${conns}`];
  await measure(
    'restic init --copy-chunker-params',
    restic,
    ['-r', rdest, ...ro, 'init', '-q', '--copy-chunker-params', '--from-repo', rlocal],
    renv,
  );
  const rsnaps = JSON.parse(
    (await measure('restic snapshots', restic, ['-r', rlocal, 'snapshots', '--json'], renv)).stdout,
  ) as Array<{
    id: string;
    tags?: string[];
  }>;
  const rid = (tag: string): string => {
    const s = rsnaps.find((x) => x.tags?.includes(tag));
    if (!s) throw new Error(`restic: no snapshot tagged ${tag}`);
    return s.id;
  };
  const resticCopy = (id: string): Promise<ServerMeasurement> =>
    timed('restic copy', restic, ['-r', rdest, ...ro, 'copy', '--from-repo', rlocal, id], renv);
  const rcopy1 = await resticCopy(rid('full'));
  const rcopy2 = await resticCopy(rid('inc'));

  // Both snapshots restored from DEST and compared with their image states.
  let verified = 'skipped (--skip-verify)';
  if (!opt['skip-verify']) {
    console.log('verifying: restoring both snapshots from the destination …');
    const out = join(work, 'restored.raw');
    const problems: string[] = [];
    const states: Array<[string, string | undefined, string]> = [
      ['full', s1.j.copied[0]?.destination, images.base],
      ['inc', s2.j.copied[0]?.destination, image],
    ];
    for (const [name, id, want] of states) {
      try {
        if (!id) throw new Error('not copied');
        await measure(
          'vmvault restore',
          vm,
          [...s3args, 'restore', '-r', dest, id, '--disk', 'vda', '-o', out],
          env,
        );
        await sh(`cmp '${out}' '${want}'`);
      } catch (err) {
        problems.push(`${name}: ${(err as Error).message.split('\n')[0]}`);
      } finally {
        rmSync(out, { force: true });
      }
    }
    verified = problems.length === 0 ? 'both restored byte-identical' : `**${problems.join('; ')}**`;
  }

  const rs1 = rcloneSent(rc1.stderr);
  const rs2 = rcloneSent(rc2.stderr);
  say(
    '| tool | operation | seconds | image data | MB/s (image data) | sent to the server | peak RSS | CPU client + server |',
  );
  say('|---|---|---|---|---|---|---|---|');
  const syncRow = (
    what: string,
    s: { m: ServerMeasurement; j: SyncJson },
    data: number,
    dataWhat: string,
  ): void =>
    say(
      `| vmvault | ${what} | ${secs(s.m)} | ${mb(data)} ${dataWhat} | ${data ? rate(data, s.m) : '—'} | ` +
        `${mb(s.j.s3?.bytesUp ?? NaN)} (${s.j.chunks.copied} chunks, ${mb(s.j.bytes.stored)} stored; ${reqs(s.j)}) | ${rss(s.m)} | ${cpuText(s.m)} |`,
    );
  syncRow('`sync --tag full` (the full snapshot)', s1, size, 'image');
  syncRow('`sync` (the incremental)', s2, churned.bytes, 'changed');
  syncRow('`sync` again (nothing to copy)', s3, 0, '');
  say(
    `| vmvault | \`snapshots\` on DEST (open + list) | ${secs(open)} | | | | ${rss(open)} | ${cpuText(open)} |`,
  );
  say(
    `| restic | \`copy\` the full snapshot | ${secs(rcopy1)} | ${mb(size)} image | ${rate(size, rcopy1)} | ` +
      `(local repo ${mb(rusage1.bytes)}) | ${rss(rcopy1)} | ${cpuText(rcopy1)} |`,
  );
  say(
    `| restic | \`copy\` the incremental | ${secs(rcopy2)} | ${mb(churned.bytes)} changed | ${rate(churned.bytes, rcopy2)} | ` +
      `(local repo +${mb(rusage2.bytes - rusage1.bytes)}) | ${rss(rcopy2)} | ${cpuText(rcopy2)} |`,
  );
  say(
    `| rclone | \`copy\` of the vmvault repository after the full backup | ${secs(rc1)} | ${mb(size)} image | ${rate(size, rc1)} | ` +
      `${mb(rs1.bytes)} (${rs1.files} files; ${rate(rs1.bytes, rc1)}) | ${rss(rc1)} | ${cpuText(rc1)} |`,
  );
  say(
    `| rclone | \`copy\` again after the incremental (new files) | ${secs(rc2)} | ${mb(churned.bytes)} changed | ${rate(churned.bytes, rc2)} | ` +
      `${mb(rs2.bytes)} (${rs2.files} files) | ${rss(rc2)} | ${cpuText(rc2)} |`,
  );
  say('');

  const vsRestic = rcopy1.wallMs / s1.m.wallMs;
  const vsRestic2 = rcopy2.wallMs / s2.m.wallMs;
  const vsRclone = s1.m.wallMs / rc1.wallMs;
  const vsRclone2 = s2.m.wallMs / rc2.wallMs;
  const peak = Math.max(s1.m.peakRssKiB, s2.m.peakRssKiB, s3.m.peakRssKiB) / 1024;
  say(
    `- Copied: full ${s1.j.snapshots.copied} snapshot (${s1.j.chunks.copied} chunks, ${mb(s1.j.bytes.copied)} plaintext, ${s1.j.chunks.present} present), ` +
      `incremental ${s2.j.snapshots.copied} (${s2.j.chunks.copied} chunks, ${mb(s2.j.bytes.copied)}, ${s2.j.chunks.present} present, ${s2.j.snapshots.present} snapshot already there), ` +
      `again ${s3.j.snapshots.copied} (${s3.j.snapshots.present} present); same ids: ${s1.j.sameIds}. Verification: ${verified}.`,
  );
  say(
    `- vmvault sync speed ÷ restic copy's: full ${vsRestic.toFixed(2)}× (target ≥ 2×): ${pass(vsRestic >= 2)}; incremental ${vsRestic2.toFixed(2)}×`,
  );
  say(
    `- vmvault sync time ÷ rclone copy's of the same repository: full ${vsRclone.toFixed(2)} (target ≤ 1.2): ${pass(vsRclone <= 1.2)}; incremental ${vsRclone2.toFixed(2)}`,
  );
  say(
    `- incremental sync: ${secs(s2.m)} (target < 3 s): ${pass(s2.m.wallMs < 3000)}; a sync with nothing to copy: ${secs(s3.m)}`,
  );
  say(`- vmvault sync peak RSS: ${peak.toFixed(0)} MiB (target ≤ 256 MiB): ${pass(peak <= 256)}`);
  say(
    `- CPU floor (client + server CPU over ${availableParallelism()} cores): full sync ${cpuFloor(s1.m).toFixed(2)} s, restic copy ${cpuFloor(rcopy1).toFixed(2)} s, ` +
      `rclone copy ${cpuFloor(rc1).toFixed(2)} s; incremental sync ${cpuFloor(s2.m).toFixed(2)} s`,
  );
} finally {
  await server.stop();
  if (!opt.keep) rmSync(work, { recursive: true, force: true });
}
mkdirSync(join(process.cwd(), 'bench/results'), { recursive: true });
writeFileSync(
  join(process.cwd(), `bench/results/sync-compare-${new Date().toISOString().slice(0, 16)}.md`),
  `${lines.join('\n')}\n`,
);
