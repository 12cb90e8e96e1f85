/**
 * Live VM backups end to end through the CLI, against the private libvirtd and real TCG domains.
 * The expected content of every disk at every backup point is modelled independently in the test
 * (a Buffer per disk with every guest write applied), and each snapshot is restored and compared
 * byte for byte.
 */
import { createHash } from 'node:crypto';
import { copyFile, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LibvirtClient, VIR_DOMAIN_UNDEFINE } from '../../src/libvirt/index.js';
import { runCli, startCli, expectOneLineError, errorLine, type CliResult } from '../helpers/cli.js';
import { createTestDomain, guestWrite, hotplugDisk, type TestDomain } from '../helpers/domains.js';
import { libvirtSkipReason, libvirtUri } from '../helpers/libvirtd.js';
import { makeTmpDir } from '../helpers/tmp.js';
import { corruptRecord, recordFile } from '../helpers/repo-files.js';

const uri = libvirtUri();
const skip = libvirtSkipReason();
if (skip && process.env.VMVAULT_TEST_STRICT === '1') throw new Error(`live backup tests cannot run: ${skip}`);

const MiB = 1024 * 1024;
const KiB = 1024;

interface JsonResult {
  domain: string;
  mode: string;
  snapshot: string | null;
  checkpoint: string | null;
  baseCheckpoint: string | null;
  skipped: Array<{ target: string; reason: string }>;
  notes: string[];
  estimateBytes: number | null;
  estimateKind: 'changed' | 'allocated' | null;
  skippedReason: string | null;
  disks: Array<{ target: string; mode: string; bytesRead: number; bytesNew: number; bytesReused: number }>;
  error?: { code: string; message: string };
}

/** The expected content of each disk, maintained alongside the guest writes. */
class DiskModel {
  readonly disks = new Map<string, Buffer>();
  add(target: string, sizeBytes: number): void {
    this.disks.set(target, Buffer.alloc(sizeBytes));
  }
  write(target: string, offset: number, length: number, pattern: number): void {
    this.disks.get(target)!.fill(pattern, offset, offset + length);
  }
  snapshot(): Map<string, string> {
    return new Map([...this.disks].map(([t, b]) => [t, sha(b)]));
  }
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe.skipIf(skip !== '')('live VM backup (real libvirt + QEMU)', () => {
  let client: LibvirtClient;
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: string;
  let td: TestDomain;
  const model = new DiskModel();
  const points: Array<{ snapshot: string; expect: Map<string, string>; mode: string }> = [];

  const backup = async (args: string[]): Promise<{ r: CliResult; json: JsonResult }> => {
    const r = await runCli(['backup', '-r', repo, '--connect', uri, '--scratchdir', dir, '--json', ...args]);
    let json: JsonResult;
    try {
      json = (JSON.parse(r.stdout) as JsonResult[])[0]!;
    } catch {
      throw new Error(`backup ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
    }
    return { r, json };
  };
  const write = async (
    target: string,
    offset: number,
    length: number,
    pattern: number,
    dom = td,
  ): Promise<void> => {
    await guestWrite(client, dom, { disk: target, offset, length, pattern });
    if (dom === td) model.write(target, offset, length, pattern);
  };
  const restoreRaw = async (snapshot: string, target: string): Promise<Buffer> => {
    const out = join(dir, `r-${snapshot.slice(0, 8)}-${target}-${Math.random().toString(16).slice(2)}.raw`);
    const r = await runCli(['restore', snapshot, '-r', repo, '--disk', target, '-o', out]);
    expect(r.code, r.stderr).toBe(0);
    return readFile(out);
  };

  beforeAll(async () => {
    client = await LibvirtClient.connect(uri);
    ({ dir, cleanup } = await makeTmpDir('vmvault-live-'));
    repo = join(dir, 'repo');
    expect((await runCli(['init', repo])).code).toBe(0);
    td = await createTestDomain(client, {
      disks: [{ sizeBytes: 64 * MiB }, { sizeBytes: 16 * MiB, format: 'raw' }],
      cdrom: true,
    });
    model.add('vda', 64 * MiB);
    model.add('vdb', 16 * MiB);
  });
  afterAll(async () => {
    await td?.cleanup().catch(() => {});
    await client?.close();
    await cleanup?.();
  });

  it('full → writes → inc → writes + hot-plugged disk → inc → diff, each restoring byte for byte', async () => {
    await write('vda', 0, 4 * MiB, 0x11);
    await write('vdb', 0, 1 * MiB, 0x22);
    const full = await backup(['-d', td.name, '-l', 'full']);
    expect(full.r.code, full.r.stderr).toBe(0);
    expect(full.json.mode).toBe('full');
    expect(full.json.checkpoint).toMatch(/^vmvault\.[0-9a-f]{8}\./);
    expect(full.json.skipped.find((s) => s.target === 'vdb')?.reason).toMatch(/raw disk \(use --raw/);
    expect(full.json.skipped.some((s) => s.reason === 'cdrom device')).toBe(true);
    points.push({ snapshot: full.json.snapshot!, expect: model.snapshot(), mode: 'full' });

    await write('vda', 1 * MiB, 64 * KiB, 0xab);
    await write('vda', 40 * MiB, 256 * KiB, 0xcd);
    const inc1 = await backup(['-d', td.name, '-l', 'inc']);
    expect(inc1.r.code, inc1.r.stderr).toBe(0);
    expect(inc1.json).toMatchObject({ mode: 'inc', baseCheckpoint: full.json.checkpoint });
    const vda1 = inc1.json.disks.find((d) => d.target === 'vda')!;
    expect(vda1.mode).toBe('incremental');
    expect(vda1.bytesRead).toBe(2 * MiB); // two dirty chunks, nothing else read
    expect(vda1.bytesReused).toBeGreaterThanOrEqual(2 * MiB);
    points.push({ snapshot: inc1.json.snapshot!, expect: model.snapshot(), mode: 'inc' });

    await write('vda', 10 * MiB, 1 * MiB, 0x33);
    await hotplugDisk(client, td, { target: 'vdc', sizeBytes: 32 * MiB });
    model.add('vdc', 32 * MiB);
    await write('vdc', 5 * MiB, 512 * KiB, 0x44);
    const inc2 = await backup(['-d', td.name]); // auto → inc
    expect(inc2.r.code, inc2.r.stderr).toBe(0);
    expect(inc2.json.mode).toBe('inc');
    expect(inc2.json.disks.find((d) => d.target === 'vdc')!.mode).toBe('full');
    expect(inc2.json.disks.find((d) => d.target === 'vda')!.bytesRead).toBe(1 * MiB);
    points.push({ snapshot: inc2.json.snapshot!, expect: model.snapshot(), mode: 'inc' });

    await write('vda', 20 * MiB, 128 * KiB, 0x55);
    const diff = await backup(['-d', td.name, '-l', 'diff']);
    expect(diff.r.code, diff.r.stderr).toBe(0);
    expect(diff.json).toMatchObject({ mode: 'diff', baseCheckpoint: full.json.checkpoint, checkpoint: null });
    // Everything written since the full: the 1M+40M, 10M and 20M regions (4 chunks).
    expect(diff.json.disks.find((d) => d.target === 'vda')!.bytesRead).toBe(4 * MiB);
    points.push({ snapshot: diff.json.snapshot!, expect: model.snapshot(), mode: 'diff' });

    for (const p of points) {
      for (const [target, hash] of p.expect) {
        if (target === 'vdb') continue; // raw: not backed up without --raw
        if (target === 'vdc' && p.mode === 'full') continue;
        if (target === 'vdc' && p.snapshot === inc1.json.snapshot) continue;
        expect(
          sha(await restoreRaw(p.snapshot, target)),
          `${p.mode} ${p.snapshot.slice(0, 8)} ${target}`,
        ).toBe(hash);
      }
    }
  });

  it('--raw includes the raw disk (read in full), --exclude leaves a disk out, --estimate and --threshold', async () => {
    await write('vdb', 2 * MiB, 64 * KiB, 0x66);
    const withRaw = await backup(['-d', td.name, '--raw', '-x', 'vdc']);
    expect(withRaw.r.code, withRaw.r.stderr).toBe(0);
    expect(withRaw.json.disks.map((d) => d.target).sort()).toEqual(['vda', 'vdb']);
    expect(withRaw.json.disks.find((d) => d.target === 'vdb')!.mode).toBe('full');
    expect(sha(await restoreRaw(withRaw.json.snapshot!, 'vdb'))).toBe(sha(model.disks.get('vdb')!));

    await write('vda', 30 * MiB, 64 * KiB, 0x77);
    const est = await runCli(['backup', '-r', repo, '--connect', uri, '-d', td.name, '--estimate']);
    expect(est.code, est.stderr).toBe(0);
    expect(est.stdout).toMatch(/changed since vmvault\./);
    const skipped = await backup(['-d', td.name, '--threshold', '1G']);
    expect(skipped.r.code, skipped.r.stderr).toBe(0);
    expect(skipped.json.snapshot).toBeNull();
  });

  it('offline copy and offline inc through qemu-nbd, then a live inc again', async () => {
    const before = model.snapshot();
    await client.destroyDomain(td.dom);
    // Shut off: the estimate is measured (the persistent bitmap's dirty bytes for inc, the
    // allocated data for copy), and the threshold applies to it.
    const offEst = await backup(['-d', td.name, '-l', 'inc', '--estimate']);
    expect(offEst.r.code, offEst.r.stderr).toBe(0);
    expect(offEst.json.estimateKind).toBe('changed');
    expect(offEst.json.estimateBytes).toBeGreaterThanOrEqual(64 * KiB); // the write at 30 MiB
    expect(offEst.json.estimateBytes).toBeLessThanOrEqual(8 * MiB);
    const copyEst = await runCli([
      'backup',
      '-r',
      repo,
      '--connect',
      uri,
      '-d',
      td.name,
      '-l',
      'copy',
      '--estimate',
    ]);
    expect(copyEst.code, copyEst.stderr).toBe(0);
    expect(copyEst.stdout).toMatch(/a copy backup would read about .* bytes of allocated data/);
    const copySkip = await backup(['-d', td.name, '-l', 'copy', '--threshold', '1T']);
    expect(copySkip.r.code, copySkip.r.stderr).toBe(0);
    expect(copySkip.json.snapshot).toBeNull();
    expect(copySkip.json.estimateKind).toBe('allocated');
    expect(copySkip.json.estimateBytes).toBeGreaterThan(4 * MiB);
    expect(copySkip.json.skippedReason).toMatch(/bytes to read, less than the threshold/);
    const copy = await backup(['-d', td.name, '-l', 'copy']);
    expect(copy.r.code, copy.r.stderr).toBe(0);
    expect(copy.json.mode).toBe('copy');
    expect(sha(await restoreRaw(copy.json.snapshot!, 'vda'))).toBe(before.get('vda'));
    const full = await backup(['-d', td.name, '-l', 'full']);
    expect(full.json.mode).toBe('copy'); // shut off: full becomes copy
    const offInc = await backup(['-d', td.name, '-l', 'inc']);
    expect(offInc.r.code, offInc.r.stderr).toBe(0);
    expect(offInc.json).toMatchObject({ mode: 'inc', checkpoint: null });
    expect(sha(await restoreRaw(offInc.json.snapshot!, 'vda'))).toBe(before.get('vda'));
    await td.start();
    await write('vda', 50 * MiB, 64 * KiB, 0x88);
    const live = await backup(['-d', td.name]);
    expect(live.r.code, live.r.stderr).toBe(0);
    expect(live.json.mode).toBe('inc');
    expect(sha(await restoreRaw(live.json.snapshot!, 'vda'))).toBe(sha(model.disks.get('vda')!));
  });

  it('checkpoints lost by libvirt (undefine + define) are redefined and the next inc works', async () => {
    const xml = await client.getDomainXml(td.dom, 2 /* inactive */);
    await client.destroyDomain(td.dom);
    await client.undefineDomain(td.dom, VIR_DOMAIN_UNDEFINE.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA);
    td.dom = await client.defineDomainXml(xml);
    await td.start();
    expect(await client.listAllCheckpoints(td.dom)).toEqual([]);
    await write('vda', 60 * MiB, 64 * KiB, 0x99);
    const inc = await backup(['-d', td.name, '-l', 'inc']);
    expect(inc.r.code, inc.r.stderr).toBe(0);
    expect(inc.json.mode).toBe('inc');
    expect(sha(await restoreRaw(inc.json.snapshot!, 'vda'))).toBe(sha(model.disks.get('vda')!));
  });

  it('a damaged parent index: the next inc reads the disk in full, warns, and restores byte for byte', async () => {
    const last = await backup(['-d', td.name, '-l', 'inc']);
    expect(last.r.code, last.r.stderr).toBe(0);
    const show = await runCli(['show', last.json.snapshot!, '-r', repo, '--json']);
    const indexId = (
      JSON.parse(show.stdout) as { disks: Array<{ target: string; root: string }> }
    ).disks.find((d) => d.target === 'vda')!.root;
    // Its root page's record in the meta pack, damaged.
    const indexFile = (await recordFile(repo, indexId)).path;
    const sound = await readFile(indexFile);
    await corruptRecord(repo, indexId);
    await write('vda', 40 * MiB, 64 * KiB, 0x5c);
    const inc = await backup(['-d', td.name, '-l', 'inc']);
    expect(inc.r.code, inc.r.stderr).toBe(0);
    expect(inc.r.stderr).toMatch(
      /warning: .*\/vda: the parent snapshot's disk index cannot be used .*reading the whole disk/,
    );
    expect(inc.json.disks.find((d) => d.target === 'vda')?.mode).toBe('full');
    expect(sha(await restoreRaw(inc.json.snapshot!, 'vda'))).toBe(sha(model.disks.get('vda')!));
    await writeFile(indexFile, sound); // the later tests check a sound repository
  });

  it('a cloned domain sharing most data adds almost nothing; two domains back up at the same time', async () => {
    const statsBefore = JSON.parse((await runCli(['stats', '-r', repo, '--json'])).stdout) as {
      dataStoredBytes: number;
    };
    await client.destroyDomain(td.dom);
    const clone = await createTestDomain(client, { disks: [{ sizeBytes: 64 * MiB }], start: false });
    try {
      await copyFile(td.disks[0]!.path, clone.disks[0]!.path);
      await clone.start();
      await td.start();
      const [a, b] = await Promise.all([backup(['-d', clone.name, '-l', 'full']), backup(['-d', td.name])]);
      expect(a.r.code, a.r.stderr).toBe(0);
      expect(b.r.code, b.r.stderr).toBe(0);
      const statsAfter = JSON.parse((await runCli(['stats', '-r', repo, '--json'])).stdout) as {
        dataStoredBytes: number;
      };
      expect(statsAfter.dataStoredBytes - statsBefore.dataStoredBytes).toBeLessThan(1 * MiB);
      expect(sha(await restoreRaw(a.json.snapshot!, 'vda'))).toBe(sha(model.disks.get('vda')!));
    } finally {
      await clone.cleanup();
    }
  });

  it('unknown domain and a daemon that is not running give one-line errors', async () => {
    const r = await runCli(['backup', '-r', repo, '--connect', uri, '-d', 'no-such-domain']);
    expect(r.code).toBe(1);
    expect(expectOneLineError(r)).toMatch(/domain 'no-such-domain' not found/);
    const gone = await runCli([
      'backup',
      '-r',
      repo,
      '--connect',
      `qemu+unix:///system?socket=${join(dir, 'nope.sock')}`,
      '-d',
      'x',
    ]);
    expect(gone.code).toBe(1);
    expectOneLineError(gone);
  });

  it('guest shutdown and SIGKILL in the middle of a backup leave a consistent repository', async () => {
    // Enough distinct data that a full backup takes a moment.
    for (let i = 0; i < 48; i++) await write('vda', i * MiB, 1 * MiB, 0x10 + i);
    const snapsBefore = (JSON.parse((await runCli(['snapshots', '-r', repo, '--json'])).stdout) as unknown[])
      .length;

    const child = startCli([
      'backup',
      '-r',
      repo,
      '--connect',
      uri,
      '--scratchdir',
      dir,
      '-d',
      td.name,
      '-l',
      'full',
    ]);
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    // Kill once the job runs and chunks are being read.
    await waitFor(async () => /vda: reading/.test(stderr), 30_000);
    child.kill('SIGKILL');
    await new Promise((r) => child.on('close', r));
    const snapsAfterKill = (
      JSON.parse((await runCli(['snapshots', '-r', repo, '--json'])).stdout) as unknown[]
    ).length;
    expect(snapsAfterKill).toBe(snapsBefore);

    const stale = await runCli(['backup', '-r', repo, '--connect', uri, '--scratchdir', dir, '-d', td.name]);
    expect(stale.code).toBe(1);
    expect(errorLine(stale)).toMatch(/already has a job running.*--kill-stale-job/);
    const next = await backup(['-d', td.name, '--kill-stale-job']);
    expect(next.r.code, next.r.stderr).toBe(0);
    expect(sha(await restoreRaw(next.json.snapshot!, 'vda'))).toBe(sha(model.disks.get('vda')!));

    // Destroy the domain while a backup runs: a clear error, and the next backup (offline) works.
    const child2 = startCli([
      'backup',
      '-r',
      repo,
      '--connect',
      uri,
      '--scratchdir',
      dir,
      '-d',
      td.name,
      '-l',
      'full',
    ]);
    let err2 = '';
    child2.stderr?.on('data', (d: Buffer) => (err2 += d.toString()));
    await waitFor(async () => /vda: reading/.test(err2), 30_000);
    await client.destroyDomain(td.dom);
    const code2 = await new Promise<number>((r) => child2.on('close', (c) => r(c ?? -1)));
    // Either the backup finished first, or it stopped with a clear message.
    if (code2 !== 0)
      expect(errorLine({ code: code2, stdout: '', stderr: err2 })).toMatch(
        /shut down during the backup; nothing was saved/,
      );
    const after = await backup(['-d', td.name, '-l', 'copy']);
    expect(after.r.code, after.r.stderr).toBe(0);
    expect(sha(await restoreRaw(after.json.snapshot!, 'vda'))).toBe(sha(model.disks.get('vda')!));
    void stderr;
  });
});

async function waitFor(cond: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error('condition not met in time');
}
