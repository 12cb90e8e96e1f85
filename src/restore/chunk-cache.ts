/**
 * Decoded chunks of one disk, by slot, in reusable shared-memory buffers.
 *
 * A worker thread decompresses and verifies each chunk straight into one of the cache's buffers
 * (SharedArrayBuffer views), and readers send views of it without copying. Readers pin a chunk
 * while they use it (a served READ until the socket has taken the bytes); unpinned chunks stay
 * resident, least recently used first out, while the cache holds at most `capacity` buffers.
 *
 * Pinning never waits for memory: when every buffer is pinned, the cache grows up to
 * `maxBuffers`, and past that decodes into a one-off buffer that is dropped after use. So a slow
 * client that holds pins can never stall the others, and steady-state memory is `capacity`
 * buffers, however many requests are in flight.
 */

export interface PinnedChunk {
  /** The chunk's plaintext (a view into the cache: read-only, valid until `release`). */
  readonly data: Buffer;
  /** Gives the chunk back; call exactly once (later calls do nothing). */
  release(): void;
}

interface Entry {
  slot: number;
  buf: Buffer;
  /** Counted in `owned` (a reusable buffer), or a one-off allocated past `maxBuffers`. */
  pooled: boolean;
  length: number;
  pins: number;
  loaded: boolean;
  /** No longer in `entries` (load failed, or a one-off): its buffer goes back when unpinned. */
  detached: boolean;
  ready: Promise<void>;
}

export interface ChunkCacheStats {
  hits: number;
  loads: number;
  /** Loads decoded into one-off buffers because every reusable one was pinned. */
  overflows: number;
  /** Loads started ahead of a sequential reader (prefetch). */
  prefetches: number;
}

export class ChunkCache {
  private readonly entries = new Map<number, Entry>(); // least recently used first
  private readonly free: Buffer[] = [];
  private owned = 0;
  private pinCount = 0;
  readonly stats: ChunkCacheStats = { hits: 0, loads: 0, overflows: 0, prefetches: 0 };

  constructor(
    /** Fills `dest` with the chunk of `slot` and returns its length. */
    private readonly load: (slot: number, dest: Buffer) => Promise<number>,
    private readonly bufferBytes: number,
    private readonly capacity: number,
    private readonly maxBuffers: number = 2 * capacity,
  ) {
    if (capacity < 1 || maxBuffers < capacity) throw new RangeError('bad chunk cache capacity');
  }

  /** Buffers the cache holds now (resident or free), for tests and stats. */
  get bufferCount(): number {
    return this.owned;
  }

  /** Pins not yet released (each reader's view of a chunk): 0 whenever no read is in progress. */
  get pinned(): number {
    return this.pinCount;
  }

  async pin(slot: number): Promise<PinnedChunk> {
    let e = this.entries.get(slot);
    if (e) {
      this.stats.hits++;
      this.entries.delete(slot); // refresh its LRU position
      this.entries.set(slot, e);
    } else e = this.startLoad(slot);
    e.pins++;
    this.pinCount++;
    try {
      await e.ready;
    } catch (err) {
      this.unpin(e);
      throw err;
    }
    const entry = e;
    let released = false;
    return {
      data: entry.buf.subarray(0, entry.length),
      release: () => {
        if (released) return;
        released = true;
        this.unpin(entry);
      },
    };
  }

  /** Whether `slot` is resident or loading. */
  has(slot: number): boolean {
    return this.entries.has(slot);
  }

  /**
   * Starts loading `slot` without pinning it (read-ahead for a sequential reader), unless it is
   * there already or the cache has no buffer to spare (read-ahead never grows the cache beyond
   * `capacity` and never evicts a pinned or loading chunk). Returns whether a load started.
   */
  prefetch(slot: number): boolean {
    if (this.entries.has(slot)) return false;
    const spare =
      this.free.length > 0 ||
      this.owned < this.capacity ||
      [...this.entries.values()].some((e) => e.pins === 0 && e.loaded);
    if (!spare) return false;
    this.startLoad(slot);
    this.stats.prefetches++;
    return true;
  }

  /** Drops every unpinned chunk and free buffer (pinned ones go when released). */
  clear(): void {
    for (const [slot, e] of this.entries) {
      if (e.pins > 0) continue;
      this.entries.delete(slot);
      if (e.pooled) this.owned--;
    }
    this.owned -= this.free.length;
    this.free.length = 0;
  }

  private startLoad(slot: number): Entry {
    this.stats.loads++;
    const { buf, pooled } = this.takeBuffer();
    const e: Entry = {
      slot,
      buf,
      pooled,
      length: 0,
      pins: 0,
      loaded: false,
      detached: !pooled,
      ready: Promise.resolve(),
    };
    if (pooled) this.entries.set(slot, e);
    e.ready = this.load(slot, buf).then(
      (n) => {
        e.length = n;
        e.loaded = true;
      },
      (err: unknown) => {
        if (this.entries.get(slot) === e) this.entries.delete(slot);
        e.detached = true;
        // A read-ahead nobody pinned: its buffer goes back now (a pinned one's at its release).
        if (e.pins === 0 && e.pooled) this.free.push(e.buf);
        throw err;
      },
    );
    e.ready.catch(() => {}); // observed by every pin
    return e;
  }

  private takeBuffer(): { buf: Buffer; pooled: boolean } {
    const f = this.free.pop();
    if (f) return { buf: f, pooled: true };
    if (this.owned >= this.capacity) {
      const evicted = this.evictOne();
      if (evicted) return { buf: evicted, pooled: true };
    }
    if (this.owned < this.maxBuffers) {
      this.owned++;
      return { buf: this.allocate(), pooled: true };
    }
    this.stats.overflows++;
    return { buf: this.allocate(), pooled: false };
  }

  private allocate(): Buffer {
    return Buffer.from(new SharedArrayBuffer(this.bufferBytes));
  }

  /** Removes the least recently used unpinned loaded chunk and returns its buffer. */
  private evictOne(): Buffer | undefined {
    for (const [slot, e] of this.entries) {
      if (e.pins === 0 && e.loaded) {
        this.entries.delete(slot);
        return e.buf;
      }
    }
    return undefined;
  }

  private unpin(e: Entry): void {
    this.pinCount--;
    if (--e.pins > 0) return;
    if (e.detached) {
      if (e.pooled) {
        if (this.owned > this.capacity) this.owned--;
        else this.free.push(e.buf);
      }
      return;
    }
    // Back to `capacity` once a burst of pinned chunks is over.
    while (this.owned > this.capacity) {
      if (this.free.pop()) {
        this.owned--;
        continue;
      }
      if (!this.evictOne()) break;
      this.owned--;
    }
  }
}
