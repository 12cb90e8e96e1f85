import { mapLimit, throwIfAborted, VmvaultError } from '../util/index.js';
import { BlobFormatError, zstdBound } from './blob.js';
import type { ChunkId } from './chunk-id.js';
import { RECORD_OVERHEAD } from './codec.js';
import { DiskIndex } from './disk-index.js';
import { ChunkCorruptError, ChunkMissingError, RepoDamagedError } from './errors.js';
import type { Repository } from './repository.js';
import { shortId, type Snapshot, type SnapshotDisk, type SnapshotManifest } from './snapshot.js';

/**
 * Copies snapshots from one repository into another (docs/sync.md). The unit is a snapshot: its
 * chunks and pages first (only those the destination's index lacks), then its manifest, last, so
 * a snapshot at the destination is whole or absent. Identity is the origin: a snapshot whose
 * origin the destination already holds is skipped. Every chunk read from the source is verified
 * by its id before it is written.
 *
 * When both repositories name chunks with the same function (both plain, or encrypted with the
 * same id key: `init --from-repo`), chunk ids and disk index pages carry over as they are; else
 * each chunk is named again by the destination's function and the disk index rebuilt. When the
 * codecs also seal alike (same keys, same chunk compression level: `BlobCodec.sealsLike`), each
 * chunk's record travels as it is stored: the destination opens it in full (seal, decompression,
 * id) but does not compress or encrypt it again.
 */
export interface SyncOptions {
  dryRun?: boolean;
  /** Chunks in flight at once (default 16). */
  concurrency?: number;
  signal?: AbortSignal;
  /**
   * Progress in bytes of disk data (allocated) of the snapshots to copy, and which of them is
   * being copied (1-based, of how many).
   */
  progress?: (doneBytes: number, totalBytes: number, snapshot: { at: number; of: number }) => void;
  /** Every snapshot of the source (to name parents outside the selection); default: the selected. */
  sourceSnapshots?: readonly Snapshot[];
  /** Test hook: called after each chunk copied (a test kills the process here). */
  onChunk?: (copied: number) => void;
}

export interface SyncResult {
  dryRun: boolean;
  /** Same chunk id function on both sides: ids and pages copied as they are. */
  sameIds: boolean;
  /** Records copied as they are stored (same ids, keys and chunk compression level). */
  verbatim: boolean;
  snapshots: { selected: number; copied: number; present: number; failed: number };
  copied: Array<{ source: string; destination: string; vm: string; time: string }>;
  failed: Array<{ source: string; vm: string; error: string }>;
  /** `verbatim` of `copied` travelled as stored (not sealed again); 0 unless `verbatim`. */
  chunks: { copied: number; present: number; verbatim: number };
  /** Plaintext bytes of the chunks copied, what they took at the destination, and of those already there. */
  bytes: { copied: number; stored: number; present: number };
}

/** A repository's chunk id function, comparable across repositories. */
function idFunction(repo: Repository): string {
  const c = repo.config;
  return c.chunkId === 'blake3-256' ? 'blake3-256' : `${c.chunkId}/${c.keyId ?? ''}`;
}

/** Refuses a destination whose chunk size differs (chunks would not line up). */
export function checkCompatible(src: Repository, dst: Repository): void {
  if (src.chunkSizeBytes !== dst.chunkSizeBytes)
    throw new VmvaultError(
      'SYNC_INCOMPATIBLE',
      `${dst.location} has chunks of ${dst.chunkSizeBytes} bytes, ${src.location} of ${src.chunkSizeBytes}: snapshots cannot be copied between them`,
      {
        hint: `create a compatible destination: vmvault init DEST --from-repo ${src.location}`,
      },
    );
}

const FLUSH_EVERY_BYTES = 256 * 1024 * 1024;

export async function syncSnapshots(
  src: Repository,
  dst: Repository,
  selected: readonly Snapshot[],
  opts: SyncOptions = {},
): Promise<SyncResult> {
  checkCompatible(src, dst);
  const sameIds = idFunction(src) === idFunction(dst);
  const verbatim = sameIds && src.codec.sealsLike(dst.codec);
  const result: SyncResult = {
    dryRun: opts.dryRun === true,
    sameIds,
    verbatim,
    snapshots: { selected: selected.length, copied: 0, present: 0, failed: 0 },
    copied: [],
    failed: [],
    chunks: { copied: 0, present: 0, verbatim: 0 },
    bytes: { copied: 0, stored: 0, present: 0 },
  };
  const there = new Map<string, string>(); // origin key → destination snapshot id
  for (const s of await dst.listSnapshots()) there.set(dst.originKey(s), s.id);
  const todo = selected.filter((s) => {
    if (!there.has(src.originKey(s))) return true;
    result.snapshots.present++;
    return false;
  });
  // Parents are named by their source id; the copy names the destination's copy of it.
  const originById = new Map<string, string>();
  for (const k of opts.sourceSnapshots ?? selected) originById.set(k.id, src.originKey(k));
  const total = todo.reduce((n, s) => n + s.disks.reduce((m, d) => m + d.allocatedBytes, 0), 0);
  let done = 0;
  let at = 0;
  const where = (): { at: number; of: number } => ({ at, of: todo.length });
  opts.progress?.(0, total, where());
  if (opts.dryRun) {
    for (const s of todo) result.copied.push({ source: s.id, destination: '', vm: s.vm.name, time: s.time });
    result.snapshots.copied = todo.length;
    return result;
  }
  const concurrency = opts.concurrency ?? 16;
  let sinceFlush = 0;
  // A slot holds a chunk, or a stored record of one when records travel as they are.
  const slotBytes = verbatim ? RECORD_OVERHEAD + zstdBound(src.chunkSizeBytes) : src.chunkSizeBytes;
  const slab = new SharedArrayBuffer(concurrency * slotBytes);
  const freeSlots = Array.from({ length: concurrency }, (_, i) => i);
  /**
   * Renamed chunks (different id functions): source id → destination id, so that a chunk met again
   * is not read again. Bounded like the pack store's known ids (cleared when full: a miss only
   * costs a read, the put then finds the chunk present). Same ids need no map: the destination's
   * pack store knows what this run stored.
   */
  const renamed = new Map<string, ChunkId>();
  const RENAMED_LIMIT = 1 << 20;

  /**
   * The record of `id` as stored at the source, stored as it is at the destination (which opens
   * it first); undefined when it must go the checked way instead (a damaged or odd first copy:
   * `getInto` then tries every copy and names the damage).
   */
  const copyRecord = async (
    id: ChunkId,
    buf: Buffer,
    where: { snapshot: string; disk: string; offset: number },
  ): Promise<{ isNew: boolean; storedBytes: number; plaintextBytes: number } | undefined> => {
    try {
      const r = await src.chunks.readRecord(id, buf, where);
      const put = await dst.chunks.putRecord(id, r, buf.subarray(0, r.length));
      return { isNew: put.isNew, storedBytes: put.storedBytes, plaintextBytes: r.plaintextBytes };
    } catch (err) {
      if (
        err instanceof BlobFormatError ||
        err instanceof ChunkCorruptError ||
        err instanceof ChunkMissingError
      )
        return undefined;
      throw err;
    }
  };

  const copyChunk = async (
    id: ChunkId,
    where: { snapshot: string; disk: string; offset: number },
  ): Promise<{ id: ChunkId; copied: boolean }> => {
    const known = sameIds ? ((await dst.chunks.has(id)) ? id : undefined) : renamed.get(id);
    if (known !== undefined) {
      result.chunks.present++;
      return { id: known, copied: false };
    }
    // Read into a slot of a shared slab: on an object store nearby records of a pack come in one
    // ranged GET (the source's coalescer), and the worker opens the record straight into it.
    const slot = freeSlots.pop();
    if (slot === undefined) throw new Error('sync: more chunks in flight than slots');
    try {
      const buf = Buffer.from(slab, slot * slotBytes, slotBytes);
      const asStored = verbatim ? await copyRecord(id, buf, where) : undefined;
      if (asStored !== undefined) {
        if (asStored.isNew) {
          result.chunks.copied++;
          result.chunks.verbatim++;
          result.bytes.copied += asStored.plaintextBytes;
          result.bytes.stored += asStored.storedBytes;
          sinceFlush += asStored.storedBytes;
        } else result.chunks.present++;
        opts.onChunk?.(result.chunks.copied);
        return { id, copied: asStored.isNew };
      }
      const data = buf.subarray(0, await src.chunks.getInto(id, buf.subarray(0, src.chunkSizeBytes), where)); // verified by its id
      const r = await dst.chunks.put(data, sameIds ? id : dst.codec.chunkId(data));
      if (r.isNew) {
        result.chunks.copied++;
        result.bytes.copied += data.length;
        result.bytes.stored += r.storedBytes;
        sinceFlush += r.storedBytes;
      } else result.chunks.present++;
      if (!sameIds) {
        if (renamed.size >= RENAMED_LIMIT) renamed.clear();
        renamed.set(id, r.id);
      }
      opts.onChunk?.(result.chunks.copied);
      return { id: r.id, copied: r.isNew };
    } finally {
      freeSlots.push(slot);
    }
  };

  const copyDisk = async (s: Snapshot, d: SnapshotDisk): Promise<SnapshotDisk> => {
    if (/^0+$/.test(d.root)) return { ...d };
    const index = await src.getIndex(d);
    const out = sameIds ? index : DiskIndex.empty(d.sizeBytes, d.chunkSizeBytes);
    const slots: number[] = [];
    for (let i = 0; i < index.slotCount; i++) if (!index.isZero(i)) slots.push(i);
    // Windows of slots, so that a huge disk never has all its slots' promises at once.
    for (let at = 0; at < slots.length; at += 4096) {
      throwIfAborted(opts.signal);
      await mapLimit(slots.slice(at, at + 4096), concurrency, async (slot) => {
        const id = index.get(slot)!;
        const c = await copyChunk(id, { snapshot: s.id, disk: d.target, offset: slot * d.chunkSizeBytes });
        if (!sameIds) out.set(slot, c.id);
        if (!c.copied) result.bytes.present += index.slotLength(slot);
        done += index.slotLength(slot);
        opts.progress?.(done, total, where());
      });
      // Long copies become durable as they go: a killed sync resumes from the index.
      if (sinceFlush >= FLUSH_EVERY_BYTES) {
        sinceFlush = 0;
        await dst.chunks.flush();
      }
    }
    const root = (await dst.putIndex(out)).id;
    return { ...d, root };
  };

  for (const s of todo) {
    throwIfAborted(opts.signal);
    at++;
    opts.progress?.(done, total, where());
    try {
      const disks: SnapshotDisk[] = [];
      for (const d of s.disks) disks.push(await copyDisk(s, d));
      const files = [];
      for (const f of s.files) files.push(await dst.putFile(f.kind, f.name, await src.getFile(f)));
      const { id: _id, superseded: _superseded, ...manifest } = s;
      const parentKey = s.parent === null ? undefined : originById.get(s.parent);
      const next: SnapshotManifest = {
        ...manifest,
        disks,
        files,
        parent: parentKey === undefined ? null : (there.get(parentKey) ?? null),
        origin: s.origin ?? { repository: src.config.id, snapshot: s.id },
      };
      const written = await dst.putSnapshot(next);
      there.set(src.originKey(s), written.id);
      result.snapshots.copied++;
      result.copied.push({ source: s.id, destination: written.id, vm: s.vm.name, time: s.time });
    } catch (err) {
      const sourceDamage =
        err instanceof ChunkCorruptError ||
        err instanceof ChunkMissingError ||
        err instanceof RepoDamagedError;
      if (!sourceDamage) throw err;
      result.snapshots.failed++;
      result.failed.push({
        source: s.id,
        vm: s.vm.name,
        error: `snapshot ${shortId(s.id)} of ${s.vm.name} was not copied: ${(err as Error).message}`,
      });
    }
  }
  return result;
}
