import { availableParallelism } from 'node:os';
import { ByteBudget, Semaphore, nullProgress, throwIfAborted, type Progress } from '../util/index.js';
import {
  DiskIndex,
  isAllZero,
  chunkIdOf,
  emptyDiskStats,
  type DiskStats,
  type Repository,
} from '../repo/index.js';

/** What to do with one chunk slot. */
export type SlotAction = 'read' | 'zero' | 'reuse';

/** A disk to read: the backup layer adapts files, block devices and NBD exports to this. */
export interface DiskSource {
  readonly sizeBytes: number;
  /**
   * Reads exactly `length` bytes at `offset`. When `into` is given (at least `length` bytes), the
   * source may fill it and return a view of it, so the pipeline can recycle buffers.
   */
  read(offset: number, length: number, into?: Buffer): Promise<Buffer>;
}

export interface BackupDiskOptions {
  source: DiskSource;
  /**
   * Classifies each slot: `read` (content may have changed and holds data), `zero` (hole or known
   * zero), `reuse` (unchanged since the parent: take the parent's chunk id without reading).
   */
  plan: (slot: number, offset: number, length: number) => SlotAction;
  /** The parent snapshot's index for this disk (required when any slot is `reuse`). */
  parent?: DiskIndex | undefined;
  /** Concurrent reads from the source (NBD benefits from several; files from 2-4). */
  readConcurrency?: number;
  /** Bytes of chunk data in flight between read and store (bounds memory). */
  budgetBytes?: number;
  progress?: Progress;
  signal?: AbortSignal;
}

export interface BackupDiskResult {
  index: DiskIndex;
  stats: DiskStats;
  allocatedBytes: number;
}

/**
 * Reads the slots a plan asks for, hashes them (BLAKE3, main thread: ~3 GB/s), skips zero chunks,
 * and stores new chunks through the repository's worker pool (zstd). Memory is bounded by
 * `budgetBytes` whatever the disk size; the resulting index maps the whole disk.
 */
export async function backupDisk(repo: Repository, opts: BackupDiskOptions): Promise<BackupDiskResult> {
  const cs = repo.chunkSizeBytes;
  const { source, plan, parent, signal } = opts;
  const progress = opts.progress ?? nullProgress;
  const index = parent
    ? DiskIndex.cloneFrom(parent, source.sizeBytes)
    : DiskIndex.empty(source.sizeBytes, cs);
  if (parent && parent.chunkSizeBytes !== cs)
    throw new Error('parent index chunk size differs from the repository chunk size');
  const stats: DiskStats = emptyDiskStats();
  const workers = Math.max(1, availableParallelism());
  const budget = new ByteBudget(
    opts.budgetBytes ?? Math.max(8 * cs, Math.min(64 * 1024 * 1024, 4 * workers * cs)),
  );
  const reads = new Semaphore(opts.readConcurrency ?? 4);
  const pending = new Set<Promise<void>>();
  let failure: unknown;

  // Recycled chunk buffers: allocation churn of 1 MiB buffers otherwise inflates RSS long before
  // the garbage collector returns them.
  const free: Buffer[] = [];
  const processSlot = async (slot: number, offset: number, length: number): Promise<void> => {
    let held = length;
    // Each buffer owns its ArrayBuffer so it can travel to a worker thread and back without copies.
    let buf = free.pop() ?? Buffer.from(new ArrayBuffer(cs));
    try {
      const data = await reads.run(() => source.read(offset, length, buf));
      stats.bytesRead += length;
      if (isAllZero(data)) {
        index.set(slot, null);
        stats.bytesZero += length;
        return;
      }
      const id = chunkIdOf(data);
      const r = await repo.chunks.put(data, id, {
        transfer: data.buffer === buf.buffer && data.byteOffset === 0,
      });
      if (r.buffer && r.buffer.buffer !== buf.buffer)
        buf = Buffer.from(r.buffer.buffer as ArrayBuffer, 0, cs);
      index.set(slot, id);
      if (r.isNew) {
        stats.bytesNew += length;
        stats.bytesStored += r.storedBytes;
        stats.chunksNew++;
      } else stats.bytesDedup += length;
    } finally {
      free.push(buf);
      budget.release(held);
      held = 0;
      progress.advance(length);
    }
  };

  progress.start('', source.sizeBytes);
  try {
    for (let slot = 0; slot < index.slotCount; slot++) {
      if (failure) break;
      throwIfAborted(signal);
      const offset = slot * cs;
      const length = index.slotLength(slot);
      let action = plan(slot, offset, length);
      // A parent's partial last slot cannot be reused for a grown disk.
      if (action === 'reuse' && (!parent || slot >= parent.slotCount || parent.slotLength(slot) !== length))
        action = 'read';
      if (action === 'zero') {
        index.set(slot, null);
        stats.bytesZero += length;
        progress.advance(length);
        continue;
      }
      if (action === 'reuse') {
        const id = parent!.get(slot);
        index.set(slot, id);
        if (id) {
          repo.chunks.remember(id);
          stats.bytesReused += length;
        } else stats.bytesZero += length;
        progress.advance(length);
        continue;
      }
      await budget.acquire(length);
      const p: Promise<void> = processSlot(slot, offset, length).then(
        () => {
          pending.delete(p);
        },
        (err: unknown) => {
          pending.delete(p);
          failure ??= err;
        },
      );
      pending.add(p);
    }
    await Promise.all(pending);
    if (failure) throw failure;
    throwIfAborted(signal);
  } finally {
    if (pending.size) await Promise.allSettled(pending);
  }
  progress.done();
  let allocatedBytes = 0;
  for (let s = 0; s < index.slotCount; s++) if (index.get(s)) allocatedBytes += index.slotLength(s);
  return { index, stats, allocatedBytes };
}

/** Builds a slot plan from sorted data extents: a slot is read when it overlaps data, else zero. */
export function planFromDataExtents(
  extents: ReadonlyArray<{ offset: number; length: number }>,
): (slot: number, offset: number, length: number) => SlotAction {
  let i = 0;
  return (_slot, offset, length) => {
    const end = offset + length;
    while (i < extents.length && extents[i]!.offset + extents[i]!.length <= offset) i++;
    const e = extents[i];
    return e && e.offset < end ? 'read' : 'zero';
  };
}
