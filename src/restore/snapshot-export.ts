import type { ExportExtent, NbdExport } from '../nbd/index.js';
import type { DiskIndex, Repository, Snapshot, SnapshotDisk } from '../repo/index.js';

/**
 * One disk of a snapshot as an NBD export: reads fetch and verify chunks lazily through a bounded
 * LRU cache; zero slots are reported as holes (base:allocation HOLE|ZERO) and sent as holes.
 */
export class SnapshotExport implements NbdExport {
  private readonly cache = new Map<number, Promise<Buffer>>();

  private constructor(
    private readonly repo: Repository,
    private readonly snapshot: Snapshot,
    private readonly disk: SnapshotDisk,
    private readonly index: DiskIndex,
    private readonly cacheSlots: number,
  ) {}

  static async open(
    repo: Repository,
    snapshot: Snapshot,
    disk: SnapshotDisk,
    opts: { cacheBytes?: number } = {},
  ): Promise<SnapshotExport> {
    const index = await repo.getIndex(disk.index);
    const slots = Math.max(4, Math.floor((opts.cacheBytes ?? 32 * 1024 * 1024) / index.chunkSizeBytes));
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

  private slot(slot: number): Promise<Buffer> {
    const hit = this.cache.get(slot);
    if (hit) {
      this.cache.delete(slot); // refresh LRU position
      this.cache.set(slot, hit);
      return hit;
    }
    const id = this.index.get(slot)!;
    const p = this.repo.chunks.get(id, {
      snapshot: this.snapshot.id,
      disk: this.disk.target,
      offset: slot * this.index.chunkSizeBytes,
    });
    p.catch(() => this.cache.delete(slot));
    this.cache.set(slot, p);
    while (this.cache.size > this.cacheSlots) this.cache.delete(this.cache.keys().next().value!);
    return p;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const cs = this.index.chunkSizeBytes;
    const out = Buffer.alloc(length);
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + length - 1) / cs);
    await Promise.all(
      Array.from({ length: last - first + 1 }, async (_, i) => {
        const s = first + i;
        if (this.index.isZero(s)) return;
        const data = await this.slot(s);
        const start = Math.max(offset, s * cs);
        const end = Math.min(offset + length, s * cs + data.length);
        data.copy(out, start - offset, start - s * cs, end - s * cs);
      }),
    );
    return out;
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
