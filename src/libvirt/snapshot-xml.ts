/**
 * Builder for disk-only snapshot XML (docs/formatsnapshot.rst) and readers for the facts the
 * backup-method choice needs: `<backup supported=...>` in the domain capabilities and the
 * per-domain `incremental-backup` QEMU capability of libvirt 6.0–7.1. Every value is escaped.
 */
import { attr, child, escapeXml as esc, makeParser, parseXml } from './xml-util.js';

export type SnapshotDiskSpec =
  | {
      /** Target name (`vda`). */
      name: string;
      snapshot: 'external';
      /** The overlay file libvirt creates (it must not exist). */
      file: string;
      /** Overlay format (default qcow2). */
      format?: string;
    }
  | { name: string; snapshot: 'no' | 'manual' };

export interface DiskSnapshotSpec {
  name: string;
  description?: string;
  disks: readonly SnapshotDiskSpec[];
}

/** `<domainsnapshot>` for SNAPSHOT_CREATE_XML with DISK_ONLY. */
export function buildDiskSnapshotXml(spec: DiskSnapshotSpec): string {
  const lines: string[] = ['<domainsnapshot>', `  <name>${esc(spec.name)}</name>`];
  if (spec.description !== undefined) lines.push(`  <description>${esc(spec.description)}</description>`);
  lines.push('  <disks>');
  for (const d of spec.disks) {
    if (d.snapshot !== 'external') {
      lines.push(`    <disk name='${esc(d.name)}' snapshot='${d.snapshot}'/>`);
      continue;
    }
    lines.push(
      `    <disk name='${esc(d.name)}' snapshot='external' type='file'>`,
      `      <driver type='${esc(d.format ?? 'qcow2')}'/>`,
      `      <source file='${esc(d.file)}'/>`,
      '    </disk>',
    );
  }
  lines.push('  </disks>', '</domainsnapshot>');
  return lines.join('\n') + '\n';
}

const capsParser = makeParser([]);

/**
 * `<domainCapabilities><features><backup supported='yes|no'/>`: 'yes' / 'no', or undefined when
 * the daemon does not report it (libvirt before 7.2) or the XML cannot be read.
 */
export function domainCapsBackupSupport(xml: string): 'yes' | 'no' | undefined {
  try {
    const root = child(parseXml(capsParser, xml, 'domain capabilities'), 'domainCapabilities');
    const v = attr(child(child(root, 'features'), 'backup'), 'supported');
    return v === 'yes' || v === 'no' ? v : undefined;
  } catch {
    return undefined;
  }
}

/** Whether domain XML turns on QEMU's `incremental-backup` capability (libvirt 6.0–7.1 needed it). */
export function hasIncrementalBackupCapability(domainXml: string): boolean {
  return /<[A-Za-z0-9_-]+:add\s+capability\s*=\s*(['"])incremental-backup\1/.test(domainXml);
}
