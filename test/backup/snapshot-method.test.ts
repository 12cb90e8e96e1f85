import { describe, expect, it } from 'vitest';
import { chooseMethod, overlayOwner, staleOverlays } from '../../src/backup/snapshot-method.js';
import {
  buildDiskSnapshotXml,
  domainCapsBackupSupport,
  hasIncrementalBackupCapability,
  parseDomainXml,
} from '../../src/libvirt/index.js';

// The pure parts of --method (docs/cli.md "Backup methods"): the auto choice, the overlay names
// a killed run leaves, and the snapshot XML. The live paths are in snapshot-method.vm.test.ts.

const PLAIN_XML = `<domain type='qemu'><name>vm1</name><devices/></domain>`;
const CAPS_XML = `<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>vm1</name><devices/>
  <qemu:capabilities><qemu:add capability='incremental-backup'/></qemu:capabilities>
</domain>`;
const caps = (supported: string): string =>
  `<domainCapabilities><path>/usr/bin/qemu-system-x86_64</path><features><backup supported='${supported}'/></features></domainCapabilities>`;
const v = (major: number, minor: number, micro = 0): { major: number; minor: number; micro: number } => ({
  major,
  minor,
  micro,
});

describe('chooseMethod', () => {
  it('keeps an explicit method whatever the daemon says', () => {
    expect(chooseMethod('pull', { version: v(5, 10), domainXml: PLAIN_XML, domainName: 'vm1' })).toEqual({
      method: 'pull',
    });
    expect(chooseMethod('snapshot', { version: v(9, 0), domainXml: PLAIN_XML, domainName: 'vm1' })).toEqual({
      method: 'snapshot',
    });
  });

  it('auto: libvirt before 6.0 has no backup API', () => {
    const r = chooseMethod('auto', { version: v(5, 10, 0), domainXml: PLAIN_XML, domainName: 'vm1' });
    expect(r.method).toBe('snapshot');
    expect(r.note).toMatch(/libvirt 5\.10\.0 has no backup API/);
  });

  it('auto: libvirt 6.0–7.1 needs the incremental-backup capability in the domain XML', () => {
    const without = chooseMethod('auto', { version: v(7, 1, 9), domainXml: PLAIN_XML, domainName: 'vm1' });
    expect(without.method).toBe('snapshot');
    expect(without.note).toMatch(/incremental-backup.*'vm1' lacks/);
    expect(chooseMethod('auto', { version: v(6, 0), domainXml: CAPS_XML, domainName: 'vm1' })).toEqual({
      method: 'pull',
    });
    // 7.2 and later offer the API to every domain.
    expect(chooseMethod('auto', { version: v(7, 2), domainXml: PLAIN_XML, domainName: 'vm1' })).toEqual({
      method: 'pull',
    });
  });

  it("auto: a daemon that reports <backup supported='no'/> gets the snapshot method", () => {
    const r = chooseMethod('auto', {
      version: v(9, 0),
      domainCapsXml: caps('no'),
      domainXml: PLAIN_XML,
      domainName: 'vm1',
    });
    expect(r.method).toBe('snapshot');
    expect(r.note).toMatch(/no backup support for 'vm1'/);
    expect(
      chooseMethod('auto', {
        version: v(9, 0),
        domainCapsXml: caps('yes'),
        domainXml: PLAIN_XML,
        domainName: 'x',
      }),
    ).toEqual({ method: 'pull' });
  });

  it('auto: facts the daemon did not give leave the pull-mode job', () => {
    expect(chooseMethod('auto', { domainXml: PLAIN_XML, domainName: 'vm1' })).toEqual({ method: 'pull' });
    // Unreadable capabilities are no answer, not a "no".
    expect(
      chooseMethod('auto', {
        version: v(9, 0),
        domainCapsXml: '<not xml',
        domainXml: PLAIN_XML,
        domainName: 'x',
      }),
    ).toEqual({ method: 'pull' });
  });
});

describe('capability readers', () => {
  it('domainCapsBackupSupport reads yes/no and nothing else', () => {
    expect(domainCapsBackupSupport(caps('yes'))).toBe('yes');
    expect(domainCapsBackupSupport(caps('no'))).toBe('no');
    expect(domainCapsBackupSupport(caps('maybe'))).toBeUndefined();
    expect(domainCapsBackupSupport('<domainCapabilities/>')).toBeUndefined();
    expect(domainCapsBackupSupport('garbage <<<')).toBeUndefined();
  });

  it('hasIncrementalBackupCapability finds the qemu:add element under any prefix, either quote', () => {
    expect(hasIncrementalBackupCapability(CAPS_XML)).toBe(true);
    expect(hasIncrementalBackupCapability(`<q:add capability="incremental-backup"/>`)).toBe(true);
    expect(hasIncrementalBackupCapability(PLAIN_XML)).toBe(false);
    expect(hasIncrementalBackupCapability(`<qemu:del capability='incremental-backup'/>`)).toBe(false);
  });
});

describe('overlays of a killed run', () => {
  it('overlayOwner reads the pid only from vmvault overlay paths', () => {
    expect(overlayOwner('/var/tmp/vmvault-overlay-4242-AbC123/vda.qcow2')).toBe(4242);
    expect(overlayOwner('vmvault-overlay-7-x/vdb.qcow2')).toBe(7);
    expect(overlayOwner('/var/tmp/vmvault-overlay-4242-AbC123/vda.raw')).toBeNull();
    expect(overlayOwner('/var/lib/libvirt/images/vda.qcow2')).toBeNull();
    expect(overlayOwner('/x/vmvault-overlay-abc-1/vda.qcow2')).toBeNull();
    expect(overlayOwner(undefined)).toBeNull();
  });

  it('staleOverlays lists the disks whose active image is an overlay, with the base below it', () => {
    const xml = `<domain type='qemu'><name>vm1</name><devices>
      <disk type='file' device='disk'>
        <driver name='qemu' type='qcow2'/>
        <source file='/scratch/vmvault-overlay-999-q1w2e3/vda.qcow2'/>
        <backingStore type='file'><format type='qcow2'/><source file='/images/vm1-vda.qcow2'/><backingStore/></backingStore>
        <target dev='vda' bus='virtio'/>
      </disk>
      <disk type='file' device='disk'>
        <driver name='qemu' type='raw'/>
        <source file='/images/vm1-vdb.raw'/>
        <target dev='vdb' bus='virtio'/>
      </disk>
    </devices></domain>`;
    expect(staleOverlays(parseDomainXml(xml))).toEqual([
      {
        target: 'vda',
        overlay: '/scratch/vmvault-overlay-999-q1w2e3/vda.qcow2',
        base: '/images/vm1-vda.qcow2',
        pid: 999,
      },
    ]);
  });
});

describe('buildDiskSnapshotXml', () => {
  it('escapes every value and leaves the disks it does not snapshot out', () => {
    const xml = buildDiskSnapshotXml({
      name: `vmvault-<1>&'"`,
      disks: [
        { name: 'vda', snapshot: 'external', file: `/tmp/a'b/<vda>.qcow2` },
        { name: 'vdb', snapshot: 'no' },
      ],
    });
    expect(xml).toContain('<name>vmvault-&lt;1&gt;&amp;');
    expect(xml).toContain(`<disk name='vdb' snapshot='no'/>`);
    expect(xml).toContain(`<driver type='qcow2'/>`);
    expect(xml).not.toContain(`<vda>`);
    expect(xml).not.toContain(`a'b`);
  });
});
