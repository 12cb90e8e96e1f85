import { hostname } from 'node:os';
import { blake3 } from '@napi-rs/blake-hash';
import type { Backend } from './backend/backend.js';
import { openBackend } from './backend/open.js';
import { blobBound, decodeBlob, encodeBlob, BlobFormatError } from './blob.js';
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
  RepoDamagedError,
  RepoExistsError,
  RepoFormatError,
  RepoNotEmptyError,
  RepoNotFoundError,
  SnapshotNotFoundError,
} from './errors.js';
import { Keys, MAX_INDEX_BYTES, MAX_MANIFEST_BYTES } from './format.js';
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
    this.chunks = new ChunkStore(backend, config.compression.level, opts.workers, config.chunkSizeBytes);
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

  /**
   * Stores a disk index. When an index of that id is there already (the same disk content was
   * backed up before), it is read back and verified: a backup never names an object it has not
   * verified or written in this run. A damaged one is replaced atomically by the good bytes (which
   * heals every snapshot that names it) and counts as stored.
   */
  async putIndex(index: DiskIndex): Promise<{ id: string; storedBytes: number }> {
    const plain = index.encode();
    const id = blake3(plain).toString('hex');
    const blob = encodeBlob(plain, { levelZstd: 3 });
    await this.chunks.flush(); // the chunks it names are durable before the index is
    const stored = await this.putVerifiedObject(Keys.index(id), blob, async () => {
      await this.getIndex(id);
    });
    return { id, storedBytes: stored ? blob.length : 0 };
  }

  /**
   * Creates `key` with `blob` unless it exists; an existing object is verified with `verify`, and
   * replaced (backend.put: atomic) when that finds it missing or damaged. Returns true when this
   * call wrote the object. Anything else `verify` throws (a directory in the object's place, an
   * I/O error) is thrown.
   */
  private async putVerifiedObject(key: string, blob: Buffer, verify: () => Promise<void>): Promise<boolean> {
    if (await this.backend.putIfAbsent(key, blob)) return true;
    try {
      await verify();
      return false;
    } catch (err) {
      if (!(err instanceof RepoDamagedError)) throw err;
    }
    await this.backend.put(key, blob);
    return true;
  }

  /** Reads and verifies a disk index (blob, id, structure). Missing or damaged → RepoDamagedError (exit 20). */
  async getIndex(id: string): Promise<DiskIndex> {
    const short = id.slice(0, 8);
    const damaged = (why: string) => new RepoDamagedError(`disk index ${short} ${why}`);
    const blob = await this.getBounded(Keys.index(id), MAX_INDEX_BYTES, () => damaged('is missing'), damaged);
    let plain: Buffer;
    try {
      plain = decodeBlob(blob, { maxPlaintextBytes: MAX_INDEX_BYTES });
    } catch (err) {
      throw damaged(`is damaged: ${(err as BlobFormatError).message}`);
    }
    if (blake3(plain).toString('hex') !== id) throw damaged('does not match its id');
    try {
      return DiskIndex.decode(plain);
    } catch (err) {
      if (err instanceof RepoDamagedError)
        throw damaged(`is damaged: ${err.message.replace(/^disk index /, '')}`);
      throw err;
    }
  }

  /**
   * An object's bytes, refusing before reading one larger than a blob of `maxPlaintextBytes`
   * can be (an untrusted size is never allocated). Errors come from `missing` / `damaged`.
   */
  private async getBounded(
    key: string,
    maxPlaintextBytes: number,
    missing: () => Error,
    damaged: (why: string) => Error,
  ): Promise<Buffer> {
    try {
      const st = await this.backend.stat(key);
      if (st === undefined) throw missing();
      if (st.sizeBytes > blobBound(maxPlaintextBytes))
        throw damaged(`is damaged: ${st.sizeBytes} bytes, too large`);
      return await this.backend.get(key);
    } catch (err) {
      if (isNotFound(err)) throw missing();
      throw err;
    }
  }

  // ---- snapshots ----------------------------------------------------------------------------

  /**
   * Writes a manifest (last step of a backup). The snapshot exists once this returns. A manifest
   * of that id already there is read back and verified, and replaced when damaged (as putIndex).
   */
  async putSnapshot(manifest: SnapshotManifest): Promise<Snapshot> {
    const { id, json } = encodeManifest(manifest);
    await this.chunks.flush(); // the file chunks it names (putFile) are durable before it is
    const blob = encodeBlob(json, { levelZstd: 3 });
    await this.putVerifiedObject(Keys.snapshot(id), blob, async () => {
      const damaged = (why: string) => new RepoDamagedError(`snapshot ${id.slice(0, 8)} ${why}`);
      const there = await this.getBounded(
        Keys.snapshot(id),
        MAX_MANIFEST_BYTES,
        () => damaged('is missing'),
        damaged,
      );
      let plain: Buffer;
      try {
        plain = decodeBlob(there, { maxPlaintextBytes: MAX_MANIFEST_BYTES });
      } catch (err) {
        throw damaged(`is damaged: ${(err as BlobFormatError).message}`);
      }
      if (!plain.equals(json)) throw damaged('does not match its id');
    });
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
        throw new RepoDamagedError(
          `snapshot ${id.slice(0, 8)} is damaged: ${err.message}`,
          `delete snapshots/${id} or run 'vmvault check --read-data --repair'`,
        );
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
      // Verified when found present: these few small chunks are cheap to read back.
      else chunks.push((await this.chunks.putVerified(Buffer.from(piece))).id);
    }
    return { kind, name, sizeBytes: data.length, chunks };
  }

  /** A stored file's bytes; every chunk verified. A chunk list that does not fit the size is RepoDamagedError. */
  async getFile(file: SnapshotFile): Promise<Buffer> {
    const listDamaged = (why: string): RepoDamagedError =>
      new RepoDamagedError(
        `file ${file.name} ${why}`,
        "the snapshot's manifest is damaged; 'vmvault check' lists it",
      );
    const parts: Buffer[] = [];
    let left = file.sizeBytes;
    for (const id of file.chunks) {
      const len = Math.min(left, this.chunkSizeBytes);
      if (len <= 0) throw listDamaged(`lists more chunks than its ${file.sizeBytes} bytes need`);
      const part = /^0+$/.test(id) ? Buffer.alloc(len) : await this.chunks.get(id as ChunkId);
      if (part.length !== len)
        throw listDamaged(`lists chunk ${id.slice(0, 8)} of ${part.length} bytes where ${len} belong`);
      parts.push(part);
      left -= len;
    }
    if (left > 0) throw listDamaged(`lists too few chunks for its ${file.sizeBytes} bytes`);
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
