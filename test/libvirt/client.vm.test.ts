import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  LibvirtClient,
  LibvirtConnectionError,
  LibvirtError,
  LibvirtUriError,
  VIR_DOMAIN_DEFINE,
  VIR_DOMAIN_EVENT_STOPPED,
  VIR_DOMAIN_XML,
  isAgentUnresponsive,
  isNoDomain,
  parseDomainXml,
  type DomainEventSubscription,
} from '../../src/libvirt/index.js';
import {
  createTestDomain,
  guestVerify,
  guestWrite,
  hotplugDisk,
  type TestDomain,
} from '../helpers/domains.js';
import { libvirtSkipReason, libvirtUri } from '../helpers/libvirtd.js';

const uri = libvirtUri();
const skip = libvirtSkipReason();
if (skip) console.warn(`skipping libvirt client tests: ${skip}`);

describe.skipIf(!uri)('LibvirtClient against a private libvirtd', () => {
  let client: LibvirtClient;
  let td: TestDomain;

  beforeAll(async () => {
    client = await LibvirtClient.connect(uri);
    td = await createTestDomain(client, { disks: [{}, {}] });
  });

  afterAll(async () => {
    await td?.cleanup();
    await client?.close();
  });

  it('reports library and hypervisor versions', async () => {
    const lib = await client.getLibVersion();
    expect(lib.major).toBeGreaterThanOrEqual(6);
    expect(lib.encoded).toBe(lib.major * 1_000_000 + lib.minor * 1000 + lib.micro);
    const hv = await client.getHypervisorVersion();
    expect(hv.major).toBeGreaterThanOrEqual(5);
  });

  it('looks domains up by name and by uuid', async () => {
    const byName = await client.lookupDomainByName(td.name);
    expect(byName.name).toBe(td.name);
    expect(byName.uuid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    expect(byName.id).toBeGreaterThan(0);
    const byUuid = await client.lookupDomainByUuid(byName.uuid);
    expect(byUuid).toEqual(byName);
    expect(await client.lookupDomain(byName.uuid)).toEqual(byName);
    const all = await client.listAllDomains();
    expect(all.map((d) => d.name)).toContain(td.name);
  });

  it('fails an unknown domain with a typed NO_DOMAIN error', async () => {
    const err = await client.lookupDomainByName('no-such-domain-xyz').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LibvirtError);
    const le = err as LibvirtError;
    expect(isNoDomain(le)).toBe(true);
    expect(le.virCodeName).toBe('VIR_ERR_NO_DOMAIN');
    expect(le.virDomainName).toBe('VIR_FROM_QEMU');
    expect(le.level).toBe(2);
    expect(le.procedure).toBe('DOMAIN_LOOKUP_BY_NAME');
    expect(le.message).toMatch(/no-such-domain-xyz/);
    expect(le.message).not.toContain('\n');
    // The connection survives a daemon error.
    expect((await client.getLibVersion()).major).toBeGreaterThan(0);
  });

  it('reads live and inactive XML and parses the disks', async () => {
    const live = parseDomainXml(await client.getDomainXml(td.dom));
    expect(live.name).toBe(td.name);
    expect(live.uuid).toBe(td.dom.uuid);
    expect(live.hypervisor).toBe('qemu');
    expect(live.disks.map((d) => [d.target, d.format, d.path, d.alias, d.bus])).toEqual([
      ['vda', 'qcow2', td.disks[0]!.path, 'ua-vda', 'virtio'],
      ['vdb', 'qcow2', td.disks[1]!.path, 'ua-vdb', 'virtio'],
    ]);
    const inactive = await client.getDomainXml(
      td.dom,
      VIR_DOMAIN_XML.VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML.VIR_DOMAIN_XML_SECURE,
    );
    expect(inactive).toMatch(/^<domain type='qemu'>/); // no runtime id attribute
    expect(parseDomainXml(inactive).disks).toHaveLength(2);
  });

  it('reports state, info and activity', async () => {
    const st = await client.getDomainState(td.dom);
    expect(st.state).toBe('running');
    const info = await client.getDomainInfo(td.dom);
    expect(info.state).toBe('running');
    expect(info.maxMemKiB).toBe(64 * 1024);
    expect(info.nrVirtCpu).toBe(1);
    expect(await client.isDomainActive(td.dom)).toBe(true);
  });

  it('runs QEMU monitor commands (QMP and HMP) and writes through the guest device', async () => {
    const qmp = JSON.parse(await client.qemuMonitorCommand(td.dom, '{"execute":"query-status"}')) as {
      return: { status: string };
    };
    expect(qmp.return.status).toBe('running');
    expect(await client.qemuMonitorCommand(td.dom, 'info status', { hmp: true })).toMatch(/running/);
    for (const disk of ['vda', 'vdb']) {
      await guestWrite(client, td, { disk, offset: 1 << 20, length: 65536, pattern: 0x5a });
      expect(await guestVerify(client, td, { disk, offset: 1 << 20, length: 65536, pattern: 0x5a })).toBe(
        true,
      );
      expect(await guestVerify(client, td, { disk, offset: 1 << 20, length: 65536, pattern: 0x11 })).toBe(
        false,
      );
    }
  });

  it('hot-plugs a disk that guestWrite can reach', async () => {
    const d = await hotplugDisk(client, td, { sizeBytes: 16 << 20 });
    expect(d.target).toBe('vdc');
    const live = parseDomainXml(await client.getDomainXml(td.dom));
    expect(live.disks.map((x) => x.target)).toContain('vdc');
    await guestWrite(client, td, { disk: 'vdc', offset: 0, length: 4096 });
    expect(await guestVerify(client, td, { disk: 'vdc', offset: 0, length: 4096 })).toBe(true);
  });

  it('defines with VALIDATE, redefines, and undefines', async () => {
    const name = `vmvault-test-define-${process.pid}`;
    const xml = td.xml
      .replace(`<name>${td.name}</name>`, `<name>${name}</name>`)
      .replace(/<alias name='ua-[^']+'\/>/g, '');
    const dom = await client.defineDomainXml(xml, VIR_DOMAIN_DEFINE.VIR_DOMAIN_DEFINE_VALIDATE);
    expect(dom.name).toBe(name);
    expect(dom.id).toBe(-1);
    expect(await client.isDomainActive(dom)).toBe(false);
    expect((await client.getDomainState(dom)).state).toBe('shutoff');
    const bad = await client
      .defineDomainXml('<domain type="qemu"><name>x</name><bogus/></domain>', 1)
      .catch((e: unknown) => e);
    expect(bad).toBeInstanceOf(LibvirtError);
    await client.undefineDomain(dom);
    expect(isNoDomain(await client.lookupDomainByName(name).catch((e: unknown) => e))).toBe(true);
  });

  it('reports that the guest agent is not answering', async () => {
    const agentDom = await createTestDomain(client, { guestAgent: true, cdrom: true });
    try {
      expect(parseDomainXml(await client.getDomainXml(agentDom.dom)).hasGuestAgent).toBe(true);
      const ping = await client.agentPing(agentDom.dom, 1).catch((e: unknown) => e);
      expect(isAgentUnresponsive(ping)).toBe(true);
      const freeze = await client.fsFreeze(agentDom.dom).catch((e: unknown) => e);
      expect(isAgentUnresponsive(freeze)).toBe(true);
      const thaw = await client.fsThaw(agentDom.dom).catch((e: unknown) => e);
      expect(isAgentUnresponsive(thaw)).toBe(true);
      const time = await client.getDomainTime(agentDom.dom).catch((e: unknown) => e);
      expect(isAgentUnresponsive(time)).toBe(true);
      const model = parseDomainXml(await client.getDomainXml(agentDom.dom));
      expect(model.disks.find((d) => d.device === 'cdrom')?.readOnly).toBe(true);
    } finally {
      await agentDom.cleanup();
    }
  });

  it('delivers lifecycle events for start and destroy', async () => {
    const other = await createTestDomain(client, { start: false });
    let sub: DomainEventSubscription | undefined;
    try {
      sub = await client.subscribe({ kinds: ['lifecycle'], domain: other.dom });
      await other.start();
      const started = await sub.waitFor((e) => e.kind === 'lifecycle' && e.event === 'started', {
        timeoutMs: 30_000,
      });
      expect(started.domain.name).toBe(other.name);
      await client.destroyDomain(other.dom);
      const stopped = await sub.waitFor((e) => e.kind === 'lifecycle' && e.event === 'stopped', {
        timeoutMs: 30_000,
      });
      expect(stopped.kind === 'lifecycle' && stopped.detail).toBe(
        VIR_DOMAIN_EVENT_STOPPED.VIR_DOMAIN_EVENT_STOPPED_DESTROYED,
      );
      expect(await client.isDomainActive(other.dom)).toBe(false);
    } finally {
      await sub?.close();
      await other.cleanup();
    }
  });

  it('reports no job when none runs', async () => {
    const info = await client.getJobInfo(td.dom);
    expect(info.type).toBe('none');
    const stats = await client.getJobStats(td.dom);
    expect(stats.type).toBe('none');
  });
});

describe('LibvirtClient connection errors', () => {
  it('rejects a bad URI with a usage error', async () => {
    const err = await LibvirtClient.connect('xen:///system').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LibvirtUriError);
    expect((err as LibvirtUriError).exitCode).toBe(2);
    expect((err as LibvirtUriError).oneLine()).toMatch(
      /^invalid libvirt URI 'xen:\/\/\/system': driver 'xen' is not supported/,
    );
  });

  it('says the daemon is not running when its socket is missing', async () => {
    const err = await LibvirtClient.connect(
      'qemu+unix:///system?socket=/tmp/vmvault-no-such-dir/libvirt-sock',
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LibvirtConnectionError);
    const ce = err as LibvirtConnectionError;
    expect(ce.code).toBe('LIBVIRT_NOT_RUNNING');
    expect(ce.oneLine()).toBe(
      'cannot connect to libvirt at /tmp/vmvault-no-such-dir/libvirt-sock: no such socket; is the libvirt daemon (libvirtd or virtqemud) running?',
    );
  });

  it('says the connection was refused when nobody listens on a TCP port', async () => {
    const err = await LibvirtClient.connect('qemu+tcp://127.0.0.1:1/system').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LibvirtConnectionError);
    expect((err as LibvirtConnectionError).message).toBe(
      'cannot connect to libvirt at 127.0.0.1:1: ECONNREFUSED',
    );
  });
});
