/**
 * Restores of a real VM's snapshot series: full → inc → inc, each to qcow2 and to raw, checked by
 * qemu-img and compared byte for byte with the disk content modelled in the test; a restored
 * domain (--config --define) starts under libvirt.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LibvirtClient } from '../../src/libvirt/index.js';
import { exec } from '../../src/util/index.js';
import { runCli } from '../helpers/cli.js';
import { createTestDomain, guestWrite, type TestDomain } from '../helpers/domains.js';
import { libvirtSkipReason, libvirtUri } from '../helpers/libvirtd.js';
import { makeTmpDir } from '../helpers/tmp.js';

const uri = libvirtUri();
const skip = libvirtSkipReason();
if (skip && process.env.VMVAULT_TEST_STRICT === '1') throw new Error(`restore VM tests cannot run: ${skip}`);
const MiB = 1024 * 1024;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe.skipIf(skip !== '')('restoring a VM snapshot series (real libvirt + QEMU)', () => {
  let client: LibvirtClient;
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: string;
  let td: TestDomain;
  const disk = Buffer.alloc(48 * MiB);
  const points: Array<{ id: string; hash: string }> = [];

  const backup = async (level: string): Promise<string> => {
    const r = await runCli([
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
      level,
      '--json',
    ]);
    expect(r.code, r.stderr).toBe(0);
    return (JSON.parse(r.stdout) as Array<{ snapshot: string }>)[0]!.snapshot;
  };
  const write = async (offset: number, length: number, pattern: number): Promise<void> => {
    await guestWrite(client, td, { disk: 'vda', offset, length, pattern });
    disk.fill(pattern, offset, offset + length);
  };

  beforeAll(async () => {
    client = await LibvirtClient.connect(uri);
    ({ dir, cleanup } = await makeTmpDir('vmvault-restore-vm-'));
    repo = join(dir, 'repo');
    expect((await runCli(['init', repo])).code).toBe(0);
    td = await createTestDomain(client, { disks: [{ sizeBytes: 48 * MiB }] });
    await write(0, 3 * MiB, 0x21);
    points.push({ id: await backup('full'), hash: sha(disk) });
    await write(5 * MiB, 128 * 1024, 0x31);
    points.push({ id: await backup('inc'), hash: sha(disk) });
    await write(40 * MiB, 2 * MiB, 0x41);
    await write(0, 64 * 1024, 0x00);
    points.push({ id: await backup('inc'), hash: sha(disk) });
  });
  afterAll(async () => {
    await td?.cleanup().catch(() => {});
    await client?.close();
    await cleanup?.();
  });

  it('every snapshot restores to qcow2 (qemu-img check clean) and raw, byte-identical', async () => {
    for (const [i, p] of points.entries()) {
      const q = join(dir, `p${i}-q`);
      const rq = await runCli(['restore', p.id, '-r', repo, '-o', q]);
      expect(rq.code, rq.stderr).toBe(0);
      const check = await exec('qemu-img', ['check', join(q, 'vda.qcow2')], { allowFailure: true });
      expect(check.code, check.stdout + check.stderr).toBe(0);
      const asRaw = join(dir, `p${i}-conv.raw`);
      await exec('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', join(q, 'vda.qcow2'), asRaw]);
      expect(sha(await readFile(asRaw)), `snapshot ${i} (qcow2)`).toBe(p.hash);
      const r = join(dir, `p${i}-r`);
      const rr = await runCli(['restore', p.id, '-r', repo, '-o', r, '--format', 'raw']);
      expect(rr.code, rr.stderr).toBe(0);
      expect(sha(await readFile(join(r, 'vda.raw'))), `snapshot ${i} (raw)`).toBe(p.hash);
    }
  });

  it('--config --define: the restored domain starts under libvirt and sees the restored disk', async () => {
    const out = join(dir, 'defined');
    const name = `${td.name}-restored`;
    const r = await runCli([
      'restore',
      points[1]!.id,
      '-r',
      repo,
      '-o',
      out,
      '--define',
      '--name',
      name,
      '--connect',
      uri,
    ]);
    expect(r.code, r.stderr).toBe(0);
    const xml = await readFile(join(out, `${name}.xml`), 'utf8');
    expect(xml).toContain(join(out, 'vda.qcow2'));
    expect(xml).not.toMatch(/<uuid>/);
    const dom = await client.lookupDomainByName(name);
    try {
      const started = await client.startDomain(dom);
      expect(await client.isDomainActive(started)).toBe(true);
      await client.destroyDomain(started);
    } finally {
      await client.undefineDomain(dom).catch(() => {});
    }
  });
});
