/**
 * Pack size (format 2 design §1.1): backup-image, restore (raw) and check --read-data of the bench
 * image into repositories made with `init --pack-size` 4, 8, 16, 32 and 64 MiB, interleaved
 * (sizes in turn, the order reversed every other run). Wall time, peak RSS, fsync + fdatasync calls
 * (strace, when installed), objects, objects per TiB stored.
 *   npm run build && npx tsx bench/pack-size.ts [--runs N] [--quick] [--sizes 4,8,16,32,64]
 */
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { benchImages, CACHE } from './lib/datasets.js';
import { hasStrace, measure, median, repoUsage, sh, type Measurement } from './lib/harness.js';
import { chunksReferenced, currentBuild, initOptions } from './lib/vmvault.js';

const { values: opt } = parseArgs({
  options: {
    runs: { type: 'string', default: '1' },
    quick: { type: 'boolean', default: false },
    sizes: { type: 'string', default: '4,8,16,32,64' },
  },
});
const runs = Number(opt.runs);
const sizes = opt.sizes.split(',').map(Number);
const { bin, commit } = await currentBuild();
const io = await initOptions(bin);
if (!io.packSize) {
  console.error(
    `bench/pack-size.ts: this build (${commit}) has no \`vmvault init --pack-size\` (format 1); build format 2 first`,
  );
  process.exit(2);
}
const plainInit = io.encryption ? ['--encryption', 'none'] : [];
const fsyncs = hasStrace();
if (!fsyncs) console.log('note: strace is not installed: no fsync counts');
const work = join(CACHE, 'run-pack-size');
rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });
const { base, sizeBytes } = await benchImages(opt.quick);
type Step = 'backup' | 'restore' | 'check';
const res = new Map<string, Array<Measurement & { objects?: number; stored?: number; chunks?: number }>>();
const put = (
  s: Step,
  mib: number,
  m: Measurement & { objects?: number; stored?: number; chunks?: number },
): void => {
  res.set(`${s}/${mib}`, [...(res.get(`${s}/${mib}`) ?? []), m]);
  console.log(
    `${s} ${mib} MiB: ${(m.wallMs / 1000).toFixed(2)} s, ${(m.peakRssKiB / 1024).toFixed(0)} MiB` +
      `${m.fsyncs !== undefined ? `, ${m.fsyncs} fsyncs` : ''}${m.objects !== undefined ? `, ${m.objects} objects` : ''}`,
  );
};
const run1 = async (name: string, args: string[]): Promise<Measurement> => {
  await sh('sync');
  return measure(name, bin, ['-q', ...args], {}, { fsyncs });
};
try {
  for (let r = 0; r < runs; r++) {
    const order = r % 2 ? [...sizes].reverse() : sizes;
    const repo = (mib: number): string => join(work, `repo-${mib}M`);
    for (const mib of order)
      await sh(`'${bin}' init ${repo(mib)} --pack-size ${mib}M ${plainInit.join(' ')} >/dev/null`);
    for (const mib of order) {
      const m = await run1('backup-image', ['backup-image', '-r', repo(mib), '--vm', 'a', `${base}:vda`]);
      const u = await repoUsage(repo(mib));
      const chunks = await chunksReferenced(bin, repo(mib), {});
      put('backup', mib, { ...m, objects: u.objects, stored: u.bytes, ...(chunks ? { chunks } : {}) });
    }
    for (const mib of order) {
      const o = join(work, 'out.raw');
      put(
        'restore',
        mib,
        await run1('restore', ['restore', 'a@latest', '-r', repo(mib), '--disk', 'vda', '-o', o]),
      );
      if (r === 0) await sh(`cmp ${base} ${o}`);
      rmSync(o, { force: true });
    }
    for (const mib of order)
      put('check', mib, await run1('check', ['check', '--read-data', '-r', repo(mib)]));
    for (const mib of order) rmSync(repo(mib), { recursive: true, force: true });
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
const lines = [
  `| pack size | backup wall | backup RSS | backup fsyncs | restore wall | restore RSS | check wall | check RSS | objects | stored | objects per TiB stored | objects ÷ chunks |`,
  '|---|---|---|---|---|---|---|---|---|---|---|---|',
];
const s = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;
for (const mib of sizes) {
  const b = res.get(`backup/${mib}`)!;
  const rs = res.get(`restore/${mib}`)!;
  const c = res.get(`check/${mib}`)!;
  const l = b.at(-1)!;
  const rss = (xs: Measurement[]): string =>
    `${(Math.max(...xs.map((x) => x.peakRssKiB)) / 1024).toFixed(0)} MiB`;
  const w = (xs: Measurement[]): string => s(median(xs.map((x) => x.wallMs)));
  lines.push(
    `| ${mib} MiB | ${w(b)} | ${rss(b)} | ${l.fsyncs ?? '—'} | ${w(rs)} | ${rss(rs)} | ${w(c)} | ${rss(c)} | ${l.objects} | ${(
      l.stored! / 1e6
    ).toFixed(
      1,
    )} MB | ${((l.objects! * 2 ** 40) / l.stored!).toFixed(0)} | ${l.chunks ? (l.objects! / l.chunks).toFixed(4) : '—'} |`,
  );
}
console.log(
  `\n${(sizeBytes / 2 ** 30).toFixed(2)} GiB image, ${runs} run(s), build ${commit}\n\n${lines.join('\n')}`,
);
