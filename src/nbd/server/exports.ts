import { promises as fs } from 'node:fs';
import { NBD_STATE } from '../protocol.js';
import type { ExportExtent, NbdExport, ReadPiece } from './export.js';

async function readFully(fh: fs.FileHandle, buf: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await fh.read(buf, done, buf.length - done, position + done);
    if (bytesRead === 0) {
      buf.fill(0, done); // past the end of a file that shrank: zeros
      return;
    }
    done += bytesRead;
  }
}

async function writeFully(fh: fs.FileHandle, data: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < data.length)
    done += (await fh.write(data, done, data.length - done, position + done)).bytesWritten;
}

/** A raw file served read-only (default) or writable. */
export class FileExport implements NbdExport {
  write?: (offset: number, data: Buffer) => Promise<void>;
  writeZeroes?: (offset: number, length: number) => Promise<void>;
  trim?: (offset: number, length: number) => Promise<void>;

  private constructor(
    readonly name: string,
    readonly sizeBytes: number,
    private readonly fh: fs.FileHandle,
    writable: boolean,
    readonly description?: string,
  ) {
    if (writable) {
      this.write = (offset, data) => writeFully(fh, data, offset);
      this.writeZeroes = async (offset, length) => {
        const zeros = Buffer.alloc(Math.min(length, 1024 * 1024));
        for (let at = 0; at < length; at += zeros.length)
          await writeFully(fh, zeros.subarray(0, Math.min(zeros.length, length - at)), offset + at);
      };
      // Content after TRIM is unspecified: leaving it as it is is a valid TRIM.
      this.trim = async () => {};
    }
  }

  static async open(
    path: string,
    name = '',
    opts: { writable?: boolean; description?: string } = {},
  ): Promise<FileExport> {
    const fh = await fs.open(path, opts.writable ? 'r+' : 'r');
    try {
      const st = await fh.stat();
      return new FileExport(name, st.size, fh, opts.writable ?? false, opts.description);
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length);
    await readFully(this.fh, buf, offset);
    return buf;
  }

  readInto(offset: number, dest: Buffer): Promise<void> {
    return readFully(this.fh, dest, offset);
  }

  async flush(): Promise<void> {
    await this.fh.sync();
  }

  async close(): Promise<void> {
    await this.fh.close().catch(() => {});
  }
}

/** An export held in memory (tests): writable, zero 4 KiB blocks reported as holes. */
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
  async writeZeroes(offset: number, length: number): Promise<void> {
    this.data.fill(0, offset, offset + length);
  }
  async trim(offset: number, length: number): Promise<void> {
    this.data.fill(0, offset, offset + length);
  }
  async extents(offset: number, length: number): Promise<ExportExtent[]> {
    const out: ExportExtent[] = [];
    const block = 4096;
    const zero = Buffer.alloc(block);
    for (let at = offset; at < offset + length;) {
      const end = Math.min(offset + length, (Math.floor(at / block) + 1) * block);
      const isZero = this.data.subarray(at, end).equals(zero.subarray(0, end - at));
      const flags = isZero ? NBD_STATE.NBD_STATE_HOLE | NBD_STATE.NBD_STATE_ZERO : 0;
      const last = out[out.length - 1];
      if (last && last.flags === flags) last.length += end - at;
      else out.push({ offset: at, length: end - at, flags });
      at = end;
    }
    return out;
  }
  async readExtents(offset: number, length: number): Promise<ReadPiece[]> {
    return (await this.extents(offset, length)).map((x) =>
      x.flags & NBD_STATE.NBD_STATE_ZERO
        ? { offset: x.offset, length: x.length }
        : {
            offset: x.offset,
            length: x.length,
            data: Buffer.from(this.data.subarray(x.offset, x.offset + x.length)),
          },
    );
  }
}
