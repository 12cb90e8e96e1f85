import { nullProgress, throwIfAborted, type Progress } from '../util/index.js';
import {
  ChunkCorruptError,
  ChunkMissingError,
  type DiskIndex,
  type Repository,
  type Snapshot,
  type SnapshotDisk,
} from '../repo/index.js';

/** Where restored bytes go. Offsets arrive in increasing order; gaps are zeros. */
export interface ChunkSink {
  write(offset: number, data: Buffer): Promise<void>;
  finish(): Promise<void>;
  abort(): Promise<void>;
}

export interface DamagedRange {
  offset: number;
  length: number;
  chunkId: string;
  reason: string;
}

export interface RestoreDiskOptions {
  /** Write zeros for damaged or missing chunks and carry on (the damage is reported). */
  ignoreErrors?: boolean;
  /** Chunks fetched and verified ahead of the writer. */
  readAhead?: number;
  progress?: Progress;
  signal?: AbortSignal;
}

export interface RestoreDiskResult {
  bytesWritten: number;
  damaged: DamagedRange[];
}

export function findDisk(snapshot: Snapshot, target: string): SnapshotDisk | undefined {
  return snapshot.disks.find((d) => d.target === target);
}

/**
 * Streams one disk of a snapshot into a sink: chunks are fetched and verified (BLAKE3) a window
 * ahead, written in offset order; zero slots are skipped (the sink leaves them sparse).
 */
export async function restoreDisk(
  repo: Repository,
  snapshot: Snapshot,
  disk: SnapshotDisk,
  sink: ChunkSink,
  opts: RestoreDiskOptions = {},
): Promise<RestoreDiskResult> {
  const index: DiskIndex = await repo.getIndex(disk.index);
  const progress = opts.progress ?? nullProgress;
  const window = Math.max(1, opts.readAhead ?? 8);
  const damaged: DamagedRange[] = [];
  let bytesWritten = 0;
  const slots: number[] = [];
  for (let s = 0; s < index.slotCount; s++) if (index.get(s)) slots.push(s);

  const fetch = (slot: number): Promise<Buffer | DamagedRange> => {
    const id = index.get(slot)!;
    const offset = slot * index.chunkSizeBytes;
    const length = index.slotLength(slot);
    return repo.chunks.get(id, { snapshot: snapshot.id, disk: disk.target, offset }).then(
      (data) => {
        if (data.length !== length) {
          return Promise.reject(
            new ChunkCorruptError(id, `length ${data.length} differs from the slot's ${length}`, {
              snapshot: snapshot.id,
              disk: disk.target,
              offset,
            }),
          );
        }
        return data;
      },
      (err: unknown) => {
        if (opts.ignoreErrors && (err instanceof ChunkCorruptError || err instanceof ChunkMissingError)) {
          return {
            offset,
            length,
            chunkId: id,
            reason: err instanceof ChunkMissingError ? 'missing' : 'corrupt',
          };
        }
        throw err;
      },
    );
  };

  progress.start(disk.target, index.diskSizeBytes);
  const inflight: Array<Promise<Buffer | DamagedRange>> = [];
  let next = 0;
  try {
    const fill = (): void => {
      while (inflight.length < window && next < slots.length) {
        const p = fetch(slots[next++]!);
        p.catch(() => {}); // observed below, in order
        inflight.push(p);
      }
    };
    fill();
    let lastEnd = 0;
    for (let i = 0; i < slots.length; i++) {
      throwIfAborted(opts.signal);
      const r = await inflight.shift()!;
      fill();
      const slot = slots[i]!;
      const offset = slot * index.chunkSizeBytes;
      if (Buffer.isBuffer(r)) {
        await sink.write(offset, r);
        bytesWritten += r.length;
      } else damaged.push(r);
      progress.advance(offset + index.slotLength(slot) - lastEnd);
      lastEnd = offset + index.slotLength(slot);
    }
    progress.advance(index.diskSizeBytes - lastEnd);
    await sink.finish();
  } catch (err) {
    await Promise.allSettled(inflight);
    await sink.abort().catch(() => {});
    throw err;
  }
  progress.done();
  return { bytesWritten, damaged };
}
