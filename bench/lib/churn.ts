/**
 * Deterministic churn of an image (a day's writes to a disk), shared by the benches that back up
 * a changed image: a seeded byte stream, the writes of one round, and applying them in place.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { closeSync, openSync, writeSync } from 'node:fs';

const MiB = 2 ** 20;

/** A seeded byte stream (AES-256-CTR of zeros under a key from the SHA-256 of `key`). */
export class SeededStream {
  private readonly cipher;
  private buf: Buffer = Buffer.alloc(0);
  private at = 0;
  constructor(key: string) {
    this.cipher = createCipheriv('aes-256-ctr', createHash('sha256').update(key).digest(), Buffer.alloc(16));
  }
  bytes(n: number): Buffer {
    return this.cipher.update(Buffer.alloc(n));
  }
  /** A uniform integer in [0, n). */
  below(n: number): number {
    if (this.at + 4 > this.buf.length) {
      this.buf = this.bytes(4096);
      this.at = 0;
    }
    const v = this.buf.readUInt32BE(this.at);
    this.at += 4;
    return Math.floor((v / 2 ** 32) * n);
  }
}

export interface Write {
  offset: number;
  data: Buffer;
}

/**
 * One round of writes drawn from `r` on an image of `sizeBytes`, `percent` % of it in all: half
 * the bytes in runs of 1–4 whole MiB at MiB-aligned offsets, half in writes of 4 KiB–1 MiB at
 * 4 KiB-aligned (chunk-unaligned) offsets; the data 45 % random, 45 % hex text (≈ 2:1
 * compressible), 10 % zeros.
 */
export function churnWrites(
  r: SeededStream,
  sizeBytes: number,
  percent: number,
): { writes: Write[]; bytes: number } {
  const target = Math.round((sizeBytes * percent) / 100);
  const writes: Write[] = [];
  let bytes = 0;
  const data = (n: number): Buffer => {
    const k = r.below(20);
    if (k < 2) return Buffer.alloc(n); // zeros (freed blocks)
    if (k < 11) return r.bytes(n); // random (compressed or encrypted files)
    return Buffer.from(r.bytes(n / 2).toString('hex')); // hex text: ≈ 2:1 compressible
  };
  while (bytes < target) {
    let offset: number;
    let len: number;
    if (r.below(2) === 0) {
      len = (1 + r.below(4)) * MiB; // 1–4 whole MiB at a MiB-aligned offset
      offset = r.below(sizeBytes / MiB - 4) * MiB;
    } else {
      len = (1 + r.below(256)) * 4096; // 4 KiB – 1 MiB at a 4 KiB-aligned offset
      offset = r.below((sizeBytes - len) / 4096) * 4096;
    }
    writes.push({ offset, data: data(len) });
    bytes += len;
  }
  return { writes, bytes };
}

/** Writes `writes` into the file `image` in place. */
export function applyWrites(image: string, writes: readonly Write[]): void {
  const fd = openSync(image, 'r+');
  try {
    for (const w of writes) writeSync(fd, w.data, 0, w.data.length, w.offset);
  } finally {
    closeSync(fd);
  }
}
