import { promises as fs } from 'node:fs';
import { errnoCode, exec, nullProgress, throwIfAborted, VmvaultError } from '../util/index.js';
import { isAllZero, type Repository, type Snapshot, type SnapshotDisk } from '../repo/index.js';
import { NbdClient, startQemuNbd } from '../nbd/index.js';

export interface InPlaceResult {
  chunksChecked: number;
  chunksWritten: number;
  bytesWritten: number;
}

/** Read-modify surface of an existing image (a raw file, a block device, or an NBD export). */
export interface InPlaceTarget {
  readonly sizeBytes: number;
  /** What the target holds: raw bytes (a file or a block device) or a qcow2 image. */
  readonly format: 'qcow2' | 'raw';
  readonly blockDevice: boolean;
  read(offset: number, length: number): Promise<Buffer>;
  write(offset: number, data: Buffer): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
}

/** Opens an existing raw file or block device for an in-place restore. */
export async function openRawTarget(path: string): Promise<InPlaceTarget> {
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(path, 'r+');
  } catch (err) {
    const code = errnoCode(err);
    throw new VmvaultError(
      'OUTPUT_FAILED',
      `cannot open ${path} for an in-place restore: ${code === 'ENOENT' ? 'it does not exist' : (code ?? String(err))}`,
      {
        hint: code === 'ENOENT' ? 'drop --in-place to create a new image' : undefined,
      },
    );
  }
  const st = await fh.stat();
  let sizeBytes = st.size;
  if (st.isBlockDevice()) sizeBytes = Number((await exec('blockdev', ['--getsize64', path])).stdout.trim());
  return {
    sizeBytes,
    format: 'raw',
    blockDevice: st.isBlockDevice(),
    async read(offset, length) {
      const buf = Buffer.alloc(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      return buf;
    },
    async write(offset, data) {
      let done = 0;
      while (done < data.length)
        done += (await fh.write(data, done, data.length - done, offset + done)).bytesWritten;
    },
    flush: () => fh.sync(),
    close: () => fh.close(),
  };
}

/** Opens an existing image of any format QEMU writes (qcow2, ...) through a writable qemu-nbd export. */
export async function openNbdTarget(
  path: string,
  format: string,
  runtimeDir: string,
): Promise<InPlaceTarget> {
  const exp = await startQemuNbd({ path, format, runtimeDir, readOnly: false });
  let client: NbdClient;
  try {
    client = await NbdClient.connect({
      socketPath: exp.socketPath,
      exportName: exp.exportName,
      timeoutMs: 30_000,
    });
  } catch (err) {
    await exp.stop();
    throw err;
  }
  return {
    sizeBytes: client.sizeBytes,
    format: format === 'qcow2' ? 'qcow2' : 'raw',
    blockDevice: false,
    read: (offset, length) => client.read(offset, length),
    write: (offset, data) => client.write(offset, data),
    flush: () => client.flush(),
    async close() {
      await client.close();
      await exp.stop();
    },
  };
}

/** Opens an existing raw file, block device or (through qemu-nbd) qcow2 image for --in-place. */
export async function openInPlaceTarget(
  path: string,
  runtimeDir: () => Promise<string>,
): Promise<InPlaceTarget> {
  const fh = await fs.open(path, 'r').catch(() => undefined);
  let magic = '';
  if (fh) {
    const b = Buffer.alloc(4);
    await fh.read(b, 0, 4, 0);
    await fh.close();
    magic = b.toString('latin1');
  }
  if (magic === 'QFI\xfb') return openNbdTarget(path, 'qcow2', await runtimeDir());
  return openRawTarget(path);
}

/**
 * Rolls an existing image back to a snapshot disk, writing only chunks whose content differs:
 * each slot of the target is read and hashed; only mismatches are fetched (verified) and written.
 */
export async function restoreInPlace(
  repo: Repository,
  snapshot: Snapshot,
  disk: SnapshotDisk,
  target: InPlaceTarget,
  opts: { signal?: AbortSignal; progress?: import('../util/index.js').Progress } = {},
): Promise<InPlaceResult> {
  if (target.sizeBytes !== disk.sizeBytes) {
    throw new VmvaultError(
      'SIZE_MISMATCH',
      `the target is ${target.sizeBytes} bytes but disk ${disk.target} of the snapshot is ${disk.sizeBytes}`,
      {
        hint: 'resize the target first (qemu-img resize) or restore into a new file',
      },
    );
  }
  const index = await repo.getIndex(disk);
  const progress = opts.progress ?? nullProgress;
  const result: InPlaceResult = { chunksChecked: 0, chunksWritten: 0, bytesWritten: 0 };
  progress.start(disk.target, disk.sizeBytes);
  for (let slot = 0; slot < index.slotCount; slot++) {
    throwIfAborted(opts.signal);
    const offset = slot * index.chunkSizeBytes;
    const length = index.slotLength(slot);
    const want = index.get(slot);
    const have = await target.read(offset, length);
    result.chunksChecked++;
    if (want === null) {
      if (!isAllZero(have)) {
        await target.write(offset, Buffer.alloc(length));
        result.chunksWritten++;
        result.bytesWritten += length;
      }
    } else if (isAllZero(have) || !repo.codec.verify(have, want)) {
      const data = await repo.chunks.get(want, { snapshot: snapshot.id, disk: disk.target, offset });
      await target.write(offset, data);
      result.chunksWritten++;
      result.bytesWritten += length;
    }
    progress.advance(length);
  }
  await target.flush();
  progress.done();
  return result;
}
