/**
 * Every magic number, version and key prefix of the repository format lives here.
 * docs/format.md describes each byte; keep the two in step.
 */

/** Repository format version written into `config`. Readers refuse versions they don't know. */
export const REPO_FORMAT_VERSION = 1;

/** Blob header magic: "VMVB". */
export const BLOB_MAGIC = 0x564d5642;
export const BLOB_VERSION = 1;
/** magic u32, version u8, codec u8, flags u8, reserved u8, plaintext length u64, payload length u64, nonce[12]. */
export const BLOB_HEADER_BYTES = 36;
/** Integrity tag after the payload: BLAKE3-128 of header+payload (or the AES-GCM tag when encrypted). */
export const BLOB_TAG_BYTES = 16;
export const BLOB_NONCE_BYTES = 12;

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

/** Snapshot manifest schema version (the JSON inside the manifest blob). */
export const MANIFEST_VERSION = 1;

/** Key layout. Keys use '/' separators; no backend may assume a POSIX filesystem beyond that. */
export const Keys = {
  config: 'config',
  dataPrefix: 'data/',
  indexPrefix: 'index/',
  snapshotPrefix: 'snapshots/',
  lockPrefix: 'locks/',
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
