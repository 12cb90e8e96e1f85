/** Live backup options that need their own domains: guest-agent freeze, --all, --workers and exit 3. */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LibvirtClient } from '../../src/libvirt/index.js';
import { runCli } from '../helpers/cli.js';
import { createTestDomain, hotplugDisk, type TestDomain } from '../helpers/domains.js';
import { libvirtSkipReason, libvirtUri } from '../helpers/libvirtd.js';
import { makeTmpDir } from '../helpers/tmp.js';

const uri = libvirtUri();
const skip = libvirtSkipReason();
if (skip && process.env.VMVAULT_TEST_STRICT === '1') throw new Error(`live backup tests cannot run: ${skip}`);

describe.skipIf(skip !== '')('live backup: freeze and --all', () => {
  let client: LibvirtClient;
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: string;
  const doms: TestDomain[] = [];

  beforeAll(async () => {
    client = await LibvirtClient.connect(uri);
    ({ dir, cleanup } = await makeTmpDir('vmvault-live2-'));
    repo = join(dir, 'repo');
    expect((await runCli(['init', repo])).code).toBe(0);
    doms.push(await createTestDomain(client, { guestAgent: true, disks: [{ sizeBytes: 16 * 1024 * 1024 }] }));
    doms.push(await createTestDomain(client, { disks: [{ sizeBytes: 16 * 1024 * 1024 }], start: false }));
  });
  afterAll(async () => {
    for (const d of doms) await d.cleanup().catch(() => {});
    await client?.close();
    await cleanup?.();
  });

  it('an agent channel without a running agent: a warning, and the backup goes on crash-consistent', async () => {
    const r = await runCli([
      'backup',
      '-r',
      repo,
      '--connect',
      uri,
      '--scratchdir',
      dir,
      '-d',
      doms[0]!.name,
      '--freeze',
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/warning: .*guest agent did not freeze the filesystems.*crash-consistent/);
    const noFreeze = await runCli([
      'backup',
      '-r',
      repo,
      '--connect',
      uri,
      '--scratchdir',
      dir,
      '-d',
      doms[0]!.name,
      '--no-freeze',
    ]);
    expect(noFreeze.code, noFreeze.stderr).toBe(0);
    expect(noFreeze.stderr).not.toMatch(/freeze/);
  });

  it('--workers 2 reads two disks at once; a domain that fails among several gives exit 3 and the rest are saved', async () => {
    await hotplugDisk(client, doms[0]!, { target: 'vdc', sizeBytes: 8 * 1024 * 1024 });
    const r = await runCli([
      'backup',
      '-r',
      repo,
      '--connect',
      uri,
      '--scratchdir',
      dir,
      '-d',
      doms[0]!.name,
      '-d',
      'vmvault-no-such-domain',
      '-d',
      doms[1]!.name,
      '--workers',
      '2',
      '-l',
      'copy',
      '--json',
    ]);
    expect(r.code, r.stderr).toBe(3);
    expect(r.stderr).toMatch(/vmvault-no-such-domain/);
    expect(r.stderr).toMatch(/1 of 3 domains failed: vmvault-no-such-domain/);
    const results = JSON.parse(r.stdout) as Array<{
      domain: string;
      snapshot?: string | null;
      disks?: Array<{ target: string }>;
      error?: { code?: string; message: string };
    }>;
    expect(results.map((x) => x.domain)).toEqual([doms[0]!.name, 'vmvault-no-such-domain', doms[1]!.name]);
    expect(results[0]!.snapshot).toMatch(/^[0-9a-f]{64}$/);
    expect(results[0]!.disks!.map((d) => d.target).sort()).toEqual(['vda', 'vdc']);
    expect(results[1]!.error?.message).toMatch(/vmvault-no-such-domain/);
    expect(results[2]!.snapshot).toMatch(/^[0-9a-f]{64}$/);
    // --workers takes whole numbers from 1.
    const bad = await runCli(['backup', '-r', repo, '--connect', uri, '-d', doms[0]!.name, '--workers', '0']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/invalid --workers '0'/);
  });

  it('--all backs up every domain of the connection, running or shut off', async () => {
    const r = await runCli(['backup', '-r', repo, '--connect', uri, '--scratchdir', dir, '--all', '--json']);
    const results = JSON.parse(r.stdout) as Array<{
      domain: string;
      mode?: string;
      snapshot?: string;
      error?: unknown;
    }>;
    for (const d of doms) {
      const res = results.find((x) => x.domain === d.name);
      expect(res?.snapshot, JSON.stringify(res)).toMatch(/^[0-9a-f]{64}$/);
    }
    // Domains of other test files may come and go meanwhile; ours must have succeeded.
    expect(results.find((x) => x.domain === doms[1]!.name)?.mode).toBe('copy');
  });
});
