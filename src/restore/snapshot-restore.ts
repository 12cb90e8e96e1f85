import { existsSync, promises as fs, statSync } from 'node:fs';
import { basename, extname, join, resolve } from 'node:path';
import { tmpdir } from 'node:os';
import { UsageError, VmvaultError, type Progress } from '../util/index.js';
import { shortId, type Repository, type Snapshot, type SnapshotDisk } from '../repo/index.js';
import { adjustDomainXml } from './domain-config.js';
import { openInPlaceTarget, restoreInPlace, type InPlaceResult } from './in-place.js';
import { createRawWriter } from './raw-writer.js';
import { restoreDisk, type ChunkSink, type DamagedRange } from './restore.js';

export type ImageFormat = 'qcow2' | 'raw';

/** Creates the sink for a new image of a format. qcow2 comes from the qcow2 writer when present. */
export type SinkFactory = (format: ImageFormat, path: string, sizeBytes: number) => Promise<ChunkSink>;

export interface RestoreOptions {
  /** A directory (all disks as <disk>.<format>) or, with one `disk`, the output file itself. */
  output: string;
  disk?: string;
  /** Output format; default: from the file extension with --disk, else qcow2. */
  format?: ImageFormat;
  /** Write an adjusted domain XML and the VM's extra files next to the images. */
  config?: boolean;
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
  files: string[];
}

function formatFromPath(p: string): ImageFormat | undefined {
  const ext = extname(p).toLowerCase();
  if (ext === '.qcow2') return 'qcow2';
  if (ext === '.raw' || ext === '.img') return 'raw';
  return undefined;
}

/** Restores the disks (and optionally the configuration) of one snapshot. */
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
        `snapshot ${shortId(snapshot.id)} has no disk '${opts.disk}'`,
        `its disks are: ${snapshot.disks.map((x) => x.target).join(', ')}`,
      );
    disks = [d];
  }
  const out = resolve(opts.output);
  const outIsDir =
    opts.output.endsWith('/') || (existsSync(out) && statSync(out).isDirectory()) || !opts.disk;
  if (opts.inPlace && (!opts.disk || outIsDir))
    throw new UsageError('--in-place needs --disk and -o naming the existing image or block device');
  const dir = outIsDir ? out : resolve(out, '..');
  if (outIsDir) await fs.mkdir(dir, { recursive: true });

  const result: RestoreResult = { snapshot, disks: [], files: [] };
  for (const d of disks) {
    const format: ImageFormat = opts.format ?? (!outIsDir ? (formatFromPath(out) ?? 'qcow2') : 'qcow2');
    const path = outIsDir ? join(dir, `${d.target}.${format}`) : out;
    const progress = opts.progressFor?.(d.target);
    if (opts.inPlace) {
      let tmp: string | undefined;
      const target = await openInPlaceTarget(
        path,
        async () => (tmp = await fs.mkdtemp(join(tmpdir(), 'vmvault-inplace-'))),
      );
      try {
        const r = await restoreInPlace(repo, snapshot, d, target, {
          ...(progress ? { progress } : {}),
          ...(opts.signal ? { signal: opts.signal } : {}),
        });
        result.disks.push({
          target: d.target,
          path,
          format,
          bytesWritten: r.bytesWritten,
          damaged: [],
          inPlace: r,
        });
      } finally {
        await target.close();
        if (tmp) await fs.rm(tmp, { recursive: true, force: true });
      }
      continue;
    }
    if (existsSync(path))
      throw new VmvaultError('OUTPUT_EXISTS', `output ${path} exists`, {
        hint: 'choose another path, remove it first, or use --in-place to roll it back',
      });
    const sink = await opts.sinks(format, path, d.sizeBytes);
    const r = await restoreDisk(repo, snapshot, d, sink, {
      ignoreErrors: opts.ignoreErrors ?? false,
      ...(progress ? { progress } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    result.disks.push({ target: d.target, path, format, bytesWritten: r.bytesWritten, damaged: r.damaged });
  }

  if (opts.config) {
    const xmlFile = snapshot.files.find((f) => f.kind === 'domain-xml');
    if (!xmlFile)
      throw new VmvaultError(
        'NO_DOMAIN_XML',
        `snapshot ${shortId(snapshot.id)} holds no domain XML (it was made by backup-image)`,
        { hint: 'drop --config' },
      );
    const fileMap = new Map<string, string>();
    for (const f of snapshot.files) {
      if (f.kind === 'domain-xml' || f.kind === 'checkpoint-xml') continue;
      const dest = join(dir, basename(f.name));
      await fs.writeFile(dest, await repo.getFile(f), { mode: 0o600 });
      fileMap.set(f.name, dest);
      result.files.push(dest);
    }
    const xml = adjustDomainXml((await repo.getFile(xmlFile)).toString('utf8'), {
      ...(opts.name ? { name: opts.name } : {}),
      disks: result.disks.map((d) => ({ target: d.target, path: d.path, format: d.format })),
      files: fileMap,
    });
    const configPath = join(dir, `${opts.name ?? `restore_${snapshot.vm.name}`}.xml`);
    await fs.writeFile(configPath, xml);
    result.configPath = configPath;
    result.domainXml = xml;
  }
  return result;
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
