/**
 * Big-endian buffer reader/writer shared by the NBD and XDR codecs and the repository formats.
 * u64 values are decoded as bigint at the wire boundary and converted to number only after a
 * safe-integer check.
 */
export class ShortBufferError extends Error {
  constructor(need: number, have: number) {
    super(`buffer too short: need ${need} bytes, have ${have}`);
    this.name = 'ShortBufferError';
  }
}

export class BufferReader {
  offset = 0;
  constructor(readonly buf: Buffer) {}

  get remaining(): number {
    return this.buf.length - this.offset;
  }

  private need(n: number): void {
    if (this.offset + n > this.buf.length) throw new ShortBufferError(this.offset + n, this.buf.length);
  }

  u8(): number {
    this.need(1);
    return this.buf.readUInt8(this.offset++);
  }
  u16(): number {
    this.need(2);
    const v = this.buf.readUInt16BE(this.offset);
    this.offset += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.buf.readUInt32BE(this.offset);
    this.offset += 4;
    return v;
  }
  i32(): number {
    this.need(4);
    const v = this.buf.readInt32BE(this.offset);
    this.offset += 4;
    return v;
  }
  u64big(): bigint {
    this.need(8);
    const v = this.buf.readBigUInt64BE(this.offset);
    this.offset += 8;
    return v;
  }
  i64big(): bigint {
    this.need(8);
    const v = this.buf.readBigInt64BE(this.offset);
    this.offset += 8;
    return v;
  }
  /** u64 as a number; throws RangeError above Number.MAX_SAFE_INTEGER. */
  u64(): number {
    return toSafeNumber(this.u64big());
  }
  bytes(n: number): Buffer {
    this.need(n);
    const v = this.buf.subarray(this.offset, this.offset + n);
    this.offset += n;
    return v;
  }
  skip(n: number): void {
    this.need(n);
    this.offset += n;
  }
}

export function toSafeNumber(v: bigint): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) {
    throw new RangeError(`64-bit value ${v} exceeds the safe integer range`);
  }
  return Number(v);
}

export class BufferWriter {
  private chunks: Buffer[] = [];
  private cur: Buffer;
  private pos = 0;
  private total = 0;

  constructor(initial = 256) {
    this.cur = Buffer.allocUnsafe(initial);
  }

  private ensure(n: number): void {
    if (this.pos + n <= this.cur.length) return;
    this.chunks.push(this.cur.subarray(0, this.pos));
    this.cur = Buffer.allocUnsafe(Math.max(n, this.cur.length * 2));
    this.pos = 0;
  }

  get length(): number {
    return this.total;
  }

  u8(v: number): this {
    this.ensure(1);
    this.cur.writeUInt8(v, this.pos);
    this.pos += 1;
    this.total += 1;
    return this;
  }
  u16(v: number): this {
    this.ensure(2);
    this.cur.writeUInt16BE(v, this.pos);
    this.pos += 2;
    this.total += 2;
    return this;
  }
  u32(v: number): this {
    this.ensure(4);
    this.cur.writeUInt32BE(v >>> 0, this.pos);
    this.pos += 4;
    this.total += 4;
    return this;
  }
  i32(v: number): this {
    this.ensure(4);
    this.cur.writeInt32BE(v, this.pos);
    this.pos += 4;
    this.total += 4;
    return this;
  }
  u64(v: number | bigint): this {
    this.ensure(8);
    this.cur.writeBigUInt64BE(BigInt(v), this.pos);
    this.pos += 8;
    this.total += 8;
    return this;
  }
  i64(v: number | bigint): this {
    this.ensure(8);
    this.cur.writeBigInt64BE(BigInt(v), this.pos);
    this.pos += 8;
    this.total += 8;
    return this;
  }
  bytes(b: Uint8Array): this {
    this.ensure(b.length);
    this.cur.set(b, this.pos);
    this.pos += b.length;
    this.total += b.length;
    return this;
  }
  zeros(n: number): this {
    this.ensure(n);
    this.cur.fill(0, this.pos, this.pos + n);
    this.pos += n;
    this.total += n;
    return this;
  }
  toBuffer(): Buffer {
    return Buffer.concat([...this.chunks, this.cur.subarray(0, this.pos)]);
  }
}
