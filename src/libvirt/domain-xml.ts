/**
 * Domain XML → a typed model of what backup and restore need: identity, disks (with their source,
 * format and backing chain) and the files a VM needs besides its disks (kernel, initrd, loader,
 * NVRAM). Unknown elements are ignored; the original XML is kept for restore.
 */
import {
  attr,
  child,
  children,
  has,
  makeParser,
  parseXml,
  text,
  LibvirtXmlError,
  type XmlNode,
} from './xml-util.js';

export type DiskDevice = 'disk' | 'cdrom' | 'floppy' | 'lun';
export type DiskType = 'file' | 'block' | 'network' | 'volume' | 'dir' | 'nvme' | 'vhostuser' | 'vhostvdpa';

export interface DiskSource {
  /** type='file' */
  file?: string;
  /** type='block' */
  dev?: string;
  /** type='dir' */
  dir?: string;
  /** type='network': nbd, rbd, iscsi, http, ... */
  protocol?: string;
  /** type='network': the image / export name */
  name?: string;
  /** type='network': hosts */
  hosts?: Array<{ name?: string; port?: number; transport?: string; socket?: string }>;
  /** type='volume' */
  pool?: string;
  volume?: string;
  /** libvirt's per-source index (live XML only). */
  index?: number;
}

export interface BackingStore {
  type: string;
  /** Image format (`<format type='qcow2'/>`). */
  format?: string;
  source: DiskSource;
  /** file or dev, when the layer is local. */
  path?: string;
  index?: number;
}

export interface DomainDisk {
  /** Guest device name: `vda`, `sdb`, ... (the name used in backup and checkpoint XML). */
  target: string;
  bus?: string;
  device: DiskDevice;
  type: DiskType;
  /** `<driver name=...>`, normally `qemu`. */
  driverName?: string;
  /** `<driver type=...>`: qcow2, raw, ... */
  format?: string;
  source?: DiskSource;
  /** source file or block device path, when the disk is local. */
  path?: string;
  readOnly: boolean;
  shareable: boolean;
  /** Device alias (`virtio-disk0`, `ua-...`), present in live XML or when user-assigned. */
  alias?: string;
  /** Backing layers from the top image's backing file down; [] when none or unknown. */
  backingChain: BackingStore[];
}

export interface DomainLoader {
  path: string;
  readOnly: boolean;
  /** `rom` or `pflash`. */
  type?: string;
}

export interface DomainNvram {
  path: string;
  template?: string;
}

export interface DomainOs {
  type?: string;
  arch?: string;
  machine?: string;
  firmware?: string;
  kernel?: string;
  initrd?: string;
  cmdline?: string;
  dtb?: string;
  loader?: DomainLoader;
  nvram?: DomainNvram;
}

export interface DomainModel {
  name: string;
  uuid: string;
  /** `qemu` (TCG) or `kvm`. */
  hypervisor: string;
  /** `<memory>` in KiB. */
  memoryKiB?: number;
  vcpus?: number;
  os: DomainOs;
  disks: DomainDisk[];
  /** Host files the VM needs besides its disks: kernel, initrd, dtb, loader, NVRAM. */
  extraFiles: Array<{ role: 'kernel' | 'initrd' | 'dtb' | 'loader' | 'nvram'; path: string }>;
  /** Whether the domain has a qemu guest agent channel. */
  hasGuestAgent: boolean;
}

const parser = makeParser(['disk', 'host', 'channel']);

const UNIT_KIB: Record<string, number> = {
  b: 1 / 1024,
  bytes: 1 / 1024,
  k: 1,
  kib: 1,
  kb: 1000 / 1024,
  m: 1024,
  mib: 1024,
  mb: 1e6 / 1024,
  g: 1024 ** 2,
  gib: 1024 ** 2,
  gb: 1e9 / 1024,
  t: 1024 ** 3,
  tib: 1024 ** 3,
  tb: 1e12 / 1024,
};

function intOrUndefined(s: string | undefined): number | undefined {
  if (s === undefined) return undefined;
  const n = Number(s);
  return Number.isFinite(n) ? n : undefined;
}

function parseSource(src: XmlNode | undefined): DiskSource | undefined {
  if (!src) return undefined;
  const s: DiskSource = {};
  const set = <K extends keyof DiskSource>(k: K, v: DiskSource[K] | undefined): void => {
    if (v !== undefined) s[k] = v;
  };
  set('file', attr(src, 'file'));
  set('dev', attr(src, 'dev'));
  set('dir', attr(src, 'dir'));
  set('protocol', attr(src, 'protocol'));
  set('name', attr(src, 'name'));
  set('pool', attr(src, 'pool'));
  set('volume', attr(src, 'volume'));
  set('index', intOrUndefined(attr(src, 'index')));
  const hosts = children(src, 'host').map((h) => {
    const out: { name?: string; port?: number; transport?: string; socket?: string } = {};
    const name = attr(h, 'name');
    const port = intOrUndefined(attr(h, 'port'));
    const transport = attr(h, 'transport');
    const socket = attr(h, 'socket');
    if (name !== undefined) out.name = name;
    if (port !== undefined) out.port = port;
    if (transport !== undefined) out.transport = transport;
    if (socket !== undefined) out.socket = socket;
    return out;
  });
  if (hosts.length > 0) s.hosts = hosts;
  return s;
}

function parseBackingChain(disk: XmlNode): BackingStore[] {
  const chain: BackingStore[] = [];
  let node = child(disk, 'backingStore');
  // `<backingStore/>` (no type) terminates the chain.
  for (let depth = 0; node && attr(node, 'type') !== undefined && depth < 256; depth++) {
    const source = parseSource(child(node, 'source')) ?? {};
    const layer: BackingStore = { type: attr(node, 'type')!, source };
    const format = attr(child(node, 'format'), 'type');
    if (format !== undefined) layer.format = format;
    const path = source.file ?? source.dev;
    if (path !== undefined) layer.path = path;
    const index = intOrUndefined(attr(node, 'index'));
    if (index !== undefined) layer.index = index;
    chain.push(layer);
    node = child(node, 'backingStore');
  }
  return chain;
}

function parseDisk(d: XmlNode): DomainDisk {
  const target = attr(child(d, 'target'), 'dev');
  if (!target) throw new LibvirtXmlError('domain XML', 'a <disk> has no <target dev=...>');
  const driver = child(d, 'driver');
  const source = parseSource(child(d, 'source'));
  const disk: DomainDisk = {
    target,
    device: (attr(d, 'device') ?? 'disk') as DiskDevice,
    type: (attr(d, 'type') ?? 'file') as DiskType,
    readOnly: has(d, 'readonly'),
    shareable: has(d, 'shareable'),
    backingChain: parseBackingChain(d),
  };
  const bus = attr(child(d, 'target'), 'bus');
  if (bus !== undefined) disk.bus = bus;
  const driverName = attr(driver, 'name');
  if (driverName !== undefined) disk.driverName = driverName;
  const format = attr(driver, 'type');
  if (format !== undefined) disk.format = format;
  if (source && Object.keys(source).length > 0) {
    disk.source = source;
    const path = source.file ?? source.dev;
    if (path !== undefined) disk.path = path;
  }
  const alias = attr(child(d, 'alias'), 'name');
  if (alias !== undefined) disk.alias = alias;
  return disk;
}

/** Parses a domain XML document (from getDomainXml or a file). */
export function parseDomainXml(xml: string): DomainModel {
  const doc = parseXml(parser, xml, 'domain XML');
  const dom = child(doc, 'domain');
  if (!dom || Object.keys(dom).length === 0) throw new LibvirtXmlError('domain XML', 'no <domain> element');
  const name = text(dom, 'name');
  if (!name) throw new LibvirtXmlError('domain XML', 'no <name>');
  const osNode = child(dom, 'os');
  const typeNode = child(osNode, 'type');
  const os: DomainOs = {};
  const setOs = <K extends keyof DomainOs>(k: K, v: DomainOs[K] | undefined): void => {
    if (v !== undefined) os[k] = v;
  };
  setOs('type', text(typeNode));
  setOs('arch', attr(typeNode, 'arch'));
  setOs('machine', attr(typeNode, 'machine'));
  setOs('firmware', attr(osNode, 'firmware'));
  setOs('kernel', text(osNode, 'kernel'));
  setOs('initrd', text(osNode, 'initrd'));
  setOs('cmdline', text(osNode, 'cmdline'));
  setOs('dtb', text(osNode, 'dtb'));
  const loaderNode = child(osNode, 'loader');
  const loaderPath = text(loaderNode);
  if (loaderPath) {
    os.loader = { path: loaderPath, readOnly: attr(loaderNode, 'readonly') === 'yes' };
    const t = attr(loaderNode, 'type');
    if (t !== undefined) os.loader.type = t;
  }
  const nvramNode = child(osNode, 'nvram');
  const nvramPath = text(nvramNode);
  if (nvramPath) {
    os.nvram = { path: nvramPath };
    const t = attr(nvramNode, 'template');
    if (t !== undefined) os.nvram.template = t;
  }
  const devices = child(dom, 'devices');
  const disks = children(devices, 'disk').map(parseDisk);
  const extraFiles: DomainModel['extraFiles'] = [];
  if (os.kernel) extraFiles.push({ role: 'kernel', path: os.kernel });
  if (os.initrd) extraFiles.push({ role: 'initrd', path: os.initrd });
  if (os.dtb) extraFiles.push({ role: 'dtb', path: os.dtb });
  if (os.loader) extraFiles.push({ role: 'loader', path: os.loader.path });
  if (os.nvram) extraFiles.push({ role: 'nvram', path: os.nvram.path });
  const memNode = child(dom, 'memory');
  const memText = text(memNode);
  const unit = (attr(memNode, 'unit') ?? 'KiB').toLowerCase();
  const model: DomainModel = {
    name,
    uuid: text(dom, 'uuid') ?? '',
    hypervisor: attr(dom, 'type') ?? '',
    os,
    disks,
    extraFiles,
    hasGuestAgent: children(devices, 'channel').some(
      (c) => attr(child(c, 'target'), 'name') === 'org.qemu.guest_agent.0',
    ),
  };
  if (memText !== undefined && UNIT_KIB[unit] !== undefined)
    model.memoryKiB = Math.round(Number(memText) * UNIT_KIB[unit]);
  const vcpu = intOrUndefined(text(dom, 'vcpu'));
  if (vcpu !== undefined) model.vcpus = vcpu;
  return model;
}
