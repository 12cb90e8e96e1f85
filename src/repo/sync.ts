import { mapLimit, throwIfAborted, VmvaultError } from '../util/index.js';
import type { ChunkId } from './chunk-id.js';
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
 * each chunk is named again by the destination's function and the disk index rebuilt.
 */
export interface SyncOptions {
  dryRun?: boolean;
  /** Chunks in flight at once (default 16). */
  concurrency?: number;
  signal?: AbortSignal;
  /** Progress in bytes of disk data (allocated) of the selected snapshots. */
  progress?: (doneBytes: number, totalBytes: number) => void;
  /** Every snapshot of the source (to name parents outside the selection); default: the selected. */
  sourceSnapshots?: readonly Snapshot[];
  /** Test hook: called after each chunk copied (a test kills the process here). */
  onChunk?: (copied: number) => void;
}

export interface SyncResult {
  dryRun: boolean;
  /** Same chunk id function on both sides: ids and pages copied as they are. */
  sameIds: boolean;
  snapshots: { selected: number; copied: number; present: number; failed: number };
  copied: Array<{ source: string; destination: string; vm: string; time: string }>;
  failed: Array<{ source: string; vm: string; error: string }>;
  chunks: { copied: number; present: number };
  /** Plaintext bytes of the chunks copied, and what they took at the destination. */
  bytes: { copied: number; stored: number };
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
  const result: SyncResult = {
    dryRun: opts.dryRun === true,
    sameIds,
    snapshots: { selected: selected.length, copied: 0, present: 0, failed: 0 },
    copied: [],
    failed: [],
    chunks: { copied: 0, present: 0 },
    bytes: { copied: 0, stored: 0 },
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
  opts.progress?.(0, total);
  if (opts.dryRun) {
    for (const s of todo) result.copied.push({ source: s.id, destination: '', vm: s.vm.name, time: s.time });
    result.snapshots.copied = todo.length;
    return result;
  }
  const concurrency = opts.concurrency ?? 16;
  let sinceFlush = 0;
  const chunkBytes = src.chunkSizeBytes;
  const slab = new SharedArrayBuffer(concurrency * chunkBytes);
  const freeSlots = Array.from({ length: concurrency }, (_, i) => i);
  /**
   * Renamed chunks (different id functions): source id → destination id, so that a chunk met again
   * is not read again. Bounded like the pack store's known ids (cleared when full: a miss only
   * costs a read, the put then finds the chunk present). Same ids need no map: the destination's
   * pack store knows what this run stored.
   */
  const renamed = new Map<string, ChunkId>();
  const RENAMED_LIMIT = 1 << 20;

  const copyChunk = async (
    id: ChunkId,
    where: { snapshot: string; disk: string; offset: number },
  ): Promise<ChunkId> => {
    const known = sameIds ? ((await dst.chunks.has(id)) ? id : undefined) : renamed.get(id);
    if (known !== undefined) {
      result.chunks.present++;
      return known;
    }
    // Read into a slot of a shared slab: on an object store nearby records of a pack come in one
    // ranged GET (the source's coalescer), and the worker opens the record straight into it.
    const slot = freeSlots.pop();
    if (slot === undefined) throw new Error('sync: more chunks in flight than slots');
    try {
      const buf = Buffer.from(slab, slot * chunkBytes, chunkBytes);
      const data = buf.subarray(0, await src.chunks.getInto(id, buf, where)); // verified by its id
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
      return r.id;
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
        const nid = await copyChunk(id, { snapshot: s.id, disk: d.target, offset: slot * d.chunkSizeBytes });
        if (!sameIds) out.set(slot, nid);
        done += index.slotLength(slot);
        opts.progress?.(done, total);
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
