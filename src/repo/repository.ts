import { hostname } from 'node:os';
import { blake3 } from '@napi-rs/blake-hash';
import type { Backend } from './backend/backend.js';
import { openBackend } from './backend/open.js';
import { decodeBlob, encodeBlob, BlobFormatError } from './blob.js';
import { isAllZero, type ChunkId } from './chunk-id.js';
import { ChunkStore } from './chunk-store.js';
import {
  CONFIG_HINT,
  MAX_CONFIG_BYTES,
  findRepositoryObject,
  isRepositoryConfig,
  newConfig,
  parseConfig,
  type InitOptions,
  type RepoConfig,
} from './config.js';
import { DiskIndex } from './disk-index.js';
import {
  isNotFound,
  RepoConfigMissingError,
  RepoExistsError,
  RepoFormatError,
  RepoNotEmptyError,
  RepoNotFoundError,
  SnapshotNotFoundError,
} from './errors.js';
import { Keys } from './format.js';
import {
  decodeManifest,
  encodeManifest,
  type Snapshot,
  type SnapshotFile,
  type SnapshotManifest,
} from './snapshot.js';
import { byTime, resolveSnapshotRef } from './snapshot-ref.js';
import { LocalBackend } from './backend/local.js';

export interface OpenOptions {
  /** Worker threads for compression / verification (default: cores). 0 = inline. */
  workers?: number;
}

/** The repository façade: config, chunk store, indexes and snapshot manifests over one backend. */
export class Repository {
  readonly chunks: ChunkStore;

  private constructor(
    readonly backend: Backend,
    readonly config: RepoConfig,
    opts: OpenOptions,
  ) {
    this.chunks = new ChunkStore(backend, config.compression.level, opts.workers);
  }

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
    const where = backend.location;
    const existing = await backend.stat(Keys.config);
    if (existing) {
      if (existing.sizeBytes <= MAX_CONFIG_BYTES && isRepositoryConfig(await backend.get(Keys.config)))
        throw new RepoExistsError(where);
      throw new RepoNotEmptyError(where, Keys.config);
    }
    const damaged = await findRepositoryObject(backend);
    if (damaged !== undefined) throw new RepoConfigMissingError(where, damaged);
    for await (const obj of backend.list('')) throw new RepoNotEmptyError(where, obj.key);
    await backend.create?.();
    const created = await backend.putIfAbsent(
      Keys.config,
      Buffer.from(`${JSON.stringify(config, null, 2)}\n`),
    );
    if (!created) throw new RepoExistsError(where);
    return new Repository(backend, config, {});
  }

  static async open(
    location: string,
    opts: OpenOptions = {},
    backend: Backend = openBackend(location),
  ): Promise<Repository> {
    const info = await backend.stat(Keys.config);
    if (info === undefined) {
      const damaged = await findRepositoryObject(backend);
      if (damaged !== undefined) throw new RepoConfigMissingError(backend.location, damaged);
      throw new RepoNotFoundError(backend.location);
    }
    if (info.sizeBytes > MAX_CONFIG_BYTES)
      throw new RepoFormatError(
        `the config of ${backend.location} is damaged: ${info.sizeBytes} bytes, more than any config (${MAX_CONFIG_BYTES})`,
        CONFIG_HINT,
      );
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

  async getSnapshot(id: string): Promise<Snapshot> {
    let blob: Buffer;
    try {
      blob = await this.backend.get(Keys.snapshot(id));
    } catch (err) {
      if (isNotFound(err)) throw new SnapshotNotFoundError(id);
      throw err;
    }
    try {
      return decodeManifest(id, decodeBlob(blob));
    } catch (err) {
      if (err instanceof BlobFormatError)
        throw new RepoFormatError(`snapshot ${id.slice(0, 8)} is damaged: ${err.message}`);
      throw err;
    }
  }

  async snapshotIds(): Promise<string[]> {
    const ids: string[] = [];
    for await (const o of this.backend.list(Keys.snapshotPrefix)) {
      const id = o.key.slice(Keys.snapshotPrefix.length);
      if (/^[0-9a-f]{64}$/.test(id)) ids.push(id);
    }
    return ids;
  }

  /** Every snapshot, oldest first. */
  async listSnapshots(): Promise<Snapshot[]> {
    const ids = await this.snapshotIds();
    const snaps = await Promise.all(ids.map((id) => this.getSnapshot(id)));
    return snaps.sort(byTime);
  }

  async resolveSnapshot(ref: string): Promise<Snapshot> {
    return resolveSnapshotRef(ref, await this.listSnapshots());
  }

  async deleteSnapshot(id: string): Promise<void> {
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
