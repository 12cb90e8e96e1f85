import { chunkIdFromBytes, type ChunkId } from './chunk-id.js';
import { CHUNK_ID_BYTES, MAX_CHUNK_SIZE, MAX_INDEX_SLOTS, MIN_CHUNK_SIZE } from './format.js';
import { formatBytes, VmvaultError } from '../util/index.js';

/**
 * A fixed-slot map of one disk: slot i covers bytes [i*chunk, min((i+1)*chunk, disk size)) and
 * holds the chunk id of that content, or 32 zero bytes when the content is all zero (never stored).
 * Every snapshot's index maps the whole disk, so a restore never walks a chain.
 *
 * In memory only: a repository stores it as a tree of pages (src/repo/disk-tree.ts, docs/format.md
 * "Disk index pages"). Memory is 32 bytes per chunk slot (32 MiB for 1 TiB at 1 MiB chunks).
 */
export class DiskIndex {
  private constructor(
    readonly diskSizeBytes: number,
    readonly chunkSizeBytes: number,
    private readonly slots: Buffer,
  ) {}

  static empty(diskSizeBytes: number, chunkSizeBytes: number): DiskIndex {
    if (!Number.isSafeInteger(diskSizeBytes) || diskSizeBytes < 0 || !isChunkSize(chunkSizeBytes))
      throw new RangeError(`no index for a ${diskSizeBytes}-byte disk in ${chunkSizeBytes}-byte chunks`);
    const n = slotCountFor(diskSizeBytes, chunkSizeBytes);
    if (n > MAX_INDEX_SLOTS)
      throw new VmvaultError(
        'DISK_TOO_LARGE',
        `a disk of ${formatBytes(diskSizeBytes)} needs ${n} chunks of ${formatBytes(chunkSizeBytes)}, more than an index holds (${MAX_INDEX_SLOTS})`,
        {
          hint: `back it up into a repository with larger chunks (vmvault init --chunk-size); at most ${formatBytes(MAX_INDEX_SLOTS * chunkSizeBytes)} per disk at this chunk size`,
        },
      );
    return new DiskIndex(diskSizeBytes, chunkSizeBytes, Buffer.alloc(n * CHUNK_ID_BYTES));
  }

  /** A new index for a disk of `diskSizeBytes` starting from `parent`'s slots (clean slots stay). */
  static cloneFrom(parent: DiskIndex, diskSizeBytes: number): DiskIndex {
    const idx = DiskIndex.empty(diskSizeBytes, parent.chunkSizeBytes);
    const common = Math.min(idx.slotCount, parent.slotCount);
    // A last slot that was partial in the parent and is not the last any more (disk grew) must be
    // re-read; the caller marks it dirty. Copy all full slots.
    parent.slots.copy(idx.slots, 0, 0, common * CHUNK_ID_BYTES);
    return idx;
  }

  get slotCount(): number {
    return this.slots.length / CHUNK_ID_BYTES;
  }

  slotLength(slot: number): number {
    const start = slot * this.chunkSizeBytes;
    return Math.min(this.chunkSizeBytes, this.diskSizeBytes - start);
  }

  /** The chunk id in a slot, or null for an all-zero slot. */
  get(slot: number): ChunkId | null {
    const at = slot * CHUNK_ID_BYTES;
    const b = this.slots.subarray(at, at + CHUNK_ID_BYTES);
    for (let i = 0; i < CHUNK_ID_BYTES; i++) if (b[i] !== 0) return chunkIdFromBytes(b);
    return null;
  }

  /** True when the slot is the zero marker (cheaper than get() === null). */
  isZero(slot: number): boolean {
    const at = slot * CHUNK_ID_BYTES;
    for (let i = at; i < at + CHUNK_ID_BYTES; i++) if (this.slots[i] !== 0) return false;
    return true;
  }

  set(slot: number, id: ChunkId | null): void {
    if (slot < 0 || slot >= this.slotCount) throw new RangeError(`slot ${slot} out of range`);
    const at = slot * CHUNK_ID_BYTES;
    if (id === null) this.slots.fill(0, at, at + CHUNK_ID_BYTES);
    else this.slots.write(id, at, CHUNK_ID_BYTES, 'hex');
  }

  /**
   * The raw ids of slots [first, first + count): 32 bytes each, zero markers as 32 zero bytes. A
   * view of the index's memory, not a copy: the caller must not modify it (disk-tree.ts builds
   * pages from it).
   */
  slotBytes(first: number, count: number): Buffer {
    this.checkRange(first, count);
    return this.slots.subarray(first * CHUNK_ID_BYTES, (first + count) * CHUNK_ID_BYTES);
  }

  /** Sets slots first, first + 1, … from raw ids (32 bytes each; a whole number of slots). */
  setSlotBytes(first: number, ids: Uint8Array): void {
    if (ids.length % CHUNK_ID_BYTES !== 0) throw new RangeError(`${ids.length} bytes are not whole slot ids`);
    this.checkRange(first, ids.length / CHUNK_ID_BYTES);
    this.slots.set(ids, first * CHUNK_ID_BYTES);
  }

  private checkRange(first: number, count: number): void {
    if (!Number.isSafeInteger(first) || !Number.isSafeInteger(count) || first < 0 || count < 0)
      throw new RangeError(`slots ${first}+${count} out of range`);
    if (first + count > this.slotCount)
      throw new RangeError(`slots ${first}..${first + count - 1} out of range (${this.slotCount} slots)`);
  }

  /** Distinct non-zero chunk ids. */
  chunkIds(): Set<string> {
    const ids = new Set<string>();
    for (let s = 0; s < this.slotCount; s++) {
      const id = this.get(s);
      if (id) ids.add(id);
    }
    return ids;
  }
}

/** A chunk size a repository can have: a power of two from MIN_CHUNK_SIZE to MAX_CHUNK_SIZE. */
function isChunkSize(n: number): boolean {
  return Number.isInteger(n) && n >= MIN_CHUNK_SIZE && n <= MAX_CHUNK_SIZE && (n & (n - 1)) === 0;
}

export function slotCountFor(diskSizeBytes: number, chunkSizeBytes: number): number {
  return Math.ceil(diskSizeBytes / chunkSizeBytes);
}
