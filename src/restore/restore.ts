import { nullProgress, throwIfAborted, type Progress } from '../util/index.js';
import {
  ChunkCorruptError,
  ChunkMissingError,
  type DiskIndex,
  type Repository,
  type Snapshot,
  type SnapshotDisk,
} from '../repo/index.js';

/**
 * Where restored bytes go. Offsets arrive in increasing order; gaps are zeros. `data` is lent:
 * the caller reuses its memory once `write` resolves, so a sink copies what it keeps.
 */
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
  // The sink is ours from here on: every failure, this first one too, aborts it (closing its file).
  let index: DiskIndex;
  try {
    index = await repo.getIndex(disk);
  } catch (err) {
    await sink.abort().catch(() => {});
    throw err;
  }
  const progress = opts.progress ?? nullProgress;
  // An object store answers each request after a round trip: read further ahead, and refill the
  // window in halves so that nearby chunks are asked for together (one ranged GET per run).
  const large = repo.backend.capabilities.preferLargeReads;
  const window = Math.max(1, opts.readAhead ?? (large ? 24 : 8));
  const refillAt = large ? Math.floor(window / 2) : window - 1;
  const damaged: DamagedRange[] = [];
  let bytesWritten = 0;
  const slots: number[] = [];
  for (let s = 0; s < index.slotCount; s++) if (index.get(s)) slots.push(s);

  // Chunks are decoded by worker threads straight into these shared buffers (one per chunk in
  // flight, plus the one being written): no allocation per chunk, memory fixed by the window.
  const free: Buffer[] = Array.from({ length: window + 1 }, () =>
    Buffer.from(new SharedArrayBuffer(index.chunkSizeBytes)),
  );
  type Fetched = { buf: Buffer; data: Buffer } | DamagedRange;
  const fetch = (slot: number): Promise<Fetched> => {
    const id = index.get(slot)!;
    const offset = slot * index.chunkSizeBytes;
    const length = index.slotLength(slot);
    const loc = { snapshot: snapshot.id, disk: disk.target, offset };
    const buf = free.pop()!;
    return repo.chunks
      .getInto(id, buf, loc)
      .then((n): Fetched => {
        if (n !== length)
          throw new ChunkCorruptError(id, `length ${n} differs from the slot's ${length}`, loc);
        return { buf, data: buf.subarray(0, n) };
      })
      .catch((err: unknown): Fetched => {
        free.push(buf);
        if (opts.ignoreErrors && (err instanceof ChunkCorruptError || err instanceof ChunkMissingError)) {
          return {
            offset,
            length,
            chunkId: id,
            reason: err instanceof ChunkMissingError ? 'missing' : 'corrupt',
          };
        }
        throw err;
      });
  };

  progress.start(disk.target, index.diskSizeBytes);
  const inflight: Array<Promise<Fetched>> = [];
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
      if (inflight.length <= refillAt) fill();
      const slot = slots[i]!;
      const offset = slot * index.chunkSizeBytes;
      if ('buf' in r) {
        await sink.write(offset, r.data);
        free.push(r.buf);
        bytesWritten += r.data.length;
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
