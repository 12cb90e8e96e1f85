import { existsSync, promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import { BASE_ALLOCATION, NbdClient, startQemuNbd, walkExtents } from '../nbd/index.js';
import {
  exec,
  isSafeDiskTarget,
  isSafeVmName,
  NAME_RULES,
  printable,
  UsageError,
  VmvaultError,
  errnoCode,
  type Logger,
  nullLogger,
  type Progress,
} from '../util/index.js';
import {
  defaultHost,
  format as repoFormat,
  type Repository,
  type Snapshot,
  type SnapshotDisk,
} from '../repo/index.js';
import {
  backupDisk,
  planFromDataExtents,
  ShortReadError,
  SourceReadError,
  type DiskSource,
} from './chunk-pipeline.js';
import { makeRuntimeDir } from './runtime-dir.js';
import { PROGRAM } from './version.js';

export interface ImageSpec {
  path: string;
  /** Disk name in the snapshot (e.g. vda). */
  target: string;
}

/**
 * The n-th default disk name (0 → vda, 25 → vdz, 26 → vdaa, 27 → vdab, …), as libvirt numbers
 * disks (virDiskNameToIndex): a bijective base-26 suffix.
 */
export function defaultDiskName(n: number): string {
  let suffix = '';
  for (let i = n; i >= 0; i = Math.floor(i / 26) - 1) suffix = String.fromCharCode(97 + (i % 26)) + suffix;
  return `vd${suffix}`;
}

/**
 * Parses `FILE[:DISK]` arguments; disks without a name get vda, vdb, … in order. The text after
 * the last ':' is a disk name when it follows the disk-name rules (`isSafeDiskTarget`); when it
 * does not, the argument is taken as a path only if that file exists (a path with a colon in it),
 * else it is refused with the rules.
 */
export function parseImageSpecs(args: readonly string[]): ImageSpec[] {
  const used = new Set<string>();
  const specs = args.map((arg) => {
    const colon = arg.lastIndexOf(':');
    if (colon <= 0) return { path: arg, target: '' };
    const path = arg.slice(0, colon);
    const name = arg.slice(colon + 1);
    if (isSafeDiskTarget(name)) return { path, target: name };
    if (name.includes('/') || existsSync(arg)) return { path: arg, target: '' };
    throw new UsageError(
      `invalid disk name '${printable(name, 40)}' in '${printable(arg, 120)}'`,
      `${NAME_RULES.disk} (FILE:DISK, e.g. disk.img:vdb)`,
    );
  });
  for (const s of specs)
    if (s.target) {
      if (used.has(s.target)) throw new UsageError(`disk name '${s.target}' is given twice`);
      used.add(s.target);
    }
  let next = 0;
  for (const s of specs) {
    if (s.target) continue;
    let name: string;
    do name = defaultDiskName(next++);
    while (used.has(name));
    used.add(name);
    s.target = name;
  }
  return specs;
}

export interface BackupImageOptions {
  vm: string;
  images: ImageSpec[];
  tags?: string[];
  /** The snapshot time to record (ISO 8601, UTC); default now (importing old images, retention tests). */
  time?: string;
  logger?: Logger;
  progressFor?: (target: string) => Progress;
  signal?: AbortSignal;
}

class FileSource implements DiskSource {
  constructor(
    private readonly fh: fs.FileHandle,
    readonly sizeBytes: number,
    readonly name: string,
  ) {}
  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const buf = into && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.fh.read(buf, done, length - done, offset + done);
      // End of file before the size we planned with: the image shrank under us. Never pad.
      if (bytesRead === 0) throw new ShortReadError(this.name, offset, done, length);
      done += bytesRead;
    }
    return buf;
  }
}

interface ImageInfo {
  format: string;
  sizeBytes: number;
  dataExtents: Array<{ offset: number; length: number }> | null;
}

/** Format, size and data extents (SEEK_DATA/SEEK_HOLE through `qemu-img map`) of an image. */
async function inspectImage(path: string, isBlock: boolean, statSize: number): Promise<ImageInfo> {
  let format = 'raw';
  let sizeBytes = statSize;
  try {
    const info = JSON.parse((await exec('qemu-img', ['info', '--output=json', '-U', path])).stdout) as {
      format?: string;
      'virtual-size'?: number;
    };
    format = info.format ?? 'raw';
    if (isBlock && typeof info['virtual-size'] === 'number') sizeBytes = info['virtual-size'];
  } catch (err) {
    if (errnoCode((err as { cause?: unknown }).cause) !== 'ENOENT') {
      // qemu-img exists but failed: sniff the qcow2 magic ourselves.
    }
    const fh = await fs.open(path, 'r');
    try {
      const b = Buffer.alloc(4);
      await fh.read(b, 0, 4, 0);
      if (b.toString('latin1') === 'QFI\xfb') format = 'qcow2';
    } finally {
      await fh.close();
    }
  }
  if (format !== 'raw') return { format, sizeBytes, dataExtents: null };
  try {
    const map = JSON.parse(
      (await exec('qemu-img', ['map', '--output=json', '-f', 'raw', '-U', path])).stdout,
    ) as Array<{
      start: number;
      length: number;
      data: boolean;
      zero: boolean;
    }>;
    const dataExtents = map
      .filter((e) => e.data && !e.zero)
      .map((e) => ({ offset: e.start, length: e.length }));
    return { format, sizeBytes, dataExtents };
  } catch {
    return { format, sizeBytes, dataExtents: null }; // no map: read everything, zero detection only
  }
}

interface OpenedImage {
  source: DiskSource;
  format: string;
  sizeBytes: number;
  dataExtents: Array<{ offset: number; length: number }> | null;
  /** The size of the file or device now (to notice an image that shrank while it was read). */
  currentSize(): Promise<number>;
  /** The size `currentSize` returned when the image was opened. */
  openedSize: number;
  close(): Promise<void>;
}

async function deviceSize(path: string): Promise<number | undefined> {
  const out = await exec('blockdev', ['--getsize64', path]).catch(() => undefined);
  const n = out ? Number(out.stdout.trim()) : NaN;
  return Number.isSafeInteger(n) ? n : undefined;
}

async function openImage(spec: ImageSpec, runtimeDir: string): Promise<OpenedImage> {
  let st: import('node:fs').Stats;
  try {
    st = await fs.stat(spec.path);
  } catch (err) {
    const code = errnoCode(err);
    throw new VmvaultError(
      'IMAGE_UNREADABLE',
      `cannot read image ${spec.path}: ${code === 'ENOENT' ? 'no such file' : (code ?? String(err))}`,
      {
        hint: 'check the path',
      },
    );
  }
  if (!st.isFile() && !st.isBlockDevice())
    throw new VmvaultError('IMAGE_UNREADABLE', `${spec.path} is not a file or block device`);
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(spec.path, 'r');
  } catch (err) {
    throw new VmvaultError(
      'IMAGE_UNREADABLE',
      `cannot read image ${spec.path}: ${errnoCode(err) === 'EACCES' ? 'permission denied' : String(err)}`,
      {
        hint: 'run as a user that can read it',
      },
    );
  }
  let sizeBytes = st.size;
  const isBlock = st.isBlockDevice();
  if (isBlock) sizeBytes = (await deviceSize(spec.path)) ?? sizeBytes;
  const currentSize = async (): Promise<number> =>
    isBlock ? ((await deviceSize(spec.path)) ?? sizeBytes) : (await fs.stat(spec.path)).size;
  const openedSize = sizeBytes;
  const info = await inspectImage(spec.path, isBlock, sizeBytes);
  if (info.format === 'raw') {
    return {
      source: new FileSource(fh, info.sizeBytes, spec.path),
      format: 'raw',
      sizeBytes: info.sizeBytes,
      dataExtents: info.dataExtents,
      currentSize: async () => (isBlock ? currentSize() : (await fh.stat()).size),
      openedSize,
      close: () => fh.close(),
    };
  }
  // Any other format QEMU reads: export it read-only with qemu-nbd and read it over NBD.
  await fh.close();
  const exp = await startQemuNbd({
    path: spec.path,
    format: info.format,
    runtimeDir,
    readOnly: true,
  });
  let client: NbdClient;
  try {
    client = await NbdClient.connect({
      socketPath: exp.socketPath,
      exportName: exp.exportName,
      metaContexts: [BASE_ALLOCATION],
      timeoutMs: 30_000,
    });
  } catch (err) {
    await exp.stop();
    throw err;
  }
  const dataExtents: Array<{ offset: number; length: number }> = [];
  for await (const e of walkExtents(client, 0, client.sizeBytes))
    if (!e.isZero) dataExtents.push({ offset: e.offset, length: e.length });
  return {
    source: {
      sizeBytes: client.sizeBytes,
      name: spec.path,
      read: (o, l, into) => client.read(o, l, into),
    },
    format: info.format,
    sizeBytes: client.sizeBytes,
    dataExtents,
    currentSize,
    openedSize,
    async close() {
      await client.close();
      await exp.stop();
    },
  };
}

const RUNTIME_PREFIX = 'vmvault-image-';

/** Backs up raw image files / block devices (or any QEMU format) as one snapshot of `vm`. */
export async function backupImages(repo: Repository, opts: BackupImageOptions): Promise<Snapshot> {
  if (!isSafeVmName(opts.vm))
    throw new UsageError(`invalid VM name '${printable(opts.vm, 80)}'`, `${NAME_RULES.vm} (--vm)`);
  for (const spec of opts.images)
    if (!isSafeDiskTarget(spec.target))
      throw new UsageError(`invalid disk name '${printable(spec.target, 40)}'`, NAME_RULES.disk);
  const log = opts.logger ?? nullLogger;
  const opened: Array<{ spec: ImageSpec } & OpenedImage> = [];
  // qemu-nbd sockets and pid files; leftovers of killed runs are cleared first.
  const runtimeDir = await makeRuntimeDir(tmpdir(), RUNTIME_PREFIX);
  try {
    for (const spec of opts.images) opened.push({ spec, ...(await openImage(spec, runtimeDir)) });
    const previous = (await repo.listSnapshots()).filter((s) => s.vm.name === opts.vm);
    const disks: SnapshotDisk[] = [];
    for (const img of opened) {
      const { spec, source, format, sizeBytes, dataExtents } = img;
      log.info(
        `${printable(opts.vm)}/${spec.target}: reading ${spec.path}${format === 'raw' ? '' : ` (${format}, through qemu-nbd)`}`,
      );
      const plan = dataExtents ? planFromDataExtents(dataExtents) : () => 'read' as const;
      const r = await backupDisk(repo, {
        source,
        plan,
        dataExtents: dataExtents ?? undefined,
        readConcurrency: format === 'raw' ? 2 : 8,
        ...(opts.progressFor ? { progress: opts.progressFor(spec.target) } : {}),
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
      // A shrink the reads did not meet (in a hole, or under qemu, which reads past EOF as zeros).
      const now = await img.currentSize().catch(() => img.openedSize);
      if (now < img.openedSize)
        throw new SourceReadError(
          spec.path,
          now,
          `the image shrank from ${img.openedSize} to ${now} bytes during the backup`,
        );
      const idx = await repo.putIndex(r.index);
      disks.push({
        target: spec.target,
        sizeBytes,
        chunkSizeBytes: repo.chunkSizeBytes,
        root: idx.id,
        sourceFormat: format,
        source: spec.path,
        mode: 'full',
        allocatedBytes: r.allocatedBytes,
        stats: { ...r.stats, bytesStored: r.stats.bytesStored + idx.storedBytes, bytesMeta: idx.storedBytes },
      });
    }
    return await repo.putSnapshot({
      version: repoFormat.MANIFEST_VERSION,
      vm: { name: opts.vm },
      time: opts.time ?? new Date().toISOString(),
      host: defaultHost(),
      tags: opts.tags ?? [],
      parent: previous.length ? previous[previous.length - 1]!.id : null,
      mode: 'image',
      checkpoint: null,
      disks,
      files: [],
      program: PROGRAM,
    });
  } finally {
    for (const o of opened) await o.close().catch(() => {});
    await fs.rm(runtimeDir, { recursive: true, force: true }).catch(() => {});
  }
}
