/**
 * Every magic number, version and key prefix of the repository format lives here.
 * docs/format.md describes each byte; keep the two in step.
 */

/** Repository format version written into `config`. Readers refuse versions they don't know. */
export const REPO_FORMAT_VERSION = 2;

/**
 * The most plaintext one zstd payload byte can stand for: a zstd RLE block is 4 bytes (3 header
 * bytes and the byte to repeat) for at most 128 KiB, and no block kind does better. A record entry
 * or object header that claims more plaintext than `payload × this` is damage, found before
 * anything is allocated.
 */
export const ZSTD_MAX_EXPANSION = 32768;

/** The codec byte of a blob v2 header (and of a record's entry): stored raw, or zstd. */
export const Codec = {
  NONE: 0,
  ZSTD: 1,
} as const;
export type Codec = (typeof Codec)[keyof typeof Codec];

/** The bytes of a chunk id, a page id and a slot of a disk index. */
export const CHUNK_ID_BYTES = 32;
/**
 * The most slots one disk may have (2^26: 64 TiB at 1 MiB chunks, 4 TiB at 64 KiB, 1 PiB at
 * 16 MiB): its disk index then takes at most 2 GiB of slot ids in memory, which a reader can
 * still hold. Readers refuse a manifest's disk with more slots, and a backup of a larger disk
 * fails before it reads anything.
 */
export const MAX_INDEX_SLOTS = 2 ** 26;
/** The largest snapshot manifest (its JSON) a reader accepts; real ones are a few KiB. */
export const MAX_MANIFEST_BYTES = 16 * 1024 * 1024;

/** Snapshot manifest schema version (the JSON inside the manifest object); readers refuse 1. */
export const MANIFEST_VERSION = 2;

/**
 * Disk index pages (docs/format.md "Disk index pages", src/repo/disk-tree.ts): a disk is a tree of
 * leaf pages ("VMVL", `pageSlots` slot ids each) and inner pages ("VMVN", `pageSlots` child page
 * ids each), stored as records of kind 3 (leaf) and 4 (inner) in meta packs.
 */
export const LEAF_PAGE_MAGIC = 0x564d564c;
export const INNER_PAGE_MAGIC = 0x564d564e;
export const PAGE_VERSION = 2;
/** magic u32, version u8, level u8, reserved u16, chunk size u32 (leaf) / 0 (inner), entry count u32. */
export const PAGE_HEADER_BYTES = 16;
/** The config's range for `pageSlots` (a power of two); 1024 by default (bench/index-pages.ts). */
export const MIN_PAGE_SLOTS = 256;
export const MAX_PAGE_SLOTS = 4096;
export const DEFAULT_PAGE_SLOTS = 1024;
/** Pack target size (`init --pack-size`, config.packSizeBytes): a power of two in this range. */
export const MIN_PACK_SIZE = 4 * 1024 * 1024;
export const MAX_PACK_SIZE = 64 * 1024 * 1024;
export const DEFAULT_PACK_SIZE = 16 * 1024 * 1024;

/** Key layout. Keys use '/' separators; no backend may assume a POSIX filesystem beyond that. */
export const Keys = {
  config: 'config',
  /** Data packs: data/<hh>/<32 hex> (docs/format.md "Packs"). */
  dataPrefix: 'data/',
  /** Meta packs (disk index pages): meta/<hh>/<32 hex>. */
  metaPrefix: 'meta/',
  /** Chunk index objects: index/<32 hex>. */
  indexPrefix: 'index/',
  snapshotPrefix: 'snapshots/',
  lockPrefix: 'locks/',
  /** Sessions, the leases of running processes (docs/gc.md): sessions/<32 hex>. */
  sessionPrefix: 'sessions/',
  keyPrefix: 'keys/',
  /** Informative records replaced in place: status/check, the last check's result (docs/format.md). */
  statusPrefix: 'status/',
  /** Void records and damaged manifests set aside by `check --repair` (docs/format.md "Key layout"). */
  quarantinePrefix: 'quarantine/',
  snapshot(hexId: string): string {
    return `snapshots/${hexId}`;
  },
  session(idHex: string): string {
    return `sessions/${idHex}`;
  },
  lock(name: string): string {
    return `locks/${name}`;
  },
  /**
   * quarantine/snapshot-<64 hex>-<UTC time, e.g. 20261201T201500Z>: a damaged manifest moved out
   * of snapshots/.
   */
  quarantineSnapshot(hexId: string, stamp: string): string {
    return `quarantine/snapshot-${hexId}-${stamp}`;
  },
} as const;

export const MIN_CHUNK_SIZE = 64 * 1024;
export const MAX_CHUNK_SIZE = 16 * 1024 * 1024;
export const DEFAULT_CHUNK_SIZE = 1024 * 1024;
export const DEFAULT_ZSTD_LEVEL = 1;
/** zstd's fast levels (negative: less compression, more speed) go down to this. */
export const MIN_ZSTD_LEVEL = -7;
export const MAX_ZSTD_LEVEL = 19;

/** The zstd level of disk index pages and manifests, whatever the repository's chunk level. */
export const METADATA_ZSTD_LEVEL = 3;
