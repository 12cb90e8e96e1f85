import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { NBD_STATE } from '../protocol.js';
import { releasePieces, settlePieces, type ExportExtent, type NbdExport, type ReadPiece } from './export.js';

/** Granularity of the overlay: one bit per 4 KiB block and per bitmap (64 MiB of memory per TiB). */
const BLOCK = 4096;

/** Waits for overlapping block ranges: concurrent writes to one block must not interleave their read-modify-write. */
class BlockRangeLock {
  private readonly held: Array<{ first: number; last: number; done: Promise<void> }> = [];

  async lock(first: number, last: number): Promise<() => void> {
    for (;;) {
      const other = this.held.find((h) => h.first <= last && first <= h.last);
      if (!other) break;
      await other.done;
    }
    let release!: () => void;
    const entry = { first, last, done: new Promise<void>((r) => (release = r)) };
    this.held.push(entry);
    return () => {
      this.held.splice(this.held.indexOf(entry), 1);
      release();
    };
  }
}

class Bitmap {
  private readonly bits: Uint8Array;
  constructor(blocks: number) {
    this.bits = new Uint8Array(Math.ceil(blocks / 8));
  }
  get(b: number): boolean {
    return (this.bits[b >> 3]! & (1 << (b & 7))) !== 0;
  }
  set(b: number, v: boolean): void {
    if (v) this.bits[b >> 3]! |= 1 << (b & 7);
    else this.bits[b >> 3]! &= ~(1 << (b & 7));
  }
}

/** Where a block's content lives. */
const Source = { BASE: 0, OVERLAY: 1, ZERO: 2 } as const;
type Source = (typeof Source)[keyof typeof Source];

/**
 * A copy-on-write overlay over any export (`vmvault serve --writable`): WRITE, WRITE_ZEROES and
 * TRIM land in a sparse temporary file and two bitmaps of 4 KiB blocks (written here / known to
 * be zero); the base is never modified. Partial blocks are completed from the current content
 * first, under a per-range lock. The file is removed on close unless `keep` is set, in which case
 * a `.map` JSON file next to it lists the written and zeroed ranges.
 */
export class CowOverlay implements NbdExport {
  private readonly written: Bitmap;
  private readonly zeroed: Bitmap;
  private readonly lock = new BlockRangeLock();
  private changes = 0;

  private constructor(
    private readonly base: NbdExport,
    private readonly fh: fs.FileHandle,
    readonly path: string,
    private readonly keep: boolean,
  ) {
    const blocks = Math.ceil(base.sizeBytes / BLOCK);
    this.written = new Bitmap(blocks);
    this.zeroed = new Bitmap(blocks);
  }

  static async create(base: NbdExport, dir: string, opts: { keep?: boolean } = {}): Promise<CowOverlay> {
    const path = join(dir, `${(base.name || 'export').replace(/[/\\]/g, '_')}.overlay`);
    const fh = await fs.open(path, 'wx+', 0o600);
    try {
      await fh.truncate(base.sizeBytes);
    } catch (err) {
      await fh.close();
      await fs.rm(path, { force: true });
      throw err;
    }
    return new CowOverlay(base, fh, path, opts.keep ?? false);
  }

  get name(): string {
    return this.base.name;
  }
  get description(): string | undefined {
    return this.base.description;
  }
  get sizeBytes(): number {
    return this.base.sizeBytes;
  }

  private source(b: number): Source {
    return this.written.get(b) ? Source.OVERLAY : this.zeroed.get(b) ? Source.ZERO : Source.BASE;
  }

  /** [offset, end) split into runs of blocks with the same source. */
  private runs(offset: number, length: number): Array<{ offset: number; length: number; source: Source }> {
    if (this.changes === 0) return [{ offset, length, source: Source.BASE }];
    const out: Array<{ offset: number; length: number; source: Source }> = [];
    const end = offset + length;
    for (let at = offset; at < end;) {
      const b = Math.floor(at / BLOCK);
      const stop = Math.min(end, (b + 1) * BLOCK);
      const source = this.source(b);
      const last = out[out.length - 1];
      if (last && last.source === source) last.length += stop - at;
      else out.push({ offset: at, length: stop - at, source });
      at = stop;
    }
    return out;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const pieces = await this.readExtents(offset, length);
    if (pieces.length === 1 && pieces[0]!.data && !pieces[0]!.release) return pieces[0]!.data;
    const out = Buffer.alloc(length);
    for (const p of pieces) p.data?.copy(out, p.offset - offset);
    releasePieces(pieces);
    return out;
  }

  async readExtents(offset: number, length: number): Promise<ReadPiece[]> {
    return settlePieces(
      this.runs(offset, length).map(async (r): Promise<ReadPiece[]> => {
        if (r.source === Source.ZERO) return [{ offset: r.offset, length: r.length }];
        if (r.source === Source.OVERLAY) {
          const data = Buffer.allocUnsafe(r.length);
          await this.readFile(data, r.offset);
          return [{ offset: r.offset, length: r.length, data }];
        }
        if (this.base.readExtents) return this.base.readExtents(r.offset, r.length);
        return [{ offset: r.offset, length: r.length, data: await this.base.read(r.offset, r.length) }];
      }),
    );
  }

  private async readFile(buf: Buffer, position: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const { bytesRead } = await this.fh.read(buf, done, buf.length - done, position + done);
      if (bytesRead === 0) {
        buf.fill(0, done);
        return;
      }
      done += bytesRead;
    }
  }

  private async writeFile(data: Buffer, position: number): Promise<void> {
    let done = 0;
    while (done < data.length)
      done += (await this.fh.write(data, done, data.length - done, position + done)).bytesWritten;
  }

  /** The current content of block `b` (callers hold its lock). */
  private async blockContent(b: number): Promise<Buffer> {
    const start = b * BLOCK;
    const len = Math.min(BLOCK, this.sizeBytes - start);
    const s = this.source(b);
    if (s === Source.ZERO) return Buffer.alloc(len);
    if (s === Source.OVERLAY) {
      const buf = Buffer.allocUnsafe(len);
      await this.readFile(buf, start);
      return buf;
    }
    return this.base.read(start, len);
  }

  private blockRange(offset: number, length: number): { first: number; last: number } {
    return { first: Math.floor(offset / BLOCK), last: Math.floor((offset + length - 1) / BLOCK) };
  }

  /** Whether [offset, offset+length) covers all of block b (the export's last block may be short). */
  private covers(b: number, offset: number, length: number): boolean {
    const start = b * BLOCK;
    return offset <= start && offset + length >= Math.min(start + BLOCK, this.sizeBytes);
  }

  async write(offset: number, data: Buffer): Promise<void> {
    if (data.length === 0) return;
    const { first, last } = this.blockRange(offset, data.length);
    const unlock = await this.lock.lock(first, last);
    try {
      // Partial blocks at either end take the rest of their bytes from the current content.
      for (const b of first === last ? [first] : [first, last]) {
        if (!this.covers(b, offset, data.length) && !this.written.get(b))
          await this.writeFile(await this.blockContent(b), b * BLOCK);
      }
      await this.writeFile(data, offset);
      for (let b = first; b <= last; b++) {
        this.written.set(b, true);
        this.zeroed.set(b, false);
      }
      this.changes++;
    } finally {
      unlock();
    }
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    if (length === 0) return;
    const { first, last } = this.blockRange(offset, length);
    const unlock = await this.lock.lock(first, last);
    try {
      for (let b = first; b <= last; b++) {
        if (this.covers(b, offset, length)) {
          this.written.set(b, false);
          this.zeroed.set(b, true);
        } else {
          // A partial block: zero its part through the file.
          const content = await this.blockContent(b);
          const start = b * BLOCK;
          content.fill(0, Math.max(0, offset - start), Math.min(content.length, offset + length - start));
          await this.writeFile(content, start);
          this.written.set(b, true);
          this.zeroed.set(b, false);
        }
      }
      this.changes++;
    } finally {
      unlock();
    }
  }

  /** TRIM: whole blocks read as zeros afterwards; partial blocks keep their content (allowed). */
  async trim(offset: number, length: number): Promise<void> {
    const startBlock = Math.ceil(offset / BLOCK);
    const endByte =
      offset + length === this.sizeBytes ? this.sizeBytes : Math.floor((offset + length) / BLOCK) * BLOCK;
    const start = startBlock * BLOCK;
    if (endByte > start) await this.writeZeroes(start, endByte - start);
  }

  async extents(offset: number, length: number): Promise<ExportExtent[]> {
    const out: ExportExtent[] = [];
    const push = (x: ExportExtent): void => {
      const last = out[out.length - 1];
      if (last && last.flags === x.flags && last.offset + last.length === x.offset) last.length += x.length;
      else out.push({ ...x });
    };
    for (const r of this.runs(offset, length)) {
      if (r.source === Source.OVERLAY) push({ offset: r.offset, length: r.length, flags: 0 });
      else if (r.source === Source.ZERO)
        push({
          offset: r.offset,
          length: r.length,
          flags: NBD_STATE.NBD_STATE_HOLE | NBD_STATE.NBD_STATE_ZERO,
        });
      else {
        const base = this.base.extents ? await this.base.extents(r.offset, r.length) : [];
        let at = r.offset;
        for (const x of base) {
          if (x.offset !== at || at >= r.offset + r.length) break;
          const len = Math.min(x.length, r.offset + r.length - at);
          push({ offset: at, length: len, flags: x.flags });
          at += len;
        }
        if (at < r.offset + r.length) push({ offset: at, length: r.offset + r.length - at, flags: 0 });
      }
    }
    return out;
  }

  async flush(): Promise<void> {
    await this.fh.sync();
  }

  /** Ranges (bytes) written into the overlay file and ranges known to be zero. */
  changedRanges(): { written: Array<[number, number]>; zeroed: Array<[number, number]> } {
    const collect = (bm: Bitmap): Array<[number, number]> => {
      const out: Array<[number, number]> = [];
      const blocks = Math.ceil(this.sizeBytes / BLOCK);
      for (let b = 0; b < blocks; b++) {
        if (!bm.get(b)) continue;
        const start = b * BLOCK;
        const end = Math.min(this.sizeBytes, start + BLOCK);
        const last = out[out.length - 1];
        if (last && last[0] + last[1] === start) last[1] += end - start;
        else out.push([start, end - start]);
      }
      return out;
    };
    return { written: collect(this.written), zeroed: collect(this.zeroed) };
  }

  async close(): Promise<void> {
    await this.fh.close().catch(() => {});
    if (this.keep) {
      const map = { blockSizeBytes: BLOCK, sizeBytes: this.sizeBytes, ...this.changedRanges() };
      await fs.writeFile(`${this.path}.map`, JSON.stringify(map));
    } else await fs.rm(this.path, { force: true });
    await this.base.close?.();
  }
}
