/**
 * Repository format 2 (this checkout's build) against format 1 (the last format 1 commit, built
 * once into bench/.cache/format1) on the same data in one run, plus this build encrypted against
 * plain (also through the opt-in key cache, VMVAULT_KEY_CACHE, warmed right after init), and restic
 * (which always encrypts): the figures of issue 11's "Benchmark".
 *
 * Steps (each run by every variant right after one another; the variants' order is reversed every
 * other run — A B, B A, … — so a drift of the machine falls on all of them alike):
 *   backup         backup-image of the bench image into a fresh repository (restic: `restic backup
 *                  IMAGE`, the file itself, as a restic user backs up an image: no shell pipe or `cat`
 *                  outside the measured process as with --stdin, and the same read path, the page
 *                  cache, for both; restic 0.14 reads the holes as zeros, vmvault skips them)
 *   open           `snapshots` right after the first backup: the fixed cost of every command
 *                  (encrypted: the key slot's scrypt; restic: its key's scrypt, then the index)
 *   clone          backup-image of its clone (64 MiB of 4 GiB rewritten: deduplication)
 *   restore-raw    restore of the first snapshot to a raw file (run 1: compared with the image;
 *                  restic: `restic restore latest --path IMAGE --target DIR`, its parallel restorer,
 *                  faster than the sequential `restic dump`; 0.14 writes the zeros, no --sparse)
 *   restore-qcow2  restore of it to qcow2 (run 1: qemu-img compare; not restic)
 *   check          check --read-data of the repository holding both snapshots (restic: its own)
 *   vm-full/vm-inc a live full, then incremental backup of a running TCG VM after 32 × 2 MiB of
 *                  guest writes (as bench/vm-backup.ts; root and libvirt only, else skipped)
 * Every run is the real command under /usr/bin/time -v (wall, peak RSS), after a `sync`, followed
 * by a timed `sync` (what the tool left for the kernel to write back).
 *
 *   npm run build && npx tsx bench/format-compare.ts [--runs N] [--only NAME,…] [--vs-restic] [--quick] [--fsyncs]
 *     --runs N      rounds of every step (default 2)
 *     --only NAMES  steps (backup, open, clone, restore, restore-raw, restore-qcow2, check, vm,
 *                   vm-full, vm-inc) and/or variants (format1, current, encrypted, cached,
 *                   restic); the
 *                   first backup always runs when a later image step needs it
 *     --vs-restic   only the encrypted build and restic: backup, open, restore-raw (the "≤ 0.5×
 *                   restic" figures; the same as --only backup,open,restore-raw,encrypted,restic)
 *     --quick       a 512 MiB slice of the image (a fast check of the harness)
 *     --fsyncs      count fsync/fdatasync calls with strace (adds a column; slightly slower)
 *     --baseline R  the format 1 commit (default bf4e56e)
 */
import { chmodSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { baselineBuild, FORMAT1_COMMIT } from './lib/baseline.js';
import { benchImages, CACHE } from './lib/datasets.js';
import { hasStrace, measure, median, repoUsage, sh, type Measurement } from './lib/harness.js';
import { allocatedBytes, startLibvirt, vmUnavailable, type Libvirt } from './lib/vm.js';
import { BENCH_PASSWORD, chunksReferenced, currentBuild, initOptions } from './lib/vmvault.js';

const { values: opt } = parseArgs({
  options: {
    runs: { type: 'string', default: '2' },
    only: { type: 'string' },
    'vs-restic': { type: 'boolean', default: false },
    quick: { type: 'boolean', default: false },
    fsyncs: { type: 'boolean', default: false },
    baseline: { type: 'string', default: FORMAT1_COMMIT },
  },
});
const runs = Number(opt.runs);
if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs ${opt.runs}: give a whole number ≥ 1`);

type VariantKey = 'format1' | 'current' | 'encrypted' | 'cached' | 'restic';
type StepKey = 'backup' | 'open' | 'clone' | 'restore-raw' | 'restore-qcow2' | 'check' | 'vm-full' | 'vm-inc';
const STEPS: StepKey[] = [
  'backup',
  'open',
  'clone',
  'restore-raw',
  'restore-qcow2',
  'check',
  'vm-full',
  'vm-inc',
];
const VARIANTS: VariantKey[] = ['format1', 'current', 'encrypted', 'cached', 'restic'];
const ALIASES: Record<string, StepKey[]> = {
  restore: ['restore-raw', 'restore-qcow2'],
  vm: ['vm-full', 'vm-inc'],
};
if (opt['vs-restic'] && opt.only) throw new Error('--vs-restic and --only: give one of them');
const only = (opt['vs-restic'] ? 'backup,open,restore-raw,encrypted,restic' : (opt.only ?? ''))
  .split(',')
  .filter(Boolean);
for (const n of only)
  if (!(STEPS as string[]).includes(n) && !(VARIANTS as string[]).includes(n) && !ALIASES[n])
    throw new Error(
      `--only ${n}: not a step (${STEPS.join(', ')}, restore, vm) or variant (${VARIANTS.join(', ')})`,
    );
const onlySteps = only.flatMap((n) => ALIASES[n] ?? ((STEPS as string[]).includes(n) ? [n as StepKey] : []));
const onlyVariants = only.filter((n): n is VariantKey => (VARIANTS as string[]).includes(n));
const stepOn = (s: StepKey): boolean => onlySteps.length === 0 || onlySteps.includes(s);

interface Variant {
  key: VariantKey;
  label: string;
  bin: string;
  init: string[];
  env: NodeJS.ProcessEnv;
}
const notes: string[] = [];
const current = await currentBuild();
const wanted = (v: VariantKey): boolean => onlyVariants.length === 0 || onlyVariants.includes(v);
// The baseline is built (once, a minute) only when its rows are asked for.
const baseline = wanted('format1') ? await baselineBuild(opt.baseline, 'format1') : undefined;
const curOpts = await initOptions(current.bin);
const restic = (await sh('command -v restic || true')).trim();
const all: Variant[] = [
  ...(baseline
    ? [
        {
          key: 'format1' as const,
          label: `format 1 (${baseline.commit.slice(0, 7)})`,
          bin: baseline.bin,
          init: [],
          env: {},
        },
      ]
    : []),
  {
    key: 'current',
    label: `current (${current.commit})`,
    bin: current.bin,
    init: curOpts.encryption ? ['--encryption', 'none'] : [],
    env: {},
  },
];
if (curOpts.encryption)
  all.push({
    key: 'encrypted',
    label: 'current, aes-256-gcm',
    bin: current.bin,
    init: ['--encryption', 'aes-256-gcm'],
    env: { VMVAULT_PASSWORD: BENCH_PASSWORD },
  });
// The same encrypted repository opened through the opt-in key cache (VMVAULT_KEY_CACHE): the
// slot's scrypt is paid once, by the untimed `snapshots` right after init, as by a host whose
// first command ran long ago.
if (curOpts.encryption && curOpts.keyCache)
  all.push({
    key: 'cached',
    label: 'current, aes-256-gcm + VMVAULT_KEY_CACHE',
    bin: current.bin,
    init: ['--encryption', 'aes-256-gcm'],
    env: { VMVAULT_PASSWORD: BENCH_PASSWORD, VMVAULT_KEY_CACHE: join(CACHE, 'run-format-compare', 'key-cache') },
  });
else if (curOpts.encryption) notes.push('the current build has no VMVAULT_KEY_CACHE: no key-cache rows');
else notes.push('the current build has no `init --encryption`: no encrypted rows');
const resticVersion = restic ? (await sh(`'${restic}' version`)).trim().split(' ').slice(0, 2).join(' ') : '';
if (restic) all.push({ key: 'restic', label: resticVersion, bin: restic, init: [], env: {} });
else notes.push('restic is not installed (`apt-get install restic`): no restic rows');
const variants = all.filter((v) => wanted(v.key));
const vmvaults = variants.filter((v) => v.key !== 'restic');
const vmSkip = stepOn('vm-full') || stepOn('vm-inc') ? await vmUnavailable() : 'not selected';
if (vmSkip && vmSkip !== 'not selected') notes.push(`live VM backups skipped: ${vmSkip}`);
if (opt.fsyncs && !hasStrace()) notes.push('--fsyncs: strace is not installed, no fsync counts');

const work = join(CACHE, 'run-format-compare');
rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });
const { base, clone, sizeBytes } = await benchImages(opt.quick);
const load = (await sh('cut -d" " -f1-3 /proc/loadavg')).trim();
console.log(
  `image ${base} (${(sizeBytes / 2 ** 30).toFixed(2)} GiB, ${(await sh(`du -h ${base} | cut -f1`)).trim()} allocated); ` +
    `${runs} run(s); variants: ${variants.map((v) => v.label).join(', ')}; load ${load}`,
);
for (const n of notes) console.log(`note: ${n}`);

interface Sample {
  run: number;
  wallMs: number;
  syncMs: number;
  rssKiB: number;
  cpuMs: number; // user + system
  fsyncs?: number;
  bytes: number; // the MB/s basis
  objects?: number;
  stored?: number;
  chunks?: number;
}
const samples = new Map<string, Sample[]>();
const key = (s: StepKey, v: VariantKey): string => `${s}/${v}`;
const add = (s: StepKey, v: VariantKey, x: Sample): void => {
  samples.set(key(s, v), [...(samples.get(key(s, v)) ?? []), x]);
  const extra = x.objects !== undefined ? `, ${x.objects} objects, ${(x.stored! / 1e6).toFixed(1)} MB` : '';
  console.log(
    `run ${x.run + 1} ${s} ${v}: ${(x.wallMs / 1000).toFixed(2)} s (+ sync ${(x.syncMs / 1000).toFixed(2)} s, ` +
      `CPU ${(x.cpuMs / 1000).toFixed(2)} s), ` +
      `${(x.bytes / 1e6 / (x.wallMs / 1000)).toFixed(0)} MB/s, ${(x.rssKiB / 1024).toFixed(0)} MiB${
        x.fsyncs !== undefined ? `, ${x.fsyncs} fsyncs` : ''
      }${extra}`,
  );
};
const timed = async (name: string, v: Variant, args: string[]): Promise<Measurement & { syncMs: number }> => {
  await sh('sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true');
  const env = v.key === 'restic' ? resticEnv(v) : v.env;
  const m = await measure(name, v.bin, args, env, { fsyncs: opt.fsyncs });
  return { ...m, syncMs: (await measure('sync', 'sync', [])).wallMs };
};
const sample = (run: number, m: Measurement & { syncMs: number }, bytes: number): Sample => ({
  run,
  wallMs: m.wallMs,
  syncMs: m.syncMs,
  rssKiB: m.peakRssKiB,
  cpuMs: m.userMs + m.sysMs,
  bytes,
  ...(m.fsyncs !== undefined ? { fsyncs: m.fsyncs } : {}),
});
// restic's local cache (what it reads the index and trees from) lives in the run's folder, fresh
// with every repository, so nothing of an earlier run is reused and nothing is left behind.
const resticEnv = (v: Variant): NodeJS.ProcessEnv => ({
  RESTIC_PASSWORD: BENCH_PASSWORD,
  RESTIC_CACHE_DIR: join(work, 'restic-cache'),
  ...v.env,
});
/** The scrypt parameters of the repository's (first) key file, vmvault's and restic's alike. */
const kdfOf = (repo: string): string => {
  const dir = join(repo, 'keys');
  const f = readdirSync(dir).sort()[0];
  if (!f) return 'no key file';
  const k = JSON.parse(readFileSync(join(dir, f), 'utf8')) as {
    kdf?: string | { N?: number; r?: number; p?: number };
    N?: number;
    r?: number;
    p?: number;
  };
  const p = typeof k.kdf === 'object' ? k.kdf : k; // vmvault: { kdf: { N, r, p } }; restic: { kdf, N, r, p }
  const mib = ((p.N ?? 0) * (p.r ?? 0) * 128) / 2 ** 20;
  return `scrypt N=2^${Math.log2(p.N ?? 0)}, r=${p.r}, p=${p.p} (${mib.toFixed(0)} MiB)`;
};
const kdfNoted = new Set<VariantKey>();
const initRepo = async (v: Variant, repo: string): Promise<void> => {
  if (v.key === 'restic') {
    // restic 0.14 makes repository format 2 (zstd, "auto" = its fastest level) and calibrates its
    // key's scrypt at init (aiming at 0.5 s, at most 60 MiB; the parameters go into the notes);
    // vmvault's are fixed (N=2^17, r=8, p=3: ≈ 1 s).
    rmSync(resticEnv(v).RESTIC_CACHE_DIR!, { recursive: true, force: true });
    await measure('restic init', v.bin, ['init', '-q', '-r', repo], resticEnv(v));
  } else {
    await measure(`init ${v.key}`, v.bin, ['init', repo, ...v.init], v.env);
  }
  if (v.key === 'cached') {
    mkdirSync(v.env.VMVAULT_KEY_CACHE!, { recursive: true, mode: 0o700 });
    chmodSync(v.env.VMVAULT_KEY_CACHE!, 0o700);
    await measure('warm the key cache', v.bin, ['snapshots', '-r', repo], v.env);
  }
  if ((v.key === 'restic' || v.key === 'encrypted') && !kdfNoted.has(v.key)) {
    kdfNoted.add(v.key);
    notes.push(`${v.label}: key ${kdfOf(repo)}, paid once by every command that opens the repository`);
  }
  if (v.key === 'restic') return;
  // Whatever the build's default: the plain variant must be plain, the encrypted one encrypted.
  const want = v.key === 'encrypted' || v.key === 'cached' ? 'aes-256-gcm' : 'none';
  const got = (JSON.parse(readFileSync(join(repo, 'config'), 'utf8')) as { encryption?: unknown }).encryption;
  if (got !== want)
    throw new Error(
      `${v.label}: \`init ${v.init.join(' ')}\` made a repository with encryption ${String(got)}`,
    );
};
const usage = async (v: Variant, repo: string): Promise<Partial<Sample>> => {
  const u = await repoUsage(repo);
  const chunks = v.key === 'restic' ? undefined : await chunksReferenced(v.bin, repo, v.env);
  return { objects: u.objects, stored: u.bytes, ...(chunks !== undefined ? { chunks } : {}) };
};

const imageSteps = (['backup', 'open', 'clone', 'restore-raw', 'restore-qcow2', 'check'] as StepKey[]).filter(
  stepOn,
);
let lv: Libvirt | undefined;
try {
  let vmData = 0;
  let spacingMiB = 97;
  if (!vmSkip && vmvaults.length) {
    lv = await startLibvirt(join(work, 'libvirt'));
    const img = join(work, 'vm1.qcow2');
    await sh(`chmod 755 ${work} && qemu-img convert -f raw -O qcow2 ${base} ${img} && sync`);
    vmData = await allocatedBytes(img);
    spacingMiB = Math.min(97, Math.floor((sizeBytes / 2 ** 20 - 2) / 32));
    await lv.define('vm1', img);
    await lv.start('vm1');
  }
  for (let run = 0; run < runs; run++) {
    const order = run % 2 ? [...variants].reverse() : variants;
    const vOrder = order.filter((v) => v.key !== 'restic');
    if (imageSteps.length) {
      const repo = (v: Variant): string => join(work, `${v.key}-repo`);
      for (const v of order) await initRepo(v, repo(v));
      // The first backup is every later step's data: it runs (unrecorded) when not selected.
      for (const v of order) {
        const m =
          v.key === 'restic'
            ? await timed('restic backup', v, ['backup', '-q', '-r', repo(v), base])
            : await timed('backup-image', v, [
                '-q',
                'backup-image',
                '-r',
                repo(v),
                '--vm',
                'a',
                `${base}:vda`,
              ]);
        if (stepOn('backup'))
          add('backup', v.key, { ...sample(run, m, sizeBytes), ...(await usage(v, repo(v))) });
      }
      if (stepOn('open'))
        for (const v of order) {
          const m =
            v.key === 'restic'
              ? await timed('restic snapshots', v, ['snapshots', '-q', '-r', repo(v)])
              : await timed('snapshots', v, ['-q', 'snapshots', '-r', repo(v)]);
          add('open', v.key, sample(run, m, 0));
        }
      if (stepOn('clone'))
        for (const v of order) {
          const m =
            v.key === 'restic'
              ? await timed('restic backup (clone)', v, ['backup', '-q', '-r', repo(v), clone])
              : await timed('backup-image (clone)', v, [
                  '-q',
                  'backup-image',
                  '-r',
                  repo(v),
                  '--vm',
                  'b',
                  `${clone}:vda`,
                ]);
          add('clone', v.key, { ...sample(run, m, sizeBytes), ...(await usage(v, repo(v))) });
        }
      if (stepOn('restore-raw'))
        for (const v of order) {
          if (v.key === 'restic') {
            const target = join(work, 'restic-restored');
            const m = await timed('restic restore', v, [
              'restore',
              '-q',
              'latest',
              '--path',
              base,
              '-r',
              repo(v),
              '--target',
              target,
            ]);
            add('restore-raw', v.key, sample(run, m, sizeBytes));
            if (run === 0) await sh(`cmp ${base} ${join(target, base)}`);
            rmSync(target, { recursive: true, force: true });
            continue;
          }
          const out = join(work, 'restored.raw');
          const m = await timed('restore raw', v, [
            '-q',
            'restore',
            'a@latest',
            '-r',
            repo(v),
            '--disk',
            'vda',
            '-o',
            out,
          ]);
          add('restore-raw', v.key, sample(run, m, sizeBytes));
          if (run === 0) await sh(`cmp ${base} ${out}`);
          rmSync(out, { force: true });
        }
      if (stepOn('restore-qcow2'))
        for (const v of vOrder) {
          const out = join(work, 'restored-qcow2');
          const m = await timed('restore qcow2', v, ['-q', 'restore', 'a@latest', '-r', repo(v), '-o', out]);
          add('restore-qcow2', v.key, sample(run, m, sizeBytes));
          if (run === 0) await sh(`qemu-img compare -q -f qcow2 -F raw ${out}/vda.qcow2 ${base}`);
          rmSync(out, { recursive: true, force: true });
        }
      if (stepOn('check'))
        for (const v of order) {
          const stored = (await repoUsage(repo(v))).bytes;
          const m =
            v.key === 'restic'
              ? await timed('restic check --read-data', v, ['check', '-q', '--read-data', '-r', repo(v)])
              : await timed('check --read-data', v, ['-q', 'check', '--read-data', '-r', repo(v)]);
          add('check', v.key, sample(run, m, stored));
        }
      for (const v of order) rmSync(repo(v), { recursive: true, force: true });
    }
    if (lv && vOrder.length) {
      const repo = (v: Variant): string => join(work, `${v.key}-vm-repo`);
      const backup = (v: Variant, level: string): Promise<Measurement & { syncMs: number }> =>
        timed(`backup ${level}`, v, [
          '-q',
          'backup',
          '-r',
          repo(v),
          '--connect',
          lv!.uri,
          '--scratchdir',
          work,
          '-d',
          'vm1',
          '-l',
          level,
        ]);
      for (const v of vOrder) await initRepo(v, repo(v));
      for (const v of vOrder) {
        const m = await backup(v, 'full');
        if (stepOn('vm-full'))
          add('vm-full', v.key, { ...sample(run, m, vmData), ...(await usage(v, repo(v))) });
      }
      if (stepOn('vm-inc')) {
        await lv.guestWrites('vm1', run, 32, spacingMiB);
        for (const v of vOrder) {
          const m = await backup(v, 'inc');
          add('vm-inc', v.key, { ...sample(run, m, 64 * 2 ** 20), ...(await usage(v, repo(v))) });
        }
      }
      await lv.dropCheckpoints('vm1');
      for (const v of vOrder) rmSync(repo(v), { recursive: true, force: true });
    }
  }
} finally {
  await lv?.stop();
  rmSync(work, { recursive: true, force: true });
}

// ---- report
const TIB = 2 ** 40;
const sec = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;
interface Stat {
  wall: number;
  sync: number;
  cpu: number;
  rss: number;
  xs: Sample[];
  last: Sample;
}
const stat = (s: StepKey, v: VariantKey): Stat | undefined => {
  const xs = samples.get(key(s, v));
  if (!xs?.length) return undefined;
  return {
    wall: median(xs.map((x) => x.wallMs)),
    sync: median(xs.map((x) => x.syncMs)),
    cpu: median(xs.map((x) => x.cpuMs)),
    rss: Math.max(...xs.map((x) => x.rssKiB)),
    xs,
    last: xs.at(-1)!,
  };
};
const STEP_LABEL: Record<StepKey, string> = {
  backup: 'backup-image (first)',
  open: 'open (snapshots)',
  clone: 'backup-image (clone)',
  'restore-raw': 'restore → raw',
  'restore-qcow2': 'restore → qcow2',
  check: 'check --read-data',
  'vm-full': 'live VM full',
  'vm-inc': 'live VM incremental',
};
const showFsyncs = [...samples.values()].some((xs) => xs.some((x) => x.fsyncs !== undefined));
const lines: string[] = [];
const out = (l: string): void => {
  lines.push(l);
};
const table = (head: string[], rows: string[][]): void => {
  out(`| ${head.join(' | ')} |`);
  out(`|${head.map(() => '---').join('|')}|`);
  for (const r of rows) out(`| ${r.join(' | ')} |`);
};
const rows: string[][] = [];
for (const s of STEPS)
  for (const v of variants) {
    const st = stat(s, v.key);
    if (!st) continue;
    const walls = st.xs.map((x) => x.wallMs);
    const l = st.last;
    rows.push([
      STEP_LABEL[s],
      v.label,
      sec(st.wall),
      `${sec(Math.min(...walls))}–${sec(Math.max(...walls))}`,
      sec(st.sync),
      sec(st.cpu),
      l.bytes ? (l.bytes / 1e6 / (st.wall / 1000)).toFixed(0) : '',
      `${(st.rss / 1024).toFixed(0)} MiB`,
      ...(showFsyncs ? [median(st.xs.map((x) => x.fsyncs ?? NaN)).toFixed(0)] : []),
      l.objects !== undefined ? String(l.objects) : '',
      l.stored !== undefined ? `${(l.stored / 1e6).toFixed(1)} MB` : '',
      l.objects !== undefined && l.stored ? ((l.objects * TIB) / l.stored).toFixed(0) : '',
      l.objects !== undefined && l.chunks ? (l.objects / l.chunks).toFixed(4) : '',
    ]);
  }
table(
  [
    'step',
    'variant',
    `wall (median of ${runs})`,
    'range',
    'then sync',
    'CPU (user + sys)',
    'MB/s',
    'peak RSS',
    ...(showFsyncs ? ['fsyncs'] : []),
    'objects',
    'stored',
    'objects per TiB stored',
    'objects ÷ chunks',
  ],
  rows,
);
out('');
out(
  'MB/s: image size ÷ wall (live VM: allocated data; incremental: the 64 MiB written; check: stored bytes). ' +
    'CPU: user + system time of the process and its threads (median; less sensitive to other work on the machine than wall). ' +
    'Objects and stored bytes: the repository after the step (last run), without tmp/ and locks/. ' +
    'Objects ÷ chunks: objects over the distinct chunks the snapshots reference (`stats --json`), i.e. against one object per chunk.',
);
out('');
const plain = (a: number | undefined, b: number | undefined): string =>
  a === undefined || b === undefined || !b ? '—' : (a / b).toFixed(2);
const ratio = (a: number | undefined, b: number | undefined, target: number): string => {
  if (a === undefined || b === undefined || !b) return '—';
  const r = a / b;
  return `${r.toFixed(2)}${r <= target ? ' ✓' : ' ✗'}`;
};
const ratios: string[][] = [];
for (const s of STEPS) {
  const f1 = stat(s, 'format1');
  const cur = stat(s, 'current');
  const enc = stat(s, 'encrypted');
  const cached = stat(s, 'cached');
  if (!f1 && !cur && !enc && !cached) continue;
  ratios.push([
    STEP_LABEL[s],
    ratio(cur?.wall, f1?.wall, 1.05),
    plain(cur?.cpu, f1?.cpu),
    plain(cur?.rss, f1?.rss),
    ratio(enc?.wall, cur?.wall, 1.15),
    plain(enc?.cpu, cur?.cpu),
    ratio(cached?.wall, cur?.wall, 1.15),
    plain(cached?.cpu, cur?.cpu),
  ]);
}
if (ratios.some((r) => r.slice(1).some((c) => c !== '—'))) {
  table(
    [
      'figure',
      'current ÷ format 1 (wall, ≤ 1.05)',
      'CPU current ÷ format 1',
      'peak RSS current ÷ format 1',
      'encrypted ÷ plain (wall, ≤ 1.15)',
      'CPU encrypted ÷ plain',
      'encrypted + key cache ÷ plain (wall, ≤ 1.15)',
      'CPU encrypted + key cache ÷ plain',
    ],
    ratios,
  );
  out('');
}
const vsRestic: string[][] = [];
for (const s of ['backup', 'open', 'clone', 'restore-raw', 'check'] as StepKey[]) {
  const res = stat(s, 'restic');
  const enc = stat(s, 'encrypted');
  const cur = stat(s, 'current');
  if (!res || (!enc && !cur)) continue;
  vsRestic.push([
    STEP_LABEL[s],
    s === 'backup' ? ratio(enc?.wall, res.wall, 0.5) : plain(enc?.wall, res.wall),
    plain(enc && enc.wall + enc.sync, res.wall + res.sync),
    plain(enc?.cpu, res.cpu),
    plain(enc?.rss, res.rss),
    plain(cur?.wall, res.wall),
  ]);
}
if (vsRestic.length) {
  table(
    [
      'figure',
      'encrypted ÷ restic (wall; backup-image ≤ 0.5)',
      'wall + sync',
      'CPU',
      'peak RSS',
      'plain ÷ restic (wall)',
    ],
    vsRestic,
  );
  out('');
}
for (const v of vmvaults) {
  const st = stat('clone', v.key) ?? stat('backup', v.key);
  if (st?.last.objects !== undefined && st.last.chunks)
    out(
      `objects ÷ one object per chunk (≤ 1/16 = 0.0625), ${v.label}: ${ratio(st.last.objects, st.last.chunks, 1 / 16)} ` +
        `(${st.last.objects} objects for ${st.last.chunks} chunks, ${((st.last.objects * TIB) / st.last.stored!).toFixed(0)} per TiB stored)`,
    );
}
for (const n of notes) out(`note: ${n}`);
const report = lines.join('\n');
console.log('\n' + report);
mkdirSync('bench/results', { recursive: true });
const file = join('bench/results', `format-compare-${new Date().toISOString().replace(/[:.]/g, '-')}.md`);
writeFileSync(
  file,
  `${new Date().toISOString()} ${opt.quick ? '--quick ' : ''}runs ${runs}; load ${load}\n\n${report}\n`,
);
console.log(`\n(written to ${file})`);
