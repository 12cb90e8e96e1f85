/**
 * `vmvault serve` end to end, and instant boot: a TCG domain whose disk is a qcow2 overlay backed
 * by the served snapshot starts under libvirt, and its writes land in the overlay, never in the
 * repository.
 */
import { createHash } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LibvirtClient } from '../../src/libvirt/index.js';
import { exec } from '../../src/util/index.js';
import { runCli, startServe } from '../helpers/cli.js';
import { libvirtSkipReason, libvirtUri } from '../helpers/libvirtd.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';

const uri = libvirtUri();
const skip = libvirtSkipReason();
if (skip && process.env.VMVAULT_TEST_STRICT === '1') throw new Error(`serve VM tests cannot run: ${skip}`);
const MiB = 1024 * 1024;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe.skipIf(skip !== '')('serve and instant boot', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: string;
  let original: Buffer;
  let client: LibvirtClient;

  beforeAll(async () => {
    client = await LibvirtClient.connect(uri);
    ({ dir, cleanup } = await makeTmpDir('vmvault-serve-'));
    repo = join(dir, 'repo');
    original = Buffer.alloc(64 * MiB);
    seededBytes(6 * MiB, 9).copy(original, 0);
    seededBytes(MiB, 10).copy(original, 50 * MiB);
    await writeFile(join(dir, 'disk.raw'), original);
    expect((await runCli(['init', repo])).code).toBe(0);
    expect(
      (await runCli(['backup-image', '-r', repo, '--vm', 'srv', `${join(dir, 'disk.raw')}:vda`])).code,
    ).toBe(0);
  });
  afterAll(async () => {
    await client?.close();
    await cleanup?.();
  });

  it('serves a snapshot read-only: nbdcopy gets the original bytes; SIGINT ends it with exit 0', async () => {
    const s = await startServe(['srv@latest', '-r', repo, '--socket', join(dir, 'ro.sock')]);
    expect(s.uris).toEqual([`nbd+unix:///vda?socket=${join(dir, 'ro.sock')}`]);
    await exec('nbdcopy', [s.uris[0]!, join(dir, 'copy.raw')]);
    expect(sha(await readFile(join(dir, 'copy.raw')))).toBe(sha(original));
    const w = await exec('qemu-io', ['-f', 'raw', '-c', 'write 0 4096', s.uris[0]!], { allowFailure: true });
    expect(w.stdout + w.stderr).toMatch(/read-only|Operation not permitted|permission/i);
    expect(await s.stop()).toBe(0);
  });

  it('a TCG domain boots from a qcow2 overlay on the served export; its writes never reach the repository', async () => {
    const statsBefore = (await runCli(['stats', '-r', repo, '--json'])).stdout;
    const s = await startServe(['srv@latest', '-r', repo, '--socket', join(dir, 'boot.sock')]);
    const overlay = join(dir, 'overlay.qcow2');
    await exec('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', s.uris[0]!, '-F', 'raw', overlay]);
    const name = `vmvault-instant-${Date.now()}`;
    const xml = `<domain type='qemu'><name>${name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${overlay}'/><target dev='vda' bus='virtio'/><alias name='ua-vda'/></disk></devices></domain>`;
    const dom = await client.defineDomainXml(xml);
    try {
      const running = await client.startDomain(dom);
      expect(await client.isDomainActive(running)).toBe(true);
      const sizeBefore = (await stat(overlay)).size;
      await client.qemuMonitorCommand(
        running,
        `qemu-io -d /machine/peripheral/ua-vda/virtio-backend "write -P 0x66 2M 1M"`,
        { hmp: true },
      );
      await client.destroyDomain(running);
      expect((await stat(overlay)).size).toBeGreaterThan(sizeBefore);
      // The overlay holds the write; the backing export still has the original bytes.
      const viaOverlay = await exec('qemu-io', ['-f', 'qcow2', '-r', '-c', 'read -P 0x66 2M 1M', overlay]);
      expect(viaOverlay.stdout).not.toMatch(/Pattern verification failed/);
    } finally {
      await client.undefineDomain(dom).catch(() => {});
      expect(await s.stop()).toBe(0);
    }
    expect((await runCli(['stats', '-r', repo, '--json'])).stdout).toBe(statsBefore);
    const out = join(dir, 'after.raw');
    expect((await runCli(['restore', 'srv@latest', '-r', repo, '--disk', 'vda', '-o', out])).code).toBe(0);
    expect(sha(await readFile(out))).toBe(sha(original));
  });

  it('--writable takes writes in a temporary overlay; the repository is unchanged', async () => {
    const statsBefore = (await runCli(['stats', '-r', repo, '--json'])).stdout;
    const s = await startServe(['srv@latest', '-r', repo, '--socket', join(dir, 'rw.sock'), '--writable']);
    await exec('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1M 64k', s.uris[0]!]);
    const r = await exec('qemu-io', ['-f', 'raw', '-c', 'read -P 0x5a 1M 64k', s.uris[0]!]);
    expect(r.stdout).not.toMatch(/Pattern verification failed/);
    expect(await s.stop()).toBe(0);
    expect((await runCli(['stats', '-r', repo, '--json'])).stdout).toBe(statsBefore);
  });
});
