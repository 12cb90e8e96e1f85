import { XMLBuilder, XMLParser } from 'fast-xml-parser';
import { VmvaultError } from '../util/index.js';

/** A node of fast-xml-parser's order-preserving tree: `{ tag: [children], ':@': {attrs} }`. */
type Node = Record<string, unknown>;
const ATTRS = ':@';

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
}

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
function setAttr(n: Node, k: string, v: string): void {
  n[ATTRS] = { ...attrs(n), [`@_${k}`]: v };
}
function textOf(n: Node): string {
  return kids(n)
    .map((c) => (typeof c['#text'] === 'string' ? (c['#text'] as string) : ''))
    .join('');
}
function setText(n: Node, value: string): void {
  n[tagOf(n)!] = [{ '#text': value }];
}

/**
 * The domain XML a restored VM needs (what virtnbdrestore -c does): no uuid, a new name, disk
 * sources pointing at the restored images (backing stores removed), disks that were not restored
 * removed (cd-rom, floppy, excluded or skipped disks), and extra files at their restored paths.
 */
export function adjustDomainXml(xml: string, opts: DomainConfigOptions): string {
  let tree: Node[];
  try {
    tree = parser.parse(xml) as Node[];
  } catch (err) {
    throw new VmvaultError('DOMAIN_XML', `the stored domain XML does not parse: ${String(err)}`);
  }
  const domain = tree.find((n) => tagOf(n) === 'domain');
  if (!domain) throw new VmvaultError('DOMAIN_XML', 'the stored domain XML has no <domain> element');
  const dkids = kids(domain);
  const restored = new Map(opts.disks.map((d) => [d.target, d]));
  const files = opts.files ?? new Map<string, string>();

  for (let i = dkids.length - 1; i >= 0; i--) {
    const n = dkids[i]!;
    const t = tagOf(n);
    if (t === 'uuid') dkids.splice(i, 1);
    else if (t === 'name') setText(n, opts.name ?? `restore_${textOf(n)}`);
    else if (t === 'os') {
      for (const c of kids(n)) {
        const ct = tagOf(c);
        if (ct === 'loader' || ct === 'nvram' || ct === 'kernel' || ct === 'initrd' || ct === 'dtb') {
          const p = textOf(c).trim();
          const np = files.get(p);
          if (np) setText(c, np);
        }
      }
    } else if (t === 'devices') {
      const devs = kids(n);
      for (let j = devs.length - 1; j >= 0; j--) {
        const dev = devs[j]!;
        if (tagOf(dev) !== 'disk') continue;
        const target = kids(dev).find((c) => tagOf(c) === 'target');
        const dname = target ? attrs(target)['@_dev'] : undefined;
        const r = dname ? restored.get(dname) : undefined;
        if (!r || attrs(dev)['@_device'] === 'cdrom' || attrs(dev)['@_device'] === 'floppy') {
          devs.splice(j, 1);
          continue;
        }
        setAttr(dev, 'type', 'file');
        const dk = kids(dev);
        for (let k = dk.length - 1; k >= 0; k--) {
          const ct = tagOf(dk[k]!);
          if (ct === 'backingStore' || ct === 'source' || ct === 'alias') dk.splice(k, 1);
        }
        const driver = dk.find((c) => tagOf(c) === 'driver');
        if (driver) setAttr(driver, 'type', r.format);
        else dk.unshift({ driver: [], [ATTRS]: { '@_name': 'qemu', '@_type': r.format } });
        const at = dk.findIndex((c) => tagOf(c) === 'driver') + 1;
        dk.splice(at, 0, { source: [], [ATTRS]: { '@_file': r.path } });
      }
    }
  }
  return (builder.build(tree) as string).trim() + '\n';
}
