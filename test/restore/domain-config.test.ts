import { describe, expect, it } from 'vitest';
import { adjustDomainXml } from '../../src/restore/domain-config.js';
import { parseDomainXml } from '../../src/libvirt/index.js';

const XML = `<domain type='kvm'>
  <name>web1</name>
  <uuid>0b6f1c3e-1b4c-4e0e-9d1a-2d8a9f3c1a11</uuid>
  <memory unit='KiB'>1048576</memory>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>
    <nvram>/var/lib/libvirt/qemu/nvram/web1_VARS.fd</nvram>
  </os>
  <devices>
    <disk type='block' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source dev='/dev/vg/web1'/>
      <backingStore type='file'><format type='qcow2'/><source file='/base.qcow2'/></backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/images/data.raw'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='default'/></interface>
  </devices>
</domain>`;

describe('restored domain configuration', () => {
  it('drops the uuid, renames, points disks at the restored images and removes skipped devices', () => {
    const out = adjustDomainXml(XML, {
      disks: [{ target: 'vda', path: '/restore/vda.qcow2', format: 'qcow2' }],
      files: new Map([['/var/lib/libvirt/qemu/nvram/web1_VARS.fd', '/restore/web1_VARS.fd']]),
    });
    const m = parseDomainXml(out);
    expect(m.name).toBe('restore_web1');
    expect(out).not.toMatch(/<uuid>/);
    expect(m.disks.map((d) => d.target)).toEqual(['vda']);
    expect(m.disks[0]).toMatchObject({
      type: 'file',
      format: 'qcow2',
      path: '/restore/vda.qcow2',
      backingChain: [],
    });
    expect(m.os.nvram?.path).toBe('/restore/web1_VARS.fd');
    expect(m.os.loader?.path).toBe('/usr/share/OVMF/OVMF_CODE.fd');
    expect(out).toMatch(/cache="none"/);
    expect(out).toMatch(/52:54:00:aa:bb:cc/);
  });

  it('takes an explicit name and keeps raw disks that were restored', () => {
    const out = adjustDomainXml(XML, {
      name: 'web1-copy',
      disks: [
        { target: 'vda', path: '/r/vda.raw', format: 'raw' },
        { target: 'vdb', path: '/r/vdb.raw', format: 'raw' },
      ],
    });
    const m = parseDomainXml(out);
    expect(m.name).toBe('web1-copy');
    expect(m.disks.map((d) => [d.target, d.path, d.format])).toEqual([
      ['vda', '/r/vda.raw', 'raw'],
      ['vdb', '/r/vdb.raw', 'raw'],
    ]);
  });
});
