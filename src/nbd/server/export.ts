/**
 * What the NBD server serves. An export is a fixed-size byte range with a read function and,
 * optionally, allocation information (so zero ranges travel as holes) and write operations.
 */
export interface ExportExtent {
  offset: number;
  length: number;
  /** base:allocation flags: NBD_STATE_HOLE (1) | NBD_STATE_ZERO (2). */
  flags: number;
}

export interface NbdExport {
  readonly name: string;
  readonly description?: string;
  readonly sizeBytes: number;
  read(offset: number, length: number): Promise<Buffer>;
  /** Allocation of [offset, offset+length), contiguous from `offset`; may cover less. */
  extents?(offset: number, length: number): Promise<ExportExtent[]>;
  write?(offset: number, data: Buffer): Promise<void>;
  writeZeroes?(offset: number, length: number): Promise<void>;
  trim?(offset: number, length: number): Promise<void>;
  flush?(): Promise<void>;
  close?(): Promise<void>;
}

export function isWritable(e: NbdExport): boolean {
  return typeof e.write === 'function';
}
