/**
 * backup-image vs restic vs borg on the same realistic ext4 image, then a near-identical clone
 * (deduplication), then restore. Prints wall time, MB/s (logical bytes / wall) and peak RSS.
 *   npm run build && npx tsx bench/backup-image.ts
 */
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { CACHE, ext4Images } from './lib/datasets.js';
import { measure, row, sh, type Measurement } from './lib/harness.js';

const work = join(CACHE, 'run-backup-image');
rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });
const { base, clone, sizeBytes } = await ext4Images();
const vmvault = join(process.cwd(), 'bin/vmvault');
const du = async (p: string): Promise<string> => (await sh(`du -sb ${p} | cut -f1`)).trim();
const dropCaches = async (): Promise<void> => {
  await sh('sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true');
};
const rows: string[] = [];
const note = (m: Measurement, extra = ''): void => {
  const r = row(m, sizeBytes, extra);
  rows.push(r);
  console.log(r);
};
console.log(
  `image: ${base} (${(sizeBytes / 1e9).toFixed(2)} GB apparent, ${await sh(`du -h ${base} | cut -f1`)})`,
);
console.log('| run | wall | MB/s | peak RSS | repo size |\n|---|---|---|---|---|');

// vmvault
const vrepo = join(work, 'vmvault');
await sh(`${vmvault} init ${vrepo} >/dev/null`);
await dropCaches();
note(
  await measure('vmvault backup-image (first)', vmvault, [
    '-q',
    'backup-image',
    '-r',
    vrepo,
    '--vm',
    'a',
    base,
  ]),
  await du(vrepo),
);
await dropCaches();
note(
  await measure('vmvault backup-image (clone)', vmvault, [
    '-q',
    'backup-image',
    '-r',
    vrepo,
    '--vm',
    'b',
    clone,
  ]),
  await du(vrepo),
);
await dropCaches();
note(
  await measure('vmvault restore (raw)', vmvault, [
    '-q',
    'restore',
    'a@latest',
    '-r',
    vrepo,
    '--disk',
    'vda',
    '-o',
    join(work, 'v.raw'),
  ]),
);
await sh(`cmp ${base} ${join(work, 'v.raw')} && rm -f ${join(work, 'v.raw')}`);

// restic
const rrepo = join(work, 'restic');
const renv = { RESTIC_PASSWORD: 'bench', RESTIC_REPOSITORY: rrepo };
await sh(`RESTIC_PASSWORD=bench restic init -q -r ${rrepo}`);
await dropCaches();
note(await measure('restic backup (first)', 'restic', ['backup', '-q', base], renv), await du(rrepo));
await dropCaches();
note(await measure('restic backup (clone)', 'restic', ['backup', '-q', clone], renv), await du(rrepo));
await dropCaches();
note(
  await measure(
    'restic restore',
    'restic',
    ['restore', '-q', 'latest', '--path', base, '--target', join(work, 'rr')],
    renv,
  ),
);
rmSync(join(work, 'rr'), { recursive: true, force: true });

// borg
const brepo = join(work, 'borg');
const benv = { BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes', BORG_RELOCATED_REPO_ACCESS_IS_OK: 'yes' };
await sh(`borg init -e none ${brepo}`);
await dropCaches();
note(
  await measure('borg create (first, lz4)', 'borg', ['create', `${brepo}::a`, base], benv),
  await du(brepo),
);
await dropCaches();
note(
  await measure('borg create (clone, lz4)', 'borg', ['create', `${brepo}::b`, clone], benv),
  await du(brepo),
);
await dropCaches();
mkdirSync(join(work, 'br'), { recursive: true });
note(await measure('borg extract', 'sh', ['-c', `cd ${join(work, 'br')} && borg extract ${brepo}::a`], benv));
rmSync(work, { recursive: true, force: true });
console.log('\n' + rows.join('\n'));
