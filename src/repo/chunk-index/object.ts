import { randomBytes } from 'node:crypto';
import { checksum } from '../codec.js';
import { filterAdd, filterBytes, filterLog2 } from './bloom.js';
import { ENTRY_BYTES, ENTRY_ID_BYTES, compareEncoded, entryProblem } from './entry.js';
import type { SectionSealer } from './sealer.js';

/**
 * Index objects `index/<32 hex>` (docs/format-2-index.md): a 32-byte cleartext header, then
 * sealed sections: 0 preamble, 1 lookup (page directory ‖ Bloom filter), 2… pages of 64 entries.
 * Every length is checked against the object's size (from the listing) before anything is
 * allocated, so a hostile object is reported as damaged, never a crash or a huge allocation.
 */

export const INDEX_PREFIX = 'index/';
export const OBJECT_HEADER_BYTES = 32;
export const OBJECT_MAGIC = Buffer.from('VMVI', 'latin1');
export const PREAMBLE_MAGIC = Buffer.from('VMVX', 'latin1');
export const INDEX_OBJECT_VERSION = 2;
export const SALT_BYTES = 16;
export const NAME_BYTES = 16;
export const PAGE_ENTRIES = 64;
export const PAGE_BYTES = PAGE_ENTRIES * ENTRY_BYTES;
export const PREAMBLE_FIXED_BYTES = 148;
export const MAX_SUPERSEDES = 4096;
export const MAX_PREAMBLE_BYTES = PREAMBLE_FIXED_BYTES + MAX_SUPERSEDES * NAME_BYTES;
/** The most entries an index object may hold (64 MiB of pages); writers stay at or below 2^18 per object, deltas at the pending bound. */
export const MAX_OBJECT_ENTRIES = 2 ** 20;
/** Entries of one shard of a merge, base or rebuilt object set (16 MiB of pages). */
export const SHARD_ENTRIES = 2 ** 18;

export const ObjectKind = { delta: 1, merge: 2, base: 3, rebuilt: 4 } as const;
export type ObjectKind = (typeof ObjectKind)[keyof typeof ObjectKind];

const NAME_RE = /^index\/([0-9a-f]{32})$/;

/** The name part of an index object key, or undefined when `key` is not one. */
export function objectNameOf(key: string): string | undefined {
  return NAME_RE.exec(key)?.[1];
}

/** BLAKE3-128 of the bytes, as 32 hex (the codec's unkeyed structural hash: names are public). */
export function contentName(bytes: Uint8Array): string {
  return checksum(bytes).subarray(0, NAME_BYTES).toString('hex');
}

/** What makes an index object unusable, with the reason `ChunkIndex.damaged` reports. */
export class IndexObjectDamage extends Error {
  constructor(readonly reason: string) {
    super(reason);
  }
}

export interface ObjectHeader {
  salt: Buffer;
  preambleBytes: number;
}

export interface Preamble {
  kind: ObjectKind;
  generation: number;
  sessionId: Buffer;
  createdMs: number;
  entries: number;
  pages: number;
  firstId: Buffer;
  lastId: Buffer;
  /** The set of shards this object belongs to (16 random bytes; every object is one). */
  setId: Buffer;
  shardNumber: number;
  /** 0 in every shard of a set but the last, which holds the set's shard count. */
  shardCount: number;
  lookupOffset: number;
  lookupBytes: number;
  filterLog2: number;
  /** Names (32 hex) of the objects this set supersedes. */
  supersedes: string[];
}

/** Where the page sections start, and the sealed size of a full page. */
export function pageLayout(sealer: SectionSealer, pre: Pick<Preamble, 'lookupOffset' | 'lookupBytes'>) {
  return { pagesOffset: pre.lookupOffset + pre.lookupBytes, fullPageBytes: sealer.sealedBytes(PAGE_BYTES) };
}

/** Entries in page p of an object of `entries` entries. */
export function pageEntries(entries: number, p: number): number {
  return Math.min(PAGE_ENTRIES, entries - p * PAGE_ENTRIES);
}

/** Byte offset and sealed length of page p (section 2 + p). */
export function pageSpan(
  sealer: SectionSealer,
  pre: Preamble,
  p: number,
): { offset: number; length: number } {
  const { pagesOffset, fullPageBytes } = pageLayout(sealer, pre);
  return {
    offset: pagesOffset + p * fullPageBytes,
    length: sealer.sealedBytes(pageEntries(pre.entries, p) * ENTRY_BYTES),
  };
}

function pagesBytes(sealer: SectionSealer, entries: number): number {
  const full = Math.floor(entries / PAGE_ENTRIES);
  const rest = entries % PAGE_ENTRIES;
  return full * sealer.sealedBytes(PAGE_BYTES) + (rest > 0 ? sealer.sealedBytes(rest * ENTRY_BYTES) : 0);
}

export function lookupPlaintextBytes(pre: Pick<Preamble, 'pages' | 'filterLog2'>): number {
  return pre.pages * 8 + filterBytes(pre.filterLog2);
}

/** The most bytes of an object's start a loader reads at once (header + a small preamble). */
export const FIRST_READ_BYTES = 4096;

export function parseHeader(b: Buffer, objectBytes: number, sealer: SectionSealer): ObjectHeader {
  if (objectBytes < OBJECT_HEADER_BYTES || b.length < OBJECT_HEADER_BYTES)
    throw new IndexObjectDamage(`${objectBytes} bytes is too short for an index object`);
  if (!b.subarray(0, 4).equals(OBJECT_MAGIC)) throw new IndexObjectDamage('not an index object (bad magic)');
  if (b[4] !== INDEX_OBJECT_VERSION) throw new IndexObjectDamage(`unknown index object version ${b[4]}`);
  if (b[5] !== 0 || b[6] !== 0 || b[7] !== 0 || b.readUInt32BE(28) !== 0)
    throw new IndexObjectDamage('header reserved bytes are not zero');
  const preambleBytes = b.readUInt32BE(24);
  const max = sealer.sealedBytes(MAX_PREAMBLE_BYTES);
  if (preambleBytes === 0 || preambleBytes > max || OBJECT_HEADER_BYTES + preambleBytes > objectBytes)
    throw new IndexObjectDamage(
      `preamble length ${preambleBytes} is impossible for a ${objectBytes}-byte object`,
    );
  return { salt: Buffer.from(b.subarray(8, 8 + SALT_BYTES)), preambleBytes };
}

function open(sealer: SectionSealer, salt: Buffer, section: number, sealed: Uint8Array, max: number): Buffer {
  try {
    return sealer.open(salt, section, sealed, max);
  } catch (err) {
    throw new IndexObjectDamage(
      `section ${section} does not open (${err instanceof Error ? err.message : String(err)})`,
    );
  }
}

function isZero(b: Buffer): boolean {
  for (const x of b) if (x !== 0) return false;
  return true;
}

/** Opens and validates section 0 (`sealed`: exactly its bytes). */
export function parsePreamble(
  sealer: SectionSealer,
  header: ObjectHeader,
  sealed: Uint8Array,
  objectBytes: number,
): Preamble {
  const p = open(sealer, header.salt, 0, sealed, MAX_PREAMBLE_BYTES);
  if (p.length < PREAMBLE_FIXED_BYTES || (p.length - PREAMBLE_FIXED_BYTES) % NAME_BYTES !== 0)
    throw new IndexObjectDamage(`preamble of ${p.length} bytes`);
  if (!p.subarray(0, 4).equals(PREAMBLE_MAGIC)) throw new IndexObjectDamage('preamble has a bad magic');
  if (p[4] !== INDEX_OBJECT_VERSION) throw new IndexObjectDamage(`unknown preamble version ${p[4]}`);
  const kind = p[5]!;
  if (kind < 1 || kind > 4) throw new IndexObjectDamage(`unknown index object kind ${kind}`);
  if (p[6] !== 0 || p[7] !== 0 || p[145] !== 0)
    throw new IndexObjectDamage('preamble reserved bytes are not zero');
  const generation = Number(p.readBigUInt64BE(8));
  const createdMs = Number(p.readBigUInt64BE(32));
  if (!Number.isSafeInteger(generation) || generation < 1)
    throw new IndexObjectDamage(`generation ${p.readBigUInt64BE(8)} is impossible`);
  if (!Number.isSafeInteger(createdMs)) throw new IndexObjectDamage('creation time is impossible');
  const entries = p.readUInt32BE(40);
  const pages = p.readUInt32BE(44);
  if (entries > MAX_OBJECT_ENTRIES)
    throw new IndexObjectDamage(`entry count ${entries} is above the limit of ${MAX_OBJECT_ENTRIES}`);
  if (pages !== Math.ceil(entries / PAGE_ENTRIES))
    throw new IndexObjectDamage(`page count ${pages} does not fit entry count ${entries}`);
  const firstId = Buffer.from(p.subarray(48, 80));
  const lastId = Buffer.from(p.subarray(80, 112));
  if (entries === 0 ? !isZero(firstId) || !isZero(lastId) : firstId.compare(lastId) > 0)
    throw new IndexObjectDamage('first and last ids are out of order');
  const setId = Buffer.from(p.subarray(112, 128));
  const shardNumber = p.readUInt16BE(128);
  const shardCount = p.readUInt16BE(130);
  if (shardCount !== 0 && shardCount !== shardNumber + 1)
    throw new IndexObjectDamage(`shard ${shardNumber} says the set has ${shardCount} shards`);
  if (kind === ObjectKind.delta && (shardNumber !== 0 || shardCount !== 1))
    throw new IndexObjectDamage('a delta is not a set of one shard');
  const lookupOffsetBig = p.readBigUInt64BE(132);
  const lookupBytes = p.readUInt32BE(140);
  const filterBits = p[144]!;
  const n = p.readUInt16BE(146);
  if (n > MAX_SUPERSEDES)
    throw new IndexObjectDamage(`supersedes ${n} objects, above the limit of ${MAX_SUPERSEDES}`);
  if (p.length !== PREAMBLE_FIXED_BYTES + n * NAME_BYTES)
    throw new IndexObjectDamage(`preamble of ${p.length} bytes does not hold ${n} superseded names`);
  if (filterBits !== filterLog2(entries))
    throw new IndexObjectDamage(`filter of 2^${filterBits} bits does not fit ${entries} entries`);
  const lookupOffset = OBJECT_HEADER_BYTES + header.preambleBytes;
  if (lookupOffsetBig !== BigInt(lookupOffset))
    throw new IndexObjectDamage(`lookup section offset ${lookupOffsetBig} is not ${lookupOffset}`);
  const lookupMax = sealer.sealedBytes(pages * 8 + filterBytes(filterBits));
  if (lookupBytes === 0 || lookupBytes > lookupMax)
    throw new IndexObjectDamage(`lookup section length ${lookupBytes} is impossible`);
  const expected = lookupOffset + lookupBytes + pagesBytes(sealer, entries);
  if (expected !== objectBytes)
    throw new IndexObjectDamage(`object is ${objectBytes} bytes, its preamble says ${expected}`);
  const supersedes: string[] = [];
  for (let i = 0; i < n; i++) {
    const at = PREAMBLE_FIXED_BYTES + i * NAME_BYTES;
    supersedes.push(p.toString('hex', at, at + NAME_BYTES));
  }
  return {
    kind: kind as ObjectKind,
    generation,
    sessionId: Buffer.from(p.subarray(16, 32)),
    createdMs,
    entries,
    pages,
    firstId,
    lastId,
    setId,
    shardNumber,
    shardCount,
    lookupOffset,
    lookupBytes,
    filterLog2: filterBits,
    supersedes,
  };
}

export interface Lookup {
  /** First 8 bytes of each page's first id. */
  directory: Buffer;
  filter: Buffer;
}

/** Opens and validates section 1; the result holds no reference to `sealed`. */
export function parseLookup(
  sealer: SectionSealer,
  header: ObjectHeader,
  pre: Preamble,
  sealed: Uint8Array,
): Lookup {
  const want = lookupPlaintextBytes(pre);
  const p = open(sealer, header.salt, 1, sealed, want);
  if (p.length !== want) throw new IndexObjectDamage(`lookup section holds ${p.length} bytes, not ${want}`);
  const dirBytes = pre.pages * 8;
  for (let i = 8; i < dirBytes; i += 8)
    if (p.compare(p, i - 8, i, i, i + 8) < 0) throw new IndexObjectDamage('page directory is out of order');
  if (pre.pages > 0 && p.compare(pre.firstId, 0, 8, 0, 8) !== 0)
    throw new IndexObjectDamage('page directory does not start at the first id');
  // Views of the opened section when it owns its memory (a fresh buffer of exactly its size), so
  // loading allocates nothing more; copies otherwise.
  const owned = p.byteOffset === 0 && p.buffer.byteLength === p.length && !(sealed.buffer === p.buffer);
  const q = owned ? p : Buffer.from(p);
  return { directory: q.subarray(0, dirBytes), filter: q.subarray(dirBytes) };
}

/** Opens and validates page p (section 2 + p); returns its entries' bytes. */
export function parsePage(
  sealer: SectionSealer,
  salt: Buffer,
  pre: Preamble,
  directory: Buffer,
  p: number,
  sealed: Uint8Array,
): Buffer {
  const want = pageEntries(pre.entries, p) * ENTRY_BYTES;
  const b = open(sealer, salt, 2 + p, sealed, want);
  if (b.length !== want) throw new IndexObjectDamage(`page ${p} holds ${b.length} bytes, not ${want}`);
  if (b.compare(directory, p * 8, p * 8 + 8, 0, 8) !== 0)
    throw new IndexObjectDamage(`page ${p} does not start where the page directory says`);
  if (p + 1 < pre.pages && b.compare(directory, (p + 1) * 8, (p + 1) * 8 + 8, want - 64, want - 56) > 0)
    throw new IndexObjectDamage(`page ${p} runs past the next page's first id`);
  if (p === 0 && b.compare(pre.firstId, 0, 32, 0, 32) !== 0)
    throw new IndexObjectDamage('first page does not start at the first id');
  if (p === pre.pages - 1 && b.compare(pre.lastId, 0, 32, want - 64, want - 32) !== 0)
    throw new IndexObjectDamage('last page does not end at the last id');
  for (let at = 0; at < want; at += ENTRY_BYTES) {
    const problem = entryProblem(b, at);
    if (problem) throw new IndexObjectDamage(`page ${p}: ${problem}`);
    if (at > 0 && compareEncoded(b, at - ENTRY_BYTES, b, at) >= 0)
      throw new IndexObjectDamage(`page ${p}: entries out of order`);
  }
  return b;
}

export interface ObjectMeta {
  kind: ObjectKind;
  generation: number;
  sessionId: Buffer;
  createdMs: number;
  setId: Buffer;
  shardNumber: number;
}

export interface BuiltObject {
  name: string;
  key: string;
  /** The object's bytes (emptied once written, to free them). */
  bytes: Buffer;
  sizeBytes: number;
  header: ObjectHeader;
  preamble: Preamble;
  lookup: Lookup;
}

/**
 * Builds one index object from encoded entries given in strictly increasing order. Pages are
 * sealed as they fill; only the ids (32 B each, for the filter) and the sealed pages are held.
 */
export class ObjectBuilder {
  private readonly salt = randomBytes(SALT_BYTES);
  private readonly sealedPages: Buffer[] = [];
  private page = Buffer.alloc(PAGE_BYTES);
  private inPage = 0;
  private ids: Buffer;
  private dir: Buffer;
  private count = 0;
  private readonly last = Buffer.alloc(ENTRY_BYTES);
  private readonly first = Buffer.alloc(ENTRY_ID_BYTES);

  constructor(
    private readonly sealer: SectionSealer,
    private readonly meta: ObjectMeta,
    capacityHint = PAGE_ENTRIES,
  ) {
    const cap = Math.max(PAGE_ENTRIES, Math.min(capacityHint, MAX_OBJECT_ENTRIES));
    this.ids = Buffer.alloc(cap * ENTRY_ID_BYTES);
    this.dir = Buffer.alloc(Math.ceil(cap / PAGE_ENTRIES) * 8);
  }

  get entries(): number {
    return this.count;
  }

  /** Appends the 64-byte entry at `src[at…]`. */
  add(src: Buffer, at: number): void {
    if (this.count >= MAX_OBJECT_ENTRIES) throw new RangeError('index object is full');
    if (this.count > 0 && compareEncoded(this.last, 0, src, at) >= 0)
      throw new RangeError('index entries must be added in strictly increasing order');
    src.copy(this.last, 0, at, at + ENTRY_BYTES);
    if (this.count === 0) src.copy(this.first, 0, at, at + ENTRY_ID_BYTES);
    if ((this.count + 1) * ENTRY_ID_BYTES > this.ids.length) {
      const bigger = Buffer.alloc(Math.min(this.ids.length * 2, MAX_OBJECT_ENTRIES * ENTRY_ID_BYTES));
      this.ids.copy(bigger);
      this.ids = bigger;
    }
    src.copy(this.ids, this.count * ENTRY_ID_BYTES, at, at + ENTRY_ID_BYTES);
    if (this.inPage === 0) {
      const p = this.sealedPages.length;
      if ((p + 1) * 8 > this.dir.length) {
        const bigger = Buffer.alloc(this.dir.length * 2);
        this.dir.copy(bigger);
        this.dir = bigger;
      }
      src.copy(this.dir, p * 8, at, at + 8);
    }
    src.copy(this.page, this.inPage * ENTRY_BYTES, at, at + ENTRY_BYTES);
    this.count++;
    if (++this.inPage === PAGE_ENTRIES) this.sealPage();
  }

  private sealPage(): void {
    const p = this.sealedPages.length;
    const plain = this.page.subarray(0, this.inPage * ENTRY_BYTES);
    const sealed = this.sealer.seal(this.salt, 2 + p, plain);
    if (sealed.length !== this.sealer.sealedBytes(plain.length))
      throw new Error(
        `the index sealer sealed a ${plain.length}-byte page into ${sealed.length} bytes, not sealedBytes(): pages must be sealed raw`,
      );
    this.sealedPages.push(sealed);
    this.inPage = 0;
  }

  finish(shardCount: number, supersedes: readonly string[]): BuiltObject {
    if (supersedes.length > MAX_SUPERSEDES)
      throw new RangeError(`an index object supersedes at most ${MAX_SUPERSEDES}`);
    if (this.inPage > 0) this.sealPage();
    const pages = this.sealedPages.length;
    const log2 = filterLog2(this.count);
    const lookupPlain = Buffer.alloc(pages * 8 + filterBytes(log2));
    this.dir.copy(lookupPlain, 0, 0, pages * 8);
    const filter = lookupPlain.subarray(pages * 8);
    for (let i = 0; i < this.count; i++)
      filterAdd(filter, log2, this.ids.subarray(i * ENTRY_ID_BYTES, (i + 1) * ENTRY_ID_BYTES));
    const lookupSealed = this.sealer.seal(this.salt, 1, lookupPlain);

    const pre = Buffer.alloc(PREAMBLE_FIXED_BYTES + supersedes.length * NAME_BYTES);
    PREAMBLE_MAGIC.copy(pre, 0);
    pre[4] = INDEX_OBJECT_VERSION;
    pre[5] = this.meta.kind;
    pre.writeBigUInt64BE(BigInt(this.meta.generation), 8);
    this.meta.sessionId.copy(pre, 16, 0, 16);
    pre.writeBigUInt64BE(BigInt(this.meta.createdMs), 32);
    pre.writeUInt32BE(this.count, 40);
    pre.writeUInt32BE(pages, 44);
    if (this.count > 0) {
      this.first.copy(pre, 48);
      this.last.copy(pre, 80, 0, 32);
    }
    this.meta.setId.copy(pre, 112, 0, 16);
    pre.writeUInt16BE(this.meta.shardNumber, 128);
    pre.writeUInt16BE(shardCount, 130);
    pre[144] = log2;
    pre.writeUInt16BE(supersedes.length, 146);
    supersedes.forEach((n, i) => {
      if (!/^[0-9a-f]{32}$/.test(n)) throw new RangeError(`'${n}' is not an index object name`);
      pre.write(n, PREAMBLE_FIXED_BYTES + i * NAME_BYTES, 'hex');
    });
    // The preamble's own sealed length is needed for section 1's offset, which it holds: the
    // length of a sealed preamble does not depend on that offset's value (fixed-width field).
    const lookupOffset = OBJECT_HEADER_BYTES + this.sealer.seal(this.salt, 0, pre).length;
    pre.writeBigUInt64BE(BigInt(lookupOffset), 132);
    pre.writeUInt32BE(lookupSealed.length, 140);
    const preSealed = this.sealer.seal(this.salt, 0, pre);
    if (OBJECT_HEADER_BYTES + preSealed.length !== lookupOffset)
      throw new Error('the index sealer sealed the same preamble to two lengths');

    const header = Buffer.alloc(OBJECT_HEADER_BYTES);
    OBJECT_MAGIC.copy(header, 0);
    header[4] = INDEX_OBJECT_VERSION;
    this.salt.copy(header, 8);
    header.writeUInt32BE(preSealed.length, 24);
    const bytes = Buffer.concat([header, preSealed, lookupSealed, ...this.sealedPages]);
    this.sealedPages.length = 0;
    const hdr: ObjectHeader = { salt: this.salt, preambleBytes: preSealed.length };
    const preamble = parsePreamble(this.sealer, hdr, preSealed, bytes.length);
    const name = contentName(bytes);
    return {
      name,
      key: INDEX_PREFIX + name,
      bytes,
      sizeBytes: bytes.length,
      header: hdr,
      preamble,
      lookup: { directory: Buffer.from(this.dir.subarray(0, pages * 8)), filter: Buffer.from(filter) },
    };
  }
}
