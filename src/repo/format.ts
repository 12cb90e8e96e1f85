/**
 * Every magic number, version and key prefix of the repository format lives here.
 * docs/format.md describes each byte; keep the two in step.
 */

/** Repository format version written into `config`. Readers refuse versions they don't know. */
export const REPO_FORMAT_VERSION = 2;

/** Blob header magic: "VMVB". */
export const BLOB_MAGIC = 0x564d5642;
export const BLOB_VERSION = 1;
/** magic u32, version u8, codec u8, flags u8, reserved u8, plaintext length u64, payload length u64, nonce[12]. */
export const BLOB_HEADER_BYTES = 36;
/** Integrity tag after the payload: BLAKE3-128 of header+payload (or the AES-GCM tag when encrypted). */
export const BLOB_TAG_BYTES = 16;
export const BLOB_NONCE_BYTES = 12;
/**
 * The most plaintext one zstd payload byte can stand for: a zstd RLE block is 4 bytes (3 header
 * bytes and the byte to repeat) for at most 128 KiB, and no block kind does better. A header that
 * claims more plaintext than `payload × this` is damage, found before anything is allocated.
 */
export const ZSTD_MAX_EXPANSION = 32768;

export const Codec = {
  NONE: 0,
  ZSTD: 1,
} as const;
export type Codec = (typeof Codec)[keyof typeof Codec];

export const BlobFlag = {
  /** Reserved for encryption (AES-256-GCM, nonce in the header, tag in the trailer). Must be 0 in v1. */
  ENCRYPTED: 0x01,
} as const;

/** Disk index magic: "VMVI". */
export const INDEX_MAGIC = 0x564d5649;
export const INDEX_VERSION = 1;
/** magic u32, version u8, reserved[3], chunk size u32, reserved u32, disk size u64, slot count u64. */
export const INDEX_HEADER_BYTES = 32;
export const CHUNK_ID_BYTES = 32;
/**
 * The most slots one disk index may have (2^26: 64 TiB at 1 MiB chunks, 4 TiB at 64 KiB, 1 PiB at
 * 16 MiB): its plaintext is then at most 2 GiB + 64 bytes, which a reader can still hold. Readers
 * refuse larger indexes, and a backup of a larger disk fails before it reads anything.
 */
export const MAX_INDEX_SLOTS = 2 ** 26;
/** The largest disk index plaintext: header, MAX_INDEX_SLOTS slots, checksum. */
export const MAX_INDEX_BYTES = 32 + MAX_INDEX_SLOTS * 32 + 32;
/** The largest snapshot manifest (its JSON) a reader accepts; real ones are a few KiB. */
export const MAX_MANIFEST_BYTES = 16 * 1024 * 1024;
/** The largest plaintext of any blob (an index is the largest object kind). */
export const MAX_BLOB_PLAINTEXT_BYTES = MAX_INDEX_BYTES;

/** Snapshot manifest schema version (the JSON inside the manifest blob); 1 was format 1's. */
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
  /** Corrupt chunk blobs set aside by `check --repair`; never read by vmvault. */
  quarantinePrefix: 'quarantine/',
  /** data/<first two hex>/<64 hex>: 256-way fan-out keeps directories and S3 prefixes small. */
  data(hexId: string): string {
    return `data/${hexId.slice(0, 2)}/${hexId}`;
  },
  index(hexId: string): string {
    return `index/${hexId.slice(0, 2)}/${hexId}`;
  },
  snapshot(hexId: string): string {
    return `snapshots/${hexId}`;
  },
  session(idHex: string): string {
    return `sessions/${idHex}`;
  },
  lock(name: string): string {
    return `locks/${name}`;
  },
  /** quarantine/<64 hex>-<UTC time, e.g. 20261201T201500Z>: a chunk blob moved out of data/. */
  quarantine(hexId: string, stamp: string): string {
    return `quarantine/${hexId}-${stamp}`;
  },
  /** quarantine/index-<64 hex>-<time>: a damaged disk index blob moved out of index/. */
  quarantineIndex(hexId: string, stamp: string): string {
    return `quarantine/index-${hexId}-${stamp}`;
  },
  /** quarantine/snapshot-<64 hex>-<time>: a damaged manifest blob moved out of snapshots/. */
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

/** The zstd level of disk indexes and manifests, whatever the repository's chunk level. */
export const METADATA_ZSTD_LEVEL = 3;
