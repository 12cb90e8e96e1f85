/**
 * Chunk index entries (docs/format-2-index.md, design §2.1): what the index says about one record
 * in one pack, and its 64-byte encoding. Entries sort by id, then pack, then offset, which is the
 * byte order of the first 52 bytes of the encoding (all fields big-endian).
 */

/** Record kinds (as in a pack trailer): 1 disk chunk, 2 file chunk (data packs), 3 leaf page, 4 inner page (meta packs). */
export type RecordKind = 1 | 2 | 3 | 4;

export interface IndexEntry {
  /** 32 B chunk or page id. */
  id: Buffer;
  /** 16 B pack name (BLAKE3-128 of the pack bytes). */
  pack: Buffer;
  /** Offset of the record in the pack. */
  offset: number;
  /** Record length (RECORD_OVERHEAD + payload). */
  length: number;
  plaintextBytes: number;
  kind: RecordKind;
  codec: 0 | 1;
}

export const ENTRY_BYTES = 64;
export const ENTRY_ID_BYTES = 32;
export const PACK_NAME_BYTES = 16;
/** The bytes of an encoded entry that decide its sort order: id ‖ pack ‖ offset. */
export const ENTRY_SORT_BYTES = 52;
const U32_MAX = 0xffffffff;

/** The key of the pack an entry points into: kind 1–2 → `data/`, 3–4 → `meta/`. */
export function packKey(e: { pack: Buffer; kind: RecordKind }): string {
  const hex = e.pack.toString('hex');
  return `${e.kind <= 2 ? 'data' : 'meta'}/${hex.slice(0, 2)}/${hex}`;
}

function u32(name: string, v: number): number {
  if (!Number.isInteger(v) || v < 0 || v > U32_MAX)
    throw new RangeError(`index entry ${name} ${v} is not a u32`);
  return v;
}

/** Writes `e` as 64 bytes at `out[at…]` (throws RangeError on a field out of range). */
export function encodeEntryInto(e: IndexEntry, out: Uint8Array, at: number): void {
  if (e.id.length !== ENTRY_ID_BYTES)
    throw new RangeError(`an index entry id is 32 bytes, not ${e.id.length}`);
  if (e.pack.length !== PACK_NAME_BYTES)
    throw new RangeError(`a pack name is 16 bytes, not ${e.pack.length}`);
  if (e.kind !== 1 && e.kind !== 2 && e.kind !== 3 && e.kind !== 4)
    throw new RangeError(`index entry kind ${String(e.kind)} is not 1..4`);
  if (e.codec !== 0 && e.codec !== 1)
    throw new RangeError(`index entry codec ${String(e.codec)} is not 0 or 1`);
  const b = Buffer.from(out.buffer, out.byteOffset + at, ENTRY_BYTES);
  e.id.copy(b, 0);
  e.pack.copy(b, 32);
  b.writeUInt32BE(u32('offset', e.offset), 48);
  b.writeUInt32BE(u32('length', e.length), 52);
  b.writeUInt32BE(u32('plaintext length', e.plaintextBytes), 56);
  b[60] = e.kind;
  b[61] = e.codec;
  b[62] = 0;
  b[63] = 0;
}

export function encodeEntry(e: IndexEntry): Buffer {
  const b = Buffer.alloc(ENTRY_BYTES);
  encodeEntryInto(e, b, 0);
  return b;
}

/** Why 64 bytes at `b[at…]` are not a valid entry, or undefined when they are. */
export function entryProblem(b: Buffer, at: number): string | undefined {
  const kind = b[at + 60]!;
  if (kind < 1 || kind > 4) return `entry kind ${kind} is not 1..4`;
  const codec = b[at + 61]!;
  if (codec > 1) return `entry codec ${codec} is not 0 or 1`;
  if (b[at + 62] !== 0 || b[at + 63] !== 0) return 'entry reserved bytes are not zero';
  return undefined;
}

/** Decodes the (validated, see `entryProblem`) entry at `b[at…]`; the result owns its bytes. */
export function decodeEntry(b: Buffer, at = 0): IndexEntry {
  return {
    id: Buffer.from(b.subarray(at, at + 32)),
    pack: Buffer.from(b.subarray(at + 32, at + 48)),
    offset: b.readUInt32BE(at + 48),
    length: b.readUInt32BE(at + 52),
    plaintextBytes: b.readUInt32BE(at + 56),
    kind: b[at + 60] as RecordKind,
    codec: b[at + 61] as 0 | 1,
  };
}

/** The sort order of entries: id, then pack, then offset. */
export function compareEntries(a: IndexEntry, b: IndexEntry): number {
  return a.id.compare(b.id) || a.pack.compare(b.pack) || a.offset - b.offset;
}

/** The sort order of two encoded entries. */
export function compareEncoded(a: Buffer, aAt: number, b: Buffer, bAt: number): number {
  return a.compare(b, bAt, bAt + ENTRY_SORT_BYTES, aAt, aAt + ENTRY_SORT_BYTES);
}

/** Two entries that say the same thing about the same record. */
export function sameEntry(a: IndexEntry, b: IndexEntry): boolean {
  return (
    a.id.equals(b.id) &&
    a.pack.equals(b.pack) &&
    a.offset === b.offset &&
    a.length === b.length &&
    a.plaintextBytes === b.plaintextBytes &&
    a.kind === b.kind &&
    a.codec === b.codec
  );
}
