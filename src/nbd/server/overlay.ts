import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import type { ExportExtent, NbdExport } from './export.js';

const BLOCK = 4096;

/**
 * A copy-on-write overlay over a read-only export (`vmvault serve --writable`): writes land in a
 * sparse temporary file, a bitmap of 4 KiB blocks (32 MiB of memory per TiB) says which blocks
 * the overlay holds, and the base is never modified. The file is removed on close unless kept.
 */
export class CowOverlay implements NbdExport {
  private readonly written: Uint8Array;
  private writes = 0;

  private constructor(
    private readonly base: NbdExport,
    private readonly fh: fs.FileHandle,
    readonly path: string,
    private readonly keep: boolean,
  ) {
    this.written = new Uint8Array(Math.ceil(Math.ceil(base.sizeBytes / BLOCK) / 8));
  }

  static async create(base: NbdExport, dir: string, opts: { keep?: boolean } = {}): Promise<CowOverlay> {
    const path = join(dir, `${base.name || 'export'}.overlay`);
    const fh = await fs.open(path, 'wx+', 0o600);
    await fh.truncate(base.sizeBytes);
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

  private isWritten(block: number): boolean {
    return (this.written[block >> 3]! & (1 << (block & 7))) !== 0;
  }
  private mark(block: number): void {
    this.written[block >> 3]! |= 1 << (block & 7);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const out = Buffer.alloc(length);
    let at = offset;
    const end = offset + length;
    while (at < end) {
      const b = Math.floor(at / BLOCK);
      const mine = this.isWritten(b);
      let runEnd = Math.min(end, (b + 1) * BLOCK);
      while (runEnd < end && this.isWritten(Math.floor(runEnd / BLOCK)) === mine)
        runEnd = Math.min(end, runEnd + BLOCK);
      const n = runEnd - at;
      if (mine) await this.fh.read(out, at - offset, n, at);
      else (await this.base.read(at, n)).copy(out, at - offset);
      at = runEnd;
    }
    return out;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    const first = Math.floor(offset / BLOCK);
    const last = Math.floor((offset + data.length - 1) / BLOCK);
    // Partial blocks at either end take the rest of their bytes from the current content.
    for (const b of new Set([first, last])) {
      const start = b * BLOCK;
      const covered = offset <= start && offset + data.length >= Math.min(start + BLOCK, this.sizeBytes);
      if (!covered && !this.isWritten(b)) {
        const len = Math.min(BLOCK, this.sizeBytes - start);
        await this.writeAt(await this.base.read(start, len), start);
      }
    }
    await this.writeAt(data, offset);
    for (let b = first; b <= last; b++) this.mark(b);
    this.writes++;
  }

  private async writeAt(data: Buffer, offset: number): Promise<void> {
    let done = 0;
    while (done < data.length)
      done += (await this.fh.write(data, done, data.length - done, offset + done)).bytesWritten;
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    await this.write(offset, Buffer.alloc(length));
  }

  async extents(offset: number, length: number): Promise<ExportExtent[]> {
    // Written blocks are data; elsewhere the base's allocation holds.
    const base = this.base.extents ? await this.base.extents(offset, length) : [{ offset, length, flags: 0 }];
    if (this.writes === 0) return base;
    const out: ExportExtent[] = [];
    for (const x of base) {
      for (let at = x.offset; at < x.offset + x.length;) {
        const b = Math.floor(at / BLOCK);
        const end = Math.min(x.offset + x.length, (b + 1) * BLOCK);
        const flags = this.isWritten(b) ? 0 : x.flags;
        const last = out[out.length - 1];
        if (last && last.flags === flags && last.offset + last.length === at) last.length += end - at;
        else out.push({ offset: at, length: end - at, flags });
        at = end;
      }
    }
    return out;
  }

  async flush(): Promise<void> {
    await this.fh.sync();
  }

  async close(): Promise<void> {
    await this.fh.close().catch(() => {});
    if (!this.keep) await fs.rm(this.path, { force: true });
    await this.base.close?.();
  }
}
