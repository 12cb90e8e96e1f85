/**
 * Builders for backup and checkpoint XML (docs/formatbackup.rst, docs/formatcheckpoint.rst) and
 * readers for what the daemon returns (the effective backup XML with export names, checkpoint
 * XML with parent and disks). Every value is escaped.
 */
import {
  attr,
  child,
  children,
  escapeXml as esc,
  makeParser,
  parseXml,
  text,
  LibvirtXmlError,
} from './xml-util.js';

export type BackupServer =
  { transport: 'unix'; socket: string } | { transport: 'tcp'; name: string; port?: number };

export interface BackupDiskSpec {
  /** Target name (`vda`). */
  name: string;
  /** Include the disk (default true); false writes `backup='no'`. */
  backup?: boolean;
  /** Per-disk mode; `incremental` needs `incremental` (a checkpoint name). */
  backupMode?: 'full' | 'incremental';
  /** Checkpoint this disk's incremental starts from. */
  incremental?: string;
  /** NBD export name (default: the target name). */
  exportName?: string;
  /** Name of the dirty-bitmap meta context (default `backup-<target>`). */
  exportBitmap?: string;
  /** Scratch file for copy-before-write data (pull mode). */
  scratchFile?: string;
  /** Scratch image format (`<driver type=...>`), e.g. qcow2. */
  scratchFormat?: string;
}

export interface PullBackupSpec {
  server: BackupServer;
  /** Top-level incremental checkpoint (applies to disks without their own). */
  incremental?: string;
  disks: readonly BackupDiskSpec[];
}

/** `<domainbackup mode='pull'>` with a server and per-disk settings. */
export function buildPullBackupXml(spec: PullBackupSpec): string {
  const lines: string[] = [`<domainbackup mode='pull'>`];
  if (spec.incremental !== undefined) lines.push(`  <incremental>${esc(spec.incremental)}</incremental>`);
  if (spec.server.transport === 'unix') {
    lines.push(`  <server transport='unix' socket='${esc(spec.server.socket)}'/>`);
  } else {
    const port = spec.server.port !== undefined ? ` port='${spec.server.port}'` : '';
    lines.push(`  <server transport='tcp' name='${esc(spec.server.name)}'${port}/>`);
  }
  lines.push('  <disks>');
  for (const d of spec.disks) {
    if (d.backup === false) {
      lines.push(`    <disk name='${esc(d.name)}' backup='no'/>`);
      continue;
    }
    let a = `name='${esc(d.name)}' backup='yes' type='file'`;
    if (d.backupMode) a += ` backupmode='${d.backupMode}'`;
    if (d.incremental !== undefined) a += ` incremental='${esc(d.incremental)}'`;
    if (d.exportName !== undefined) a += ` exportname='${esc(d.exportName)}'`;
    if (d.exportBitmap !== undefined) a += ` exportbitmap='${esc(d.exportBitmap)}'`;
    const inner: string[] = [];
    if (d.scratchFormat !== undefined) inner.push(`      <driver type='${esc(d.scratchFormat)}'/>`);
    if (d.scratchFile !== undefined) inner.push(`      <scratch file='${esc(d.scratchFile)}'/>`);
    if (inner.length === 0) lines.push(`    <disk ${a}/>`);
    else lines.push(`    <disk ${a}>`, ...inner, '    </disk>');
  }
  lines.push('  </disks>', '</domainbackup>');
  return lines.join('\n') + '\n';
}

export interface CheckpointDiskSpec {
  name: string;
  /** `bitmap` (default) or `no` (raw disks cannot hold bitmaps). */
  checkpoint?: 'bitmap' | 'no';
  /** Bitmap name (default: the checkpoint name). */
  bitmap?: string;
}

export interface CheckpointSpec {
  name: string;
  description?: string;
  /** Disks to list; omitted = every disk with the daemon's defaults. */
  disks?: readonly CheckpointDiskSpec[];
}

/** `<domaincheckpoint>` for CHECKPOINT_CREATE_XML or as BACKUP_BEGIN's checkpoint argument. */
export function buildCheckpointXml(spec: CheckpointSpec): string {
  const lines: string[] = ['<domaincheckpoint>', `  <name>${esc(spec.name)}</name>`];
  if (spec.description !== undefined) lines.push(`  <description>${esc(spec.description)}</description>`);
  if (spec.disks) {
    lines.push('  <disks>');
    for (const d of spec.disks) {
      const mode = d.checkpoint ?? 'bitmap';
      const bitmap = mode === 'bitmap' && d.bitmap !== undefined ? ` bitmap='${esc(d.bitmap)}'` : '';
      lines.push(`    <disk name='${esc(d.name)}' checkpoint='${mode}'${bitmap}/>`);
    }
    lines.push('  </disks>');
  }
  lines.push('</domaincheckpoint>');
  return lines.join('\n') + '\n';
}

// ----- readers ---------------------------------------------------------------------------------

export interface BackupDiskInfo {
  name: string;
  backup: boolean;
  backupMode?: string;
  incremental?: string;
  exportName?: string;
  exportBitmap?: string;
  scratchFile?: string;
  /** Job state per disk (`running`, `complete`, ...), live XML only. */
  state?: string;
}

export interface BackupInfo {
  mode: 'pull' | 'push';
  incremental?: string;
  server?: BackupServer;
  disks: BackupDiskInfo[];
}

const backupParser = makeParser(['disk']);

/** Parses the effective backup XML from backupGetXml(). */
export function parseBackupXml(xml: string): BackupInfo {
  const doc = parseXml(backupParser, xml, 'backup XML');
  const root = child(doc, 'domainbackup');
  if (!root) throw new LibvirtXmlError('backup XML', 'no <domainbackup> element');
  const info: BackupInfo = { mode: attr(root, 'mode') === 'push' ? 'push' : 'pull', disks: [] };
  const inc = text(root, 'incremental');
  if (inc !== undefined) info.incremental = inc;
  const server = child(root, 'server');
  if (server) {
    const transport = attr(server, 'transport') ?? 'tcp';
    if (transport === 'unix') info.server = { transport: 'unix', socket: attr(server, 'socket') ?? '' };
    else {
      const port = attr(server, 'port');
      info.server = {
        transport: 'tcp',
        name: attr(server, 'name') ?? '',
        ...(port ? { port: Number(port) } : {}),
      };
    }
  }
  for (const d of children(child(root, 'disks'), 'disk')) {
    const disk: BackupDiskInfo = { name: attr(d, 'name') ?? '', backup: attr(d, 'backup') !== 'no' };
    const set = <K extends keyof BackupDiskInfo>(k: K, v: BackupDiskInfo[K] | undefined): void => {
      if (v !== undefined) disk[k] = v;
    };
    set('backupMode', attr(d, 'backupmode'));
    set('incremental', attr(d, 'incremental'));
    set('exportName', attr(d, 'exportname'));
    set('exportBitmap', attr(d, 'exportbitmap'));
    set('state', attr(d, 'state'));
    set('scratchFile', attr(child(d, 'scratch'), 'file') ?? attr(child(d, 'scratch'), 'dev'));
    info.disks.push(disk);
  }
  return info;
}

export interface CheckpointInfo {
  name: string;
  description?: string;
  parent?: string;
  creationTime?: number;
  disks: Array<{ name: string; checkpoint: string; bitmap?: string; sizeBytes?: number }>;
  /** The embedded `<domain>` element's XML is not extracted; use the raw XML for REDEFINE. */
}

const checkpointParser = makeParser(['disk']);

/** Parses checkpoint XML from checkpointGetXml(). */
export function parseCheckpointXml(xml: string): CheckpointInfo {
  const doc = parseXml(checkpointParser, xml, 'checkpoint XML');
  const root = child(doc, 'domaincheckpoint');
  if (!root) throw new LibvirtXmlError('checkpoint XML', 'no <domaincheckpoint> element');
  const name = text(root, 'name');
  if (!name) throw new LibvirtXmlError('checkpoint XML', 'no <name>');
  const info: CheckpointInfo = { name, disks: [] };
  const description = text(root, 'description');
  if (description !== undefined) info.description = description;
  const parent = text(child(root, 'parent'), 'name');
  if (parent !== undefined) info.parent = parent;
  const ct = text(root, 'creationTime');
  if (ct !== undefined) info.creationTime = Number(ct);
  for (const d of children(child(root, 'disks'), 'disk')) {
    const disk: CheckpointInfo['disks'][number] = {
      name: attr(d, 'name') ?? '',
      checkpoint: attr(d, 'checkpoint') ?? 'bitmap',
    };
    const bitmap = attr(d, 'bitmap');
    if (bitmap !== undefined) disk.bitmap = bitmap;
    const size = attr(d, 'size');
    if (size !== undefined) disk.sizeBytes = Number(size);
    info.disks.push(disk);
  }
  return info;
}
