import { promises as fs } from 'node:fs';
import {
  createOutputFile,
  IMAGE_WRITE_ERROR,
  ImageWriteError,
  outputError,
  SequentialFile,
  type ImageWriter,
} from './image-writer.js';
import { isAllZero } from './zero.js';

export interface RawWriterOptions {
  /**
   * true (default): all-zero blocks are skipped and ranges never written stay holes, so the file
   * is sparse. false: every byte is written, zeros included, gaps filled at finish (a fully
   * allocated file).
   */
  sparse?: boolean;
  /** Size of each of the two write buffers (default 4 MiB). */
  writeBufferBytes?: number;
  /** Background fdatasync every this many bytes written (default 64 MiB; 0: only at finish). */
  syncEveryBytes?: number;
}

/**
 * Holes are whole 64 KiB blocks of the file (aligned to the file offset) that are all zero, the
 * qcow2 writer's cluster granularity. Shorter zero runs between data are written: one large write
 * beats a hole plus a flush (checking 4 KiB blocks made bench/qcow2-write.ts ~25% slower).
 */
const SPARSE_BLOCK_BYTES = 64 * 1024;
const MIN_HOLE_BYTES = SPARSE_BLOCK_BYTES;

/**
 * Raw output into a new file: created (O_EXCL) and truncated to the virtual size; what `write`
 * receives is buffered into large sequential writes. With `sparse` (the default) all-zero 64 KiB
 * blocks are not written, so they stay holes. Offsets must increase (as for the qcow2 writer)
 * but need no alignment. `abort` removes the partial file.
 */
export class RawWriter implements ImageWriter {
  private lastEnd = 0;
  private state: 'open' | 'busy' | 'finished' | 'aborted' | 'failed' = 'open';
  private readonly file: SequentialFile;
  private readonly sparse: boolean;

  private constructor(
    readonly path: string,
    readonly virtualSizeBytes: number,
    private readonly fh: fs.FileHandle,
    opts: RawWriterOptions,
  ) {
    this.sparse = opts.sparse ?? true;
    this.file = new SequentialFile(fh, path, {
      bufferBytes: opts.writeBufferBytes,
      syncEveryBytes: opts.syncEveryBytes,
    });
  }

  static async create(
    path: string,
    virtualSizeBytes: number,
    opts: RawWriterOptions = {},
  ): Promise<RawWriter> {
    if (!Number.isSafeInteger(virtualSizeBytes) || virtualSizeBytes < 0)
      throw new RangeError(`invalid virtual size ${virtualSizeBytes}`);
    const fh = await createOutputFile(path);
    try {
      await fh.truncate(virtualSizeBytes);
    } catch (err) {
      await fh.close().catch(() => {});
      await fs.rm(path, { force: true });
      throw outputError(path, err);
    }
    return new RawWriter(path, virtualSizeBytes, fh, opts);
  }

  private ensureOpen(): void {
    if (this.state === 'busy')
      throw new ImageWriteError(
        IMAGE_WRITE_ERROR.STATE,
        'concurrent call on a raw writer: await each write',
        {
          path: this.path,
        },
      );
    if (this.state !== 'open')
      throw new ImageWriteError(IMAGE_WRITE_ERROR.STATE, `${this.path} is ${this.state}: no more writes`, {
        path: this.path,
      });
  }

  async write(offset: number, data: Buffer): Promise<void> {
    this.ensureOpen();
    if (!Number.isSafeInteger(offset) || offset < this.lastEnd)
      throw new ImageWriteError(
        IMAGE_WRITE_ERROR.ORDER,
        `write at ${offset} starts before the end of the previous write (${this.lastEnd})`,
        { path: this.path },
      );
    if (offset + data.length > this.virtualSizeBytes)
      throw new ImageWriteError(
        IMAGE_WRITE_ERROR.RANGE,
        `write of ${data.length} bytes at ${offset} is past the end of the disk (${this.virtualSizeBytes})`,
        { path: this.path },
      );
    this.state = 'busy';
    try {
      if (!this.sparse) {
        if (offset > this.lastEnd) await this.file.zeros(this.lastEnd, offset - this.lastEnd);
        await this.file.write(offset, data);
      } else {
        await this.writeSparse(offset, data);
      }
      this.lastEnd = offset + data.length;
      this.state = 'open';
    } catch (err) {
      this.state = 'failed';
      throw err;
    }
  }

  /**
   * Skips zero runs of at least MIN_HOLE_BYTES (whole blocks of the file); shorter zero
   * runs inside data are written, so the writes stay large.
   */
  private async writeSparse(offset: number, data: Buffer): Promise<void> {
    let dataStart = -1; // start of the pending run to write (may contain short zero runs)
    let zeroStart = -1; // start of the current zero run
    const flushRun = async (end: number): Promise<void> => {
      if (dataStart >= 0 && end > dataStart)
        await this.file.write(offset + dataStart, data.subarray(dataStart, end));
      dataStart = -1;
    };
    let at = 0;
    while (at < data.length) {
      const next = Math.min(data.length, at + SPARSE_BLOCK_BYTES - ((offset + at) % SPARSE_BLOCK_BYTES));
      if (isAllZero(data.subarray(at, next))) {
        if (zeroStart < 0) zeroStart = at;
      } else {
        if (zeroStart >= 0 && (dataStart < 0 || at - zeroStart >= MIN_HOLE_BYTES)) {
          if (at - zeroStart >= MIN_HOLE_BYTES) await flushRun(zeroStart);
          else if (dataStart < 0) dataStart = zeroStart; // a short leading zero run: write it
        }
        zeroStart = -1;
        if (dataStart < 0) dataStart = at;
      }
      at = next;
    }
    if (zeroStart >= 0 && data.length - zeroStart >= MIN_HOLE_BYTES) await flushRun(zeroStart);
    else await flushRun(data.length);
  }

  async finish(): Promise<void> {
    if (this.state === 'finished') return;
    this.ensureOpen();
    this.state = 'busy';
    try {
      if (!this.sparse && this.lastEnd < this.virtualSizeBytes)
        await this.file.zeros(this.lastEnd, this.virtualSizeBytes - this.lastEnd);
      await this.file.drain();
      try {
        await this.fh.sync();
      } catch (err) {
        throw outputError(this.path, err);
      }
      this.state = 'finished';
      await this.fh.close();
    } catch (err) {
      if (this.state === 'busy') this.state = 'failed';
      throw err;
    }
  }

  async abort(): Promise<void> {
    if (this.state === 'aborted') return;
    const wasOpen = this.state !== 'finished';
    this.state = 'aborted';
    if (wasOpen) {
      await this.file.quiesce();
      await this.fh.close().catch(() => {});
    }
    await fs.rm(this.path, { force: true });
  }
}

export function createRawWriter(
  path: string,
  virtualSizeBytes: number,
  opts: RawWriterOptions = {},
): Promise<RawWriter> {
  return RawWriter.create(path, virtualSizeBytes, opts);
}
