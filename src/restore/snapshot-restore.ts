import { promises as fs } from 'node:fs';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { tmpdir } from 'node:os';
import {
  childPath,
  ExitCode,
  fileNameFor,
  isSafeDiskTarget,
  printable,
  UnsafePathError,
  UsageError,
  VmvaultError,
  type Progress,
} from '../util/index.js';
import {
  shortId,
  type Repository,
  type Snapshot,
  type SnapshotDisk,
  type SnapshotFile,
} from '../repo/index.js';
import { adjustDomainXml } from './domain-config.js';
import { openInPlaceTarget, restoreInPlace, type InPlaceResult } from './in-place.js';
import { createRawWriter } from './raw-writer.js';
import {
  commitFile,
  fsyncDir,
  makeDirDurably,
  outputExists,
  removeStaleTemps,
  tempPathFor,
  writeNewFile,
} from './output-file.js';
import { restoreDisk, type ChunkSink, type DamagedRange } from './restore.js';

export type ImageFormat = 'qcow2' | 'raw';

/** Creates the sink for a new image of a format. qcow2 comes from the qcow2 writer when present. */
export type SinkFactory = (format: ImageFormat, path: string, sizeBytes: number) => Promise<ChunkSink>;

export interface RestoreOptions {
  /**
   * A directory (all disks as <disk>.<format>) or, with one `disk`, the output file itself (its
   * extension gives the format unless `format` is set).
   */
  output: string;
  disk?: string;
  /** Output format; default: from the file extension with --disk, else qcow2. */
  format?: ImageFormat;
  /** Write an adjusted domain XML and the VM's extra files next to the images. */
  config?: boolean;
  /**
   * Keep the stored domain XML's host references (see adjustDomainXml): only for a trusted
   * repository. Without it the adjusted XML names no host path this restore did not write.
   */
  keepHostConfig?: boolean;
  name?: string;
  inPlace?: boolean;
  ignoreErrors?: boolean;
  sinks: SinkFactory;
  progressFor?: (target: string) => Progress;
  signal?: AbortSignal;
}

export interface RestoredDisk {
  target: string;
  path: string;
  format: ImageFormat;
  /** An in-place restore into a block device (raw). */
  blockDevice: boolean;
  bytesWritten: number;
  damaged: DamagedRange[];
  inPlace?: InPlaceResult;
}

export interface RestoreResult {
  snapshot: Snapshot;
  disks: RestoredDisk[];
  /** Path of the adjusted domain XML (with `config`). */
  configPath?: string;
  domainXml?: string;
  /** What the adjusted XML removed or changed from the stored one (printable lines). */
  configNotes: string[];
  files: string[];
  /** Temporary files an interrupted earlier restore of these outputs had left, now removed. */
  removedTemps: string[];
}

function formatFromPath(p: string): ImageFormat | undefined {
  const ext = extname(p).toLowerCase();
  if (ext === '.qcow2') return 'qcow2';
  if (ext === '.raw' || ext === '.img') return 'raw';
  return undefined;
}

const FORMATS = 'qcow2 (.qcow2) and raw (.raw, .img)';

/** QEMU keeps a qcow2 image's size in 512-byte sectors (it reads 1000 bytes as 512). */
function checkFormatFits(disk: SnapshotDisk, format: ImageFormat): void {
  if (format === 'qcow2' && disk.sizeBytes % 512 !== 0)
    throw new VmvaultError(
      'QCOW2_SIZE',
      `disk ${printable(disk.target, 40)} is ${disk.sizeBytes} bytes, not a multiple of 512: a qcow2 image cannot have that exact size`,
      { hint: 'restore it with --format raw (or to a .raw file)', exitCode: ExitCode.USAGE },
    );
}

async function exists(path: string): Promise<boolean> {
  return fs.lstat(path).then(
    () => true,
    () => false,
  );
}

interface PlannedDisk {
  disk: SnapshotDisk;
  format: ImageFormat;
  path: string;
}

/**
 * Restores the disks (and optionally the configuration) of one snapshot.
 *
 * Every output path is worked out and checked before anything is written: names from the
 * snapshot (disk targets, file names, the VM name) only ever become a direct child of the output
 * directory (childPath), so a crafted manifest cannot write elsewhere. New files are written under
 * temporary names and given their real names together once everything succeeded (output-file.ts):
 * a restore that fails or is killed leaves nothing at the output paths.
 */
export async function restoreSnapshot(
  repo: Repository,
  snapshot: Snapshot,
  opts: RestoreOptions,
): Promise<RestoreResult> {
  let disks: SnapshotDisk[] = snapshot.disks;
  if (opts.disk) {
    const d = snapshot.disks.find((x) => x.target === opts.disk);
    if (!d)
      throw new UsageError(
        `snapshot ${shortId(snapshot.id)} has no disk '${printable(opts.disk)}'`,
        `its disks are: ${snapshot.disks.map((x) => printable(x.target, 40)).join(', ')}`,
      );
    disks = [d];
  }
  const out = resolve(opts.output);
  const outStat = await fs.stat(out).catch(() => undefined);
  if (!opts.disk && outStat && !outStat.isDirectory())
    throw new UsageError(
      `${out} is a file, but without --disk the output is a directory (one image per disk)`,
      `give a directory with -o, or add --disk DISK to restore one disk into a file (disks: ${snapshot.disks.map((x) => printable(x.target, 40)).join(', ')})`,
    );
  const outIsDir = opts.output.endsWith('/') || outStat?.isDirectory() === true || !opts.disk;
  if (opts.inPlace && (!opts.disk || outIsDir))
    throw new UsageError('--in-place needs --disk and -o naming the existing image or block device');
  const dir = outIsDir ? out : dirname(out);
  if (
    !outIsDir &&
    !(await fs.stat(dir).then(
      (st) => st.isDirectory(),
      () => false,
    ))
  )
    throw new VmvaultError('OUTPUT_FAILED', `cannot write ${out}: its directory does not exist`, {
      hint: 'create the directory first, or end -o with / to restore into a new directory',
    });

  // The plan: every path this restore will create.
  const planned: PlannedDisk[] = [];
  if (!opts.inPlace)
    for (const d of disks) {
      let format = opts.format;
      if (!format && !outIsDir) {
        format = formatFromPath(out);
        if (!format)
          throw new UsageError(
            `cannot tell the image format of ${out} from its name: vmvault writes ${FORMATS}`,
            'name the file .qcow2, .raw or .img, or give --format qcow2|raw',
          );
      }
      format ??= 'qcow2';
      checkFormatFits(d, format);
      let path = out;
      if (outIsDir) {
        if (!isSafeDiskTarget(d.target)) throw new UnsafePathError(dir, d.target);
        path = childPath(dir, `${d.target}.${format}`);
      }
      planned.push({ disk: d, format, path });
    }
  const xmlFile = opts.config ? snapshot.files.find((f) => f.kind === 'domain-xml') : undefined;
  // Checked before anything is written: an image snapshot (backup-image) has disks only.
  if (opts.config && !xmlFile)
    throw new VmvaultError(
      'NO_DOMAIN_XML',
      `snapshot ${shortId(snapshot.id)} holds no domain XML (it was made by backup-image)`,
      { hint: 'drop --config and --define to restore its disks', exitCode: ExitCode.USAGE },
    );
  const extraFiles: Array<{ file: SnapshotFile; path: string }> = [];
  let configPath: string | undefined;
  if (opts.config) {
    for (const f of snapshot.files) {
      if (f.kind === 'domain-xml' || f.kind === 'checkpoint-xml') continue;
      // Stored under the host path it had; restored by its last component only.
      const base = basename(f.name);
      if (base === '' || base === '.' || base === '..' || f.name.includes('\0'))
        throw new UnsafePathError(dir, f.name);
      extraFiles.push({ file: f, path: childPath(dir, fileNameFor(base)) });
    }
    configPath = childPath(dir, fileNameFor(opts.name ?? `restore_${snapshot.vm.name}`, '.xml'));
  }
  const outputs = [
    ...planned.map((p) => p.path),
    ...extraFiles.map((f) => f.path),
    ...(configPath ? [configPath] : []),
  ];
  const seen = new Set<string>();
  for (const p of outputs) {
    if (seen.has(p))
      throw new VmvaultError(
        'OUTPUT_CONFLICT',
        `snapshot ${shortId(snapshot.id)} would write ${p} twice (two of its disks or files share a name)`,
        { hint: 'restore the disks one at a time with --disk, or without --config' },
      );
    seen.add(p);
    if (await exists(p)) throw outputExists(p);
  }

  const result: RestoreResult = { snapshot, disks: [], configNotes: [], files: [], removedTemps: [] };
  for (const p of outputs) result.removedTemps.push(...(await removeStaleTemps(p)));
  if (outIsDir) await makeDirDurably(dir);

  if (opts.inPlace) {
    const d = disks[0]!;
    const progress = opts.progressFor?.(d.target);
    let tmp: string | undefined;
    const target = await openInPlaceTarget(
      out,
      async () => (tmp = await fs.mkdtemp(join(tmpdir(), 'vmvault-inplace-'))),
    );
    try {
      if (opts.format && opts.format !== target.format)
        throw new UsageError(
          `${out} is a ${target.blockDevice ? 'block device' : `${target.format} image`}, not ${opts.format}`,
          'drop --format: an in-place restore keeps the format the target has',
        );
      const r = await restoreInPlace(repo, snapshot, d, target, {
        ...(progress ? { progress } : {}),
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
      result.disks.push({
        target: d.target,
        path: out,
        format: target.format,
        blockDevice: target.blockDevice,
        bytesWritten: r.bytesWritten,
        damaged: [],
        inPlace: r,
      });
    } finally {
      await target.close();
      if (tmp) await fs.rm(tmp, { recursive: true, force: true });
    }
  }

  // Everything is written under a temporary name first; `pending` maps each to its real name.
  const pending: Array<{ tmp: string; path: string }> = [];
  try {
    for (const p of planned) {
      const progress = opts.progressFor?.(p.disk.target);
      const tmp = tempPathFor(p.path);
      pending.push({ tmp, path: p.path });
      const sink = await opts.sinks(p.format, tmp, p.disk.sizeBytes);
      const r = await restoreDisk(repo, snapshot, p.disk, sink, {
        ignoreErrors: opts.ignoreErrors ?? false,
        ...(progress ? { progress } : {}),
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
      result.disks.push({
        target: p.disk.target,
        path: p.path,
        format: p.format,
        blockDevice: false,
        bytesWritten: r.bytesWritten,
        damaged: r.damaged,
      });
    }
    if (xmlFile && configPath) {
      const fileMap = new Map<string, string>();
      for (const { file, path } of extraFiles) {
        const tmp = tempPathFor(path);
        pending.push({ tmp, path });
        await writeNewFile(tmp, await repo.getFile(file));
        fileMap.set(file.name, path);
        result.files.push(path);
      }
      // The disk paths in the XML are exactly the files this restore writes.
      const { xml, notes } = adjustDomainXml((await repo.getFile(xmlFile)).toString('utf8'), {
        ...(opts.name ? { name: opts.name } : {}),
        disks: result.disks.map((d) => ({ target: d.target, path: d.path, format: d.format })),
        files: fileMap,
        keepHostConfig: opts.keepHostConfig ?? false,
      });
      result.configNotes = notes;
      const tmp = tempPathFor(configPath);
      pending.push({ tmp, path: configPath });
      await writeNewFile(tmp, xml);
      result.configPath = configPath;
      result.domainXml = xml;
    }
  } catch (err) {
    await Promise.all(pending.map((p) => fs.rm(p.tmp, { force: true })));
    throw namingOutputs(err, pending);
  }

  // All written and synced: give every file its name (none replaces anything), then sync the
  // directory. If one cannot be named, the ones already named are taken back.
  const committed: string[] = [];
  try {
    for (const p of pending) {
      await commitFile(p.tmp, p.path);
      committed.push(p.path);
    }
    if (pending.length) await fsyncDir(dir);
  } catch (err) {
    await Promise.all(committed.map((p) => fs.rm(p, { force: true })));
    await Promise.all(pending.map((p) => fs.rm(p.tmp, { force: true })));
    throw err;
  }
  return result;
}

/** An error about a temporary file, told about the output it stands for. */
function namingOutputs(err: unknown, pending: ReadonlyArray<{ tmp: string; path: string }>): unknown {
  if (!(err instanceof VmvaultError)) return err;
  const p = pending.find((x) => err.message.includes(x.tmp));
  if (!p) return err;
  return new VmvaultError(err.code, err.message.split(p.tmp).join(p.path), {
    hint: err.hint,
    exitCode: err.exitCode,
    details: err.details,
    cause: err,
  });
}

/** Raw sinks always; qcow2 through the writer passed in. */
export function makeSinkFactory(
  qcow2?: (path: string, sizeBytes: number) => Promise<ChunkSink>,
): SinkFactory {
  return async (format, path, sizeBytes) => {
    if (format === 'raw') return createRawWriter(path, sizeBytes);
    if (!qcow2) throw new UsageError('qcow2 output is not available in this build', 'use --format raw');
    return qcow2(path, sizeBytes);
  };
}
