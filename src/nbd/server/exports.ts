import { promises as fs } from 'node:fs';
import type { ExportExtent, NbdExport } from './export.js';

/** A raw file served read-only (or writable). */
export class FileExport implements NbdExport {
  private constructor(
    readonly name: string,
    readonly sizeBytes: number,
    private readonly fh: fs.FileHandle,
    writable: boolean,
  ) {
    if (!writable) this.write = undefined;
  }

  static async open(path: string, name = '', opts: { writable?: boolean } = {}): Promise<FileExport> {
    const fh = await fs.open(path, opts.writable ? 'r+' : 'r');
    return new FileExport(name, (await fh.stat()).size, fh, opts.writable ?? false);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.fh.read(buf, done, length - done, offset + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return buf;
  }

  write?: (offset: number, data: Buffer) => Promise<void> = async (offset, data) => {
    let done = 0;
    while (done < data.length)
      done += (await this.fh.write(data, done, data.length - done, offset + done)).bytesWritten;
  };

  async flush(): Promise<void> {
    await this.fh.sync();
  }

  async close(): Promise<void> {
    await this.fh.close().catch(() => {});
  }
}

/** An export held in memory (tests); zero ranges are reported as holes. */
export class MemoryExport implements NbdExport {
  constructor(
    readonly name: string,
    private readonly data: Buffer,
    readonly description?: string,
  ) {}
  get sizeBytes(): number {
    return this.data.length;
  }
  async read(offset: number, length: number): Promise<Buffer> {
    return Buffer.from(this.data.subarray(offset, offset + length));
  }
  async write(offset: number, data: Buffer): Promise<void> {
    data.copy(this.data, offset);
  }
  async extents(offset: number, length: number): Promise<ExportExtent[]> {
    const out: ExportExtent[] = [];
    const block = 4096;
    for (let at = offset; at < offset + length;) {
      const end = Math.min(offset + length, (Math.floor(at / block) + 1) * block);
      const zero = this.data.subarray(at, end).every((b) => b === 0);
      const flags = zero ? 3 : 0;
      const last = out[out.length - 1];
      if (last && last.flags === flags) last.length += end - at;
      else out.push({ offset: at, length: end - at, flags });
      at = end;
    }
    return out;
  }
}
