import { randomBytes } from 'node:crypto';

/**
 * A compact set of 32-byte ids for garbage collection's mark: only the first 8 bytes of an id
 * are kept (open addressing, linear probing, 8 bytes per slot, grown at 70 % load). Two ids that
 * share their first 64 bits are one member: for a mark that is a false positive, which only keeps
 * garbage (docs/gc.md); it never loses a live chunk. 10 M ids take about 192 MiB at worst, 2^20
 * ids 12 MiB.
 */
export class IdSet {
  private hi: Uint32Array;
  private lo: Uint32Array;
  private mask: number;
  private count = 0;
  /** Whether the id with 8 zero leading bytes is a member (slot value 0/0 means "empty"). */
  private zero = false;
  /** Random per set: a hostile repository cannot craft ids that all probe one run of slots. */
  private readonly seed = randomBytes(4).readUInt32BE(0);

  constructor(expected = 1024) {
    let cap = 1024;
    while (cap * 0.7 < expected) cap *= 2;
    this.hi = new Uint32Array(cap);
    this.lo = new Uint32Array(cap);
    this.mask = cap - 1;
  }

  get size(): number {
    return this.count + (this.zero ? 1 : 0);
  }

  /** Bytes held by the table. */
  get bytes(): number {
    return this.hi.byteLength + this.lo.byteLength;
  }

  /** Adds the id at `buf[at..at+8)` (the rest of the id is not looked at); true when it was new. */
  add(buf: Uint8Array, at = 0): boolean {
    const h = read32(buf, at);
    const l = read32(buf, at + 4);
    if (h === 0 && l === 0) {
      const was = this.zero;
      this.zero = true;
      return !was;
    }
    if (this.count + 1 > (this.mask + 1) * 0.7) this.grow();
    return this.insert(h, l);
  }

  has(buf: Uint8Array, at = 0): boolean {
    const h = read32(buf, at);
    const l = read32(buf, at + 4);
    if (h === 0 && l === 0) return this.zero;
    for (let i = slotOf(h, l, this.mask, this.seed); ; i = (i + 1) & this.mask) {
      const sh = this.hi[i]!;
      const sl = this.lo[i]!;
      if (sh === 0 && sl === 0) return false;
      if (sh === h && sl === l) return true;
    }
  }

  /** Hex convenience (64 hex digits; only the first 16 are used). */
  addHex(hex: string): boolean {
    return this.add(Buffer.from(hex.slice(0, 16), 'hex'));
  }
  hasHex(hex: string): boolean {
    return this.has(Buffer.from(hex.slice(0, 16), 'hex'));
  }

  private insert(h: number, l: number): boolean {
    for (let i = slotOf(h, l, this.mask, this.seed); ; i = (i + 1) & this.mask) {
      const sh = this.hi[i]!;
      const sl = this.lo[i]!;
      if (sh === 0 && sl === 0) {
        this.hi[i] = h;
        this.lo[i] = l;
        this.count++;
        return true;
      }
      if (sh === h && sl === l) return false;
    }
  }

  private grow(): void {
    const oldHi = this.hi;
    const oldLo = this.lo;
    const cap = oldHi.length * 2;
    this.hi = new Uint32Array(cap);
    this.lo = new Uint32Array(cap);
    this.mask = cap - 1;
    this.count = 0;
    for (let i = 0; i < oldHi.length; i++) {
      const h = oldHi[i]!;
      const l = oldLo[i]!;
      if (h !== 0 || l !== 0) this.insert(h, l);
    }
  }
}

function read32(b: Uint8Array, at: number): number {
  return ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
}

/** Ids are hashes: their low word is already uniform; mix in the high word for hostile input. */
function slotOf(h: number, l: number, mask: number, seed: number): number {
  const x = Math.imul(l ^ seed, 0x9e3779b1) ^ Math.imul(h ^ (seed >>> 11), 0x85ebca6b);
  return ((x ^ (x >>> 15)) >>> 0) & mask;
}
