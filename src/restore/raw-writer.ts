import { promises as fs, constants as fsc } from 'node:fs';
import { errnoCode, VmvaultError } from '../util/index.js';

/**
 * Sparse raw output: the file is created (O_EXCL) and truncated to the virtual size, and only
 * the pieces handed to `write` are written; everything else stays a hole that reads as zeros.
 * On abort the partial file is removed.
 */
export class RawWriter {
  private constructor(
    readonly path: string,
    readonly virtualSizeBytes: number,
    private readonly fh: fs.FileHandle,
  ) {}

  static async create(path: string, virtualSizeBytes: number): Promise<RawWriter> {
    let fh: fs.FileHandle;
    try {
      fh = await fs.open(path, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o644);
    } catch (err) {
      throw outputError(path, err);
    }
    try {
      await fh.truncate(virtualSizeBytes);
    } catch (err) {
      await fh.close().catch(() => {});
      await fs.rm(path, { force: true });
      throw outputError(path, err);
    }
    return new RawWriter(path, virtualSizeBytes, fh);
  }

  async write(offset: number, data: Buffer): Promise<void> {
    if (offset + data.length > this.virtualSizeBytes)
      throw new RangeError(`write past the end of ${this.path}`);
    let done = 0;
    try {
      while (done < data.length) {
        const { bytesWritten } = await this.fh.write(data, done, data.length - done, offset + done);
        done += bytesWritten;
      }
    } catch (err) {
      throw outputError(this.path, err);
    }
  }

  async finish(): Promise<void> {
    try {
      await this.fh.sync();
    } finally {
      await this.fh.close();
    }
  }

  async abort(): Promise<void> {
    await this.fh.close().catch(() => {});
    await fs.rm(this.path, { force: true });
  }
}

export function createRawWriter(path: string, virtualSizeBytes: number): Promise<RawWriter> {
  return RawWriter.create(path, virtualSizeBytes);
}

function outputError(path: string, err: unknown): VmvaultError {
  const code = errnoCode(err);
  const why =
    code === 'EEXIST'
      ? 'exists'
      : code === 'ENOSPC'
        ? 'no space left on the device'
        : code === 'EACCES'
          ? 'permission denied'
          : code === 'ENOENT'
            ? 'its directory does not exist'
            : String(err);
  return new VmvaultError('OUTPUT_FAILED', `cannot write ${path}: ${why}`, {
    hint:
      code === 'EEXIST'
        ? 'choose another path or remove it first'
        : code === 'ENOSPC'
          ? 'free space and run the restore again'
          : undefined,
    cause: err,
  });
}
