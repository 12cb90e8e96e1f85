import { availableParallelism } from 'node:os';
import {
  ByteBudget,
  Semaphore,
  VmvaultError,
  errorMessage,
  isVmvaultError,
  nullProgress,
  throwIfAborted,
  type Progress,
} from '../util/index.js';
import { DiskIndex, isAllZero, emptyDiskStats, type DiskStats, type Repository } from '../repo/index.js';

/** Holes inside a slot shorter than this are read rather than split around. */
const MERGE_GAP = 16 * 1024;

/** What to do with one chunk slot. */
export type SlotAction = 'read' | 'zero' | 'reuse';

/** A disk to read: the backup layer adapts files, block devices and NBD exports to this. */
export interface DiskSource {
  readonly sizeBytes: number;
  /** What the source is, for error messages (a file path, `domain/vda`). */
  readonly name: string;
  /**
   * Reads exactly `length` bytes at `offset`. When `into` is given (at least `length` bytes), the
   * source may fill it and return a view of it, so the pipeline can recycle buffers. A source that
   * cannot deliver every byte (end of file, short NBD reply) must throw, never pad: the pipeline
   * also refuses a buffer of the wrong length.
   */
  read(offset: number, length: number, into?: Buffer): Promise<Buffer>;
}

/**
 * A read of a backup source failed or came back short. Nothing is stored for the disk: the
 * pipeline stops before its index is written, so no snapshot can reference what was not read.
 */
export class SourceReadError extends VmvaultError {
  constructor(name: string, offset: number, reason: string, cause?: unknown) {
    super('SOURCE_READ', `cannot read ${name} at offset ${offset}: ${reason}`, {
      hint: 'nothing was saved for this disk; make sure the image is not changed or truncated during the backup (stop the VM or back up a snapshot of it) and run the backup again',
      cause,
      details: { source: name, offset },
    });
  }
}

/** The source ended before `offset` + `length`: it shrank (or a block device went away) mid-backup. */
export class ShortReadError extends SourceReadError {
  constructor(name: string, offset: number, got: number, wanted: number) {
    super(
      name,
      offset,
      `got ${got} of ${wanted} bytes (the image ended at offset ${offset + got}: did it shrink during the backup?)`,
    );
  }
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
  /**
   * The source's data extents, sorted (SEEK_DATA / `base:allocation`). When given, a `read` slot
   * reads only the parts of it that hold data and takes the rest as zeros, so `bytesRead` is what
   * was really read. Without them a `read` slot is read whole.
   */
  dataExtents?: ReadonlyArray<{ offset: number; length: number }> | undefined;
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
 * Reads the slots a plan asks for, hashes them (the repository codec's chunk id, main thread: BLAKE3 ~3 GB/s), skips zero chunks,
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

  /** Reads `ranges` (absolute, inside the slot) into `buf`, zeros elsewhere; checks every length. */
  const readSlot = async (
    offset: number,
    length: number,
    ranges: ReadonlyArray<readonly [number, number]> | null,
    buf: Buffer,
  ): Promise<Buffer> => {
    const readRange = async (at: number, len: number, into: Buffer): Promise<Buffer> => {
      let got: Buffer;
      try {
        got = await source.read(at, len, into);
      } catch (err) {
        if (err instanceof SourceReadError || (isVmvaultError(err) && err.code === 'CANCELLED')) throw err;
        throw new SourceReadError(source.name, at, errorMessage(err), err);
      }
      if (got.length !== len) throw new ShortReadError(source.name, at, got.length, len);
      return got;
    };
    if (!ranges) return readRange(offset, length, buf);
    const data = buf.subarray(0, length);
    let pos = offset;
    for (const [at, len] of ranges) {
      if (at > pos) data.fill(0, pos - offset, at - offset);
      pos = at + len;
    }
    // The pieces of one slot are read in parallel (over NBD they pipeline).
    await Promise.all(
      ranges.map(async ([at, len]) => {
        const view = data.subarray(at - offset, at - offset + len);
        const got = await readRange(at, len, view);
        if (got.buffer !== view.buffer || got.byteOffset !== view.byteOffset) got.copy(view);
      }),
    );
    if (pos < offset + length) data.fill(0, pos - offset);
    return data;
  };

  // Recycled chunk buffers: allocation churn of 1 MiB buffers otherwise inflates RSS long before
  // the garbage collector returns them.
  const free: Buffer[] = [];
  const processSlot = async (
    slot: number,
    offset: number,
    length: number,
    ranges: ReadonlyArray<readonly [number, number]> | null,
  ): Promise<void> => {
    let held = length;
    let readBytes = 0;
    // Each buffer owns its ArrayBuffer so it can travel to a worker thread and back without copies.
    let buf = free.pop() ?? Buffer.from(new ArrayBuffer(cs));
    try {
      const data = await reads.run(() => readSlot(offset, length, ranges, buf));
      readBytes = ranges ? ranges.reduce((a, r) => a + r[1], 0) : length;
      stats.bytesRead += readBytes;
      if (isAllZero(data)) {
        index.set(slot, null);
        stats.bytesZero += length;
        return;
      }
      const id = repo.codec.chunkId(data);
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
      progress.advance(length, readBytes);
    }
  };

  // Data extents clipped to one slot; the cursor only moves forward (slots are visited in order).
  const extents = opts.dataExtents;
  let ei = 0;
  const rangesIn = (offset: number, length: number): Array<[number, number]> | null => {
    if (!extents) return null;
    const end = offset + length;
    while (ei < extents.length && extents[ei]!.offset + extents[ei]!.length <= offset) ei++;
    const out: Array<[number, number]> = [];
    for (let j = ei; j < extents.length && extents[j]!.offset < end; j++) {
      const a = Math.max(offset, extents[j]!.offset);
      const b = Math.min(end, extents[j]!.offset + extents[j]!.length);
      const last = out[out.length - 1];
      // Gaps of less than MERGE_GAP are read with their neighbours (and counted as read): one
      // request instead of many tiny ones.
      if (last && a - (last[0] + last[1]) < MERGE_GAP) last[1] = Math.max(last[1], b - last[0]);
      else if (b > a) out.push([a, b - a]);
    }
    return out;
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
        progress.advance(length, 0);
        continue;
      }
      if (action === 'reuse') {
        const id = parent!.get(slot);
        index.set(slot, id);
        if (id) {
          repo.chunks.remember(id);
          stats.bytesReused += length;
        } else stats.bytesZero += length;
        progress.advance(length, 0);
        continue;
      }
      const ranges = rangesIn(offset, length);
      if (ranges && ranges.length === 0) {
        // Planned for reading (dirty) but no data in it: zeros, nothing to read.
        index.set(slot, null);
        stats.bytesZero += length;
        progress.advance(length, 0);
        continue;
      }
      await budget.acquire(length);
      const p: Promise<void> = processSlot(slot, offset, length, ranges).then(
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
