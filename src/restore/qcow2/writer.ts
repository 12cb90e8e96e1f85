import { promises as fs, constants as fsc } from 'node:fs';
import { errnoCode, VmvaultError } from '../../util/index.js';
import type { ChunkSink } from '../restore.js';

/**
 * A sequential qcow2 v3 writer (docs/qcow2-writer.md).
 *
 * Layout: cluster 0 is the header; data clusters and L2 tables are appended in the order the
 * disk is written (an L2 table when its 512 MiB of guest space is done); the L1 table, the
 * refcount table and the refcount blocks follow at the end and cover the whole file, themselves
 * included. Every cluster has refcount 1, so L1/L2 entries carry the COPIED bit. All-zero
 * clusters are never allocated: with no backing file they read as zeros.
 *
 * Memory: the L1 table (8 bytes per L2 table: 16 KiB for 1 TiB at 64 KiB clusters), one L2
 * table, and a write buffer of a few MiB, whatever the virtual size.
 */
const QCOW2_MAGIC = 0x514649fb;
const QCOW2_VERSION = 3;
const HEADER_LENGTH = 104;
const REFCOUNT_ORDER = 4; // 16-bit refcounts
const COPIED = 1n << 63n;
const FLUSH_BYTES = 4 * 1024 * 1024;

export class ImageWriteError extends VmvaultError {
  constructor(message: string) {
    super('IMAGE_WRITE_ORDER', message);
  }
}

export interface Qcow2WriterOptions {
  /** Cluster size, a power of two from 512 B to 2 MiB (default 64 KiB). */
  clusterSizeBytes?: number;
}

export class Qcow2Writer implements ChunkSink {
  private readonly cs: number;
  private readonly clusterBits: number;
  private readonly l2Entries: number;
  private readonly l1: Buffer;
  private l2: Buffer;
  private l2Index = -1; // which L1 slot the in-memory L2 table belongs to
  private nextCluster = 1; // host cluster 0 is the header
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private pendingAt: number; // file offset of the first pending byte
  private lastEnd = 0; // guest offset already written up to
  private closed = false;
  private readonly zero: Buffer;

  private constructor(
    readonly path: string,
    readonly virtualSizeBytes: number,
    private readonly fh: fs.FileHandle,
    clusterSizeBytes: number,
  ) {
    this.cs = clusterSizeBytes;
    this.clusterBits = Math.log2(clusterSizeBytes);
    this.l2Entries = clusterSizeBytes / 8;
    const clusters = Math.ceil(virtualSizeBytes / clusterSizeBytes);
    this.l1 = Buffer.alloc(Math.max(1, Math.ceil(clusters / this.l2Entries)) * 8);
    this.l2 = Buffer.alloc(clusterSizeBytes);
    this.pendingAt = clusterSizeBytes;
    this.zero = Buffer.alloc(clusterSizeBytes);
  }

  static async create(
    path: string,
    virtualSizeBytes: number,
    opts: Qcow2WriterOptions = {},
  ): Promise<Qcow2Writer> {
    const cs = opts.clusterSizeBytes ?? 65536;
    if (!Number.isInteger(Math.log2(cs)) || cs < 512 || cs > 2 * 1024 * 1024)
      throw new RangeError(`invalid qcow2 cluster size ${cs}`);
    let fh: fs.FileHandle;
    try {
      fh = await fs.open(path, fsc.O_RDWR | fsc.O_CREAT | fsc.O_EXCL, 0o644);
    } catch (err) {
      const code = errnoCode(err);
      throw new VmvaultError(
        'OUTPUT_FAILED',
        `cannot write ${path}: ${code === 'EEXIST' ? 'exists' : code === 'ENOENT' ? 'its directory does not exist' : (code ?? String(err))}`,
        {
          hint: code === 'EEXIST' ? 'choose another path or remove it first' : undefined,
          cause: err,
        },
      );
    }
    return new Qcow2Writer(path, virtualSizeBytes, fh, cs);
  }

  private allocate(): number {
    return this.nextCluster++;
  }

  /** Appends one cluster-sized (or shorter, zero-padded) piece at the next host cluster. */
  private async append(data: Buffer): Promise<number> {
    const cluster = this.allocate();
    const at = cluster * this.cs;
    if (at !== this.pendingAt + this.pendingBytes) await this.flushPending();
    if (this.pendingBytes === 0) this.pendingAt = at;
    this.pending.push(
      data.length === this.cs ? data : Buffer.concat([data, this.zero.subarray(0, this.cs - data.length)]),
    );
    this.pendingBytes += this.cs;
    if (this.pendingBytes >= FLUSH_BYTES) await this.flushPending();
    return cluster;
  }

  private async flushPending(): Promise<void> {
    if (this.pendingBytes === 0) return;
    await writevAll(this.fh, this.pending, this.pendingAt);
    this.pendingAt += this.pendingBytes;
    this.pending = [];
    this.pendingBytes = 0;
  }

  /** Writes the in-memory L2 table (if it maps anything) and records it in L1. */
  private async flushL2(): Promise<void> {
    if (this.l2Index < 0) return;
    if (this.l2.some((b) => b !== 0)) {
      const cluster = await this.append(this.l2);
      this.l1.writeBigUInt64BE(BigInt(cluster * this.cs) | COPIED, this.l2Index * 8);
      this.l2 = Buffer.alloc(this.cs);
    }
    this.l2Index = -1;
  }

  /** Writes guest data; `data` is kept by reference until flushed, so callers must not reuse it. */
  async write(offset: number, data: Buffer): Promise<void> {
    if (this.closed) throw new ImageWriteError(`${this.path} is already finished`);
    if (offset < this.lastEnd)
      throw new ImageWriteError(
        `write at ${offset} is before the end of the previous write (${this.lastEnd}): qcow2 output is written in order`,
      );
    if (offset % this.cs !== 0)
      throw new ImageWriteError(`write at ${offset} is not aligned to the ${this.cs}-byte cluster size`);
    const end = offset + data.length;
    if (end > this.virtualSizeBytes)
      throw new ImageWriteError(
        `write of ${data.length} bytes at ${offset} is past the end of the disk (${this.virtualSizeBytes})`,
      );
    if (data.length % this.cs !== 0 && end !== this.virtualSizeBytes) {
      throw new ImageWriteError(
        `write of ${data.length} bytes at ${offset} is not a whole number of clusters`,
      );
    }
    this.lastEnd = end;
    for (let at = 0; at < data.length; at += this.cs) {
      const piece = data.subarray(at, Math.min(at + this.cs, data.length));
      if (Buffer.compare(piece, this.zero.subarray(0, piece.length)) === 0) continue;
      const guestCluster = (offset + at) / this.cs;
      const l1i = Math.floor(guestCluster / this.l2Entries);
      if (l1i !== this.l2Index) {
        await this.flushL2();
        this.l2Index = l1i;
      }
      // The L2 table of this range is written after its data, so data clusters stay in order.
      const host = await this.append(piece);
      this.l2.writeBigUInt64BE(BigInt(host * this.cs) | COPIED, (guestCluster % this.l2Entries) * 8);
    }
  }

  async finish(): Promise<void> {
    if (this.closed) return;
    await this.flushL2();
    // L1 table.
    const l1Clusters = Math.ceil(this.l1.length / this.cs);
    const l1Offset = this.nextCluster * this.cs;
    for (let i = 0; i < l1Clusters; i++) await this.append(this.l1.subarray(i * this.cs, (i + 1) * this.cs));
    // Refcount table + blocks must count every cluster, themselves included.
    const perBlock = this.cs / 2; // 16-bit entries
    const used = this.nextCluster;
    let blocks = 0;
    let tableClusters = 0;
    for (;;) {
      const total = used + tableClusters + blocks;
      const b = Math.ceil(total / perBlock);
      const t = Math.ceil((b * 8) / this.cs);
      if (b === blocks && t === tableClusters) break;
      blocks = b;
      tableClusters = t;
    }
    const total = used + tableClusters + blocks;
    const tableOffset = this.nextCluster * this.cs;
    const table = Buffer.alloc(tableClusters * this.cs);
    const firstBlock = this.nextCluster + tableClusters;
    for (let i = 0; i < blocks; i++) table.writeBigUInt64BE(BigInt((firstBlock + i) * this.cs), i * 8);
    for (let i = 0; i < tableClusters; i++) await this.append(table.subarray(i * this.cs, (i + 1) * this.cs));
    for (let i = 0; i < blocks; i++) {
      const block = Buffer.alloc(this.cs);
      const start = i * perBlock;
      const n = Math.min(perBlock, total - start);
      for (let k = 0; k < n; k++) block.writeUInt16BE(1, k * 2);
      await this.append(block);
    }
    await this.flushPending();
    // Header last: until it is written the file is not a valid image.
    const h = Buffer.alloc(this.cs);
    h.writeUInt32BE(QCOW2_MAGIC, 0);
    h.writeUInt32BE(QCOW2_VERSION, 4);
    h.writeUInt32BE(this.clusterBits, 20);
    h.writeBigUInt64BE(BigInt(this.virtualSizeBytes), 24);
    h.writeUInt32BE(this.l1.length / 8, 36);
    h.writeBigUInt64BE(BigInt(l1Offset), 40);
    h.writeBigUInt64BE(BigInt(tableOffset), 48);
    h.writeUInt32BE(tableClusters, 56);
    h.writeUInt32BE(REFCOUNT_ORDER, 96);
    h.writeUInt32BE(HEADER_LENGTH, 100);
    // Header extensions: none (an all-zero end marker at offset 104).
    await writeAll(this.fh, h, 0);
    await this.fh.sync();
    await this.fh.close();
    this.closed = true;
  }

  async abort(): Promise<void> {
    if (!this.closed) await this.fh.close().catch(() => {});
    this.closed = true;
    await fs.rm(this.path, { force: true });
  }
}

/** Gathers the pending clusters into one writev call (no concatenation copy). */
async function writevAll(fh: fs.FileHandle, bufs: Buffer[], position: number): Promise<void> {
  let written = 0;
  try {
    written = (await fh.writev(bufs, position)).bytesWritten;
  } catch (err) {
    return writeAll(fh, Buffer.concat(bufs), position).then(() => Promise.reject(err));
  }
  const total = bufs.reduce((a, b) => a + b.length, 0);
  if (written < total) await writeAll(fh, Buffer.concat(bufs).subarray(written), position + written);
}

async function writeAll(fh: fs.FileHandle, buf: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    try {
      done += (await fh.write(buf, done, buf.length - done, position + done)).bytesWritten;
    } catch (err) {
      const code = errnoCode(err);
      throw new VmvaultError(
        'OUTPUT_FAILED',
        `cannot write the qcow2 image: ${code === 'ENOSPC' ? 'no space left on the device' : (code ?? String(err))}`,
        {
          hint: code === 'ENOSPC' ? 'free space and run the restore again' : undefined,
          cause: err,
        },
      );
    }
  }
}

export function createQcow2Writer(
  path: string,
  virtualSizeBytes: number,
  opts: Qcow2WriterOptions = {},
): Promise<Qcow2Writer> {
  return Qcow2Writer.create(path, virtualSizeBytes, opts);
}
