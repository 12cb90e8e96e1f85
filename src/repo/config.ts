import { randomBytes } from 'node:crypto';
import { isPowerOfTwo, printable, UsageError, formatBytes } from '../util/index.js';
import type { Backend } from './backend/backend.js';
import {
  DEFAULT_CHUNK_SIZE,
  DEFAULT_PACK_SIZE,
  DEFAULT_PAGE_SLOTS,
  MAX_PACK_SIZE,
  MAX_PAGE_SLOTS,
  MIN_PACK_SIZE,
  MIN_PAGE_SLOTS,
  DEFAULT_ZSTD_LEVEL,
  MAX_CHUNK_SIZE,
  MAX_ZSTD_LEVEL,
  MIN_CHUNK_SIZE,
  MIN_ZSTD_LEVEL,
  REPO_FORMAT_VERSION,
  Keys,
} from './format.js';
import { RepoFormatError } from './errors.js';

/** The `config` object (plain JSON; docs/format.md "Config"). */
export interface RepoConfig {
  format: 'vmvault-repository';
  version: number;
  id: string;
  createdAt: string;
  chunkSizeBytes: number;
  /** The chunk id function: keyed BLAKE3 exactly when encrypted. */
  chunkId: 'blake3-256' | 'blake3-256-keyed';
  compression: { codec: 'zstd' | 'none'; level: number };
  /** Packs are closed once they hold at least this many bytes (a power of two, 4–64 MiB). */
  packSizeBytes: number;
  /** Slot ids per disk index page (a power of two, 256–4096). */
  pageSlots: number;
  encryption: 'none' | 'aes-256-gcm';
  /** Encrypted only: BLAKE3-128 keyed with idKey of "vmvault-v2 key id" (keys.ts keyIdOf). */
  keyId?: string;
  /** Encrypted only: keys.ts configMac of the config without `mac`. */
  mac?: string;
  /**
   * S3 Object Lock (docs/s3.md "Object Lock"): every object but the coordination ones (sessions/,
   * locks/, gc/) is written with this retention, and prune keeps live objects' retention ahead.
   */
  objectLock?: ObjectLockConfig;
}

export interface ObjectLockConfig {
  mode: 'governance' | 'compliance';
  /** Retention of each object written, and how far ahead prune keeps live objects' (1..36500). */
  days: number;
}

export const MAX_OBJECT_LOCK_DAYS = 36_500;

export interface InitOptions {
  chunkSizeBytes?: number;
  /** zstd level 1..19, a fast level -7..-1, or 0 for no compression. */
  levelZstd?: number;
  /** 'aes-256-gcm' needs `password` (default 'none'). */
  encryption?: 'none' | 'aes-256-gcm';
  /** The password of the first key slot of an encrypted repository. */
  password?: string;
  /** Pack target size (default 16 MiB). */
  packSizeBytes?: number;
  /** Slots per disk index page (default 1024; tests use small pages). */
  pageSlots?: number;
  /** Test-only: scrypt parameters of the first key slot (keys.ts DEFAULT_KDF otherwise). */
  kdf?: { N: number; r: number; p: number };
  /**
   * Encrypted: use this master key (encKey ‖ idKey) instead of a new one — `init --from-repo`,
   * whose repository then names and seals chunks exactly as its source does.
   */
  masterKey?: Buffer;
  /** S3 Object Lock retention (the bucket must have Object Lock enabled, or be created here). */
  objectLock?: ObjectLockConfig;
}

export function newConfig(opts: InitOptions = {}): RepoConfig {
  const chunkSizeBytes = opts.chunkSizeBytes ?? DEFAULT_CHUNK_SIZE;
  if (!isPowerOfTwo(chunkSizeBytes) || chunkSizeBytes < MIN_CHUNK_SIZE || chunkSizeBytes > MAX_CHUNK_SIZE) {
    throw new UsageError(
      `invalid chunk size ${formatBytes(chunkSizeBytes)}`,
      `use a power of two from ${formatBytes(MIN_CHUNK_SIZE)} to ${formatBytes(MAX_CHUNK_SIZE)} (default ${formatBytes(DEFAULT_CHUNK_SIZE)})`,
    );
  }
  const level = opts.levelZstd ?? DEFAULT_ZSTD_LEVEL;
  if (level !== 0 && (!Number.isInteger(level) || level < MIN_ZSTD_LEVEL || level > MAX_ZSTD_LEVEL)) {
    throw new UsageError(
      `invalid zstd level ${level}`,
      `use zstd:1 to zstd:${MAX_ZSTD_LEVEL}, a fast level zstd:${MIN_ZSTD_LEVEL} to zstd:-1, or none`,
    );
  }
  const packSizeBytes = opts.packSizeBytes ?? DEFAULT_PACK_SIZE;
  if (!isPowerOfTwo(packSizeBytes) || packSizeBytes < MIN_PACK_SIZE || packSizeBytes > MAX_PACK_SIZE)
    throw new UsageError(
      `invalid pack size ${formatBytes(packSizeBytes)}`,
      `use a power of two from ${formatBytes(MIN_PACK_SIZE)} to ${formatBytes(MAX_PACK_SIZE)} (default ${formatBytes(DEFAULT_PACK_SIZE)})`,
    );
  const pageSlots = opts.pageSlots ?? DEFAULT_PAGE_SLOTS;
  if (!isPowerOfTwo(pageSlots) || pageSlots < MIN_PAGE_SLOTS || pageSlots > MAX_PAGE_SLOTS)
    throw new UsageError(
      `invalid page size ${pageSlots} slots`,
      `use a power of two from ${MIN_PAGE_SLOTS} to ${MAX_PAGE_SLOTS}`,
    );
  const lock = opts.objectLock;
  if (lock !== undefined) {
    if (!Number.isSafeInteger(lock.days) || lock.days < 1 || lock.days > MAX_OBJECT_LOCK_DAYS)
      throw new UsageError(
        `invalid Object Lock retention ${lock.days} days`,
        `use a whole number of days from 1 to ${MAX_OBJECT_LOCK_DAYS}`,
      );
    if (lock.mode !== 'governance' && lock.mode !== 'compliance')
      throw new UsageError(`invalid Object Lock mode '${String(lock.mode)}'`, 'use governance or compliance');
  }
  return {
    format: 'vmvault-repository',
    version: REPO_FORMAT_VERSION,
    id: randomBytes(32).toString('hex'),
    createdAt: new Date().toISOString(),
    chunkSizeBytes,
    chunkId: 'blake3-256',
    compression: level === 0 ? { codec: 'none', level: 0 } : { codec: 'zstd', level },
    packSizeBytes,
    pageSlots,
    encryption: 'none',
    ...(lock === undefined ? {} : { objectLock: { mode: lock.mode, days: lock.days } }),
  };
}

/** Parses `zstd`, `zstd:LEVEL` (1..19, or -7..-1: zstd's fast levels) or `none`. */
export function parseCompression(text: string): number {
  if (text === 'none') return 0;
  const m = /^zstd(?::(-?\d+))?$/.exec(text);
  const fix = `use zstd, zstd:LEVEL (1 to ${MAX_ZSTD_LEVEL}; ${MIN_ZSTD_LEVEL} to -1 for zstd's fast levels) or none`;
  if (!m) throw new UsageError(`invalid compression '${text}'`, fix);
  const level = m[1] === undefined ? DEFAULT_ZSTD_LEVEL : Number(m[1]);
  if (level === 0 || level < MIN_ZSTD_LEVEL || level > MAX_ZSTD_LEVEL)
    throw new UsageError(`invalid zstd level ${level}`, fix);
  return level;
}

/** No config is near this big; a larger `config` is damaged (and is not read into memory). */
export const MAX_CONFIG_BYTES = 64 * 1024;

export const CONFIG_HINT =
  'put it back from a copy of the repository (docs/format.md "Config" describes every field)';

const CONFIG_FIELDS = new Set([
  'format',
  'version',
  'id',
  'createdAt',
  'chunkSizeBytes',
  'compression',
  'packSizeBytes',
  'pageSlots',
  'encryption',
  'chunkId',
  'keyId',
  'mac',
  'objectLock',
]);

/** A value from an untrusted config, short and safe to print. */
function shown(value: unknown): string {
  return printable(value === undefined ? 'missing' : (JSON.stringify(value) ?? String(value)), 40);
}

/** True when `buf` is a config some vmvault wrote (whatever else is wrong with it). */
export function isRepositoryConfig(buf: Buffer): boolean {
  try {
    const obj: unknown = JSON.parse(buf.toString('utf8'));
    return (
      typeof obj === 'object' && obj !== null && (obj as { format?: unknown }).format === 'vmvault-repository'
    );
  } catch {
    return false;
  }
}

/** Key prefixes only a repository has: a location holding one of them but no config is a damaged repository. */
const REPOSITORY_PREFIXES = [
  Keys.dataPrefix,
  Keys.metaPrefix,
  Keys.indexPrefix,
  Keys.snapshotPrefix,
  Keys.quarantinePrefix,
  Keys.lockPrefix,
  Keys.keyPrefix,
];

/** The first repository object at the backend's location (a chunk, index, manifest, ...), if any. */
export async function findRepositoryObject(backend: Backend): Promise<string | undefined> {
  for (const prefix of REPOSITORY_PREFIXES) {
    for await (const obj of backend.list(prefix)) return obj.key;
  }
  return undefined;
}

/**
 * Parses and validates `config` (untrusted: any host that can write the repository wrote it).
 * Every field is checked; the error names the first bad one.
 */
export function parseConfig(buf: Buffer, location: string): RepoConfig {
  const damaged = (what: string): RepoFormatError =>
    new RepoFormatError(`the config of ${location} is damaged: ${what}`, CONFIG_HINT);
  if (buf.length === 0) throw damaged('it is empty');
  let obj: unknown;
  try {
    obj = JSON.parse(buf.toString('utf8'));
  } catch {
    throw damaged('it is not valid JSON (truncated or overwritten?)');
  }
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) throw damaged('it is not a JSON object');
  const c = obj as Record<string, unknown>;
  if (c.format !== 'vmvault-repository')
    throw new RepoFormatError(
      `${location} is not a vmvault repository (its config has format ${shown(c.format)})`,
      'pass the right --repo',
    );
  if (typeof c.version !== 'number' || !Number.isSafeInteger(c.version) || c.version < 1)
    throw damaged(`version is ${shown(c.version)}, not a format version`);
  if (c.version === 1)
    throw new RepoFormatError(
      `${location} is a format 1 repository, which this vmvault does not read`,
      "create a new one with 'vmvault init' and back up again",
    );
  if (c.version !== REPO_FORMAT_VERSION) {
    throw new RepoFormatError(
      `repository format version ${c.version} is not supported (this vmvault reads version ${REPO_FORMAT_VERSION})`,
      'upgrade vmvault',
    );
  }
  for (const k of Object.keys(c)) if (!CONFIG_FIELDS.has(k)) throw damaged(`unknown field ${shown(k)}`);
  if (typeof c.id !== 'string' || !/^[0-9a-f]{64}$/.test(c.id))
    throw damaged(`id is ${shown(c.id)}, not 64 lowercase hex digits`);
  if (
    typeof c.createdAt !== 'string' ||
    !/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$/.test(c.createdAt) ||
    !Number.isFinite(Date.parse(c.createdAt))
  )
    throw damaged(`createdAt is ${shown(c.createdAt)}, not a UTC time (2026-11-22T14:00:00.000Z)`);
  const cs = c.chunkSizeBytes;
  if (
    typeof cs !== 'number' ||
    !Number.isSafeInteger(cs) ||
    !isPowerOfTwo(cs) ||
    cs < MIN_CHUNK_SIZE ||
    cs > MAX_CHUNK_SIZE
  )
    throw damaged(
      `chunkSizeBytes is ${shown(cs)}, not a power of two from ${MIN_CHUNK_SIZE} to ${MAX_CHUNK_SIZE}`,
    );
  const ps = c.packSizeBytes;
  if (
    typeof ps !== 'number' ||
    !Number.isSafeInteger(ps) ||
    !isPowerOfTwo(ps) ||
    ps < MIN_PACK_SIZE ||
    ps > MAX_PACK_SIZE
  )
    throw damaged(
      `packSizeBytes is ${shown(ps)}, not a power of two from ${MIN_PACK_SIZE} to ${MAX_PACK_SIZE}`,
    );
  const slots = c.pageSlots;
  if (
    typeof slots !== 'number' ||
    !Number.isSafeInteger(slots) ||
    !isPowerOfTwo(slots) ||
    slots < MIN_PAGE_SLOTS ||
    slots > MAX_PAGE_SLOTS
  )
    throw damaged(
      `pageSlots is ${shown(slots)}, not a power of two from ${MIN_PAGE_SLOTS} to ${MAX_PAGE_SLOTS}`,
    );
  const comp = c.compression;
  if (typeof comp !== 'object' || comp === null || Array.isArray(comp))
    throw damaged(`compression is ${shown(comp)}, not {"codec": ..., "level": ...}`);
  const { codec, level, ...extra } = comp as Record<string, unknown>;
  const extraKey = Object.keys(extra)[0];
  if (extraKey !== undefined) throw damaged(`unknown field compression.${shown(extraKey)}`);
  if (codec === 'zstd') {
    if (
      typeof level !== 'number' ||
      !Number.isInteger(level) ||
      level === 0 ||
      level < MIN_ZSTD_LEVEL ||
      level > MAX_ZSTD_LEVEL
    )
      throw damaged(
        `compression.level is ${shown(level)}, not a zstd level (${MIN_ZSTD_LEVEL} to -1 or 1 to ${MAX_ZSTD_LEVEL})`,
      );
  } else if (codec === 'none') {
    if (level !== 0) throw damaged(`compression.level is ${shown(level)}; codec "none" has level 0`);
  } else {
    throw damaged(`compression.codec is ${shown(codec)}, not "zstd" or "none"`);
  }
  if (c.encryption === 'aes-256-gcm') {
    if (c.chunkId !== 'blake3-256-keyed')
      throw damaged(`chunkId is ${shown(c.chunkId)}, not "blake3-256-keyed"`);
    if (typeof c.keyId !== 'string' || !/^[0-9a-f]{32}$/.test(c.keyId))
      throw damaged(`keyId is ${shown(c.keyId)}, not 32 lowercase hex digits`);
    if (typeof c.mac !== 'string' || !/^[0-9a-f]{64}$/.test(c.mac))
      throw damaged(`mac is ${shown(c.mac)}, not 64 lowercase hex digits`);
  } else if (c.encryption === 'none') {
    if (c.chunkId !== 'blake3-256')
      throw damaged(`chunkId is ${shown(c.chunkId)}; an unencrypted repository has "blake3-256"`);
    if (c.keyId !== undefined || c.mac !== undefined)
      throw damaged('keyId and mac belong to encrypted repositories only');
  } else {
    if (typeof c.encryption === 'string')
      throw new RepoFormatError(
        `repository encryption ${shown(c.encryption)} is not supported`,
        'upgrade vmvault',
      );
    throw damaged(`encryption is ${shown(c.encryption)}, not "none" or "aes-256-gcm"`);
  }
  let objectLock: ObjectLockConfig | undefined;
  if (c.objectLock !== undefined) {
    const ol = c.objectLock as Record<string, unknown> | null;
    if (typeof ol !== 'object' || ol === null || Array.isArray(ol))
      throw damaged(`objectLock is ${shown(c.objectLock)}, not {"mode": ..., "days": ...}`);
    const extra = Object.keys(ol).find((k) => k !== 'mode' && k !== 'days');
    if (extra !== undefined) throw damaged(`unknown field objectLock.${shown(extra)}`);
    if (ol.mode !== 'governance' && ol.mode !== 'compliance')
      throw damaged(`objectLock.mode is ${shown(ol.mode)}, not "governance" or "compliance"`);
    const d = ol.days;
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 1 || d > MAX_OBJECT_LOCK_DAYS)
      throw damaged(`objectLock.days is ${shown(d)}, not a whole number from 1 to ${MAX_OBJECT_LOCK_DAYS}`);
    objectLock = { mode: ol.mode, days: d };
  }
  return {
    format: 'vmvault-repository',
    version: c.version,
    id: c.id,
    createdAt: c.createdAt,
    chunkSizeBytes: cs,
    chunkId: c.encryption === 'aes-256-gcm' ? 'blake3-256-keyed' : 'blake3-256',
    compression: codec === 'none' ? { codec: 'none', level: 0 } : { codec: 'zstd', level: level as number },
    packSizeBytes: ps,
    pageSlots: slots,
    encryption: c.encryption,
    ...(c.encryption === 'aes-256-gcm' ? { keyId: c.keyId as string, mac: c.mac as string } : {}),
    ...(objectLock === undefined ? {} : { objectLock }),
  };
}

/**
 * The retention period of a repository's Object Lock, in ms (days × 24 h). Tests shorten it with
 * VMVAULT_TEST_OBJECT_LOCK_SECONDS (a real bucket's retention is whole days; the S3 proxy's is not).
 */
export function objectLockPeriodMs(lock: ObjectLockConfig): number {
  const test = process.env.VMVAULT_TEST_OBJECT_LOCK_SECONDS;
  if (test !== undefined && /^\d{1,7}$/.test(test) && Number(test) > 0) return Number(test) * 1000;
  return lock.days * 86_400_000;
}
