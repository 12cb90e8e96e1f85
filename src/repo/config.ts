import { randomBytes } from 'node:crypto';
import { isPowerOfTwo, UsageError, formatBytes } from '../util/index.js';
import {
  DEFAULT_CHUNK_SIZE,
  DEFAULT_ZSTD_LEVEL,
  MAX_CHUNK_SIZE,
  MAX_ZSTD_LEVEL,
  MIN_CHUNK_SIZE,
  MIN_ZSTD_LEVEL,
  REPO_FORMAT_VERSION,
} from './format.js';
import { RepoFormatError } from './errors.js';

/** The `config` object (plain JSON; docs/format.md "Config"). */
export interface RepoConfig {
  format: 'vmvault-repository';
  version: number;
  id: string;
  createdAt: string;
  chunkSizeBytes: number;
  hash: 'blake3-256';
  compression: { codec: 'zstd' | 'none'; level: number };
  encryption: 'none';
}

export interface InitOptions {
  chunkSizeBytes?: number;
  /** zstd level 1..19, a fast level -7..-1, or 0 for no compression. */
  levelZstd?: number;
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
  return {
    format: 'vmvault-repository',
    version: REPO_FORMAT_VERSION,
    id: randomBytes(32).toString('hex'),
    createdAt: new Date().toISOString(),
    chunkSizeBytes,
    hash: 'blake3-256',
    compression: level === 0 ? { codec: 'none', level: 0 } : { codec: 'zstd', level },
    encryption: 'none',
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

export function parseConfig(buf: Buffer, location: string): RepoConfig {
  let obj: unknown;
  try {
    obj = JSON.parse(buf.toString('utf8'));
  } catch {
    throw new RepoFormatError(`the config of ${location} is not valid JSON`);
  }
  const c = obj as Partial<RepoConfig>;
  if (c.format !== 'vmvault-repository') throw new RepoFormatError(`${location} is not a vmvault repository`);
  if (c.version !== REPO_FORMAT_VERSION) {
    throw new RepoFormatError(
      `repository format version ${String(c.version)} is not supported (this vmvault reads version ${REPO_FORMAT_VERSION})`,
      'upgrade vmvault',
    );
  }
  if (
    typeof c.chunkSizeBytes !== 'number' ||
    !isPowerOfTwo(c.chunkSizeBytes) ||
    typeof c.id !== 'string' ||
    !c.compression
  ) {
    throw new RepoFormatError(`the config of ${location} is damaged`);
  }
  if (c.encryption !== 'none')
    throw new RepoFormatError(
      `repository encryption '${String(c.encryption)}' is not supported`,
      'upgrade vmvault',
    );
  return c as RepoConfig;
}
