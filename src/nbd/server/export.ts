/**
 * What the NBD server serves. An export is a fixed-size byte range with a read function and,
 * optionally, allocation information (so zero ranges travel as holes) and write operations.
 *
 * A backup snapshot implements it with a chunk map: `extents` reports all-zero chunks as
 * HOLE|ZERO, or `readExtents` returns them as zero pieces while reading the rest, so structured
 * replies send them as NBD_REPLY_TYPE_OFFSET_HOLE without ever materialising zeros.
 */

/** base:allocation of a range: `flags` is NBD_STATE_HOLE (1) | NBD_STATE_ZERO (2), or 0 for data. */
export interface ExportExtent {
  offset: number;
  length: number;
  flags: number;
}

/** Part of a read: bytes, or (no `data`) a range that reads as zeros. */
export interface ReadPiece {
  offset: number;
  length: number;
  /** Exactly `length` bytes; undefined = zeros (sent as a hole). */
  data?: Buffer;
  /**
   * When present, `data` is lent (e.g. a view of a cached chunk): it stays unchanged until the
   * receiver of the piece calls `release`, which it must do exactly once when done with the bytes
   * (the server: once the socket has taken them, or the reply was abandoned).
   */
  release?: () => void;
}

export interface ExportBlockSize {
  /** Smallest addressable unit (power of 2, ≤ 64 KiB); requests must be aligned to it. */
  minimum: number;
  preferred: number;
  maximum: number;
}

export interface NbdExport {
  readonly name: string;
  readonly description?: string;
  readonly sizeBytes: number;
  /** Block size constraints to advertise (default 1 / 4096 / 32 MiB). */
  readonly blockSize?: ExportBlockSize;
  /** Exactly `length` bytes at `offset` (the server only asks within the export). */
  read(offset: number, length: number): Promise<Buffer>;
  /**
   * Optional: fills `dest` with the `dest.length` bytes at `offset`. When present (and the export
   * reports no zero ranges), the server reads into reusable buffers instead of calling `read`.
   */
  readInto?(offset: number, dest: Buffer): Promise<void>;
  /**
   * Optional: a read that reports zero ranges. Pieces cover [offset, offset+length) in order and
   * without gaps. Preferred over `read` + `extents` for structured READ replies.
   */
  readExtents?(offset: number, length: number): Promise<ReadPiece[]>;
  /** base:allocation of [offset, offset+length), contiguous from `offset`; may cover less. */
  extents?(offset: number, length: number): Promise<ExportExtent[]>;
  /** Present only on writable exports. */
  write?(offset: number, data: Buffer): Promise<void>;
  /** Zeroes a range (default: writes of zeros). `noHole`: keep it allocated. */
  writeZeroes?(offset: number, length: number, opts?: { noHole?: boolean }): Promise<void>;
  /** Discards a range; its content afterwards is unspecified (default: nothing happens). */
  trim?(offset: number, length: number): Promise<void>;
  /** Makes completed writes durable. */
  flush?(): Promise<void>;
  /** Prefetch hint (NBD_CMD_CACHE). */
  prefetch?(offset: number, length: number): Promise<void>;
  close?(): Promise<void>;
}

export function isWritable(e: NbdExport): boolean {
  return typeof e.write === 'function';
}

/** Zero runs shorter than this inside extents-derived reads are sent as data (one chunk is cheaper). */
const MIN_HOLE_BYTES = 64 * 1024;

/**
 * The pieces of a read: from `readExtents` when the export has it, else from `extents` (ZERO
 * ranges of 64 KiB or more become zero pieces) and `read`, else one data piece.
 */
export async function readPieces(e: NbdExport, offset: number, length: number): Promise<ReadPiece[]> {
  if (e.readExtents) return checkPieces(await e.readExtents(offset, length), offset, length);
  if (!e.extents) return [{ offset, length, data: await e.read(offset, length) }];
  const end = offset + length;
  const spans: Array<{ offset: number; length: number; zero: boolean }> = [];
  let at = offset;
  for (const x of await e.extents(offset, length)) {
    if (at >= end) break;
    const stop = Math.min(x.offset + x.length, end);
    if (x.offset > at || stop <= at) break; // not contiguous: read the rest as data
    const zero = (x.flags & 2) !== 0 && stop - at >= MIN_HOLE_BYTES;
    const last = spans[spans.length - 1];
    if (last && last.zero === zero) last.length += stop - at;
    else spans.push({ offset: at, length: stop - at, zero });
    at = stop;
  }
  if (at < end) {
    const last = spans[spans.length - 1];
    if (last && !last.zero) last.length += end - at;
    else spans.push({ offset: at, length: end - at, zero: false });
  }
  return Promise.all(
    spans.map(async (s) =>
      s.zero ? { offset: s.offset, length: s.length } : { ...s, data: await e.read(s.offset, s.length) },
    ),
  );
}

function checkPieces(pieces: ReadPiece[], offset: number, length: number): ReadPiece[] {
  let at = offset;
  let bad: string | undefined;
  for (const p of pieces) {
    if (p.offset !== at || p.length <= 0 || (p.data && p.data.length !== p.length)) {
      bad = `readExtents returned a bad piece ${p.offset}+${p.length} (expected offset ${at})`;
      break;
    }
    at += p.length;
  }
  if (!bad && at !== offset + length) bad = `readExtents covered ${at - offset} of ${length} bytes`;
  if (bad) {
    releasePieces(pieces);
    throw new Error(bad);
  }
  return pieces;
}

/** Calls `release` of every lent piece. */
export function releasePieces(pieces: readonly ReadPiece[]): void {
  for (const p of pieces) p.release?.();
}

/**
 * Awaits the parts of a read, in order. When one fails, the lent pieces of the others are
 * released before the error is thrown, so nothing stays pinned.
 */
export async function settlePieces(
  parts: ReadonlyArray<ReadPiece | ReadPiece[] | Promise<ReadPiece | ReadPiece[]>>,
): Promise<ReadPiece[]> {
  const settled = await Promise.allSettled(parts);
  const pieces = settled.flatMap((r) => (r.status === 'fulfilled' ? r.value : []));
  const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    releasePieces(pieces);
    throw failed.reason;
  }
  return pieces;
}
