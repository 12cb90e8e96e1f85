import { settlePieces, type ExportExtent, type NbdExport, type ReadPiece } from '../nbd/index.js';
import {
  ChunkCorruptError,
  type DiskIndex,
  type Repository,
  type Snapshot,
  type SnapshotDisk,
} from '../repo/index.js';
import { ChunkCache, type ChunkCacheStats } from './chunk-cache.js';

/** Decoded chunks kept resident per served disk unless `cacheBytes` says otherwise. */
const DEFAULT_CACHE_BYTES = 32 * 1024 * 1024;

/**
 * One disk of a snapshot as an NBD export. Reads fetch, decompress and verify chunks lazily
 * (worker threads decode straight into a ChunkCache of shared buffers) and hand the server views
 * of those buffers, released once the socket has the bytes: nothing is copied or allocated per
 * request. Zero slots are reported as holes (base:allocation HOLE|ZERO) and sent as holes.
 */
export class SnapshotExport implements NbdExport {
  private readonly cache: ChunkCache;
  /** Chunks read ahead of a sequential reader: on object stores only (0: none). */
  private readonly readAheadSlots: number;
  /** Where the last read ended, and how many reads in a row started there. */
  private lastEnd = -1;
  private streak = 0;

  private constructor(
    repo: Repository,
    private readonly snapshot: Snapshot,
    private readonly disk: SnapshotDisk,
    private readonly index: DiskIndex,
    cacheSlots: number,
  ) {
    const cs = index.chunkSizeBytes;
    this.cache = new ChunkCache(
      (slot, dest) =>
        repo.chunks.getInto(index.get(slot)!, dest, {
          snapshot: snapshot.id,
          disk: disk.target,
          offset: slot * cs,
        }),
      cs,
      cacheSlots,
      // Bursts (many clients, deep queues) may pin more chunks at once; memory returns to
      // `cacheSlots` buffers afterwards.
      Math.max(2 * cacheSlots, Math.ceil((64 * 1024 * 1024) / cs)),
    );
    // A VM booting from an S3 snapshot reads small blocks one at a time: without read-ahead each
    // would wait a round trip. Half the cache is read ahead, the rest keeps what was read.
    this.readAheadSlots = repo.backend.capabilities.preferLargeReads
      ? Math.max(1, Math.floor(cacheSlots / 2))
      : 0;
  }

  /**
   * After two reads in a row that each start where the previous ended, loads the chunks after
   * this read's end into the cache (bounded by the cache: see ChunkCache.prefetch).
   */
  private readAhead(offset: number, length: number): void {
    if (this.readAheadSlots === 0 || length === 0) return;
    this.streak = offset === this.lastEnd ? this.streak + 1 : 0;
    this.lastEnd = offset + length;
    if (this.streak < 2) return;
    const cs = this.index.chunkSizeBytes;
    const first = Math.floor((offset + length - 1) / cs) + 1;
    const stop = Math.min(this.index.slotCount, first + this.readAheadSlots);
    for (let s = first; s < stop; s++) {
      if (this.index.isZero(s)) continue;
      if (!this.cache.prefetch(s) && !this.cache.has(s)) break; // no buffer to spare
    }
  }

  static async open(
    repo: Repository,
    snapshot: Snapshot,
    disk: SnapshotDisk,
    opts: { cacheBytes?: number } = {},
  ): Promise<SnapshotExport> {
    const index = await repo.getIndex(disk);
    const slots = Math.max(4, Math.floor((opts.cacheBytes ?? DEFAULT_CACHE_BYTES) / index.chunkSizeBytes));
    return new SnapshotExport(repo, snapshot, disk, index, slots);
  }

  get name(): string {
    return this.disk.target;
  }
  get description(): string {
    return `${this.snapshot.vm.name} ${this.disk.target} @ ${this.snapshot.time} (snapshot ${this.snapshot.id.slice(0, 8)})`;
  }
  get sizeBytes(): number {
    return this.disk.sizeBytes;
  }
  get cacheStats(): ChunkCacheStats {
    return this.cache.stats;
  }
  /** Chunks lent to readers and not yet released (see ChunkCache.pinned). */
  get pinnedChunks(): number {
    return this.cache.pinned;
  }

  /**
   * The pieces of [offset, offset+length): zero slots as zero pieces, the rest as views of
   * cached chunks. Every piece with data has a `release` the caller must call when done.
   */
  async readExtents(offset: number, length: number): Promise<ReadPiece[]> {
    const cs = this.index.chunkSizeBytes;
    const end = offset + length;
    const pieces: Array<ReadPiece | Promise<ReadPiece>> = [];
    let zeroFrom = -1;
    for (let at = offset; at < end;) {
      const s = Math.floor(at / cs);
      const stop = Math.min(end, (s + 1) * cs);
      if (this.index.isZero(s)) {
        if (zeroFrom < 0) zeroFrom = at;
      } else {
        if (zeroFrom >= 0) pieces.push({ offset: zeroFrom, length: at - zeroFrom });
        zeroFrom = -1;
        pieces.push(this.piece(s, at, stop));
      }
      at = stop;
    }
    if (zeroFrom >= 0) pieces.push({ offset: zeroFrom, length: end - zeroFrom });
    this.readAhead(offset, length);
    return settlePieces(pieces);
  }

  private async piece(slot: number, from: number, to: number): Promise<ReadPiece> {
    const cs = this.index.chunkSizeBytes;
    const chunk = await this.cache.pin(slot);
    if (chunk.data.length !== this.index.slotLength(slot)) {
      chunk.release();
      throw new ChunkCorruptError(
        this.index.get(slot)!,
        `length ${chunk.data.length} differs from the slot's ${this.index.slotLength(slot)}`,
        { snapshot: this.snapshot.id, disk: this.disk.target, offset: slot * cs },
      );
    }
    return {
      offset: from,
      length: to - from,
      data: chunk.data.subarray(from - slot * cs, to - slot * cs),
      release: chunk.release,
    };
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const out = Buffer.alloc(length);
    for (const p of await this.readExtents(offset, length)) {
      p.data?.copy(out, p.offset - offset);
      p.release?.();
    }
    return out;
  }

  async prefetch(offset: number, length: number): Promise<void> {
    for (const p of await this.readExtents(offset, length)) p.release?.();
  }

  async close(): Promise<void> {
    this.cache.clear();
  }
  async extents(offset: number, length: number): Promise<ExportExtent[]> {
    const cs = this.index.chunkSizeBytes;
    const out: ExportExtent[] = [];
    const end = offset + length;
    for (let at = offset; at < end;) {
      const s = Math.floor(at / cs);
      const stop = Math.min(end, (s + 1) * cs);
      const flags = this.index.isZero(s) ? 3 : 0;
      const lastE = out[out.length - 1];
      if (lastE && lastE.flags === flags) lastE.length += stop - at;
      else out.push({ offset: at, length: stop - at, flags });
      at = stop;
      if (out.length >= 65536) break; // the client asks again for the rest
    }
    return out;
  }
}
