/**
 * Throw-away TCG domains for tests: `<domain type='qemu'>`, 64 MiB, no guest OS, no network, one or
 * more virtio disks (qcow2 v3 by default) in a temp dir. Every disk gets a user alias `ua-<target>`
 * so its QOM path is known: /machine/peripheral/ua-<target>/virtio-backend. guestWrite() dirties
 * a disk from "inside" the guest with HMP `qemu-io` through our own client's monitor command.
 */
import { randomBytes } from 'node:crypto';
import { readFile, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import {
  VIR_DOMAIN_AFFECT,
  VIR_DOMAIN_UNDEFINE,
  escapeXml,
  isNoDomain,
  type DomainRef,
  type LibvirtClient,
} from '../../src/libvirt/index.js';
import { exec } from '../../src/util/index.js';
import { makeTmpDir } from './tmp.js';

export interface TestDiskOptions {
  /** Virtual size in bytes (default 64 MiB). */
  sizeBytes?: number;
  /** Image format (default qcow2, v3). */
  format?: 'qcow2' | 'raw';
  /** Target (default vda, vdb, ... in order). */
  target?: string;
}

export interface TestDomainOptions {
  /** Domain name (default vmvault-test-<random>). */
  name?: string;
  /** Disks (default one 64 MiB qcow2). */
  disks?: readonly TestDiskOptions[];
  /** Add an empty CD-ROM drive. */
  cdrom?: boolean;
  /** Add a qemu guest agent channel (no agent runs: there is no guest OS). */
  guestAgent?: boolean;
  /** Machine type (default pc). */
  machine?: 'pc' | 'q35';
  /** Start the domain (default true). */
  start?: boolean;
  /** The daemon URI used to find QEMU's log (default: the client's; works for the private test daemon). */
  uri?: string;
}

export interface TestDisk {
  target: string;
  path: string;
  format: 'qcow2' | 'raw';
  sizeBytes: number;
  alias: string;
  /** QOM path of the virtio-blk backend, for HMP qemu-io. */
  qomPath: string;
}

export interface TestDomain {
  name: string;
  /** Refreshed by start() (the id changes). */
  dom: DomainRef;
  dir: string;
  disks: TestDisk[];
  xml: string;
  /** QEMU's log file (qemu-io output lands there), when the daemon is the private test one. */
  logPath: string | undefined;
  start(): Promise<void>;
  destroy(): Promise<void>;
  /** Destroys if running, undefines with checkpoint/snapshot metadata, removes the temp dir. */
  cleanup(): Promise<void>;
}

const MiB = 1024 * 1024;

export function qomPathForAlias(alias: string): string {
  return `/machine/peripheral/${alias}/virtio-backend`;
}

export async function createImage(path: string, format: 'qcow2' | 'raw', sizeBytes: number): Promise<void> {
  const args = ['create', '-q', '-f', format];
  if (format === 'qcow2') args.push('-o', 'compat=1.1');
  await exec('qemu-img', [...args, path, String(sizeBytes)]);
}

function diskXml(d: TestDisk): string {
  return [
    `<disk type='file' device='disk'>`,
    `  <driver name='qemu' type='${d.format}'/>`,
    `  <source file='${escapeXml(d.path)}'/>`,
    `  <target dev='${d.target}' bus='virtio'/>`,
    `  <alias name='${d.alias}'/>`,
    `</disk>`,
  ].join('\n');
}

export function buildTestDomainXml(
  name: string,
  disks: readonly TestDisk[],
  opts: TestDomainOptions,
): string {
  const machine = opts.machine ?? 'pc';
  const devices: string[] = ['<emulator>/usr/bin/qemu-system-x86_64</emulator>', ...disks.map(diskXml)];
  if (opts.cdrom) {
    const bus = machine === 'q35' ? 'sata' : 'ide';
    const dev = machine === 'q35' ? 'sdz' : 'hdc';
    devices.push(
      `<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='${dev}' bus='${bus}'/><readonly/></disk>`,
    );
  }
  if (opts.guestAgent) {
    devices.push(`<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>`);
  }
  devices.push(`<controller type='usb' model='none'/>`, `<memballoon model='none'/>`);
  return [
    `<domain type='qemu'>`,
    `  <name>${escapeXml(name)}</name>`,
    `  <memory unit='MiB'>64</memory>`,
    `  <vcpu>1</vcpu>`,
    `  <os><type arch='x86_64' machine='${machine}'>hvm</type></os>`,
    // ACPI is needed for PCI hot-plug (attachDevice of a virtio disk).
    `  <features><acpi/></features>`,
    `  <on_crash>destroy</on_crash>`,
    `  <devices>`,
    ...devices.map((l) => `    ${l}`),
    `  </devices>`,
    `</domain>`,
  ].join('\n');
}

/** Defines (and by default starts) a throw-away domain. Call cleanup() in afterAll/finally. */
export async function createTestDomain(
  client: LibvirtClient,
  opts: TestDomainOptions = {},
): Promise<TestDomain> {
  const name = opts.name ?? `vmvault-test-${randomBytes(4).toString('hex')}`;
  const tmp = await makeTmpDir('vmvault-dom-');
  const specs = opts.disks ?? [{}];
  const disks: TestDisk[] = [];
  for (let i = 0; i < specs.length; i++) {
    const s = specs[i]!;
    const target = s.target ?? `vd${String.fromCharCode(97 + i)}`;
    const format = s.format ?? 'qcow2';
    const sizeBytes = s.sizeBytes ?? 64 * MiB;
    const path = join(tmp.dir, `${target}.${format}`);
    await createImage(path, format, sizeBytes);
    const alias = `ua-${target}`;
    disks.push({ target, path, format, sizeBytes, alias, qomPath: qomPathForAlias(alias) });
  }
  const xml = buildTestDomainXml(name, disks, opts);
  let dom: DomainRef;
  try {
    dom = await client.defineDomainXml(xml);
  } catch (err) {
    await tmp.cleanup();
    throw err;
  }
  const td: TestDomain = {
    name,
    dom,
    dir: tmp.dir,
    disks,
    xml,
    logPath: qemuLogPath(opts.uri ?? client.uri.uri, name),
    async start() {
      td.dom = await client.startDomain(td.dom);
    },
    async destroy() {
      if (await client.isDomainActive(td.dom)) await client.destroyDomain(td.dom);
      td.dom = await client.lookupDomainByName(name);
    },
    async cleanup() {
      try {
        if (client.isOpen) {
          const cur = await client.lookupDomainByName(name);
          if (await client.isDomainActive(cur)) await client.destroyDomain(cur);
          await client.undefineDomain(
            cur,
            VIR_DOMAIN_UNDEFINE.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA |
              VIR_DOMAIN_UNDEFINE.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA |
              VIR_DOMAIN_UNDEFINE.VIR_DOMAIN_UNDEFINE_NVRAM,
          );
        }
      } catch (err) {
        if (!isNoDomain(err)) throw err;
      } finally {
        await rm(tmp.dir, { recursive: true, force: true });
      }
    },
  };
  if (opts.start ?? true) {
    try {
      await td.start();
    } catch (err) {
      await td.cleanup().catch(() => undefined);
      throw err;
    }
  }
  return td;
}

export interface GuestWriteOptions {
  /** Target name (vda, vdb, ...). */
  disk: string;
  offset: number;
  length: number;
  /** Byte value written (default 0xab). */
  pattern?: number;
}

/**
 * Where QEMU's stdout goes for a domain of the private test daemon (stdio_handler = "file"):
 * <daemon dir>/log/qemu/<name>.log. HMP `qemu-io` prints its result there, not on the monitor.
 */
export function qemuLogPath(uri: string, domainName: string): string | undefined {
  const m = /[?&]socket=([^&]+)/.exec(uri);
  if (!m) return undefined;
  return join(dirname(dirname(decodeURIComponent(m[1]!))), 'log', 'qemu', `${domainName}.log`);
}

async function logSize(path: string | undefined): Promise<number> {
  if (!path) return 0;
  return stat(path).then(
    (s) => s.size,
    () => 0,
  );
}

async function logSince(path: string | undefined, from: number): Promise<string | undefined> {
  if (!path) return undefined;
  const buf = await readFile(path).catch(() => undefined);
  return buf?.subarray(from).toString('utf8');
}

/** Runs an HMP qemu-io command on a disk; returns what qemu-io printed (from the QEMU log) if known. */
async function hmpQemuIo(
  client: LibvirtClient,
  td: TestDomain,
  disk: string,
  io: string,
): Promise<string | undefined> {
  const d = td.disks.find((x) => x.target === disk);
  if (!d) throw new Error(`test domain ${td.name} has no disk ${disk}`);
  const log = td.logPath;
  const before = await logSize(log);
  const out = await client.qemuMonitorCommand(td.dom, `qemu-io -d ${d.qomPath} "${io}"`, { hmp: true });
  if (out.trim()) throw new Error(`qemu-io ${io} on ${disk}: ${out.trim()}`);
  return logSince(log, before);
}

/**
 * Writes `length` bytes of `pattern` at `offset` through the guest's virtio-blk device (so dirty
 * bitmaps see it), via HMP `qemu-io -d <QOM path>`. The domain must be running. Fails when QEMU
 * reports an error (on the monitor, or in its log when the log path is known).
 */
export async function guestWrite(client: LibvirtClient, td: TestDomain, w: GuestWriteOptions): Promise<void> {
  const pattern = `0x${(w.pattern ?? 0xab).toString(16)}`;
  const printed = await hmpQemuIo(client, td, w.disk, `write -P ${pattern} ${w.offset} ${w.length}`);
  if (printed !== undefined && !/wrote \d+\/\d+ bytes/.test(printed)) {
    throw new Error(`guestWrite ${w.disk}: qemu-io said: ${printed.trim() || '(nothing)'}`);
  }
}

/**
 * Reads back through the guest device and checks the pattern (qemu-io `read -P`). Needs the QEMU
 * log (private test daemon); throws when it is unknown.
 */
export async function guestVerify(
  client: LibvirtClient,
  td: TestDomain,
  w: GuestWriteOptions,
): Promise<boolean> {
  if (!td.logPath) throw new Error('guestVerify needs the QEMU log path (a qemu+unix:// URI with socket=)');
  const pattern = `0x${(w.pattern ?? 0xab).toString(16)}`;
  const printed = (await hmpQemuIo(client, td, w.disk, `read -P ${pattern} ${w.offset} ${w.length}`)) ?? '';
  return /read \d+\/\d+ bytes/.test(printed) && !/Pattern verification failed/.test(printed);
}

/**
 * Hot-plugs a new virtio disk into a running domain (live only, or live+config with
 * `persistent`). Returns the disk, which is also added to `td.disks`.
 */
export async function hotplugDisk(
  client: LibvirtClient,
  td: TestDomain,
  opts: TestDiskOptions & { persistent?: boolean } = {},
): Promise<TestDisk> {
  const used = new Set(td.disks.map((d) => d.target));
  let target = opts.target;
  for (let c = 97; !target; c++)
    if (!used.has(`vd${String.fromCharCode(c)}`)) target = `vd${String.fromCharCode(c)}`;
  const format = opts.format ?? 'qcow2';
  const sizeBytes = opts.sizeBytes ?? 64 * MiB;
  const path = join(td.dir, `${target}.${format}`);
  await createImage(path, format, sizeBytes);
  const alias = `ua-${target}`;
  const disk: TestDisk = { target, path, format, sizeBytes, alias, qomPath: qomPathForAlias(alias) };
  const flags =
    VIR_DOMAIN_AFFECT.VIR_DOMAIN_AFFECT_LIVE |
    (opts.persistent ? VIR_DOMAIN_AFFECT.VIR_DOMAIN_AFFECT_CONFIG : 0);
  await client.attachDevice(td.dom, diskXml(disk), flags);
  td.disks.push(disk);
  return disk;
}
