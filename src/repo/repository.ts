import { hostname } from 'node:os';
import { blake3 } from '@napi-rs/blake-hash';
import type { Backend } from './backend/backend.js';
import { openBackend } from './backend/open.js';
import { decodeBlob, encodeBlob, BlobFormatError, readBlobHeader } from './blob.js';
import { isAllZero, type ChunkId } from './chunk-id.js';
import { ChunkStore } from './chunk-store.js';
import { newConfig, parseConfig, type InitOptions, type RepoConfig } from './config.js';
import { DiskIndex } from './disk-index.js';
import {
  isNotFound,
  RepoExistsError,
  RepoFormatError,
  RepoNotFoundError,
  SnapshotNotFoundError,
} from './errors.js';
import { Keys } from './format.js';
import { MANIFEST_LIMITS, SnapshotDamagedError } from './manifest-schema.js';
import {
  decodeManifest,
  encodeManifest,
  shortId,
  type Snapshot,
  type SnapshotFile,
  type SnapshotManifest,
} from './snapshot.js';
import { byTime, resolveSnapshotRef } from './snapshot-ref.js';
import { LocalBackend } from './backend/local.js';

export interface OpenOptions {
  /** Worker threads for compression / verification (default: cores). 0 = inline. */
  workers?: number;
  /**
   * Called once per damaged manifest that a listing or a reference resolution skipped (the
   * CLI prints a warning). Without it, damaged manifests are left out silently.
   */
  onDamagedSnapshot?: (err: SnapshotDamagedError) => void;
}

/** Every manifest of the repository: the sound ones, and what is wrong with the others. */
export interface SnapshotListing {
  /** Oldest first. */
  snapshots: Snapshot[];
  /** By id. */
  damaged: SnapshotDamagedError[];
}

const HEX64 = /^[0-9a-f]{64}$/;

/** The repository façade: config, chunk store, indexes and snapshot manifests over one backend. */
export class Repository {
  readonly chunks: ChunkStore;

  private constructor(
    readonly backend: Backend,
    readonly config: RepoConfig,
    opts: OpenOptions,
  ) {
    this.chunks = new ChunkStore(backend, config.compression.level, opts.workers);
    this.onDamagedSnapshot = opts.onDamagedSnapshot;
  }
  private readonly onDamagedSnapshot: ((err: SnapshotDamagedError) => void) | undefined;

  get location(): string {
    return this.backend.location;
  }
  get chunkSizeBytes(): number {
    return this.config.chunkSizeBytes;
  }

  static async init(
    location: string,
    opts: InitOptions = {},
    backend: Backend = openBackend(location),
  ): Promise<Repository> {
    const config = newConfig(opts);
    if (await backend.exists(Keys.config)) throw new RepoExistsError(backend.location);
    for await (const obj of backend.list('')) {
      throw new RepoExistsError(`${backend.location} (the location is not empty: ${obj.key})`);
    }
    const created = await backend.putIfAbsent(
      Keys.config,
      Buffer.from(`${JSON.stringify(config, null, 2)}\n`),
    );
    if (!created) throw new RepoExistsError(backend.location);
    return new Repository(backend, config, {});
  }

  static async open(
    location: string,
    opts: OpenOptions = {},
    backend: Backend = openBackend(location),
  ): Promise<Repository> {
    let raw: Buffer;
    try {
      raw = await backend.get(Keys.config);
    } catch (err) {
      if (isNotFound(err)) throw new RepoNotFoundError(backend.location, err);
      throw err;
    }
    const repo = new Repository(backend, parseConfig(raw, backend.location), opts);
    if (backend instanceof LocalBackend) await backend.removeStaleTemp(24 * 3600_000).catch(() => 0);
    return repo;
  }

  // ---- disk indexes -------------------------------------------------------------------------

  async putIndex(index: DiskIndex): Promise<{ id: string; storedBytes: number }> {
    const plain = index.encode();
    const id = blake3(plain).toString('hex');
    const blob = encodeBlob(plain, { levelZstd: 3 });
    await this.chunks.flush(); // the chunks it names are durable before the index is
    const created = await this.backend.putIfAbsent(Keys.index(id), blob);
    return { id, storedBytes: created ? blob.length : 0 };
  }

  async getIndex(id: string): Promise<DiskIndex> {
    let blob: Buffer;
    try {
      blob = await this.backend.get(Keys.index(id));
    } catch (err) {
      if (isNotFound(err))
        throw new RepoFormatError(`disk index ${id.slice(0, 8)} is missing`, "run 'vmvault check'");
      throw err;
    }
    let plain: Buffer;
    try {
      plain = decodeBlob(blob);
    } catch (err) {
      throw new RepoFormatError(
        `disk index ${id.slice(0, 8)} is damaged: ${(err as BlobFormatError).message}`,
        "run 'vmvault check'",
      );
    }
    if (blake3(plain).toString('hex') !== id)
      throw new RepoFormatError(`disk index ${id.slice(0, 8)} does not match its id`, "run 'vmvault check'");
    return DiskIndex.decode(plain);
  }

  // ---- snapshots ----------------------------------------------------------------------------

  /** Writes a manifest (last step of a backup). The snapshot exists once this returns. */
  async putSnapshot(manifest: SnapshotManifest): Promise<Snapshot> {
    const { id, json } = encodeManifest(manifest);
    await this.chunks.flush(); // the file chunks it names (putFile) are durable before it is
    await this.backend.putIfAbsent(Keys.snapshot(id), encodeBlob(json, { levelZstd: 3 }));
    return { ...manifest, id };
  }

  /**
   * One snapshot by full id. Throws SnapshotNotFoundError when there is none and
   * SnapshotDamagedError (exit 20) when its manifest is unreadable or fails the schema.
   */
  async getSnapshot(id: string): Promise<Snapshot> {
    if (!HEX64.test(id)) throw new SnapshotNotFoundError(id);
    let blob: Buffer;
    try {
      blob = await this.backend.get(Keys.snapshot(id));
    } catch (err) {
      if (isNotFound(err)) throw new SnapshotNotFoundError(shortId(id));
      throw err;
    }
    return this.decodeSnapshot(id, blob);
  }

  /** A manifest blob read from `snapshots/<id>`, decoded and validated (never trusts the header's length). */
  decodeSnapshot(id: string, blob: Buffer): Snapshot {
    let json: Buffer;
    try {
      const h = readBlobHeader(blob);
      if (h.plaintextBytes > MANIFEST_LIMITS.maxManifestBytes)
        throw new BlobFormatError(
          `its blob header says ${h.plaintextBytes} bytes of manifest, at most ${MANIFEST_LIMITS.maxManifestBytes} allowed`,
        );
      json = decodeBlob(blob);
    } catch (err) {
      if (err instanceof BlobFormatError) throw new SnapshotDamagedError(id, err.message);
      throw err;
    }
    return decodeManifest(id, json, this.chunkSizeBytes);
  }

  async snapshotIds(): Promise<string[]> {
    return (await this.snapshotObjects()).map((o) => o.id);
  }

  private async snapshotObjects(): Promise<Array<{ id: string; sizeBytes: number }>> {
    const objs: Array<{ id: string; sizeBytes: number }> = [];
    for await (const o of this.backend.list(Keys.snapshotPrefix)) {
      const id = o.key.slice(Keys.snapshotPrefix.length);
      if (HEX64.test(id)) objs.push({ id, sizeBytes: o.sizeBytes });
    }
    return objs;
  }

  /**
   * Every manifest, read and validated: the sound snapshots (oldest first) and, separately, one
   * SnapshotDamagedError per manifest that cannot be used. Reports nothing: see `listSnapshots`.
   */
  async scanSnapshots(): Promise<SnapshotListing> {
    const objs = await this.snapshotObjects();
    const snapshots: Snapshot[] = [];
    const damaged: SnapshotDamagedError[] = [];
    let next = 0;
    const worker = async (): Promise<void> => {
      for (let o = objs[next++]; o; o = objs[next++]) {
        // A manifest blob can be no larger than its bound plus the envelope (zstd never expands
        // much): refuse a huge object without reading it.
        if (o.sizeBytes > MANIFEST_LIMITS.maxManifestBytes + 64 * 1024) {
          damaged.push(
            new SnapshotDamagedError(
              o.id,
              `the manifest object is ${o.sizeBytes} bytes, far more than a manifest`,
            ),
          );
          continue;
        }
        try {
          snapshots.push(await this.getSnapshot(o.id));
        } catch (err) {
          if (err instanceof SnapshotDamagedError) damaged.push(err);
          else if (!(err instanceof SnapshotNotFoundError)) throw err; // deleted meanwhile: not listed
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(16, objs.length) }, worker));
    damaged.sort((a, b) => (a.snapshotId < b.snapshotId ? -1 : 1));
    return { snapshots: snapshots.sort(byTime), damaged };
  }

  /**
   * Every sound snapshot, oldest first. A damaged manifest never stops the listing: it is left
   * out and reported once per repository handle to `OpenOptions.onDamagedSnapshot`.
   */
  async listSnapshots(): Promise<Snapshot[]> {
    const { snapshots, damaged } = await this.scanSnapshots();
    this.reportDamagedSnapshots(damaged);
    return snapshots;
  }

  /**
   * Resolves a reference (snapshot-ref.ts) among the sound snapshots; damaged ones are reported as
   * by `listSnapshots`. A reference that names exactly a damaged snapshot (its id or an id prefix)
   * throws that snapshot's SnapshotDamagedError (exit 20).
   */
  async resolveSnapshot(ref: string): Promise<Snapshot> {
    const { snapshots, damaged } = await this.scanSnapshots();
    try {
      const s = resolveSnapshotRef(ref, snapshots, damaged);
      this.reportDamagedSnapshots(damaged);
      return s;
    } catch (err) {
      // The error names the one the user asked for; warn about the others only.
      this.reportDamagedSnapshots(damaged.filter((d) => d !== err));
      throw err;
    }
  }

  private readonly reportedDamaged = new Set<string>();
  /** Passes damaged manifests (of `scanSnapshots`) to `OpenOptions.onDamagedSnapshot`, each once. */
  reportDamagedSnapshots(damaged: readonly SnapshotDamagedError[]): void {
    for (const d of damaged) {
      if (this.reportedDamaged.has(d.snapshotId)) continue;
      this.reportedDamaged.add(d.snapshotId);
      this.onDamagedSnapshot?.(d);
    }
  }

  async deleteSnapshot(id: string): Promise<void> {
    if (!HEX64.test(id)) throw new SnapshotNotFoundError(id);
    await this.backend.delete(Keys.snapshot(id));
  }

  // ---- small files stored beside the disks ---------------------------------------------------

  async putFile(kind: string, name: string, data: Buffer): Promise<SnapshotFile> {
    const chunks: string[] = [];
    const cs = this.chunkSizeBytes;
    for (let off = 0; off < data.length; off += cs) {
      const piece = data.subarray(off, Math.min(off + cs, data.length));
      if (isAllZero(piece)) chunks.push('0'.repeat(64));
      else chunks.push((await this.chunks.put(Buffer.from(piece))).id);
    }
    return { kind, name, sizeBytes: data.length, chunks };
  }

  async getFile(file: SnapshotFile): Promise<Buffer> {
    const parts: Buffer[] = [];
    let left = file.sizeBytes;
    for (const id of file.chunks) {
      const len = Math.min(left, this.chunkSizeBytes);
      parts.push(/^0+$/.test(id) ? Buffer.alloc(len) : await this.chunks.get(id as ChunkId));
      left -= len;
    }
    return Buffer.concat(parts);
  }

  async close(): Promise<void> {
    await this.chunks.close();
    await this.backend.close();
  }
}

export function defaultHost(): string {
  return hostname();
}
