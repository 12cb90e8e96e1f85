import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { BASE_ALLOCATION, NbdClient, startQemuNbd, walkExtents } from '../nbd/index.js';
import {
  exec,
  UsageError,
  VmvaultError,
  errnoCode,
  type Logger,
  nullLogger,
  type Progress,
} from '../util/index.js';
import { defaultHost, type Repository, type Snapshot, type SnapshotDisk } from '../repo/index.js';
import { backupDisk, planFromDataExtents, type DiskSource } from './chunk-pipeline.js';
import { PROGRAM } from './version.js';

export interface ImageSpec {
  path: string;
  /** Disk name in the snapshot (e.g. vda). */
  target: string;
}

/** Parses `FILE[:DISK]` arguments; disks without a name get vda, vdb, ... in order. */
export function parseImageSpecs(args: readonly string[]): ImageSpec[] {
  const used = new Set<string>();
  const specs = args.map((arg) => {
    const m = /^(.*):([A-Za-z0-9_.-]+)$/.exec(arg);
    return m && m[1] ? { path: m[1], target: m[2] as string } : { path: arg, target: '' };
  });
  let next = 0;
  for (const s of specs)
    if (s.target) {
      if (used.has(s.target)) throw new UsageError(`disk name '${s.target}' is given twice`);
      used.add(s.target);
    }
  for (const s of specs) {
    if (s.target) continue;
    let name: string;
    do name = `vd${String.fromCharCode(97 + next++)}`;
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
  logger?: Logger;
  progressFor?: (target: string) => Progress;
  signal?: AbortSignal;
}

class FileSource implements DiskSource {
  constructor(
    private readonly fh: fs.FileHandle,
    readonly sizeBytes: number,
  ) {}
  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const buf = into && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.fh.read(buf, done, length - done, offset + done);
      if (bytesRead === 0) {
        buf.fill(0, done); // file shrank under us: the rest reads as zero
        break;
      }
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
  close(): Promise<void>;
}

async function openImage(spec: ImageSpec, runtimeDir: () => Promise<string>): Promise<OpenedImage> {
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
  if (st.isBlockDevice()) {
    const out = await exec('blockdev', ['--getsize64', spec.path]).catch(() => undefined);
    if (out) sizeBytes = Number(out.stdout.trim());
  }
  const info = await inspectImage(spec.path, st.isBlockDevice(), sizeBytes);
  if (info.format === 'raw') {
    return {
      source: new FileSource(fh, info.sizeBytes),
      format: 'raw',
      sizeBytes: info.sizeBytes,
      dataExtents: info.dataExtents,
      close: () => fh.close(),
    };
  }
  // Any other format QEMU reads: export it read-only with qemu-nbd and read it over NBD.
  await fh.close();
  const exp = await startQemuNbd({
    path: spec.path,
    format: info.format,
    runtimeDir: await runtimeDir(),
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
    source: { sizeBytes: client.sizeBytes, read: (o, l, into) => client.read(o, l, into) },
    format: info.format,
    sizeBytes: client.sizeBytes,
    dataExtents,
    async close() {
      await client.close();
      await exp.stop();
    },
  };
}

/** Backs up raw image files / block devices as one snapshot of `vm`. */
export async function backupImages(repo: Repository, opts: BackupImageOptions): Promise<Snapshot> {
  const log = opts.logger ?? nullLogger;
  const opened: Array<{ spec: ImageSpec } & OpenedImage> = [];
  let tmp: string | undefined;
  const runtimeDir = async (): Promise<string> =>
    (tmp ??= await fs.mkdtemp(join(tmpdir(), 'vmvault-image-')));
  try {
    for (const spec of opts.images) opened.push({ spec, ...(await openImage(spec, runtimeDir)) });
    const previous = (await repo.listSnapshots()).filter((s) => s.vm.name === opts.vm);
    const disks: SnapshotDisk[] = [];
    for (const { spec, source, format, sizeBytes, dataExtents } of opened) {
      log.info(
        `${spec.target}: reading ${spec.path}${format === 'raw' ? '' : ` (${format}, through qemu-nbd)`}`,
      );
      const plan = dataExtents ? planFromDataExtents(dataExtents) : () => 'read' as const;
      const r = await backupDisk(repo, {
        source,
        plan,
        readConcurrency: format === 'raw' ? 2 : 8,
        ...(opts.progressFor ? { progress: opts.progressFor(spec.target) } : {}),
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
      const idx = await repo.putIndex(r.index);
      disks.push({
        target: spec.target,
        sizeBytes,
        chunkSizeBytes: repo.chunkSizeBytes,
        index: idx.id,
        sourceFormat: format,
        source: spec.path,
        mode: 'full',
        allocatedBytes: r.allocatedBytes,
        stats: { ...r.stats, bytesStored: r.stats.bytesStored + idx.storedBytes },
      });
    }
    return await repo.putSnapshot({
      version: 1,
      vm: { name: opts.vm },
      time: new Date().toISOString(),
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
    if (tmp) await fs.rm(tmp, { recursive: true, force: true });
  }
}
