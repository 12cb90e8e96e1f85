import type { BlobCodec } from './codec.js';
import {
  MANIFEST_LIMITS,
  ManifestFieldError,
  SnapshotDamagedError,
  validateManifest,
  vmNameOf,
} from './manifest-schema.js';

/** A snapshot id: BLAKE3-256 of the manifest JSON, 64 lowercase hex characters. */
export type SnapshotId = string & { readonly __brand: 'SnapshotId' };

export interface DiskStats {
  /** Bytes read from the source (data extents only). */
  bytesRead: number;
  /** Plaintext bytes of chunks the repository did not have yet. */
  bytesNew: number;
  /** Bytes read whose chunk the repository already had. */
  bytesDedup: number;
  /** Bytes that are holes or all zero (never stored). */
  bytesZero: number;
  /** Bytes taken unchanged from the parent snapshot's index without reading. */
  bytesReused: number;
  /** Bytes written to the repository for this disk's new chunks (after compression, with headers). */
  bytesStored: number;
  chunksNew: number;
  /** Bytes of metadata this disk's backup wrote: its new disk index pages and their index entries. */
  bytesMeta?: number | undefined;
}

/** Stats of a disk before anything was read (every counter zero). */
export function emptyDiskStats(): DiskStats {
  return {
    bytesRead: 0,
    bytesNew: 0,
    bytesDedup: 0,
    bytesZero: 0,
    bytesReused: 0,
    bytesStored: 0,
    chunksNew: 0,
  };
}

export interface SnapshotDisk {
  /** Disk target, e.g. `vda`. */
  target: string;
  sizeBytes: number;
  chunkSizeBytes: number;
  /** Id of the root page of the disk's index tree, or the zero marker (64 zeros) for an all-zero disk. */
  root: string;
  /** Format of the source image (qcow2, raw). Informational; restores choose their own format. */
  sourceFormat?: string | undefined;
  /** Source path on the host at backup time. */
  source?: string | undefined;
  /** How this disk was read: full (whole disk) or incremental (dirty extents only). */
  mode?: string | undefined;
  /** Name of the dirty bitmap this backup's checkpoint created for the disk (live full/inc). */
  checkpointBitmap?: string | undefined;
  /** Bytes of the disk that hold non-zero data (sum of non-zero slots). */
  allocatedBytes: number;
  stats: DiskStats;
}

/** A file stored beside the disks (domain XML, checkpoint XML, nvram, kernel ...). */
export interface SnapshotFile {
  kind: string;
  name: string;
  sizeBytes: number;
  /** Chunk ids of its content, in order, each up to the repository chunk size. */
  chunks: string[];
}

export interface SnapshotManifest {
  version: number;
  vm: { name: string; uuid?: string | undefined };
  time: string;
  host: string;
  tags: string[];
  parent: string | null;
  /** full, inc, diff, copy (live backups) or image (backup-image). */
  mode: string;
  /** The libvirt checkpoint this snapshot ends at, if any. */
  checkpoint: string | null;
  disks: SnapshotDisk[];
  files: SnapshotFile[];
  program: string;
  /** Where the snapshot was first written (sync keeps it: one origin, one snapshot). */
  origin?: SnapshotOrigin | undefined;
  /** Kept by retention policies whatever they say. */
  protected?: boolean | undefined;
  /** Free text, at most 4096 printable characters. */
  note?: string | undefined;
  /** When tags, protection or the note last changed (a new manifest of the same origin). */
  edited?: string | undefined;
}

/** The repository (its config id) and snapshot id a snapshot was first written as. */
export interface SnapshotOrigin {
  repository: string;
  snapshot: string;
}

export interface Snapshot extends SnapshotManifest {
  id: SnapshotId;
  /**
   * Not stored: older manifests of the same origin that this one replaced (an edit whose old
   * manifest a killed process left behind). Listings hide them; forget deletes them too.
   */
  superseded?: SnapshotId[];
}

/** A manifest's bytes and its id (the codec's object id of the bytes). */
export function encodeManifest(m: SnapshotManifest, codec: BlobCodec): { id: SnapshotId; json: Buffer } {
  const json = Buffer.from(JSON.stringify(m), 'utf8');
  return { id: codec.objectId(json) as SnapshotId, json };
}

/**
 * Decodes and validates a manifest read from `snapshots/<id>` (after its blob was decoded): the id
 * must be the codec's object id of the bytes, the bytes JSON, and the JSON must satisfy the schema
 * (manifest-schema.ts) for a repository of `chunkSizeBytes`. Anything else is a
 * SnapshotDamagedError naming the snapshot and, for the schema, the field.
 */
export function decodeManifest(id: string, json: Buffer, chunkSizeBytes: number, codec: BlobCodec): Snapshot {
  if (json.length > MANIFEST_LIMITS.maxManifestBytes)
    throw new SnapshotDamagedError(
      id,
      `the manifest is ${json.length} bytes, at most ${MANIFEST_LIMITS.maxManifestBytes} allowed`,
    );
  if (!codec.verify(json, id)) throw new SnapshotDamagedError(id, 'content does not match its id');
  let value: unknown;
  try {
    value = JSON.parse(json.toString('utf8'));
  } catch {
    throw new SnapshotDamagedError(id, 'the manifest is not valid JSON');
  }
  try {
    return { ...validateManifest(value, chunkSizeBytes), id: id as SnapshotId };
  } catch (err) {
    if (!(err instanceof ManifestFieldError)) throw err;
    throw new SnapshotDamagedError(id, err.unsupportedVersion ? `manifest ${err.message}` : err.message, {
      field: err.field,
      vm: vmNameOf(value),
      unsupportedVersion: err.unsupportedVersion,
    });
  }
}

export function shortId(id: string): string {
  return id.slice(0, 8);
}
