/**
 * Forget and prune (issue 13's "Benchmark"), in one run:
 *
 * 1. Retention side by side with restic: a working copy of the bench image (the first 1 GiB of
 *    the ext4 image, `--quick`: 256 MiB) gets N daily snapshots (default 30) in a vmvault
 *    repository (`backup-image --time`) and in a restic repository (`restic backup --time`, the
 *    file itself), with churn between days: ~3 % of the image overwritten a day (a seeded stream:
 *    half the bytes in runs of 1–4 whole MiB at MiB-aligned offsets, half in writes of
 *    4 KiB–1 MiB at 4 KiB-aligned offsets; the data 45 % random, 45 % hex text (≈ 2:1
 *    compressible), 10 % zeros). Then, timed under /usr/bin/time -v:
 *      vmvault forget --keep-daily 7 --keep-weekly 2 --prune --grace 0 --json, then a second
 *      vmvault prune --grace 0 --json;  restic forget --keep-daily 7 --keep-weekly 2 --prune.
 *    Space is `du -sb` of each repository before and after. The kept snapshots' unique data is
 *    measured, not estimated: the kept days' image states are rebuilt (the churn is deterministic)
 *    and backed up, with the same times, into a fresh repository of the same tool; its size is
 *    what the kept snapshots need (data, indexes, pages, manifests). Both tools use their own
 *    default repack threshold (vmvault --max-unused 10 % per pack, restic 5 % of the repository).
 *    TZ=UTC for both, so days and ISO weeks are the same buckets. Afterwards every kept snapshot
 *    of the pruned vmvault repository is restored and compared with its day's image, and
 *    `check --read-data` runs on it.
 * 2. GC mark at scale: a repository of S snapshots (default 1,000) of a D GiB disk (default 100)
 *    at 1 MiB chunks, built with the library (src/repo: PackStore, putIndex, putSnapshot) and
 *    cached in bench/.cache/prune-scale-…; every slot is data. Snapshot 1 holds D × 1024 distinct
 *    chunks; each later one rewrites ~1 % of the slots (half in 16-slot runs, half single slots)
 *    with new distinct chunks. Every chunk is a real 1 MiB chunk named by the hash of its content
 *    (a counter and a tag in its first 19 bytes, the rest zero: it compresses to ~80 bytes, so
 *    the repository is small on disk and has far fewer packs than a real one; building it costs
 *    hashing and compressing all of its TiB once, ~7.5 min here). The chunk index is compacted
 *    by the library's own policy (ChunkIndex.compact) after each snapshot. Then `vmvault prune
 *    --dry-run --json` (mark only) is timed under /usr/bin/time -v.
 *
 *   npm run build && npx tsx bench/prune-compare.ts [--quick] [--days N] [--image-mib M]
 *       [--churn PERCENT] [--seed S] [--scale-snapshots S] [--scale-disk-gib D] [--skip-scale]
 *       [--skip-retention] [--keep]
 *     --quick  a 256 MiB image, and a scale repository of 100 snapshots of a 10 GiB disk
 *     --keep   leave bench/.cache/prune-compare (the repositories; vmvault-repo-before: the
 *              vmvault repository as it was before forget) for inspection
 *
 * Targets printed as PASS/FAIL: vmvault forget+prune ≥ 3× restic's speed, vmvault peak RSS
 * ≤ 256 MiB, space left within 10 % of the kept snapshots' unique data. A copy of the report goes
 * to bench/results/.
 */
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { DiskIndex, emptyDiskStats, format, Repository, type SnapshotManifest } from '../src/repo/index.js';
import { applyWrites, churnWrites, SeededStream } from './lib/churn.js';
import { CACHE, ext4Slice } from './lib/datasets.js';
import { mb, measure, pass, reporter, rss, secs, sh, type Measurement } from './lib/harness.js';
import { currentBuild } from './lib/vmvault.js';

const { say, lines } = reporter();

const { values: opt } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    days: { type: 'string', default: '30' },
    'image-mib': { type: 'string' },
    churn: { type: 'string', default: '3' },
    seed: { type: 'string', default: '13' },
    'scale-snapshots': { type: 'string' },
    'scale-disk-gib': { type: 'string' },
    'skip-scale': { type: 'boolean', default: false },
    'skip-retention': { type: 'boolean', default: false },
    keep: { type: 'boolean', default: false },
  },
});
const int = (name: string, v: string, min: number): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} ${v}: give a whole number ≥ ${min}`);
  return n;
};
const days = int('days', opt.days, 2);
const imageMiB = int('image-mib', opt['image-mib'] ?? (opt.quick ? '256' : '1024'), 16);
const churnPercent = Number(opt.churn);
if (!(churnPercent > 0 && churnPercent < 100)) throw new Error(`--churn ${opt.churn}: a percentage`);
const seed = opt.seed;
const scaleSnapshots = int('scale-snapshots', opt['scale-snapshots'] ?? (opt.quick ? '100' : '1000'), 2);
const scaleDiskGiB = int('scale-disk-gib', opt['scale-disk-gib'] ?? (opt.quick ? '10' : '100'), 1);

const MiB = 2 ** 20;
const current = await currentBuild();
const vm = current.bin;
const restic = (await sh('command -v restic || true')).trim();
const work = join(CACHE, 'prune-compare');
const duBytes = async (dir: string): Promise<number> =>
  Number((await sh(`du -sb '${dir}' | cut -f1`)).trim());

// ---------------------------------------------------------------------------------------------
// Churn: a deterministic stream of writes per day (lib/churn.ts).

/** The seeded stream of `label` (the key of every stream of this bench: its name, seed and label). */
const stream = (label: string): SeededStream => new SeededStream(`prune-compare:${seed}:${label}`);

/** Writes day `day`'s churn (2 … days) into `image` of `sizeBytes`: ~churn % of it; returns the bytes written. */
function applyChurn(image: string, day: number, sizeBytes: number): number {
  const { writes, bytes } = churnWrites(stream(`day ${day}`), sizeBytes, churnPercent);
  applyWrites(image, writes);
  return bytes;
}

/** Day d's snapshot time: 22:00 UTC, the last day on 2026-12-02. */
const dayTime = (d: number): Date => new Date(Date.UTC(2026, 11, 2, 22) - (days - d) * 86400_000);
const resticTime = (t: Date): string => t.toISOString().slice(0, 19).replace('T', ' ');

// ---------------------------------------------------------------------------------------------
// 1. Retention side by side

interface ForgetJson {
  snapshots: Array<{ id: string; time: string; keep: boolean }>;
  removed: string[];
  prune?: PruneJson;
}
interface PruneJson {
  mark?: {
    snapshots: number;
    liveIds: number;
    pagesRead: number;
    packs: number;
    packBytes: number;
    liveBytes: number;
    deadPacks: number;
    orphanPacks: number;
    repackCandidates: number;
    idSetBytes: number;
    seconds: number;
  };
  condemned: {
    packs: number;
    bytes: number;
    repackedPacks: number;
    repackedBytes: number;
    newPacks: number;
  } | null;
  deleted: Array<{ generation: number; packs: number; bytes: number; uncondemned: number }>;
  freedBytes: number;
  waiting: unknown;
  warnings: string[];
}

async function retention(): Promise<void> {
  const images = await ext4Slice(imageMiB);
  const size = images.sizeBytes;
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  const image = join(work, 'image.raw');
  const vrepo = join(work, 'vmvault-repo');
  const rrepo = join(work, 'restic-repo');
  const utc = { TZ: 'UTC' };
  const renv = (repo: string): NodeJS.ProcessEnv => ({
    ...utc,
    RESTIC_PASSWORD: 'vmvault-bench-password',
    RESTIC_REPOSITORY: repo,
    RESTIC_CACHE_DIR: join(work, `restic-cache-${repo.split('/').pop()}`),
  });

  say(
    `## Retention: ${days} daily snapshots of a ${imageMiB} MiB image (${churnPercent} % churn a day, seed ${seed}), ` +
      `forget --keep-daily 7 --keep-weekly 2 --prune`,
  );
  say(`vmvault ${current.commit}; ${restic ? (await sh(`${restic} version`)).trim() : 'restic missing'}`);
  say('');

  /** Builds a repository pair (vmvault, restic) of the image states of `keep` days (all: every day). */
  const backups = async (
    vdir: string,
    rdir: string,
    keep: (d: number) => boolean,
    log: boolean,
    /** Also at each kept day: this check of the day's image state (a restore compared with it). */
    verify?: (d: number) => Promise<void>,
  ): Promise<{ vmWallMs: number; resticWallMs: number; vmNewBytes: number; churned: number }> => {
    await sh(`cp --sparse=always '${images.base}' '${image}'`);
    await measure('vmvault init', vm, ['init', vdir], {});
    if (restic) await measure('restic init', restic, ['init', '-q'], renv(rdir));
    let vmWallMs = 0;
    let resticWallMs = 0;
    let vmNewBytes = 0;
    let churned = 0;
    const last = Math.max(...Array.from({ length: days }, (_, i) => i + 1).filter(keep));
    for (let d = 1; d <= last; d++) {
      if (d > 1) churned += applyChurn(image, d, size);
      if (!keep(d)) continue;
      await verify?.(d);
      const t = dayTime(d);
      const vb = await measure(
        'vmvault backup-image',
        vm,
        ['backup-image', '-r', vdir, '--vm', 'bench', '--time', t.toISOString(), image, '--json'],
        utc,
      );
      const st = (JSON.parse(vb.stdout) as { disks: Array<{ bytesNew: number; bytesStored: number }> })
        .disks[0]!;
      vmWallMs += vb.wallMs;
      vmNewBytes += st.bytesNew;
      let rb: Measurement | undefined;
      if (restic) {
        rb = await measure(
          'restic backup',
          restic,
          ['backup', '-q', '--host', 'bench', '--time', resticTime(t), image],
          renv(rdir),
        );
        resticWallMs += rb.wallMs;
      }
      if (log)
        console.log(
          `  day ${d} (${t.toISOString().slice(0, 10)}): vmvault ${secs(vb)} (${mb(st.bytesNew)} new, ${mb(st.bytesStored)} stored)` +
            (rb ? `, restic ${secs(rb)}` : ''),
        );
    }
    return { vmWallMs, resticWallMs, vmNewBytes, churned };
  };

  console.log(`building ${days} daily snapshots in ${work} …`);
  const built = await backups(vrepo, rrepo, () => true, true);
  say(
    `Built: ${days} snapshots each; churn ${mb(built.churned / (days - 1))} written a day; vmvault stored ` +
      `${mb(built.vmNewBytes / days)} of new chunks a day on average (the first day: the whole image); ` +
      `backups took vmvault ${(built.vmWallMs / 1000).toFixed(1)} s, restic ${(built.resticWallMs / 1000).toFixed(1)} s in all.`,
  );
  say('');

  // vmvault
  if (opt.keep) await sh(`cp -a '${vrepo}' '${vrepo}-before'`);
  const vBefore = await duBytes(vrepo);
  const vOpen = await measure('vmvault snapshots', vm, ['snapshots', '-r', vrepo, '--json'], utc);
  const vf = await measure(
    'vmvault forget --prune',
    vm,
    ['forget', '-r', vrepo, '--keep-daily', '7', '--keep-weekly', '2', '--prune', '--grace', '0', '--json'],
    utc,
  );
  const vfj = JSON.parse(vf.stdout) as ForgetJson;
  const vAfter = await duBytes(vrepo);
  const vp = await measure('vmvault prune (2nd)', vm, ['prune', '-r', vrepo, '--grace', '0', '--json'], utc);
  const vpj = JSON.parse(vp.stdout) as PruneJson;
  const vAfter2 = await duBytes(vrepo);
  const vStats = JSON.parse(await sh(`'${vm}' stats -r '${vrepo}' --json`)) as {
    uniqueBytes: number;
    storedBytes: number;
    dataStoredBytes: number;
    chunksReferenced: number;
    chunksStored: number;
  };
  const vKept = vfj.snapshots.filter((s) => s.keep).map((s) => s.time);

  // restic
  let rf: Measurement | undefined;
  let rBefore = NaN;
  let rAfter = NaN;
  let rKept: string[] = [];
  let rOpen: Measurement | undefined;
  if (restic) {
    rBefore = await duBytes(rrepo);
    rOpen = await measure('restic snapshots', restic, ['snapshots', '--json'], renv(rrepo));
    rf = await measure(
      'restic forget --prune',
      restic,
      ['forget', '--keep-daily', '7', '--keep-weekly', '2', '--prune'],
      renv(rrepo),
    );
    rAfter = await duBytes(rrepo);
    const list = await measure('restic snapshots', restic, ['snapshots', '--json'], renv(rrepo));
    rKept = (JSON.parse(list.stdout) as Array<{ time: string }>).map((s) => s.time);
  }
  const keptDay = (iso: string): number => {
    const t = new Date(iso).getTime();
    for (let d = 1; d <= days; d++) if (Math.abs(dayTime(d).getTime() - t) < 60_000) return d;
    throw new Error(`no day has the time ${iso}`);
  };
  const vKeptDays = vKept.map(keptDay).sort((a, b) => a - b);
  const rKeptDays = rKept.map(keptDay).sort((a, b) => a - b);
  const sameKept = !restic || vKeptDays.join() === rKeptDays.join();

  // The kept snapshots' unique data: their image states backed up into fresh repositories.
  console.log(`rebuilding the kept days ${vKeptDays.join(', ')} into fresh repositories …`);
  const kv = join(work, 'vmvault-kept');
  const kr = join(work, 'restic-kept');
  const keptSet = new Set(vKeptDays);
  // On the way, every kept snapshot of the pruned repository is restored and compared with the
  // day's image state, and check --read-data runs on it: prune must not have lost anything.
  const idOfDay = new Map(vfj.snapshots.filter((s) => s.keep).map((s) => [keptDay(s.time), s.id]));
  const out = join(work, 'restored.raw');
  const restoreProblems: string[] = [];
  await backups(
    kv,
    kr,
    (d) => keptSet.has(d),
    false,
    async (d) => {
      try {
        await measure(
          'vmvault restore',
          vm,
          ['restore', '-r', vrepo, idOfDay.get(d)!, '--disk', 'vda', '-o', out],
          {},
        );
        await sh(`cmp '${out}' '${image}'`);
      } catch (err) {
        restoreProblems.push(`day ${d}: ${(err as Error).message.split('\n')[0]}`);
      } finally {
        rmSync(out, { force: true });
      }
    },
  );
  let checked = 'clean';
  try {
    await measure('vmvault check', vm, ['check', '-r', vrepo, '--read-data'], {});
  } catch (err) {
    checked = `**failed**: ${(err as Error).message.slice(0, 400)}`;
  }
  const vKeptBytes = await duBytes(kv);
  const rKeptBytes = restic ? await duBytes(kr) : NaN;

  say(
    "| tool | step | wall | peak RSS | repository before → after (du -sb) | freed | kept snapshots' unique data (fresh repo) | left ÷ unique |",
  );
  say('|---|---|---|---|---|---|---|---|');
  say(`| vmvault | \`snapshots\` (open + list, for scale) | ${secs(vOpen)} | ${rss(vOpen)} | | | | |`);
  const vm1 = vfj.prune;
  say(
    `| vmvault | \`forget --keep-daily 7 --keep-weekly 2 --prune --grace 0\` | ${secs(vf)} | ${rss(vf)} | ${mb(vBefore)} → ${mb(vAfter)} | ` +
      `${mb(vBefore - vAfter)} (JSON freedBytes ${mb(vm1?.freedBytes ?? NaN)}) | ${mb(vKeptBytes)} | ${(vAfter / vKeptBytes).toFixed(3)} |`,
  );
  say(
    `| vmvault | \`prune --grace 0\` (2nd run) | ${secs(vp)} | ${rss(vp)} | ${mb(vAfter)} → ${mb(vAfter2)} | ${mb(vAfter - vAfter2)} (freedBytes ${mb(vpj.freedBytes)}) | ${mb(vKeptBytes)} | ${(vAfter2 / vKeptBytes).toFixed(3)} |`,
  );
  if (rf && rOpen) {
    say(`| restic 0.14 | \`snapshots\` (open + list) | ${secs(rOpen)} | ${rss(rOpen)} | | | | |`);
    say(
      `| restic 0.14 | \`forget --keep-daily 7 --keep-weekly 2 --prune\` | ${secs(rf)} | ${rss(rf)} | ${mb(rBefore)} → ${mb(rAfter)} | ${mb(rBefore - rAfter)} | ${mb(rKeptBytes)} | ${(rAfter / rKeptBytes).toFixed(3)} |`,
    );
  }
  say('');
  say(
    `- Kept: vmvault ${vKeptDays.length} snapshots (days ${vKeptDays.join(', ')}), restic ${rKeptDays.length} (days ${rKeptDays.join(', ')})` +
      (sameKept ? ': the same snapshots.' : ': **they differ**.'),
  );
  const describe = (j: PruneJson | undefined): string => {
    if (!j) return 'no prune result';
    const m = j.mark;
    const c = j.condemned;
    return (
      (m
        ? `mark+repack ${m.seconds.toFixed(2)} s: ${m.snapshots} snapshots, ${m.liveIds} live ids, ${m.pagesRead} pages read, ` +
          `${m.packs} packs (${mb(m.packBytes)}, live ${mb(m.liveBytes)}), ${m.deadPacks} dead, ${m.repackCandidates} to repack, id sets ${(m.idSetBytes / MiB).toFixed(1)} MiB; `
        : '') +
      (c
        ? `condemned ${c.packs} packs (${mb(c.bytes)}), repacked ${mb(c.repackedBytes)} from ${c.repackedPacks} into ${c.newPacks} new; `
        : 'nothing condemned; ') +
      `deleted ${j.deleted.map((d) => `${d.packs} packs (${mb(d.bytes)}) of gen ${d.generation}`).join(', ') || 'nothing'}` +
      (j.waiting ? `; waiting: ${JSON.stringify(j.waiting)}` : '') +
      (j.warnings.length ? `; warnings: ${j.warnings.join('; ')}` : '')
    );
  };
  say(
    `- After both prunes: every kept snapshot restored and compared with its day's image: ` +
      (restoreProblems.length === 0 ? `all ${keptSet.size} identical` : `**${restoreProblems.join('; ')}**`) +
      `; \`vmvault check --read-data\`: ${checked}.`,
  );
  say(`- vmvault forget --prune: removed ${vfj.removed.length}; ${describe(vm1)}.`);
  say(`- vmvault prune (2nd): ${describe(vpj)}.`);
  if (vpj.mark)
    say(
      `- Kept snapshots' stored records by the 2nd prune's mark (live bytes of chunks and pages): ${mb(vpj.mark.liveBytes)}; ` +
        `repository after it ${mb(vAfter2)} (${(vAfter2 / vpj.mark.liveBytes).toFixed(3)}×). ` +
        `vmvault stats: ${vStats.chunksReferenced} chunks referenced (${mb(vStats.uniqueBytes)} plaintext), ${vStats.chunksStored} in the index, ` +
        `${mb(vStats.dataStoredBytes)} in data packs, ${mb(vStats.storedBytes)} stored.`,
    );
  say('');
  const ratio = rf ? rf.wallMs / vf.wallMs : NaN;
  const peak = Math.max(vf.peakRssKiB, vp.peakRssKiB) / 1024;
  const within = Math.abs(vAfter / vKeptBytes - 1);
  const within2 = Math.abs(vAfter2 / vKeptBytes - 1);
  say(`- vmvault forget+prune speed ÷ restic's: ${ratio.toFixed(2)}× (target ≥ 3×): ${pass(ratio >= 3)}`);
  say(`- vmvault peak RSS: ${peak.toFixed(0)} MiB (target ≤ 256 MiB): ${pass(peak <= 256)}`);
  say(
    `- vmvault space left after forget --prune: ${mb(vAfter)} against ${mb(vKeptBytes)} unique to the kept snapshots, ` +
      `${(within * 100).toFixed(1)} % off (target ≤ 10 %): ${pass(within <= 0.1)}; after the 2nd prune ${(within2 * 100).toFixed(1)} % off` +
      (rf ? `; restic: ${(Math.abs(rAfter / rKeptBytes - 1) * 100).toFixed(1)} % off` : ''),
  );
  say('');
  if (!opt.keep) rmSync(work, { recursive: true, force: true });
}

// ---------------------------------------------------------------------------------------------
// 2. GC mark at scale

/** Builds (or finds cached) the scale repository; returns its directory and what it holds. */
async function scaleRepo(): Promise<{ dir: string; chunks: number; buildS: number; cached: boolean }> {
  const chunkSize = MiB;
  const diskBytes = scaleDiskGiB * 2 ** 30;
  const dir = join(CACHE, `prune-scale-${scaleSnapshots}x${scaleDiskGiB}G-s${seed}`);
  const done = join(dir, 'bench-built.json');
  if (existsSync(done)) {
    const info = JSON.parse(await sh(`cat '${done}'`)) as { chunks: number; buildS: number };
    return { dir, ...info, cached: true };
  }
  rmSync(dir, { recursive: true, force: true });
  const t0 = performance.now();
  const repo = await Repository.init(dir, { chunkSizeBytes: chunkSize });
  const slots = Math.ceil(diskBytes / chunkSize);
  const perSnapshot = Math.max(2, Math.round(slots / 100)); // ~1 %
  const r = stream('scale');
  let next = 0;
  const inFlight = new Set<Promise<unknown>>();
  // A distinct chunk: its number and a tag in the first 19 bytes, the rest zero. Buffers come
  // back from the pack workers (transferred both ways) and are reused: only the number changes.
  const free: Buffer[] = [];
  const put = async (): Promise<Buffer> => {
    let data = free.pop();
    if (!data) {
      data = Buffer.alloc(chunkSize);
      data.write('prune-scale', 8, 'latin1');
    }
    data.writeBigUInt64BE(BigInt(next++), 0);
    const id = repo.codec.chunkId(data);
    const p: Promise<unknown> = repo.chunks
      .put(data, id, { transfer: true })
      .then((res) => void (res.buffer && free.push(res.buffer)))
      .finally(() => inFlight.delete(p));
    inFlight.add(p);
    if (inFlight.size >= 16) await Promise.race(inFlight);
    return Buffer.from(id, 'hex');
  };
  const drain = async (): Promise<void> => {
    await Promise.all(inFlight);
  };
  let index = DiskIndex.empty(diskBytes, chunkSize);
  for (let s = 0; s < slots; s++) index.setSlotBytes(s, await put());
  let parent: string | null = null;
  for (let k = 0; k < scaleSnapshots; k++) {
    if (k > 0) {
      index = DiskIndex.cloneFrom(index, diskBytes);
      const changed = new Set<number>();
      // Half in runs of 16 slots (16 MiB written in place), half single scattered slots.
      while (changed.size < perSnapshot / 2) {
        const start = r.below(slots - 16);
        for (let i = 0; i < 16 && changed.size < perSnapshot / 2; i++) changed.add(start + i);
      }
      while (changed.size < perSnapshot) changed.add(r.below(slots));
      for (const s of changed) index.setSlotBytes(s, await put());
    }
    await drain();
    const tree = await repo.putIndex(index);
    const time = new Date(Date.UTC(2026, 11, 2, 22) - (scaleSnapshots - 1 - k) * 86400_000).toISOString();
    const manifest: SnapshotManifest = {
      version: format.MANIFEST_VERSION,
      vm: { name: 'scale' },
      time,
      host: 'bench',
      tags: [],
      parent,
      mode: 'image',
      checkpoint: null,
      disks: [
        {
          target: 'vda',
          sizeBytes: diskBytes,
          chunkSizeBytes: chunkSize,
          root: tree.id,
          allocatedBytes: diskBytes,
          stats: emptyDiskStats(),
        },
      ],
      files: [],
      program: 'bench/prune-compare.ts (synthetic)',
    };
    parent = (await repo.putSnapshot(manifest)).id;
    await repo.index.compact({ sessionId: repo.chunks.sessionId });
    if (k % 50 === 0 || k === scaleSnapshots - 1)
      console.log(
        `  scale: snapshot ${k + 1}/${scaleSnapshots}, ${next} chunks, ${((performance.now() - t0) / 1000).toFixed(0)} s`,
      );
  }
  await repo.close();
  const buildS = (performance.now() - t0) / 1000;
  writeFileSync(done, JSON.stringify({ chunks: next, buildS }));
  return { dir, chunks: next, buildS, cached: false };
}

async function scale(): Promise<void> {
  say(
    `## GC mark at scale: ${scaleSnapshots} snapshots of a ${scaleDiskGiB} GiB disk (1 MiB chunks, ${scaleDiskGiB * 1024} slots, ~1 % rewritten per snapshot)`,
  );
  console.log('building (or reusing) the scale repository …');
  const s = await scaleRepo();
  const objects = (await sh(`find '${s.dir}' -type f | wc -l`)).trim();
  const packs = (await sh(`find '${s.dir}/data' '${s.dir}/meta' -type f 2>/dev/null | wc -l`)).trim();
  const onDisk = await duBytes(s.dir);
  say(
    `Repository: ${s.chunks} distinct data chunks (${(s.chunks / 2 ** 20).toFixed(2)} TiB of plaintext), ${packs} packs, ${objects} objects, ` +
      `${mb(onDisk)} on disk; built in ${s.buildS.toFixed(0)} s${s.cached ? ' (cached from an earlier run)' : ''}.`,
  );
  say('');
  say(
    '| run | wall | peak RSS | mark.seconds | mark.idSetBytes | snapshots | live ids | pages read | packs |',
  );
  say('|---|---|---|---|---|---|---|---|---|');
  for (const run of [1, 2]) {
    const m = await measure('vmvault prune --dry-run', vm, ['prune', '-r', s.dir, '--dry-run', '--json'], {});
    const j = JSON.parse(m.stdout) as PruneJson;
    const k = j.mark;
    say(
      `| \`vmvault prune --dry-run\` #${run} | ${secs(m)} | ${rss(m)} | ${k?.seconds.toFixed(2) ?? '?'} s | ` +
        `${k ? (k.idSetBytes / MiB).toFixed(1) : '?'} MiB | ${k?.snapshots ?? '?'} | ${k?.liveIds ?? '?'} | ${k?.pagesRead ?? '?'} | ${k?.packs ?? '?'} |`,
    );
  }
  say('');
}

say(`# Forget and prune (${opt.quick ? 'quick' : 'full'} run, ${new Date().toISOString().slice(0, 16)}Z)`);
say('');
try {
  if (!opt['skip-retention']) await retention();
  if (!opt['skip-scale']) await scale();
} finally {
  if (!opt.keep) rmSync(work, { recursive: true, force: true });
}
mkdirSync(join(process.cwd(), 'bench/results'), { recursive: true });
writeFileSync(
  join(process.cwd(), `bench/results/prune-compare-${new Date().toISOString().slice(0, 16)}.md`),
  `${lines.join('\n')}\n`,
);
