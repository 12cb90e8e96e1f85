import { randomBytes } from 'node:crypto';
import type { SectionSealer } from './sealer.js';

/**
 * Void records (design §8): `quarantine/<32 hex random>` objects that make index entries absent,
 * so the next backup that meets the data stores it again. Sealed with the index's sealer (binder =
 * the 16 bytes the name spells, section 0); the plaintext is JSON (docs/format-2-index.md), the
 * sealed object at most 64 KiB. Pack names are never reused, so a void never needs undoing.
 */
export const VOID_PREFIX = 'quarantine/';
export const VOID_MAX_BYTES = 64 * 1024;
export const VOID_FORMAT = 'vmvault-void';
export const VOID_VERSION = 1;
const MAX_REASON_CHARS = 500;
const VOID_NAME_RE = /^quarantine\/([0-9a-f]{32})$/;

export interface VoidRecord {
  /** 16 B pack name. */
  pack: Buffer;
  /** The record's offset in the pack, or '*' for every record of the pack. */
  offset: number | '*';
  /** The record's id when known (informative: a void covers a pack and offset). */
  id?: Buffer | undefined;
  reason: string;
  /** ms since the epoch. */
  timeMs: number;
}

export function voidNameOf(key: string): string | undefined {
  return VOID_NAME_RE.exec(key)?.[1];
}

interface VoidJson {
  pack: string;
  offset: number | '*';
  id?: string;
  reason: string;
  time: string;
}

function toJson(r: VoidRecord): VoidJson {
  if (r.pack.length !== 16) throw new RangeError(`a pack name is 16 bytes, not ${r.pack.length}`);
  if (r.offset !== '*' && (!Number.isInteger(r.offset) || r.offset < 0 || r.offset > 0xffffffff))
    throw new RangeError(`void offset ${String(r.offset)} is not a u32 or '*'`);
  if (r.id !== undefined && r.id.length !== 32)
    throw new RangeError(`a record id is 32 bytes, not ${r.id.length}`);
  return {
    pack: r.pack.toString('hex'),
    offset: r.offset,
    ...(r.id ? { id: r.id.toString('hex') } : {}),
    reason: r.reason.slice(0, MAX_REASON_CHARS),
    time: new Date(r.timeMs).toISOString(),
  };
}

function fromJson(v: unknown): VoidRecord {
  if (typeof v !== 'object' || v === null) throw new Error('a void record is not an object');
  const o = v as Record<string, unknown>;
  if (typeof o.pack !== 'string' || !/^[0-9a-f]{32}$/.test(o.pack))
    throw new Error('a void record has no pack name');
  const offset = o.offset;
  if (
    offset !== '*' &&
    !(typeof offset === 'number' && Number.isInteger(offset) && offset >= 0 && offset <= 0xffffffff)
  )
    throw new Error('a void record has no offset');
  if (o.id !== undefined && (typeof o.id !== 'string' || !/^[0-9a-f]{64}$/.test(o.id)))
    throw new Error('a void record has a malformed id');
  if (typeof o.reason !== 'string' || o.reason.length > MAX_REASON_CHARS)
    throw new Error('a void record has no reason');
  const timeMs = typeof o.time === 'string' ? Date.parse(o.time) : NaN;
  if (!Number.isFinite(timeMs)) throw new Error('a void record has no time');
  return {
    pack: Buffer.from(o.pack, 'hex'),
    offset: offset as number | '*',
    ...(typeof o.id === 'string' ? { id: Buffer.from(o.id, 'hex') } : {}),
    reason: o.reason,
    timeMs,
  };
}

/** Seals `records` as void objects of at most VOID_MAX_BYTES each: [key, bytes][]. */
export function encodeVoids(
  sealer: SectionSealer,
  records: readonly VoidRecord[],
): { key: string; bytes: Buffer }[] {
  const out: { key: string; bytes: Buffer }[] = [];
  const jsons = records.map(toJson);
  const head = `{"format":"${VOID_FORMAT}","version":${VOID_VERSION},"records":[`;
  let batch: string[] = [];
  let size = head.length + 2;
  const flush = () => {
    if (batch.length === 0) return;
    const plain = Buffer.from(`${head}${batch.join(',')}]}`, 'utf8');
    const name = randomBytes(16);
    out.push({ key: VOID_PREFIX + name.toString('hex'), bytes: sealer.seal(name, 0, plain) });
    batch = [];
    size = head.length + 2;
  };
  for (const j of jsons) {
    const s = JSON.stringify(j);
    const bytes = Buffer.byteLength(s) + 1;
    if (batch.length > 0 && sealer.sealedBytes(size + bytes) > VOID_MAX_BYTES) flush();
    batch.push(s);
    size += bytes;
  }
  flush();
  return out;
}

/** Opens and validates a void object read from `key` (throws with the reason on damage). */
export function decodeVoid(sealer: SectionSealer, key: string, bytes: Uint8Array): VoidRecord[] {
  const name = voidNameOf(key);
  if (name === undefined) throw new Error(`${key} is not a void record name`);
  if (bytes.length > VOID_MAX_BYTES)
    throw new Error(`${bytes.length} bytes is above the ${VOID_MAX_BYTES}-byte limit`);
  let plain: Buffer;
  try {
    plain = sealer.open(Buffer.from(name, 'hex'), 0, bytes, VOID_MAX_BYTES);
  } catch (err) {
    throw new Error(`does not open (${err instanceof Error ? err.message : String(err)})`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(plain.toString('utf8'));
  } catch {
    throw new Error('is not JSON');
  }
  const d = doc as Record<string, unknown> | null;
  if (typeof d !== 'object' || d === null || d.format !== VOID_FORMAT || d.version !== VOID_VERSION)
    throw new Error('is not a void record of a known version');
  if (!Array.isArray(d.records)) throw new Error('has no records');
  return d.records.map(fromJson);
}

/** The voids in force: whole packs and single records. */
export class VoidSet {
  private readonly packs = new Set<string>();
  private readonly records = new Set<string>();
  size = 0;

  add(r: VoidRecord): void {
    const pack = r.pack.toString('hex');
    if (r.offset === '*') this.packs.add(pack);
    else this.records.add(`${pack}:${r.offset}`);
    this.size = this.packs.size + this.records.size;
  }

  /** Does a void cover the record at `offset` of pack `pack` (16 B, or its bytes at `at`)? */
  covers(pack: Buffer, offset: number, at = 0): boolean {
    if (this.size === 0) return false;
    const hex = pack.toString('hex', at, at + 16);
    return this.packs.has(hex) || this.records.has(`${hex}:${offset}`);
  }
}
