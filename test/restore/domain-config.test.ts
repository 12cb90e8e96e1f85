import { describe, expect, it } from 'vitest';
import { adjustDomainXml } from '../../src/restore/domain-config.js';
import { XMLParser } from 'fast-xml-parser';
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
    const { xml: out, notes } = adjustDomainXml(XML, {
      disks: [{ target: 'vda', path: '/restore/vda.qcow2', format: 'qcow2' }],
      files: new Map([['/var/lib/libvirt/qemu/nvram/web1_VARS.fd', '/restore/web1_VARS.fd']]),
    });
    const m = parseDomainXml(out);
    expect(m.name).toBe('restore_web1');
    expect(out).not.toMatch(/<uuid>/);
    // The CD-ROM stays, empty; vdb (not restored) is gone.
    expect(m.disks.map((d) => d.target)).toEqual(['vda', 'sda']);
    expect(m.disks[0]).toMatchObject({
      type: 'file',
      format: 'qcow2',
      path: '/restore/vda.qcow2',
      backingChain: [],
    });
    expect(m.os.nvram?.path).toBe('/restore/web1_VARS.fd');
    // The loader has no stored copy: a host file vmvault did not write, so it is not referenced.
    expect(m.os.loader).toBeUndefined();
    expect(notes).toEqual([
      'removed disk vdb: it was not restored',
      'removed <os><loader> /usr/share/OVMF/OVMF_CODE.fd: the snapshot holds no copy of it',
    ]);
    expect(out).toMatch(/cache="none"/);
    expect(out).toMatch(/52:54:00:aa:bb:cc/);
  });

  it('takes an explicit name and keeps raw disks that were restored', () => {
    const { xml: out } = adjustDomainXml(XML, {
      name: 'web1-copy',
      disks: [
        { target: 'vda', path: '/r/vda.raw', format: 'raw' },
        { target: 'vdb', path: '/r/vdb.raw', format: 'raw' },
      ],
    });
    const m = parseDomainXml(out);
    expect(m.name).toBe('web1-copy');
    expect(m.disks.filter((d) => d.device === 'disk').map((d) => [d.target, d.path, d.format])).toEqual([
      ['vda', '/r/vda.raw', 'raw'],
      ['vdb', '/r/vdb.raw', 'raw'],
    ]);
  });
});

/**
 * Every host path the XML names (an attribute value or a text node that is, or starts like, a
 * path), parsed independently of the code under test (numeric character references decoded), minus
 * the ones that are no host reference: the guest kernel's command line, libvirt's default cgroup
 * and the rng random sources.
 */
function hostPaths(xml: string): string[] {
  const p = new XMLParser({
    preserveOrder: true,
    ignoreAttributes: false,
    attributeNamePrefix: '',
    parseTagValue: false,
    parseAttributeValue: false,
    htmlEntities: true,
  });
  const found: string[] = [];
  const isPath = (v: string): boolean => /^\s*(\/|\.\.?\/|~|\.\.\s*$)/.test(v);
  const walk = (nodes: unknown[], parent: string, grand: string): void => {
    for (const n of nodes as Array<Record<string, unknown>>) {
      for (const [k, v] of Object.entries(n)) {
        if (k === ':@') {
          for (const [a, av] of Object.entries(v as Record<string, string>))
            if (!a.startsWith('xmlns') && (isPath(av) || ['file', 'path', 'dir', 'socket'].includes(a)))
              found.push(av);
        } else if (k === '#text') {
          const t = String(v).trim();
          if (!isPath(t)) continue;
          if (parent === 'cmdline' && grand === 'os') continue;
          if (parent === 'partition' && t === '/machine') continue;
          if (parent === 'backend' && grand === 'rng' && t === '/dev/urandom') continue;
          found.push(t);
        } else if (Array.isArray(v)) walk(v, k, parent);
      }
    }
  };
  walk(p.parse(xml) as unknown[], '', '');
  return found;
}

const RESTORED = ['/restore/vda.qcow2', '/restore/web1_VARS.fd', '/restore/vmlinuz'];
const adjust = (devices: string, extra = '', os = '') =>
  adjustDomainXml(
    `<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>web1</name><uuid>0b6f1c3e-1b4c-4e0e-9d1a-2d8a9f3c1a11</uuid>
  <memory unit='KiB'>1048576</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type>
    <kernel>/boot/vmlinuz</kernel><cmdline>root=/dev/vda1 console=ttyS0</cmdline>
    <nvram template='/usr/share/OVMF/OVMF_VARS.fd'>/var/lib/libvirt/qemu/nvram/web1_VARS.fd</nvram>${os}
  </os>
  <resource><partition>/machine</partition></resource>
  ${extra}
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web1.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    ${devices}
  </devices>
</domain>`,
    {
      disks: [{ target: 'vda', path: '/restore/vda.qcow2', format: 'qcow2' }],
      files: new Map([
        ['/var/lib/libvirt/qemu/nvram/web1_VARS.fd', '/restore/web1_VARS.fd'],
        ['/boot/vmlinuz', '/restore/vmlinuz'],
      ]),
    },
  );

describe('a hostile stored domain XML: the adjusted one names only the restored files', () => {
  const cases: Array<[string, { devices?: string; extra?: string; os?: string }, RegExp]> = [
    [
      'a disk that was not restored, on a host file',
      { devices: `<disk type='file' device='disk'><source file='/etc/shadow'/><target dev='vdb'/></disk>` },
      /removed disk vdb: it was not restored/,
    ],
    [
      'a disk on a host block device, its target excluded',
      {
        devices: `<disk type='block' device='lun' rawio='yes'><source dev='/dev/sda'/><target dev='sdb'/></disk>`,
      },
      /removed disk sdb/,
    ],
    [
      'a CD-ROM with a host file as medium',
      {
        devices: `<disk type='file' device='cdrom'><source file='/root/secret.iso'/><target dev='sdc' bus='sata'/></disk>`,
      },
      /disk sdc \(cdrom\): ejected/,
    ],
    [
      'a floppy on a host device',
      { devices: `<disk type='block' device='floppy'><source dev='/dev/fd0'/><target dev='fda'/></disk>` },
      /disk fda \(floppy\): ejected/,
    ],
    [
      'filesystem passthrough of /',
      {
        devices: `<filesystem type='mount' accessmode='passthrough'><source dir='/'/><target dir='host'/></filesystem>`,
      },
      /removed <filesystem type='mount'>: it passes a host resource/,
    ],
    [
      'virtiofs with its helper binary',
      {
        devices: `<filesystem type='mount'><driver type='virtiofs'/><binary path='/tmp/evil'/><source dir='/root'/><target dir='r'/></filesystem>`,
      },
      /removed <filesystem/,
    ],
    [
      'a PCI host device',
      {
        devices: `<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0' bus='1' slot='0' function='0'/></source></hostdev>`,
      },
      /removed <hostdev type='pci' mode='subsystem'>/,
    ],
    [
      'a hostdev interface',
      {
        devices: `<interface type='hostdev'><source><address type='pci' bus='2' slot='0'/></source></interface>`,
      },
      /removed <interface type='hostdev'>/,
    ],
    [
      'a serial port writing a host file, with a log',
      {
        devices: `<serial type='file'><source path='/etc/cron.d/x'/><log file='/etc/profile.d/x.sh' append='on'/><target port='0'/></serial>`,
      },
      /<serial type='file'> is now a pty/,
    ],
    [
      'a console on a host tty',
      {
        devices: `<console type='dev'><source path='/dev/ttyS0'/><target type='serial' port='0'/></console>`,
      },
      /<console type='dev'> is now a pty/,
    ],
    [
      'a serial port connecting to a host socket',
      {
        devices: `<serial type='unix'><source mode='connect' path='/run/docker.sock'/><target port='1'/></serial>`,
      },
      /is now a pty/,
    ],
    [
      'a parallel port on a host pipe',
      { devices: `<parallel type='pipe'><source path='/tmp/p'/><target port='0'/></parallel>` },
      /is now a pty/,
    ],
    [
      'a guest agent channel on a chosen host socket',
      {
        devices: `<channel type='unix'><source mode='bind' path='/etc/passwd'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>`,
      },
      /socket \/etc\/passwd dropped/,
    ],
    [
      'a guestfwd channel on a host file',
      {
        devices: `<channel type='file'><source path='/etc/x'/><target type='guestfwd' address='10.0.2.1' port='4600'/></channel>`,
      },
      /removed <channel type='file'>/,
    ],
    [
      'a passthrough TPM without a path (libvirt defaults to /dev/tpm0)',
      { devices: `<tpm model='tpm-tis'><backend type='passthrough'/></tpm>` },
      /removed <tpm model='tpm-tis'>/,
    ],
    [
      'a passthrough TPM on a host device',
      {
        devices: `<tpm model='tpm-crb'><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>`,
      },
      /removed <tpm/,
    ],
    [
      'a host smartcard with a host certificate database',
      {
        devices: `<smartcard mode='host-certificates'><certificate>a</certificate><database>/etc/pki/nssdb</database></smartcard>`,
      },
      /removed <smartcard mode='host-certificates'>/,
    ],
    [
      'shared memory with the host',
      { devices: `<shmem name='other-vm'><model type='ivshmem-doorbell'/><server path='/tmp/s'/></shmem>` },
      /removed <shmem>/,
    ],
    [
      'an rng on a host file',
      { devices: `<rng model='virtio'><backend model='random'>/etc/shadow</backend></rng>` },
      /removed <devices><rng model='virtio'>: it names host path \/etc\/shadow/,
    ],
    [
      'an interface running a host script on a chosen tap device',
      {
        devices: `<interface type='ethernet'><script path='/tmp/x.sh'/><backend tap='/dev/net/tun' vhost='/dev/vhost-net'/></interface>`,
      },
      /removed <devices><interface type='ethernet'>: it names host path/,
    ],
    [
      'graphics on a host socket with an Xauthority file',
      {
        devices: `<graphics type='sdl' display=':0' xauth='/root/.Xauthority'/><graphics type='vnc' socket='/etc/x'/>`,
      },
      /removed <devices><graphics type='vnc'>/,
    ],
    [
      'an nvdimm backed by a host device',
      {
        devices: `<memory model='nvdimm'><source><path>/dev/pmem0</path></source><target><size unit='KiB'>524288</size></target></memory>`,
      },
      /removed <devices><memory model='nvdimm'>/,
    ],
    [
      'an evdev input passthrough',
      { devices: `<input type='evdev'><source dev='/dev/input/event0'/></input>` },
      /removed <devices><input type='evdev'>/,
    ],
    [
      'audio to a host file',
      { devices: `<audio id='1' type='file' path='/etc/motd'/>` },
      /removed <devices><audio type='file'>/,
    ],
    [
      'a lease on a host lock file',
      { devices: `<lease><lockspace>s</lockspace><key>k</key><target path='/etc/x' offset='0'/></lease>` },
      /removed <devices><lease>/,
    ],
    [
      'a relative host path (resolved from libvirtd working directory)',
      {
        devices: `<serial type='tcp'><source mode='bind' host='0' service='1'/><log file='etc/shadow'/></serial>`,
      },
      /removed the <log> of <serial type='tcp'>/,
    ],
    [
      'a loader and a device tree without a stored file, an ACPI table from the host',
      {
        os: `<loader readonly='yes' type='pflash'>/etc/shadow</loader><dtb>/boot/x.dtb</dtb><acpi><table type='slic'>/etc/slic</table></acpi>`,
      },
      /removed <os><loader> \/etc\/shadow: the snapshot holds no copy/,
    ],
    ['an initrd without a stored file', { os: `<initrd>/boot/initrd.img</initrd>` }, /removed <os><initrd>/],
    [
      'qemu:commandline and qemu:capabilities',
      {
        extra: `<qemu:commandline><qemu:arg value='-drive'/><qemu:arg value='file=/etc/shadow'/></qemu:commandline><qemu:capabilities><qemu:del capability='sandbox'/></qemu:capabilities>`,
      },
      /removed <qemu:commandline>: hypervisor passthrough/,
    ],
    [
      'qemu:commandline under another prefix and under a default namespace',
      {
        extra: `<q:commandline xmlns:q='http://libvirt.org/schemas/domain/qemu/1.0'><q:arg value='-sandbox'/><q:arg value='off'/></q:commandline><commandline xmlns='http://libvirt.org/schemas/domain/qemu/1.0'><arg value='x'/></commandline>`,
      },
      /removed <commandline>: hypervisor passthrough/,
    ],
    [
      'seclabels that disable or choose confinement',
      {
        extra: `<seclabel type='none'/><seclabel type='static' model='selinux' relabel='no'><label>system_u:system_r:unconfined_t:s0</label></seclabel>`,
        devices: `<serial type='pty'><source><seclabel model='dac' relabel='no'/></source></serial>`,
      },
      /removed <seclabel type='none'>: libvirt's default confinement applies/,
    ],
    [
      'fw_cfg entries read from host files, blkio tuning of a host device, a Xen bootloader',
      {
        extra: `<sysinfo type='fwcfg'><entry name='opt/x' file='/etc/shadow'/></sysinfo><blkiotune><device><path>/dev/sda</path><weight>500</weight></device></blkiotune><bootloader>/usr/bin/pygrub</bootloader>`,
      },
      /removed <sysinfo type='fwcfg'>: it names host path \/etc\/shadow/,
    ],
    [
      'a cgroup partition other than the default, a path in the description, in metadata',
      {
        extra: `<resource><partition>/system.slice</partition></resource><description>/etc/shadow</description><metadata><app:x xmlns:app='urn:x'><app:f>/etc/shadow</app:f></app:x></metadata>`,
      },
      /removed <resource>: it names host path \/system\.slice/,
    ],
    [
      'a path hidden behind a numeric character reference',
      { devices: `<serial type='file'><source path='&#47;etc&#47;shadow'/></serial>` },
      /is now a pty/,
    ],
  ];

  it.each(cases)('%s', (_what, parts, expected) => {
    const { xml, notes } = adjust(parts.devices ?? '', parts.extra ?? '', parts.os ?? '');
    expect(hostPaths(xml).filter((p) => !RESTORED.includes(p))).toEqual([]);
    expect(notes.join('\n')).toMatch(expected);
    // The restored disk, kernel and nvram stay, with the rest of the domain.
    const m = parseDomainXml(xml);
    expect(m.disks.find((d) => d.target === 'vda')?.path).toBe('/restore/vda.qcow2');
    expect(m.os.kernel).toBe('/restore/vmlinuz');
    expect(m.os.nvram?.path).toBe('/restore/web1_VARS.fd');
    expect(xml).toContain('root=/dev/vda1');
    expect(xml).toContain('<partition>/machine</partition>');
    expect(xml).toContain('/dev/urandom');
    expect(xml).not.toMatch(/emulator|qemu:|seclabel|<commandline|template=/);
  });

  it('a standard emulator path is dropped without a note, any other with one', () => {
    const xmlOf = (emulator: string): string =>
      `<domain type='kvm'><name>a</name><devices><emulator>${emulator}</emulator></devices></domain>`;
    for (const std of ['/usr/bin/qemu-system-x86_64', '/usr/bin/qemu-kvm', '/usr/libexec/qemu-kvm']) {
      const r = adjustDomainXml(xmlOf(std), { disks: [] });
      expect(r.xml).not.toMatch(/emulator/);
      expect(r.notes).toEqual([]);
    }
    const odd = adjustDomainXml(xmlOf('/opt/x/qemu-system-x86_64'), { disks: [] });
    expect(odd.xml).not.toMatch(/emulator/);
    expect(odd.notes).toEqual([
      'removed <emulator> /opt/x/qemu-system-x86_64: libvirt uses its default emulator',
    ]);
  });

  it('keeps a device in place where dropping its host path is enough', () => {
    const { xml } = adjust(
      `<serial type='file'><source path='/etc/x'/><target port='0'/></serial>
       <disk type='file' device='cdrom'><source file='/root/x.iso'/><target dev='sdc' bus='sata'/><readonly/></disk>
       <channel type='unix'><source mode='bind' path='/etc/passwd'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>`,
    );
    expect(xml).toMatch(
      /<serial type="pty"><target port="0"><\/target><\/serial>|<serial type="pty"><target port="0"\/><\/serial>/,
    );
    expect(xml).toMatch(/<channel type="unix"><source mode="bind"\/?>/);
    expect(parseDomainXml(xml).disks.find((d) => d.target === 'sdc')).toMatchObject({ device: 'cdrom' });
  });

  it('a restored SCSI passthrough disk becomes a plain disk, without raw I/O', () => {
    const { xml } = adjustDomainXml(
      `<domain type='kvm'><name>a</name><devices><disk type='block' device='lun' rawio='yes' sgio='unfiltered'><source dev='/dev/sdx'/><target dev='sda' bus='scsi'/></disk></devices></domain>`,
      { disks: [{ target: 'sda', path: '/r/sda.raw', format: 'raw' }] },
    );
    expect(xml).toMatch(/<disk type="file" device="disk">/);
    expect(xml).not.toMatch(/rawio|sgio|\/dev\/sdx/);
  });

  it('--keep-host-config keeps the host references, still rewrites restored disks and drops unrestored ones', () => {
    const stored = `<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><name>a</name>
<os><loader readonly='yes'>/usr/share/OVMF/OVMF_CODE.fd</loader></os><seclabel type='none'/>
<devices><emulator>/usr/bin/qemu-kvm</emulator>
<disk type='file' device='disk'><source file='/img/a.qcow2'/><target dev='vda'/></disk>
<disk type='file' device='disk'><source file='/img/b.qcow2'/><target dev='vdb'/></disk>
<disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='sdc'/></disk>
<filesystem type='mount'><source dir='/srv'/><target dir='srv'/></filesystem>
<serial type='file'><source path='/var/log/a.log'/></serial></devices>
<qemu:commandline><qemu:arg value='-no-reboot'/></qemu:commandline></domain>`;
    const { xml, notes } = adjustDomainXml(stored, {
      disks: [{ target: 'vda', path: '/r/vda.qcow2', format: 'qcow2' }],
      keepHostConfig: true,
    });
    for (const kept of [
      '/usr/share/OVMF/OVMF_CODE.fd',
      'seclabel',
      '/usr/bin/qemu-kvm',
      '/iso/x.iso',
      '/srv',
      '/var/log/a.log',
      'qemu:arg',
    ])
      expect(xml).toContain(kept);
    expect(xml).toContain('/r/vda.qcow2');
    expect(xml).not.toMatch(/\/img\/|vdb/);
    expect(notes).toEqual(['removed disk vdb: it was not restored']);
  });

  it('printed names from the XML are printable', () => {
    const { notes } = adjust(
      `<disk type='file' device='disk'><source file='/x'/><target dev='vd\u001b[31mz'/></disk>`,
    );
    expect(notes.join('\n')).toContain('vd\\x1b[31mz');
    expect(notes.join('\n')).not.toContain('\u001b');
  });
});
