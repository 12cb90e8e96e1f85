import { XMLBuilder, XMLParser } from 'fast-xml-parser';
import { printable, VmvaultError } from '../util/index.js';

/** A node of fast-xml-parser's order-preserving tree: `{ tag: [children], ':@': {attrs} }`. */
type Node = Record<string, unknown>;
const ATTRS = ':@';
const TEXT = '#text';

const parser = new XMLParser({
  preserveOrder: true,
  ignoreAttributes: false,
  attributeNamePrefix: '@_',
  parseTagValue: false,
  parseAttributeValue: false,
  trimValues: false,
  commentPropName: '#comment',
});
const builder = new XMLBuilder({
  preserveOrder: true,
  ignoreAttributes: false,
  attributeNamePrefix: '@_',
  suppressEmptyNode: true,
  commentPropName: '#comment',
});

export interface DiskRestoreTarget {
  target: string;
  /** Path of the restored image. */
  path: string;
  format: 'qcow2' | 'raw';
}

export interface DomainConfigOptions {
  /** New domain name (default `restore_<name>`). */
  name?: string;
  disks: readonly DiskRestoreTarget[];
  /** Old host path → restored path, for nvram, loader, kernel, initrd, dtb. */
  files?: ReadonlyMap<string, string>;
  /**
   * Keep the stored XML's host references (devices passed through, host files and sockets,
   * emulator, security labels, hypervisor passthrough): for a repository that is trusted, e.g. a
   * restore on the host the VM came from. Disks that were not restored are removed either way.
   */
  keepHostConfig?: boolean;
}

export interface AdjustedDomainXml {
  xml: string;
  /** One line per element removed or changed because it referenced the host (printable). */
  notes: string[];
}

/** Where distributions install QEMU: removing such an `<emulator>` changes nothing worth a note. */
const STANDARD_EMULATOR = /^\/usr\/(bin|libexec)\/qemu-(system-[a-z0-9_]+|kvm)$/;

function tagOf(n: Node): string | undefined {
  return Object.keys(n).find((k) => k !== ATTRS);
}
function kids(n: Node): Node[] {
  const t = tagOf(n);
  const v = t ? n[t] : undefined;
  return Array.isArray(v) ? (v as Node[]) : [];
}
function attrs(n: Node): Record<string, string> {
  return (n[ATTRS] as Record<string, string> | undefined) ?? {};
}
function attr(n: Node, k: string): string | undefined {
  return attrs(n)[`@_${k}`];
}
function setAttr(n: Node, k: string, v: string): void {
  n[ATTRS] = { ...attrs(n), [`@_${k}`]: v };
}
function deleteAttr(n: Node, k: string): void {
  const a = { ...attrs(n) };
  delete a[`@_${k}`];
  n[ATTRS] = a;
}
function textOf(n: Node): string {
  return kids(n)
    .map((c) => (typeof c[TEXT] === 'string' ? (c[TEXT] as string) : ''))
    .join('');
}
function setText(n: Node, value: string): void {
  n[tagOf(n)!] = [{ [TEXT]: value }];
}
function isElement(n: Node): boolean {
  const t = tagOf(n);
  return t !== undefined && !t.startsWith('#') && !t.startsWith('?');
}
function child(n: Node, tag: string): Node | undefined {
  return kids(n).find((c) => tagOf(c) === tag);
}
/** `<tag a='v' ...>` for messages: the tag and its type-ish attributes, printable. */
function describe(n: Node): string {
  const shown = ['type', 'device', 'mode', 'model']
    .map((k) => [k, attr(n, k)] as const)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => ` ${k}='${printable(v!, 40)}'`)
    .join('');
  return `<${printable(tagOf(n) ?? '?', 60)}${shown}>`;
}
function targetOf(n: Node): string | undefined {
  const t = child(n, 'target');
  return t ? attr(t, 'dev') : undefined;
}

/**
 * Attributes whose value names a host file whatever it looks like (a relative one is resolved
 * from libvirtd's working directory): disk/char-device/filesystem sources, logs, scripts,
 * helper binaries, sockets, tap and vhost devices, nvram templates, fw_cfg files.
 */
const PATH_ATTRS = new Set([
  'file',
  'path',
  'dir',
  'socket',
  'tap',
  'vhost',
  'rendernode',
  'evdev',
  'template',
  'xauth',
  'logFile',
]);
/** Host paths that are no host reference: the random sources libvirt allows for `<rng>`. */
const RNG_SOURCES = new Set(['/dev/random', '/dev/urandom', '/dev/hwrng']);

function looksLikePath(v: string): boolean {
  const s = v.trim();
  return s.startsWith('/') || s.startsWith('./') || s.startsWith('../') || s.startsWith('~') || s === '..';
}

/** The first host path an attribute of `n` names that is not in `allowed`. */
function ownForeignAttr(n: Node, allowed: ReadonlySet<string>): string | undefined {
  for (const [k, v] of Object.entries(attrs(n))) {
    const name = k.slice(2);
    if (name === 'xmlns' || name.startsWith('xmlns:')) continue;
    if ((looksLikePath(v) || (PATH_ATTRS.has(name) && v.trim() !== '')) && !allowed.has(v)) return v;
  }
  return undefined;
}

/** Text that is not a host path although it may look like one, by the element holding it. */
function textIsHostPath(parent: string | undefined, grand: string | undefined, text: string): boolean {
  const s = text.trim();
  if (!looksLikePath(s)) return false;
  if (parent === 'cmdline' && grand === 'os') return false; // the guest kernel's command line
  if (parent === 'partition' && grand === 'resource' && s === '/machine') return false; // libvirt's default cgroup
  if (parent === 'backend' && grand === 'rng' && RNG_SOURCES.has(s)) return false;
  return true;
}

/** The first host path named anywhere in `n` (attributes and text, all descendants), not allowed. */
function foreignPath(n: Node, allowed: ReadonlySet<string>, grand?: string): string | undefined {
  const t = tagOf(n);
  if (t === TEXT) return undefined;
  const own = ownForeignAttr(n, allowed);
  if (own !== undefined) return own;
  for (const c of kids(n)) {
    if (typeof c[TEXT] === 'string') {
      const s = c[TEXT] as string;
      if (textIsHostPath(t, grand, s) && !allowed.has(s.trim())) return s.trim();
    } else if (isElement(c)) {
      const p = foreignPath(c, allowed, t);
      if (p !== undefined) return p;
    }
  }
  return undefined;
}

const CHAR_DEVICES = new Set(['serial', 'parallel', 'console', 'channel']);
const HOST_CHAR_TYPES = new Set(['file', 'pipe', 'dev', 'unix', 'nmdm']);
const EJECTED_ONLY = ['source', 'backingStore', 'mirror', 'auth', 'encryption', 'reservations'];

/**
 * The domain XML a restored VM needs (what virtnbdrestore -c does): no uuid, a new name, disk
 * sources pointing at the restored images (backing stores removed), disks that were not restored
 * removed (excluded or skipped disks), and extra files at their restored paths.
 *
 * The stored XML comes from a shared repository, so unless `keepHostConfig` is set it is held to
 * one rule: the result names no host path this restore did not write, and carries nothing that
 * reaches past the domain's confinement. CD-ROM and floppy drives are ejected; host devices,
 * filesystem passthrough, shared memory, passthrough TPMs and host smartcards are removed;
 * character devices on host files, pipes, devices or sockets become ptys (virtio channels get
 * a socket libvirt names); their logs, the emulator (libvirt picks its default), every
 * `<seclabel>`, every hypervisor-namespace element (`qemu:commandline`, ...) and OS files without
 * a restored copy are removed. Finally any element still naming a host path anywhere in its
 * attributes or text is removed. Each removal or change is one line in `notes`.
 */
export function adjustDomainXml(xml: string, opts: DomainConfigOptions): AdjustedDomainXml {
  let tree: Node[];
  try {
    tree = parser.parse(xml) as Node[];
  } catch (err) {
    throw new VmvaultError('DOMAIN_XML', `the stored domain XML does not parse: ${String(err)}`);
  }
  const domain = tree.find((n) => tagOf(n) === 'domain');
  if (!domain) throw new VmvaultError('DOMAIN_XML', 'the stored domain XML has no <domain> element');
  const keep = opts.keepHostConfig ?? false;
  const notes: string[] = [];
  const note = (m: string): void => void notes.push(m);
  const restored = new Map(opts.disks.map((d) => [d.target, d]));
  const files = opts.files ?? new Map<string, string>();
  const allowed = new Set<string>([...opts.disks.map((d) => d.path), ...files.values()]);
  const dkids = kids(domain);

  for (let i = dkids.length - 1; i >= 0; i--) {
    const n = dkids[i]!;
    const t = tagOf(n);
    if (t === 'uuid') dkids.splice(i, 1);
    else if (t === 'name') setText(n, opts.name ?? `restore_${textOf(n)}`);
    else if (t === 'os') adjustOs(n, files, keep, note);
    else if (t === 'devices') adjustDevices(n, restored, keep, note);
  }
  if (!keep) {
    const ns = attr(domain, 'xmlns');
    if (ns !== undefined) {
      // Children would inherit it: libvirt would read <commandline> as qemu:commandline.
      deleteAttr(domain, 'xmlns');
      note(`removed the default namespace of <domain> ('${printable(ns, 80)}')`);
    }
    removeEscapes(dkids, note);
    pruneForeign(dkids, 'domain', allowed, note);
  }
  return { xml: (builder.build([domain]) as string).trim() + '\n', notes };
}

function adjustOs(
  os: Node,
  files: ReadonlyMap<string, string>,
  keep: boolean,
  note: (m: string) => void,
): void {
  const ok = kids(os);
  for (let k = ok.length - 1; k >= 0; k--) {
    const c = ok[k]!;
    const ct = tagOf(c);
    if (ct !== 'loader' && ct !== 'nvram' && ct !== 'kernel' && ct !== 'initrd' && ct !== 'dtb') continue;
    const p = textOf(c).trim();
    const np = files.get(p);
    if (np) {
      setText(c, np);
      // The template only seeds an nvram file that does not exist; this one is restored.
      if (!keep && attr(c, 'template') !== undefined) deleteAttr(c, 'template');
    } else if (!keep) {
      ok.splice(k, 1);
      note(`removed <os><${ct}> ${printable(p, 80)}: the snapshot holds no copy of it`);
    }
  }
}

function adjustDevices(
  devices: Node,
  restored: ReadonlyMap<string, DiskRestoreTarget>,
  keep: boolean,
  note: (m: string) => void,
): void {
  const devs = kids(devices);
  for (let j = devs.length - 1; j >= 0; j--) {
    const dev = devs[j]!;
    const t = tagOf(dev);
    if (t === 'disk') {
      const device = attr(dev, 'device') ?? 'disk';
      const dname = targetOf(dev);
      const label = `disk ${printable(dname ?? '(no target)', 40)}`;
      if (device === 'cdrom' || device === 'floppy') {
        if (keep) continue;
        const dk = kids(dev);
        const src = child(dev, 'source');
        for (let k = dk.length - 1; k >= 0; k--)
          if (EJECTED_ONLY.includes(tagOf(dk[k]!) ?? '')) dk.splice(k, 1);
        setAttr(dev, 'type', 'file');
        if (src) note(`${label} (${printable(device, 10)}): ejected (its medium is a host file)`);
        continue;
      }
      const r = dname ? restored.get(dname) : undefined;
      if (!r) {
        devs.splice(j, 1);
        note(`removed ${label}: it was not restored`);
        continue;
      }
      setAttr(dev, 'type', 'file');
      if (device === 'lun') {
        // A restored image is a file: no SCSI passthrough (nor its raw I/O capability).
        setAttr(dev, 'device', 'disk');
        deleteAttr(dev, 'rawio');
        deleteAttr(dev, 'sgio');
      }
      const dk = kids(dev);
      for (let k = dk.length - 1; k >= 0; k--) {
        const ct = tagOf(dk[k]!) ?? '';
        if (ct === 'alias' || EJECTED_ONLY.includes(ct)) dk.splice(k, 1);
      }
      const driver = dk.find((c) => tagOf(c) === 'driver');
      if (driver) setAttr(driver, 'type', r.format);
      else dk.unshift({ driver: [], [ATTRS]: { '@_name': 'qemu', '@_type': r.format } });
      const at = dk.findIndex((c) => tagOf(c) === 'driver') + 1;
      dk.splice(at, 0, { source: [], [ATTRS]: { '@_file': r.path } });
      continue;
    }
    if (keep || !t || !isElement(dev)) continue;
    const type = attr(dev, 'type');
    if (t === 'emulator') {
      devs.splice(j, 1);
      // Any emulator path could name any program; libvirt's default is the distribution's QEMU.
      // Only an unusual path is worth a note (the standard ones are what libvirt picks anyway).
      const path = textOf(dev).trim();
      if (!STANDARD_EMULATOR.test(path))
        note(`removed <emulator> ${printable(path, 80)}: libvirt uses its default emulator`);
    } else if (
      t === 'hostdev' ||
      t === 'filesystem' ||
      t === 'shmem' ||
      (t === 'interface' && type === 'hostdev') ||
      (t === 'smartcard' && attr(dev, 'mode') !== 'passthrough') ||
      (t === 'tpm' && kids(dev).some((b) => tagOf(b) === 'backend' && attr(b, 'type') === 'passthrough'))
    ) {
      devs.splice(j, 1);
      note(`removed ${describe(dev)}: it passes a host resource to the guest`);
    } else if (CHAR_DEVICES.has(t)) {
      const dk = kids(dev);
      for (let k = dk.length - 1; k >= 0; k--)
        if (tagOf(dk[k]!) === 'log') {
          note(
            `removed the <log> of ${describe(dev)}: ${printable(attr(dk[k]!, 'file') ?? '', 80)} is a host file`,
          );
          dk.splice(k, 1);
        }
      if (!type || !HOST_CHAR_TYPES.has(type)) continue;
      const target = child(dev, 'target');
      if (t === 'channel' && type === 'unix' && target && attr(target, 'type') === 'virtio') {
        for (const s of dk)
          if (tagOf(s) === 'source' && attr(s, 'path') !== undefined) {
            note(`${describe(dev)}: socket ${printable(attr(s, 'path')!, 80)} dropped, libvirt names one`);
            deleteAttr(s, 'path');
          }
      } else if (t === 'channel') {
        devs.splice(j, 1);
        note(`removed ${describe(dev)}: it opens a host file or device`);
      } else {
        for (let k = dk.length - 1; k >= 0; k--) if (tagOf(dk[k]!) === 'source') dk.splice(k, 1);
        note(`${describe(dev)} is now a pty: it opened a host file, device or socket`);
        setAttr(dev, 'type', 'pty');
      }
    }
  }
}

/** A tag in a namespace (`qemu:commandline`) or an element declaring its default namespace. */
function isNamespaced(n: Node): boolean {
  return (tagOf(n) ?? '').includes(':') || attr(n, 'xmlns') !== undefined;
}

/**
 * Removes, at any depth outside `<metadata>`, what escapes confinement without naming a path:
 * `<seclabel>` (libvirt's default confinement applies) and hypervisor-namespace elements
 * (`qemu:commandline`, `qemu:capabilities`, `qemu:override`, lxc/xen/bhyve passthrough).
 */
function removeEscapes(list: Node[], note: (m: string) => void): void {
  for (let i = list.length - 1; i >= 0; i--) {
    const n = list[i]!;
    if (!isElement(n)) continue;
    const t = tagOf(n)!;
    if (t === 'metadata') continue;
    if (t === 'seclabel') {
      list.splice(i, 1);
      note(`removed ${describe(n)}: libvirt's default confinement applies`);
    } else if (isNamespaced(n)) {
      list.splice(i, 1);
      note(`removed <${printable(t, 60)}>: hypervisor passthrough`);
    } else removeEscapes(kids(n), note);
  }
}

/**
 * The safety net: removes each unit still naming a host path not in `allowed`. A unit is a child
 * of `<domain>`, or of `<os>`, `<devices>` and `<metadata>` (whole devices), or of a `<disk>` (its
 * source is the restored image).
 */
function pruneForeign(
  list: Node[],
  parent: string,
  allowed: ReadonlySet<string>,
  note: (m: string) => void,
): void {
  const descend =
    parent === 'domain'
      ? new Set(['os', 'devices', 'metadata'])
      : parent === 'devices'
        ? new Set(['disk'])
        : new Set<string>();
  for (let i = list.length - 1; i >= 0; i--) {
    const n = list[i]!;
    if (typeof n[TEXT] === 'string') {
      const s = n[TEXT] as string;
      if (looksLikePath(s) && !allowed.has(s.trim())) {
        list.splice(i, 1);
        note(`removed text ${printable(s.trim(), 80)} in <${parent}>: it names a host path`);
      }
      continue;
    }
    if (!isElement(n)) continue;
    const t = tagOf(n)!;
    if (descend.has(t)) {
      const own = ownForeignAttr(n, allowed);
      if (own === undefined) {
        pruneForeign(kids(n), t, allowed, note);
        continue;
      }
      list.splice(i, 1);
      note(`removed ${describe(n)}: it names host path ${printable(own, 80)}`);
      continue;
    }
    const p = foreignPath(n, allowed, parent);
    if (p !== undefined) {
      list.splice(i, 1);
      const where = parent === 'domain' ? '' : `<${printable(parent, 20)}>`;
      note(`removed ${where}${describe(n)}: it names host path ${printable(p, 80)}`);
    }
  }
}
