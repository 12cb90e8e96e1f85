/**
 * `backup --method snapshot` (seed 001) on the private libvirtd, forced on a daemon that has the
 * backup API: external disk-only snapshot, copy of the bases through qemu-nbd, active block commit
 * with pivot. Guest writes made while the copy is paused must land in the original disk after the
 * pivot and not in the backup; a SIGKILL in the pause leaves an overlay the next run commits.
 */
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LibvirtClient, parseDomainXml } from '../../src/libvirt/index.js';
import { errorLine, runCli, startCli } from '../helpers/cli.js';
import { createTestDomain, guestWrite, type TestDomain } from '../helpers/domains.js';
import { libvirtSkipReason, libvirtUri } from '../helpers/libvirtd.js';
import { makeTmpDir } from '../helpers/tmp.js';
import { exec } from '../../src/util/index.js';

const uri = libvirtUri();
const skip = libvirtSkipReason();
if (skip && process.env.VMVAULT_TEST_STRICT === '1')
  throw new Error(`snapshot method tests cannot run: ${skip}`);

const MiB = 1024 * 1024;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe.skipIf(skip !== '')('backup --method snapshot (real libvirt + QEMU)', () => {
  let client: LibvirtClient;
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: string;
  let td: TestDomain;
  const model = new Map<string, Buffer>();

  const write = async (disk: string, offset: number, length: number, pattern: number): Promise<void> => {
    await guestWrite(client, td, { disk, offset, length, pattern });
    model.get(disk)!.fill(pattern, offset, offset + length);
  };
  const restoreRaw = async (snapshot: string, target: string): Promise<Buffer> => {
    const out = join(dir, `r-${snapshot.slice(0, 8)}-${target}-${Math.random().toString(16).slice(2)}.raw`);
    const r = await runCli(['restore', snapshot, '-r', repo, '--disk', target, '-o', out]);
    expect(r.code, r.stderr).toBe(0);
    return readFile(out);
  };
  /** The disk images as QEMU sees them now, read with qemu-img (force-share) into raw. */
  const diskNow = async (target: string): Promise<Buffer> => {
    const d = td.disks.find((x) => x.target === target)!;
    const out = join(dir, `now-${target}-${Math.random().toString(16).slice(2)}.raw`);
    await exec('qemu-img', ['convert', '-U', '-f', d.format, '-O', 'raw', d.path, out]);
    return readFile(out);
  };
  const sources = async (): Promise<Map<string, string | undefined>> => {
    const m = parseDomainXml(await client.getDomainXml(td.dom, 0));
    return new Map(m.disks.map((d) => [d.target, d.path]));
  };
  const overlayDirs = async (): Promise<string[]> =>
    (await readdir(dir)).filter((n) => n.startsWith('vmvault-overlay-'));
  const waitFor = async (cond: () => boolean, ms: number): Promise<void> => {
    const end = Date.now() + ms;
    while (!cond()) {
      if (Date.now() > end) throw new Error('condition not met in time');
      await new Promise((r) => setTimeout(r, 20));
    }
  };

  beforeAll(async () => {
    client = await LibvirtClient.connect(uri);
    ({ dir, cleanup } = await makeTmpDir('vmvault-snapm-'));
    repo = join(dir, 'repo');
    expect((await runCli(['init', repo])).code).toBe(0);
    td = await createTestDomain(client, {
      disks: [{ sizeBytes: 16 * MiB }, { sizeBytes: 8 * MiB, format: 'raw' }],
    });
    model.set('vda', Buffer.alloc(16 * MiB));
    model.set('vdb', Buffer.alloc(8 * MiB));
  });
  afterAll(async () => {
    await td?.cleanup().catch(() => {});
    await client?.close();
    await cleanup?.();
  });

  it('writes during the copy reach the original disks after the pivot, not the backup', async () => {
    await write('vda', 0, 2 * MiB, 0x11);
    await write('vdb', 1 * MiB, 1 * MiB, 0x22);
    const atSnapshot = new Map([...model].map(([t, b]) => [t, Buffer.from(b)]));
    const before = await sources();

    const child = startCli(
      [
        'backup',
        '-r',
        repo,
        '--connect',
        uri,
        '--scratchdir',
        dir,
        '-d',
        td.name,
        '--method',
        'snapshot',
        '--raw',
        '--json',
      ],
      { VMVAULT_TEST_PAUSE: 'snapshot-copy:3000' },
    );
    let stderr = '';
    let stdout = '';
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
    const closed = new Promise<number>((r) => child.on('close', (c) => r(c ?? -1)));
    await waitFor(() => stderr.includes('test pause at snapshot-copy'), 30_000);
    // The domain runs on overlays now.
    const during = await sources();
    expect(during.get('vda')).toMatch(/vmvault-overlay-\d+-[^/]+\/vda\.qcow2$/);
    expect(during.get('vdb')).toMatch(/vmvault-overlay-\d+-[^/]+\/vdb\.qcow2$/);
    await write('vda', 1 * MiB, 1 * MiB, 0x33);
    await write('vda', 8 * MiB, 512 * 1024, 0x44);
    await write('vdb', 0, 256 * 1024, 0x55);
    const code = await closed;
    expect(code, stderr).toBe(0);
    const json = (
      JSON.parse(stdout) as Array<{ method: string; mode: string; snapshot: string; checkpoint: null }>
    )[0]!;
    expect(json).toMatchObject({ method: 'snapshot', mode: 'copy', checkpoint: null });

    // Back on the original images, no overlay left, no checkpoint created.
    expect(await sources()).toEqual(before);
    expect(await overlayDirs()).toEqual([]);
    expect(await client.listAllCheckpoints(td.dom)).toEqual([]);
    // The backup is the disks as they were at the snapshot; the disks have the later writes too.
    for (const t of ['vda', 'vdb']) {
      expect(sha(await restoreRaw(json.snapshot, t)), t).toBe(sha(atSnapshot.get(t)!));
      expect(sha(await diskNow(t)), t).toBe(sha(model.get(t)!));
    }
  });

  it('incremental levels with --method snapshot are a usage error', async () => {
    for (const l of ['inc', 'diff', 'full']) {
      const r = await runCli([
        'backup',
        '-r',
        repo,
        '--connect',
        uri,
        '-d',
        td.name,
        '--method',
        'snapshot',
        '-l',
        l,
      ]);
      expect(r.code).toBe(2);
      expect(errorLine(r)).toMatch(/needs checkpoints.*copy backups only/);
    }
  });

  it('SIGKILL during the copy leaves an overlay; the next run commits it with --kill-stale-job', async () => {
    const before = await sources();
    const child = startCli(
      [
        'backup',
        '-r',
        repo,
        '--connect',
        uri,
        '--scratchdir',
        dir,
        '-d',
        td.name,
        '--method',
        'snapshot',
        '--raw',
      ],
      { VMVAULT_TEST_PAUSE: 'snapshot-copy:60000' },
    );
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    await waitFor(() => stderr.includes('test pause at snapshot-copy'), 30_000);
    child.kill('SIGKILL');
    await new Promise((r) => child.on('close', r));
    expect((await sources()).get('vda')).toMatch(/vmvault-overlay-/);
    await write('vda', 4 * MiB, 1 * MiB, 0x66); // lands in the leftover overlay

    const refused = await runCli([
      'backup',
      '-r',
      repo,
      '--connect',
      uri,
      '--scratchdir',
      dir,
      '-d',
      td.name,
      '--raw',
    ]);
    expect(refused.code).toBe(1);
    expect(errorLine(refused)).toMatch(/runs on vmvault overlay .*--kill-stale-job/);

    const next = await runCli([
      'backup',
      '-r',
      repo,
      '--connect',
      uri,
      '--scratchdir',
      dir,
      '-d',
      td.name,
      '--method',
      'snapshot',
      '--raw',
      '--kill-stale-job',
      '--json',
    ]);
    expect(next.code, next.stderr).toBe(0);
    // (--json keeps the info lines off stderr; the state of the domain is what counts)
    expect(await sources()).toEqual(before);
    expect(await overlayDirs()).toEqual([]);
    const snap = (JSON.parse(next.stdout) as Array<{ snapshot: string }>)[0]!.snapshot;
    for (const t of ['vda', 'vdb']) {
      expect(sha(await restoreRaw(snap, t)), t).toBe(sha(model.get(t)!));
      expect(sha(await diskNow(t)), t).toBe(sha(model.get(t)!));
    }
  });
});
