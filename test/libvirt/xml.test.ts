import { describe, expect, it } from 'vitest';
import {
  LibvirtXmlError,
  buildCheckpointXml,
  buildPullBackupXml,
  escapeXml,
  parseBackupXml,
  parseCheckpointXml,
  parseDomainXml,
} from '../../src/libvirt/index.js';

const DOMAIN = `<domain type='kvm' id='3'>
  <name>web &amp; db</name>
  <uuid>7e7e7add-0554-49ff-8d79-a0c1f39b727b</uuid>
  <memory unit='KiB'>2097152</memory>
  <vcpu placement='static'>2</vcpu>
  <os firmware='efi'>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
    <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/var/lib/libvirt/qemu/nvram/web_VARS.fd</nvram>
    <kernel>/boot/vmlinuz</kernel>
    <initrd>/boot/initrd.img</initrd>
    <cmdline>console=ttyS0</cmdline>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='/images/top.qcow2' index='3'/>
      <backingStore type='file' index='2'>
        <format type='qcow2'/>
        <source file='/images/mid.qcow2'/>
        <backingStore type='block' index='1'>
          <format type='raw'/>
          <source dev='/dev/vg/base'/>
          <backingStore/>
        </backingStore>
      </backingStore>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
    </disk>
    <disk type='block' device='lun'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/sdb'/>
      <target dev='sda' bus='scsi'/>
      <shareable/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='rbd' name='pool/image'>
        <host name='mon1' port='6789'/>
        <host name='mon2'/>
      </source>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source pool='default' volume='data.qcow2'/>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='sdz' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='file' device='floppy'>
      <source file='/images/boot.img'/>
      <target dev='fda' bus='fdc'/>
    </disk>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
  </devices>
</domain>`;

describe('domain XML model', () => {
  const m = parseDomainXml(DOMAIN);

  it('reads identity, memory, cpus and the guest agent channel', () => {
    expect(m.name).toBe('web & db');
    expect(m.uuid).toBe('7e7e7add-0554-49ff-8d79-a0c1f39b727b');
    expect(m.hypervisor).toBe('kvm');
    expect(m.memoryKiB).toBe(2097152);
    expect(m.vcpus).toBe(2);
    expect(m.hasGuestAgent).toBe(true);
  });

  it('reads the firmware and boot files a VM needs besides its disks', () => {
    expect(m.os).toMatchObject({
      type: 'hvm',
      arch: 'x86_64',
      machine: 'pc-q35-7.2',
      firmware: 'efi',
      kernel: '/boot/vmlinuz',
      initrd: '/boot/initrd.img',
      cmdline: 'console=ttyS0',
      loader: { path: '/usr/share/OVMF/OVMF_CODE_4M.fd', readOnly: true, type: 'pflash' },
      nvram: { path: '/var/lib/libvirt/qemu/nvram/web_VARS.fd', template: '/usr/share/OVMF/OVMF_VARS_4M.fd' },
    });
    expect(m.extraFiles).toEqual([
      { role: 'kernel', path: '/boot/vmlinuz' },
      { role: 'initrd', path: '/boot/initrd.img' },
      { role: 'loader', path: '/usr/share/OVMF/OVMF_CODE_4M.fd' },
      { role: 'nvram', path: '/var/lib/libvirt/qemu/nvram/web_VARS.fd' },
    ]);
  });

  it('reads file disks with their backing chain', () => {
    const vda = m.disks[0]!;
    expect(vda).toMatchObject({
      target: 'vda',
      bus: 'virtio',
      device: 'disk',
      type: 'file',
      driverName: 'qemu',
      format: 'qcow2',
      path: '/images/top.qcow2',
      alias: 'virtio-disk0',
      readOnly: false,
    });
    expect(vda.source?.index).toBe(3);
    expect(vda.backingChain).toEqual([
      {
        type: 'file',
        format: 'qcow2',
        path: '/images/mid.qcow2',
        source: { file: '/images/mid.qcow2' },
        index: 2,
      },
      { type: 'block', format: 'raw', path: '/dev/vg/base', source: { dev: '/dev/vg/base' }, index: 1 },
    ]);
  });

  it('reads block, network, volume, cdrom and floppy disks', () => {
    const [, lun, net, vol, cd, fd] = m.disks;
    expect(lun).toMatchObject({
      target: 'sda',
      device: 'lun',
      type: 'block',
      path: '/dev/sdb',
      shareable: true,
    });
    expect(net).toMatchObject({
      target: 'vdb',
      type: 'network',
      source: { protocol: 'rbd', name: 'pool/image' },
    });
    expect(net!.source!.hosts).toEqual([{ name: 'mon1', port: 6789 }, { name: 'mon2' }]);
    expect(net!.path).toBeUndefined();
    expect(vol).toMatchObject({
      target: 'vdc',
      type: 'volume',
      source: { pool: 'default', volume: 'data.qcow2' },
    });
    expect(cd).toMatchObject({ target: 'sdz', device: 'cdrom', readOnly: true, backingChain: [] });
    expect(cd!.source).toBeUndefined();
    expect(fd).toMatchObject({ target: 'fda', device: 'floppy', path: '/images/boot.img' });
    expect(fd!.format).toBeUndefined();
  });

  it('rejects documents that are not domains', () => {
    expect(() => parseDomainXml('<domaincheckpoint/>')).toThrow(LibvirtXmlError);
    expect(() => parseDomainXml('<domain><devices/></domain>')).toThrow(/no <name>/);
    expect(() =>
      parseDomainXml("<domain><name>x</name><devices><disk type='file'/></devices></domain>"),
    ).toThrow(/no <target/);
  });
});

describe('backup and checkpoint XML', () => {
  it('escapes the five XML specials', () => {
    expect(escapeXml(`a&b<c>d"e'f`)).toBe('a&amp;b&lt;c&gt;d&quot;e&apos;f');
  });

  it('builds pull-mode backup XML with per-disk settings', () => {
    const xml = buildPullBackupXml({
      server: { transport: 'unix', socket: "/tmp/it's.sock" },
      incremental: 'chk-1',
      disks: [
        {
          name: 'vda',
          backupMode: 'incremental',
          incremental: 'chk-1',
          exportName: 'vda',
          exportBitmap: 'bm',
          scratchFile: '/tmp/s&1.qcow2',
          scratchFormat: 'qcow2',
        },
        { name: 'vdb', backupMode: 'full' },
        { name: 'sdz', backup: false },
      ],
    });
    expect(xml).toBe(
      [
        `<domainbackup mode='pull'>`,
        `  <incremental>chk-1</incremental>`,
        `  <server transport='unix' socket='/tmp/it&apos;s.sock'/>`,
        `  <disks>`,
        `    <disk name='vda' backup='yes' type='file' backupmode='incremental' incremental='chk-1' exportname='vda' exportbitmap='bm'>`,
        `      <driver type='qcow2'/>`,
        `      <scratch file='/tmp/s&amp;1.qcow2'/>`,
        `    </disk>`,
        `    <disk name='vdb' backup='yes' type='file' backupmode='full'/>`,
        `    <disk name='sdz' backup='no'/>`,
        `  </disks>`,
        `</domainbackup>`,
        ``,
      ].join('\n'),
    );
    const back = parseBackupXml(xml);
    expect(back.server).toEqual({ transport: 'unix', socket: "/tmp/it's.sock" });
    expect(back.incremental).toBe('chk-1');
    expect(back.disks).toEqual([
      {
        name: 'vda',
        backup: true,
        backupMode: 'incremental',
        incremental: 'chk-1',
        exportName: 'vda',
        exportBitmap: 'bm',
        scratchFile: '/tmp/s&1.qcow2',
      },
      { name: 'vdb', backup: true, backupMode: 'full' },
      { name: 'sdz', backup: false },
    ]);
    const tcp = buildPullBackupXml({
      server: { transport: 'tcp', name: 'localhost', port: 10809 },
      disks: [{ name: 'vda' }],
    });
    expect(tcp).toContain(`<server transport='tcp' name='localhost' port='10809'/>`);
    expect(parseBackupXml(tcp).server).toEqual({ transport: 'tcp', name: 'localhost', port: 10809 });
  });

  it('builds checkpoint XML and reads it back', () => {
    const xml = buildCheckpointXml({
      name: 'vmvault-<1>',
      description: 'a & b',
      disks: [{ name: 'vda' }, { name: 'vdb', bitmap: 'custom' }, { name: 'hdc', checkpoint: 'no' }],
    });
    expect(xml).toBe(
      [
        '<domaincheckpoint>',
        '  <name>vmvault-&lt;1&gt;</name>',
        '  <description>a &amp; b</description>',
        '  <disks>',
        `    <disk name='vda' checkpoint='bitmap'/>`,
        `    <disk name='vdb' checkpoint='bitmap' bitmap='custom'/>`,
        `    <disk name='hdc' checkpoint='no'/>`,
        '  </disks>',
        '</domaincheckpoint>',
        '',
      ].join('\n'),
    );
    expect(buildCheckpointXml({ name: 'c' })).toBe(
      '<domaincheckpoint>\n  <name>c</name>\n</domaincheckpoint>\n',
    );
    const live = `<domaincheckpoint>
  <name>c2</name>
  <parent><name>c1</name></parent>
  <creationTime>1700000000</creationTime>
  <disks>
    <disk name='vda' checkpoint='bitmap' bitmap='c2' size='65536'/>
    <disk name='vdb' checkpoint='no'/>
  </disks>
  <domain type='qemu'><name>vm</name><devices><disk type='file'><target dev='vda'/></disk></devices></domain>
</domaincheckpoint>`;
    expect(parseCheckpointXml(live)).toEqual({
      name: 'c2',
      parent: 'c1',
      creationTime: 1700000000,
      disks: [
        { name: 'vda', checkpoint: 'bitmap', bitmap: 'c2', sizeBytes: 65536 },
        { name: 'vdb', checkpoint: 'no' },
      ],
    });
    expect(parseCheckpointXml(xml).name).toBe('vmvault-<1>');
  });
});
