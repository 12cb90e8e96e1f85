import { promises as fs } from 'node:fs';
import {
  createOutputFile,
  DEFAULT_WRITE_BUFFER_BYTES,
  IMAGE_WRITE_ERROR,
  ImageWriteError,
  outputError,
  SequentialFile,
  type SequentialFileOptions,
  writeAt,
  type ImageWriter,
} from '../image-writer.js';
import { isAllZero } from '../zero.js';

/**
 * A sequential qcow2 v3 writer (docs/qcow2-writer.md).
 *
 * Layout: cluster 0 is the header; data clusters and L2 tables are appended in the order the
 * disk is written (an L2 table right after the last data cluster of its range); the L1 table,
 * the refcount table and the refcount blocks follow at the end and count the whole file,
 * themselves included. Every cluster has refcount 1, so L1/L2 entries carry the COPIED bit.
 * All-zero clusters are never allocated: with no backing file they read as zeros.
 *
 * Memory: the L1 table (8 bytes per L2 table: 16 KiB for 1 TiB at 64 KiB clusters, at most
 * 32 MiB, QEMU's limit), one L2 table (one cluster) and two write buffers, whatever the virtual
 * size or the amount of data.
 */
export const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"
const QCOW2_VERSION = 3;
const HEADER_LENGTH = 104;
const REFCOUNT_ORDER = 4; // 16-bit refcounts
const REFCOUNT_BYTES = 2;
const QCOW_OFLAG_COPIED = 1n << 63n;
/** QEMU refuses larger L1 tables (block/qcow2.h QCOW_MAX_L1_SIZE). */
export const QCOW_MAX_L1_SIZE = 32 * 1024 * 1024;
/** QEMU refuses larger refcount tables (QCOW_MAX_REFTABLE_SIZE). */
const QCOW_MAX_REFTABLE_SIZE = 8 * 1024 * 1024;
const MIN_CLUSTER_BITS = 9;
const MAX_CLUSTER_BITS = 21;

export interface Qcow2WriterOptions {
  /** Cluster size, a power of two from 512 B to 2 MiB (default 64 KiB). */
  clusterSizeBytes?: number;
  /** Size of each of the two write buffers (default 4 MiB). */
  writeBufferBytes?: number;
  /** Background fdatasync every this many bytes written (default 64 MiB; 0: only at finish). */
  syncEveryBytes?: number;
}

export interface Qcow2WriterStats {
  /** Guest clusters stored (non-zero data). */
  dataClusters: number;
  /** Guest clusters handed to write() that were all zero and left unallocated. */
  zeroClusters: number;
  l2Tables: number;
  refcountBlocks: number;
  /** Final file length (known after finish()). */
  fileBytes: number;
}

export class Qcow2Writer implements ImageWriter {
  readonly clusterSizeBytes: number;
  private readonly clusterBits: number;
  private readonly l2Entries: number;
  private readonly l1: Buffer;
  private readonly l2: Buffer;
  private l2Slot = -1; // the L1 slot the in-memory L2 table belongs to
  private l2Used = 0; // non-zero entries in it
  private nextCluster = 1; // host cluster 0 is the header
  private lastEnd = 0; // guest bytes [0, lastEnd) are settled
  private state: 'open' | 'busy' | 'finished' | 'aborted' | 'failed' = 'open';
  private readonly file: SequentialFile;
  private readonly counters: Qcow2WriterStats = {
    dataClusters: 0,
    zeroClusters: 0,
    l2Tables: 0,
    refcountBlocks: 0,
    fileBytes: 0,
  };

  private constructor(
    readonly path: string,
    readonly virtualSizeBytes: number,
    private readonly fh: fs.FileHandle,
    clusterSizeBytes: number,
    fileOptions: SequentialFileOptions,
  ) {
    this.clusterSizeBytes = clusterSizeBytes;
    this.clusterBits = Math.log2(clusterSizeBytes);
    this.l2Entries = clusterSizeBytes / 8;
    this.l1 = Buffer.alloc(l1Entries(virtualSizeBytes, clusterSizeBytes) * 8);
    this.l2 = Buffer.alloc(clusterSizeBytes);
    this.file = new SequentialFile(fh, path, fileOptions);
  }

  static async create(
    path: string,
    virtualSizeBytes: number,
    opts: Qcow2WriterOptions = {},
  ): Promise<Qcow2Writer> {
    const cs = opts.clusterSizeBytes ?? 65536;
    const bits = Math.log2(cs);
    if (!Number.isInteger(bits) || bits < MIN_CLUSTER_BITS || bits > MAX_CLUSTER_BITS)
      throw new RangeError(`invalid qcow2 cluster size ${cs}: a power of two from 512 B to 2 MiB`);
    if (!Number.isSafeInteger(virtualSizeBytes) || virtualSizeBytes < 0)
      throw new RangeError(`invalid virtual size ${virtualSizeBytes}`);
    if (virtualSizeBytes % 512 !== 0)
      throw new ImageWriteError(
        IMAGE_WRITE_ERROR.SIZE,
        `a qcow2 image cannot be ${virtualSizeBytes} bytes: QEMU counts its size in 512-byte sectors`,
        { hint: 'write a raw image instead', path },
      );
    if (l1Entries(virtualSizeBytes, cs) * 8 > QCOW_MAX_L1_SIZE)
      throw new ImageWriteError(
        IMAGE_WRITE_ERROR.TOO_LARGE,
        `a ${virtualSizeBytes}-byte disk needs an L1 table larger than QEMU accepts at ${cs}-byte clusters`,
        { hint: 'use a larger cluster size', path },
      );
    const bufferBytes = opts.writeBufferBytes ?? DEFAULT_WRITE_BUFFER_BYTES;
    // Whole clusters per buffer keeps every write(2) cluster aligned.
    const aligned = Math.max(cs, Math.floor(bufferBytes / cs) * cs);
    const fh = await createOutputFile(path);
    return new Qcow2Writer(path, virtualSizeBytes, fh, cs, {
      bufferBytes: aligned,
      syncEveryBytes: opts.syncEveryBytes,
    });
  }

  /** Bytes of L1 and L2 tables held in memory (the part that depends on the virtual size). */
  get metadataMemoryBytes(): number {
    return this.l1.length + this.l2.length;
  }

  /** Metadata memory plus the write buffers: everything the writer holds. */
  get memoryBytes(): number {
    return this.metadataMemoryBytes + this.file.bufferMemoryBytes;
  }

  get stats(): Readonly<Qcow2WriterStats> {
    return { ...this.counters };
  }

  private ensureOpen(): void {
    if (this.state === 'busy')
      throw new ImageWriteError(
        IMAGE_WRITE_ERROR.STATE,
        'concurrent call on a qcow2 writer: await each write',
        {
          path: this.path,
        },
      );
    if (this.state !== 'open')
      throw new ImageWriteError(IMAGE_WRITE_ERROR.STATE, `${this.path} is ${this.state}: no more writes`, {
        path: this.path,
      });
  }

  /** Appends one cluster (a shorter piece is zero-padded); returns its host cluster number. */
  private async appendCluster(data: Buffer): Promise<number> {
    const cluster = this.nextCluster++;
    const at = cluster * this.clusterSizeBytes;
    await this.file.write(at, data);
    if (data.length < this.clusterSizeBytes)
      await this.file.zeros(at + data.length, this.clusterSizeBytes - data.length);
    return cluster;
  }

  /** Appends the in-memory L2 table (if it maps anything) and points its L1 entry at it. */
  private async flushL2(): Promise<void> {
    if (this.l2Slot < 0) return;
    if (this.l2Used > 0) {
      const cluster = await this.appendCluster(this.l2);
      this.l1.writeBigUInt64BE(BigInt(cluster * this.clusterSizeBytes) | QCOW_OFLAG_COPIED, this.l2Slot * 8);
      this.l2.fill(0);
      this.l2Used = 0;
      this.counters.l2Tables++;
    }
    this.l2Slot = -1;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    this.ensureOpen();
    this.check(offset, data.length); // a refused write leaves the writer usable
    this.state = 'busy';
    try {
      this.lastEnd = offset + data.length;
      const cs = this.clusterSizeBytes;
      for (let at = 0; at < data.length; at += cs) {
        const piece = data.subarray(at, Math.min(at + cs, data.length));
        if (isAllZero(piece)) {
          this.counters.zeroClusters++;
          continue;
        }
        const guestCluster = (offset + at) / cs;
        const slot = Math.floor(guestCluster / this.l2Entries);
        if (slot !== this.l2Slot) {
          await this.flushL2();
          this.l2Slot = slot;
        }
        // Data first, its L2 table after the range is done: the file is one append-only stream.
        const host = await this.appendCluster(piece);
        this.l2.writeBigUInt64BE(BigInt(host * cs) | QCOW_OFLAG_COPIED, (guestCluster % this.l2Entries) * 8);
        this.l2Used++;
        this.counters.dataClusters++;
      }
      this.state = 'open';
    } catch (err) {
      this.state = 'failed';
      throw err;
    }
  }

  private check(offset: number, length: number): void {
    const cs = this.clusterSizeBytes;
    if (!Number.isSafeInteger(offset) || offset < this.lastEnd)
      throw new ImageWriteError(
        IMAGE_WRITE_ERROR.ORDER,
        `write at ${offset} starts before the end of the previous write (${this.lastEnd}): qcow2 output is written in increasing order`,
        { path: this.path },
      );
    if (offset % cs !== 0)
      throw new ImageWriteError(
        IMAGE_WRITE_ERROR.ALIGN,
        `write at ${offset} is not aligned to the ${cs}-byte cluster size`,
        { path: this.path },
      );
    const end = offset + length;
    if (end > this.virtualSizeBytes)
      throw new ImageWriteError(
        IMAGE_WRITE_ERROR.RANGE,
        `write of ${length} bytes at ${offset} is past the end of the disk (${this.virtualSizeBytes})`,
        { path: this.path },
      );
    if (length % cs !== 0 && end !== this.virtualSizeBytes)
      throw new ImageWriteError(
        IMAGE_WRITE_ERROR.ALIGN,
        `write of ${length} bytes at ${offset} is not a whole number of ${cs}-byte clusters`,
        { path: this.path },
      );
  }

  async finish(): Promise<void> {
    if (this.state === 'finished') return;
    this.ensureOpen();
    this.state = 'busy';
    try {
      await this.flushL2();
      const cs = this.clusterSizeBytes;

      // L1 table, contiguous.
      const l1Offset = this.nextCluster * cs;
      const l1Clusters = Math.ceil(this.l1.length / cs);
      await this.file.write(l1Offset, this.l1);
      await this.file.zeros(l1Offset + this.l1.length, l1Clusters * cs - this.l1.length);
      this.nextCluster += l1Clusters;

      // Refcount table and blocks count every cluster of the file, themselves included: a small
      // fixed point (adding blocks can need another table cluster, and so on).
      const perBlock = cs / REFCOUNT_BYTES;
      const used = this.nextCluster;
      let blocks = 0;
      let tableClusters = 0;
      for (;;) {
        const b = Math.ceil((used + tableClusters + blocks) / perBlock);
        const t = Math.ceil((b * 8) / cs);
        if (b === blocks && t === tableClusters) break;
        blocks = b;
        tableClusters = t;
      }
      if (tableClusters * cs > QCOW_MAX_REFTABLE_SIZE)
        throw new ImageWriteError(
          IMAGE_WRITE_ERROR.TOO_LARGE,
          `the image needs a refcount table larger than QEMU accepts at ${cs}-byte clusters`,
          { hint: 'use a larger cluster size', path: this.path },
        );
      const totalClusters = used + tableClusters + blocks;
      const tableOffset = this.nextCluster * cs;
      const firstBlock = this.nextCluster + tableClusters;
      const cluster = Buffer.alloc(cs);
      for (let t = 0; t < tableClusters; t++) {
        cluster.fill(0);
        for (let e = 0; e < cs / 8; e++) {
          const b = t * (cs / 8) + e;
          if (b >= blocks) break;
          cluster.writeBigUInt64BE(BigInt((firstBlock + b) * cs), e * 8);
        }
        await this.file.write((this.nextCluster + t) * cs, cluster);
      }
      this.nextCluster += tableClusters;
      // Every counter is 1 up to the end of the file: all blocks but the last are full of ones.
      for (let i = 0; i < perBlock; i++) cluster.writeUInt16BE(1, i * REFCOUNT_BYTES);
      for (let b = 0; b < blocks; b++) {
        const n = Math.min(perBlock, totalClusters - b * perBlock);
        if (n < perBlock) cluster.fill(0, n * REFCOUNT_BYTES);
        await this.file.write((this.nextCluster + b) * cs, cluster);
      }
      this.nextCluster += blocks;
      await this.file.drain();

      // The header last: until it is there the file is not an image at all.
      await writeAt(this.fh, this.path, this.header(l1Offset, tableOffset, tableClusters), 0);
      try {
        await this.fh.sync();
      } catch (err) {
        throw outputError(this.path, err);
      }
      this.counters.refcountBlocks = blocks;
      this.counters.fileBytes = this.nextCluster * cs;
      this.state = 'finished';
      await this.fh.close();
    } catch (err) {
      if (this.state === 'busy') this.state = 'failed';
      throw err;
    }
  }

  private header(l1Offset: number, refcountTableOffset: number, refcountTableClusters: number): Buffer {
    const h = Buffer.alloc(this.clusterSizeBytes);
    h.writeUInt32BE(QCOW2_MAGIC, 0);
    h.writeUInt32BE(QCOW2_VERSION, 4);
    // 8..19: no backing file.
    h.writeUInt32BE(this.clusterBits, 20);
    // A multiple of 512 (create() refuses others: QEMU would drop a partial sector).
    h.writeBigUInt64BE(BigInt(this.virtualSizeBytes), 24);
    // 32: crypt_method 0.
    h.writeUInt32BE(this.l1.length / 8, 36);
    h.writeBigUInt64BE(BigInt(l1Offset), 40);
    h.writeBigUInt64BE(BigInt(refcountTableOffset), 48);
    h.writeUInt32BE(refcountTableClusters, 56);
    // 60..95: no snapshots; incompatible, compatible and autoclear features all 0.
    h.writeUInt32BE(REFCOUNT_ORDER, 96);
    h.writeUInt32BE(HEADER_LENGTH, 100);
    // 104: the end-of-extensions marker (type 0, length 0), already zero.
    return h;
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

function l1Entries(virtualSizeBytes: number, clusterSizeBytes: number): number {
  const clusters = Math.ceil(virtualSizeBytes / clusterSizeBytes);
  return Math.max(1, Math.ceil(clusters / (clusterSizeBytes / 8)));
}

export function createQcow2Writer(
  path: string,
  virtualSizeBytes: number,
  opts: Qcow2WriterOptions = {},
): Promise<Qcow2Writer> {
  return Qcow2Writer.create(path, virtualSizeBytes, opts);
}
