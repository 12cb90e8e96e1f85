/**
 * `vmvault restore --config` of a snapshot whose stored domain XML is hostile (written straight into
 * the repository, as any host sharing it could): the adjusted XML names only the files the restore
 * wrote, and stderr names each element removed or changed.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Repository } from '../../src/repo/index.js';
import { runCli } from '../helpers/cli.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

const run = requireTools(['qemu-img']);

const HOSTILE = `<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>web1</name>
  <memory unit='KiB'>65536</memory>
  <os><type arch='x86_64'>hvm</type><loader readonly='yes'>/etc/shadow</loader><kernel>/boot/evil</kernel></os>
  <seclabel type='none'/>
  <devices>
    <emulator>/tmp/evil-emulator</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/srv/web1.raw'/><target dev='vda' bus='virtio'/></disk>
    <disk type='block' device='disk'><source dev='/dev/sda'/><target dev='vdb' bus='virtio'/></disk>
    <filesystem type='mount' accessmode='passthrough'><source dir='/'/><target dir='root'/></filesystem>
    <hostdev mode='subsystem' type='pci'><source><address domain='0' bus='1' slot='0' function='0'/></source></hostdev>
    <serial type='file'><source path='/etc/cron.d/evil'/><log file='/root/.bashrc'/><target port='0'/></serial>
  </devices>
  <qemu:commandline><qemu:arg value='-drive'/><qemu:arg value='file=/etc/shadow'/></qemu:commandline>
</domain>`;

/** Absolute paths in attribute values and text of an XML document (a deliberately blunt scan). */
function absolutePaths(xml: string): string[] {
  return [...xml.matchAll(/(?:="|>)\s*(\/[^"<]*)/g)].map((m) => m[1]!.trim());
}

describe.runIf(run)('restore --config of a snapshot with a hostile domain XML', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: string;
  let snap: string;

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir('vmvault-domxml-cli-'));
    const img = join(dir, 'vda.raw');
    await writeFile(img, seededBytes(256 * 1024, 7));
    repo = join(dir, 'repo');
    expect((await runCli(['init', repo])).code).toBe(0);
    const b = await runCli(['backup-image', '-r', repo, '--vm', 'web1', `${img}:vda`, '--json']);
    expect(b.code, b.stderr).toBe(0);
    const r = await Repository.open(repo);
    try {
      const { id: _id, ...m } = await r.getSnapshot((JSON.parse(b.stdout) as { snapshot: string }).snapshot);
      void _id;
      const f = await r.putFile('domain-xml', 'web1.xml', Buffer.from(HOSTILE));
      await r.chunks.flush();
      snap = (await r.putSnapshot({ ...m, time: new Date().toISOString(), files: [f] })).id;
    } finally {
      await r.close();
    }
  });
  afterAll(async () => cleanup());

  it('writes an XML naming only the restored image, and says what it removed', async () => {
    const out = join(dir, 'out');
    const r = await runCli(['restore', snap, '-r', repo, '-o', out, '--config']);
    expect(r.code, r.stderr).toBe(0);
    const xml = await readFile(join(out, 'restore_web1.xml'), 'utf8');
    expect(absolutePaths(xml)).toEqual([join(out, 'vda.qcow2')]);
    expect(xml).not.toMatch(/qemu:|seclabel|hostdev|filesystem|emulator/);
    expect(xml).toMatch(/<serial type="pty">/);
    for (const line of [
      'removed disk vdb: it was not restored',
      'removed <filesystem',
      'removed <hostdev',
      "<serial type='file'> is now a pty",
      'removed the <log> of',
      'removed <emulator> /tmp/evil-emulator',
      'removed <os><loader> /etc/shadow',
      'removed <os><kernel> /boot/evil',
      "removed <seclabel type='none'>",
      'removed <qemu:commandline>',
    ])
      expect(r.stderr).toContain(`warning: restored domain XML: ${line}`);
  });

  it('--keep-host-config keeps them (a trusted repository), and needs --config or --define', async () => {
    const out = join(dir, 'kept');
    const r = await runCli([
      'restore',
      snap,
      '-r',
      repo,
      '-o',
      out,
      '--config',
      '--keep-host-config',
      '--json',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const xml = await readFile(join(out, 'restore_web1.xml'), 'utf8');
    for (const kept of ['/etc/cron.d/evil', 'qemu:commandline', '/tmp/evil-emulator', 'source dir="/"'])
      expect(xml).toContain(kept);
    expect(xml).not.toContain('/dev/sda');
    expect((JSON.parse(r.stdout) as { configNotes: string[] }).configNotes).toEqual([
      'removed disk vdb: it was not restored',
    ]);
    const u = await runCli(['restore', snap, '-r', repo, '-o', join(dir, 'u'), '--keep-host-config']);
    expect(u.code).toBe(2);
    expect(u.stderr).toMatch(
      /^vmvault: --keep-host-config changes the domain XML that --config or --define writes; add --config/,
    );
  });
});
