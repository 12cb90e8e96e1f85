/**
 * Live VM backups: vmvault vs virtnbdbackup (Debian package) on the same running TCG VM whose
 * 4 GiB qcow2 disk holds an ext4 filesystem of real files (~2 GB), under a private libvirtd.
 * Full, then incremental after the same guest writes, then a clone's full backup (dedup).
 *   npm run build && npx tsx bench/vm-backup.ts      (root; apt-get install virtnbdbackup)
 */
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { CACHE, ext4Images } from './lib/datasets.js';
import { measure, sh, type Measurement } from './lib/harness.js';
import { allocatedBytes, startLibvirt } from './lib/vm.js';

if (!existsSync('/usr/bin/virtnbdbackup'))
  throw new Error('install virtnbdbackup first: apt-get install virtnbdbackup');
const work = join(CACHE, 'run-vm-backup');
rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });
await sh(`chmod 755 ${work}`);
const libvirt = await startLibvirt(join(work, 'libvirt'));
const { uri } = libvirt;
const vmvault = join(process.cwd(), 'bin/vmvault');
const du = async (p: string): Promise<number> => Number((await sh(`du -sb ${p} | cut -f1`)).trim());
try {
  const { base } = await ext4Images();
  const img1 = join(work, 'vm1.qcow2');
  const img2 = join(work, 'vm2.qcow2');
  await sh(`qemu-img convert -f raw -O qcow2 ${base} ${img1} && cp ${img1} ${img2}`);
  // Write the 4 GB of new images back now, not during the first measured backups.
  await sh('sync');
  const dataBytes = await allocatedBytes(img1);
  await libvirt.define('vm1', img1);
  await libvirt.define('vm2', img2);
  await libvirt.start('vm1');
  const repo = join(work, 'repo');
  await sh(`${vmvault} init ${repo} >/dev/null`);
  const vnb = join(work, 'vnb');
  const vnbz = join(work, 'vnbz');
  const rows: string[] = [];
  // Every run is followed by a timed `sync`: what the tool left in the page cache for the kernel
  // to write back (vmvault fsyncs what it stores before it reports success; virtnbdbackup does
  // not fsync its output), so "wall + sync" compares the time until each backup is on disk.
  type Run = Measurement & { syncMs: number };
  const timed = async (name: string, cmd: string, args: string[]): Promise<Run> => {
    await sh('sync');
    const m = await measure(name, cmd, args);
    return { ...m, syncMs: (await measure('sync', 'sync', [])).wallMs };
  };
  const note = (m: Run, bytes: number, extra: string): void => {
    const r = `| ${m.name} | ${(m.wallMs / 1000).toFixed(2)} s | ${(m.syncMs / 1000).toFixed(2)} s | ${(bytes / 1e6 / (m.wallMs / 1000)).toFixed(0)} MB/s | ${(m.peakRssKiB / 1024).toFixed(0)} MiB | ${extra} |`;
    rows.push(r);
    console.log(r);
  };
  const mb = (n: number): string => `${(n / 1e6).toFixed(1)} MB`;
  console.log(
    `VM disk: 4 GiB qcow2, ${mb(dataBytes)} allocated\n| run | wall | then sync | MB/s (allocated data / wall) | peak RSS | stored |\n|---|---|---|---|---|---|`,
  );
  // Each run starts with the previous runs' output written back (`sync` first): otherwise the
  // kernel's writeback of one tool's gigabytes lands in the next tool's measurement.
  const vv = (name: string, args: string[]): Promise<Run> =>
    timed(name, vmvault, ['-q', 'backup', '-r', repo, '--connect', uri, '--scratchdir', work, ...args]);
  const vb = (name: string, out: string, args: string[]): Promise<Run> =>
    timed(name, 'virtnbdbackup', ['-U', uri, '-S', work, '-o', out, ...args]);

  // virtnbdbackup refuses to work next to other tools' checkpoints, so each tool runs its own
  // phase: full, the same guest writes (32 × 2 MiB spread over the disk), incremental; then its
  // checkpoints are removed.
  const guestWrites = (phase: number): Promise<void> => libvirt.guestWrites('vm1', phase, 32, 97);
  const dropCheckpoints = (): Promise<void> => libvirt.dropCheckpoints('vm1');
  const changed = 64 * 2 ** 20;
  // Other levels, for comparison (the previous default 3, and a fast level): checkpoint-less
  // copies into repositories of their own.
  for (const level of ['3', '-4']) {
    const other = join(work, `repo-zstd${level}`);
    await sh(`${vmvault} init ${other} --compression zstd:${level} >/dev/null`);
    note(
      await timed(`vmvault copy (zstd:${level})`, vmvault, [
        '-q',
        'backup',
        '-r',
        other,
        '--connect',
        uri,
        '--scratchdir',
        work,
        '-d',
        'vm1',
        '-l',
        'copy',
      ]),
      dataBytes,
      mb(await du(other)),
    );
    rmSync(other, { recursive: true, force: true });
  }
  const vvFull = await vv('vmvault full (zstd:1)', ['-d', 'vm1', '-l', 'full']);
  note(vvFull, dataBytes, mb(await du(repo)));
  await guestWrites(3);
  let b0 = await du(repo);
  note(await vv('vmvault inc', ['-d', 'vm1', '-l', 'inc']), changed, `+${mb((await du(repo)) - b0)}`);

  await dropCheckpoints();
  const vbFull = await vb('virtnbdbackup full', vnb, ['-d', 'vm1', '-l', 'full']);
  note(vbFull, dataBytes, mb(await du(vnb)));
  console.log(
    `first full: vmvault ${(vvFull.wallMs / vbFull.wallMs).toFixed(2)}x virtnbdbackup's wall time; ` +
      `${((vvFull.wallMs + vvFull.syncMs) / (vbFull.wallMs + vbFull.syncMs)).toFixed(2)}x until on disk (wall + sync)`,
  );
  await guestWrites(1);
  b0 = await du(vnb);
  note(
    await vb('virtnbdbackup inc', vnb, ['-d', 'vm1', '-l', 'inc']),
    changed,
    `+${mb((await du(vnb)) - b0)}`,
  );
  await dropCheckpoints();
  note(
    await vb('virtnbdbackup full --compress', vnbz, ['-d', 'vm1', '-l', 'full', '-z']),
    dataBytes,
    mb(await du(vnbz)),
  );
  await guestWrites(2);
  b0 = await du(vnbz);
  note(
    await vb('virtnbdbackup inc --compress', vnbz, ['-d', 'vm1', '-l', 'inc', '-z']),
    changed,
    `+${mb((await du(vnbz)) - b0)}`,
  );
  await dropCheckpoints();
  // A clone of vm1's original disk: vmvault stores almost nothing new; virtnbdbackup a full copy.
  await libvirt.start('vm2');
  const r0 = await du(repo);
  const vnb2 = join(work, 'vnb-vm2');
  note(
    await vb('virtnbdbackup full of the clone', vnb2, ['-d', 'vm2', '-l', 'full']),
    dataBytes,
    `+${mb(await du(vnb2))}`,
  );
  await libvirt.dropCheckpoints('vm2');
  note(
    await vv('vmvault full of the clone', ['-d', 'vm2', '-l', 'full']),
    dataBytes,
    `+${mb((await du(repo)) - r0)}`,
  );
  // Restores of vm1's backup points as qcow2 images, by each tool: the full, then full + inc
  // (virtnbdrestore --until the first checkpoint, then the whole chain). Both end with the image
  // on disk: vmvault fsyncs before it exits; virtnbdrestore's qemu-nbd flushes when the client
  // disconnects. Like every run, each is followed by a timed `sync`.
  const snaps = JSON.parse((await sh(`${vmvault} snapshots -r ${repo} --vm vm1 --json`)).trim()) as Array<{
    id: string;
    mode: string;
  }>;
  const cps = (await sh(`ls ${vnb}/checkpoints | sed 's/\\.xml$//' | sort`)).trim().split('\n');
  for (const [point, snap, until] of [
    ['full', snaps.find((x) => x.mode === 'full')!.id, cps[0]!],
    ['full + inc', snaps.find((x) => x.mode === 'inc')!.id, undefined],
  ] as const) {
    const vr = join(work, `restore-vmvault-${point.length}`);
    const vnr = join(work, `restore-virtnbd-${point.length}`);
    const a = await timed(`vmvault restore ${point} (qcow2)`, vmvault, [
      '-q',
      'restore',
      snap,
      '-r',
      repo,
      '-o',
      vr,
    ]);
    note(a, dataBytes, '');
    const b = await timed(`virtnbdrestore ${point} (qcow2)`, 'virtnbdrestore', [
      '-U',
      uri,
      '-i',
      vnb,
      '-o',
      vnr,
      ...(until ? ['--until', until] : []),
    ]);
    note(b, dataBytes, '');
    console.log(
      `restore ${point}: vmvault ${((a.wallMs + a.syncMs) / (b.wallMs + b.syncMs)).toFixed(2)}x virtnbdrestore's time (each with its sync)`,
    );
    // (The two tools' points hold different guest writes; correctness is the tests' job.)
    rmSync(vr, { recursive: true, force: true });
    rmSync(vnr, { recursive: true, force: true });
  }
  console.log(
    `\nrepository after both VMs: vmvault ${mb(await du(repo))}; virtnbdbackup folders ${mb((await du(vnb)) + (await du(vnb2)))} (uncompressed)`,
  );
  console.log('\n' + rows.join('\n'));
} finally {
  await libvirt.stop();
  rmSync(work, { recursive: true, force: true });
}
