import { hostname, userInfo } from 'node:os';
import { printable, testPause, UsageError, VmvaultError } from '../util/index.js';
import type { Backend, ObjectLockPolicy } from './backend/backend.js';
import { applyObjectLock, openBackend } from './backend/open.js';
import { BlobFormatError } from './blob.js';
import { isAllZero, type ChunkId } from './chunk-id.js';
import { ChunkIndex, codecSectionSealer } from './chunk-index/index.js';
import { PackStore } from './pack-store.js';
import { BlobCodec } from './codec.js';
import {
  CONFIG_HINT,
  MAX_CONFIG_BYTES,
  findRepositoryObject,
  isRepositoryConfig,
  newConfig,
  objectLockPeriodMs,
  parseConfig,
  type InitOptions,
  type RepoConfig,
} from './config.js';
import { DiskIndex } from './disk-index.js';
import { readTree, writeTree } from './disk-tree.js';
import { GC_PREFIX, pendingGenerations, readGenerations } from './gc/steps.js';
import { listSessions, Session, sessionKey, type ListedSession, type SessionTiming } from './session.js';
import {
  configMac,
  createKeySlot,
  generateMasterKey,
  keyIdOf,
  splitMasterKey,
  unlockMasterKey,
  type KekCache,
  type OnDamagedKeySlot,
} from './keys.js';
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
import { Keys, MAX_MANIFEST_BYTES } from './format.js';
import { ManifestFieldError, SnapshotDamagedError, validateManifest } from './manifest-schema.js';
import {
  decodeManifest,
  encodeManifest,
  shortId,
  type Snapshot,
  type SnapshotFile,
  type SnapshotManifest,
} from './snapshot.js';
import { byTime, resolveSnapshotRef } from './snapshot-ref.js';

export interface OpenOptions {
  /** Worker threads for compression / verification (default: cores). 0 = inline. */
  workers?: number;
  /**
   * Called once per damaged manifest that a listing or a reference resolution skipped (the
   * CLI prints a warning). Without it, damaged manifests are left out silently.
   */
  onDamagedSnapshot?: (err: SnapshotDamagedError) => void;
  /** The password of an encrypted repository, asked only when its config says it is encrypted. */
  password?: () => Promise<string>;
  /** Try this key slot (its 32 hex id) first. */
  keyHint?: string;
  /** A damaged key slot that opening skipped (the CLI prints a warning). */
  onDamagedKeySlot?: OnDamagedKeySlot;
  /** Unlocked key slots kept between commands (opt-in, `VMVAULT_KEY_CACHE`): skips scrypt. */
  kekCache?: KekCache;
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
  /** Packs and the chunk index: every chunk, file chunk and disk index page. */
  readonly chunks: PackStore;
  /** The chunk index (loaded at open): which chunks and pages the repository holds, where. */
  readonly index: ChunkIndex;
  /** The one codec of this repository: every object is encoded, decoded and hashed by it. */
  readonly codec: BlobCodec;

  /** The key slot (`keys/<id>`) that unlocked an encrypted repository; undefined when unencrypted. */
  readonly keySlot: string | undefined;
  /** The master key of an encrypted repository (encKey ‖ idKey), for `key add`. */
  readonly masterKey: Buffer | undefined;

  private constructor(
    readonly backend: Backend,
    readonly config: RepoConfig,
    opts: OpenOptions,
    codec: BlobCodec,
    index: ChunkIndex,
    unlocked?: { master: Buffer; slotName: string },
  ) {
    this.keySlot = unlocked?.slotName;
    this.masterKey = unlocked?.master;
    this.codec = codec;
    this.index = index;
    this.chunks = new PackStore(backend, codec, index, {
      packSizeBytes: config.packSizeBytes,
      chunkSizeBytes: config.chunkSizeBytes,
      ...(opts.workers === undefined ? {} : { workers: opts.workers }),
    });
    this.onDamagedSnapshot = opts.onDamagedSnapshot;
  }

  /** Builds the codec of `config`, loads the chunk index and makes the handle. */
  private static async make(
    backend: Backend,
    config: RepoConfig,
    opts: OpenOptions,
    unlocked?: { master: Buffer; slotName: string },
  ): Promise<Repository> {
    if (config.objectLock !== undefined) applyObjectLock(backend, objectLockPolicy(config));
    const codec = BlobCodec.fromConfig(config, unlocked ? splitMasterKey(unlocked.master) : {});
    const index = await ChunkIndex.load(backend, codecSectionSealer(codec));
    return new Repository(backend, config, opts, codec, index, unlocked);
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
    let master: Buffer | undefined;
    if (opts.encryption === 'aes-256-gcm') {
      if (opts.password === undefined || opts.password === '')
        throw new VmvaultError('PASSWORD', 'an encrypted repository needs a password', {
          hint: 'set VMVAULT_PASSWORD, VMVAULT_PASSWORD_FILE, --password-file or VMVAULT_PASSWORD_COMMAND',
          exitCode: 12,
        });
      master = opts.masterKey !== undefined ? Buffer.from(opts.masterKey) : generateMasterKey();
      const { encKey, idKey } = splitMasterKey(master);
      config.encryption = 'aes-256-gcm';
      config.chunkId = 'blake3-256-keyed';
      config.keyId = keyIdOf(idKey);
      config.mac = configMac(encKey, { ...config });
    }
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
    if (config.objectLock !== undefined && !backend.objectLockStatus)
      throw new UsageError(
        `${where} cannot lock objects: Object Lock is a feature of S3 buckets`,
        'drop --object-lock-days, or create the repository in an S3 bucket (docs/s3.md "Object Lock")',
      );
    await backend.create?.(config.objectLock === undefined ? {} : { objectLock: true });
    if (config.objectLock !== undefined) {
      const st = await backend.objectLockStatus!();
      if (!st.enabled)
        throw new VmvaultError('OBJECT_LOCK', `${where}: the bucket does not have Object Lock enabled`, {
          hint: 'create the bucket with Object Lock enabled (aws s3api create-bucket --object-lock-enabled-for-bucket), or let vmvault init create it (docs/s3.md "Object Lock")',
        });
      if (st.defaultRetention !== undefined)
        throw new VmvaultError(
          'OBJECT_LOCK',
          `${where}: the bucket has a default retention (${printable(st.defaultRetention, 40)}); it would lock the session objects every writer deletes`,
          {
            hint: 'remove the default retention rule: vmvault sets the retention of each object itself (docs/s3.md "Object Lock")',
          },
        );
      applyObjectLock(backend, objectLockPolicy(config));
    }
    const created = await backend.putIfAbsent(
      Keys.config,
      Buffer.from(`${JSON.stringify(config, null, 2)}\n`),
      { exclusive: true },
    );
    if (!created) throw new RepoExistsError(where);
    if (master === undefined) return Repository.make(backend, config, {});
    const slot = await createKeySlot(backend, config.id, master, opts.password!, {
      label: `${userName()}@${hostname()}`,
      ...(opts.kdf ? { kdf: opts.kdf } : {}),
    });
    return Repository.make(backend, config, {}, { master, slotName: slot.name });
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
      throw new RepoNotFoundError(backend.location, undefined, await backend.describeAbsence?.());
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
    const config = parseConfig(raw, backend.location);
    const repo = await Repository.make(backend, config, opts, await unlock(backend, config, opts));
    await backend.removeStaleTemp?.(24 * 3600_000).catch(() => 0);
    return repo;
  }

  // ---- disk indexes ----

  /**
   * Stores a disk index as a tree of pages (disk-tree.ts) in the meta pack: only pages the
   * repository does not hold are written. The root id goes in the manifest; the pages become
   * durable, and reach the chunk index, at the snapshot's commit (`putSnapshot` flushes).
   */
  async putIndex(index: DiskIndex): Promise<{ id: string; storedBytes: number; pagesWritten: number }> {
    const r = await writeTree(index, this.config.pageSlots, this.chunks.pages);
    return { id: r.root, storedBytes: r.bytesWritten, pagesWritten: r.pagesWritten };
  }

  /** Reads a disk's index tree (every page verified). Missing or damaged → RepoDamagedError (exit 20). */
  async getIndex(disk: { root: string; sizeBytes: number }): Promise<DiskIndex> {
    return readTree(disk.root, disk.sizeBytes, this.chunkSizeBytes, this.config.pageSlots, this.chunks.pages);
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
      const unusable =
        err instanceof RepoDamagedError ||
        err instanceof SnapshotDamagedError ||
        err instanceof SnapshotNotFoundError; // deleted since putIfAbsent
      if (!unusable) throw err;
    }
    await this.backend.put(key, blob);
    return true;
  }

  /**
   * The bytes of a manifest object, or undefined when there is none. An object larger than any
   * manifest can be is refused unread (BlobFormatError): an untrusted size is never allocated.
   * `knownSizeBytes` (from a listing) saves the stat.
   */
  async readManifestBlob(key: string, knownSizeBytes?: number): Promise<Buffer | undefined> {
    try {
      const size = knownSizeBytes ?? (await this.backend.stat(key))?.sizeBytes;
      if (size === undefined) return undefined;
      const bound = this.codec.sealedObjectBytes(MAX_MANIFEST_BYTES) + 1024;
      if (size > bound) throw new BlobFormatError(`${size} bytes, more than any manifest can be (${bound})`);
      return await this.backend.get(key);
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  // ---- snapshots ----------------------------------------------------------------------------

  /**
   * Writes a manifest (last step of a backup). The snapshot exists once this returns. A manifest
   * of that id already there is read back and verified, and replaced when damaged (as putIndex).
   */
  async putSnapshot(manifest: SnapshotManifest): Promise<Snapshot> {
    const { id, json } = encodeManifest(manifest, this.codec);
    // Never write what a reader would refuse as damaged: the same schema every reader applies.
    try {
      validateManifest(JSON.parse(json.toString('utf8')), this.chunkSizeBytes);
    } catch (err) {
      if (!(err instanceof ManifestFieldError)) throw err;
      throw new VmvaultError(
        'MANIFEST_INVALID',
        `refusing to write a snapshot of ${printable(manifest.vm.name, 80)}: ${printable(err.message, 160)}`,
        {
          hint: 'fix the name or value it names (docs/format.md, "Snapshot manifest", lists the rules)',
          cause: err,
        },
      );
    }
    // Commit order (design §1.6): every pack sealed and behind a barrier, their entries in a
    // durable delta index object, then the manifest.
    await this.chunks.flush();
    await testPause('before-commit');
    // A writer whose lease may have lapsed (paused, partitioned) commits nothing (docs/gc.md).
    await this.session?.fence();
    const key = Keys.snapshot(id);
    const blob = this.codec.sealObject('manifest', json, Buffer.from(id.slice(0, 32), 'hex'), { name: key });
    // The manifest found there is read as any reader does (its id is the hash of our bytes).
    await this.putVerifiedObject(key, blob, async () => {
      await this.getSnapshot(id);
    });
    return { ...manifest, id };
  }

  /**
   * One snapshot by full id. Throws SnapshotNotFoundError when there is none and
   * SnapshotDamagedError (exit 20) when its manifest is unreadable or fails the schema.
   */
  async getSnapshot(id: string, knownSizeBytes?: number): Promise<Snapshot> {
    if (!HEX64.test(id)) throw new SnapshotNotFoundError(id);
    let blob: Buffer | undefined;
    try {
      blob = await this.readManifestBlob(Keys.snapshot(id), knownSizeBytes);
    } catch (err) {
      if (err instanceof BlobFormatError) throw new SnapshotDamagedError(id, err.message);
      throw err;
    }
    if (blob === undefined) throw new SnapshotNotFoundError(shortId(id));
    return this.decodeSnapshot(id, blob);
  }

  /** A manifest blob read from `snapshots/<id>`, decoded and validated (never trusts the header's length). */
  decodeSnapshot(id: string, blob: Buffer): Snapshot {
    let json: Buffer;
    try {
      if (blob.length < 32 || !blob.subarray(16, 32).equals(Buffer.from(id.slice(0, 32), 'hex')))
        throw new BlobFormatError('manifest belongs to another snapshot (binder mismatch)');
      json = this.codec.openObject('manifest', blob, {
        name: Keys.snapshot(id),
        maxPlaintextBytes: MAX_MANIFEST_BYTES,
      });
    } catch (err) {
      if (err instanceof BlobFormatError) throw new SnapshotDamagedError(id, err.message);
      throw err;
    }
    return decodeManifest(id, json, this.chunkSizeBytes, this.codec);
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
        try {
          // The listing's size: no stat per manifest, and a huge object is refused unread.
          snapshots.push(await this.getSnapshot(o.id, o.sizeBytes));
        } catch (err) {
          if (err instanceof SnapshotDamagedError) damaged.push(err);
          else if (!(err instanceof SnapshotNotFoundError)) throw err; // deleted meanwhile: not listed
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(16, objs.length) }, worker));
    damaged.sort((a, b) => (a.snapshotId < b.snapshotId ? -1 : 1));
    return { snapshots: this.latestEdits(snapshots).sort(byTime), damaged };
  }

  /** The identity of a snapshot across edits and syncs: its origin, or itself when it has none. */
  originKey(s: Snapshot): string {
    return s.origin ? `${s.origin.repository}/${s.origin.snapshot}` : `${this.config.id}/${s.id}`;
  }

  /**
   * Of several manifests of one origin (an edit writes the new manifest, then deletes the old: a
   * process killed between leaves both), the one edited last; the others become its `superseded`.
   */
  private latestEdits(all: Snapshot[]): Snapshot[] {
    const groups = new Map<string, Snapshot[]>();
    for (const s of all) {
      const k = this.originKey(s);
      const g = groups.get(k);
      if (g) g.push(s);
      else groups.set(k, [s]);
    }
    const out: Snapshot[] = [];
    for (const g of groups.values()) {
      if (g.length === 1) {
        out.push(g[0]!);
        continue;
      }
      // Latest edit first (ISO times compare as strings; never edited sorts last), then by id.
      const key = (x: Snapshot): string => `${x.edited ?? ''}\u0000${x.id}`;
      g.sort((a, b) => (key(a) < key(b) ? 1 : -1));
      out.push({ ...g[0]!, superseded: g.slice(1).map((s) => s.id) });
    }
    return out;
  }

  /**
   * Changes what may change of a snapshot (tags, protection, note): a new manifest of the same
   * origin with `edited` set is written, then the old one (and any it superseded) deleted. The
   * snapshot's id changes; its origin, time, disks and checkpoint do not.
   */
  async editSnapshot(
    s: Snapshot,
    change: { addTags?: string[]; removeTags?: string[]; protected?: boolean; note?: string | null },
  ): Promise<Snapshot> {
    const { id, superseded, ...manifest } = s;
    let tags = manifest.tags.filter((t) => !(change.removeTags ?? []).includes(t));
    for (const t of change.addTags ?? []) if (!tags.includes(t)) tags.push(t);
    tags = tags.sort();
    const next: SnapshotManifest = {
      ...manifest,
      tags,
      origin: manifest.origin ?? { repository: this.config.id, snapshot: id },
      edited: new Date().toISOString(),
    };
    if (change.protected !== undefined) next.protected = change.protected;
    if (change.note === null) delete next.note;
    else if (change.note !== undefined) next.note = change.note;
    const written = await this.putSnapshot(next);
    if (written.id !== id) for (const old of [id, ...(superseded ?? [])]) await this.deleteSnapshot(old);
    return written;
  }

  /** Deletes a snapshot's manifest and any older manifest of its origin (forget). */
  async forgetSnapshot(s: Snapshot): Promise<void> {
    for (const old of [s.id, ...(s.superseded ?? [])]) await this.deleteSnapshot(old);
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

  // ---- sessions (docs/gc.md) ----

  /** This process's lease on the repository, once `startSession` ran (write commands). */
  session: Session | undefined;

  /**
   * Starts this process's session (`sessions/<pack session id>`, heartbeat every 5 minutes);
   * `close` ends it. Snapshots committed afterwards check the lease first (`Session.fence`).
   * `via`: a writable stack the session object goes through (and that it closes), for readers
   * whose repository stack is read-only.
   */
  async startSession(command: string, timing?: SessionTiming, via?: Backend): Promise<Session> {
    if (this.session) return this.session;
    this.session = via
      ? await Session.start(via, this.codec, this.chunks.sessionId, { command, ownsBackend: true }, timing)
      : await Session.start(this.backend, this.codec, this.chunks.sessionId, { command }, timing);
    // A writer reads gc/ and the index only once its session is visible (docs/gc.md): packs a
    // pending garbage collection condemned are absent to it from now on.
    if (!via) await this.applyPendingGc();
    return this.session;
  }

  /**
   * Server time of the earliest mark of a garbage collection that was pending when this
   * process's session started (undefined: none was). A snapshot committed after it may use
   * condemned data, so an incremental backup does not build on it (`parentUsable`).
   */
  gcPendingSinceMs: number | undefined;

  private async applyPendingGc(): Promise<void> {
    const { generations } = await readGenerations(this.backend, this.codec, { pendingOnly: true });
    const pending = pendingGenerations(generations);
    if (pending.length > 0) {
      this.index.hidePacks(pending.flatMap((g) => g.condemned.packs.map((k) => k.slice(-32))));
      this.gcPendingSinceMs = Math.min(...pending.map((g) => g.condemned.markedMs));
    }
    await this.index.reload();
  }

  /**
   * May an incremental backup reuse this snapshot's tree without reading its chunks? Not when a
   * garbage collection is pending and the snapshot was committed after its mark: its tree may
   * name chunks of condemned packs, which this writer's index no longer shows (docs/gc.md).
   */
  async parentUsable(s: Snapshot): Promise<boolean> {
    if (this.gcPendingSinceMs === undefined) return true;
    const st = await this.backend.stat(Keys.snapshot(s.id));
    return st !== undefined && (st.modifiedMs ?? Number.POSITIVE_INFINITY) < this.gcPendingSinceMs - 5000;
  }

  /**
   * Ends this process's session (if any) while the repository stays open: a long-running reader
   * (`vmvault ui`) holds one only while it reads, so that it never keeps a prune waiting.
   */
  async endSession(): Promise<void> {
    const s = this.session;
    this.session = undefined;
    await s?.end();
  }

  /** Removes a session object (`unlock --stale`; the caller decided it is stale). */
  async deleteSession(idHex: string): Promise<void> {
    if (!/^[0-9a-f]{32}$/.test(idHex)) throw new RangeError(`not a session id: ${idHex}`);
    await this.backend.delete(sessionKey(idHex));
  }

  /** Every session in the repository, with its age by the storage's clock (`vmvault locks`). */
  async listSessions(ttlMs?: number): Promise<ListedSession[]> {
    const now = (await this.backend.serverTimeMs?.()) ?? Date.now();
    return listSessions(this.backend, this.codec, now, ttlMs);
  }

  async close(): Promise<void> {
    try {
      await this.chunks.close();
    } finally {
      await this.session?.end();
      await this.backend.close();
    }
  }
}

/** The stack-level Object Lock policy of a locked repository's config (docs/s3.md "Object Lock"). */
export function objectLockPolicy(config: RepoConfig): ObjectLockPolicy {
  const lock = config.objectLock!;
  return {
    mode: lock.mode === 'compliance' ? 'COMPLIANCE' : 'GOVERNANCE',
    periodMs: objectLockPeriodMs(lock),
    // Objects their writers delete or replace: sessions (each writer), gc steps and the
    // maintenance lock (prune), the conditional-write probe, the last check's record.
    exemptPrefixes: [Keys.sessionPrefix, Keys.lockPrefix, GC_PREFIX, Keys.statusPrefix, 'tmp/'],
  };
}

function userName(): string {
  try {
    return userInfo().username;
  } catch {
    return 'user';
  }
}

/**
 * The master key of an encrypted repository (password from `opts.password`, checked against the
 * config's keyId and mac), or undefined for an unencrypted one, which must then have no key slots.
 */
async function unlock(
  backend: Backend,
  config: RepoConfig,
  opts: OpenOptions,
): Promise<{ master: Buffer; slotName: string } | undefined> {
  const where = backend.location;
  if (config.encryption === 'none') {
    for await (const o of backend.list('keys/'))
      throw new RepoDamagedError(
        `${where} is damaged: its config says it is not encrypted, but it has key slots (${printable(o.key, 60)})`,
        'put its config back from a copy of the repository (an edited config could make backups write plaintext)',
      );
    return undefined;
  }
  if (opts.password === undefined)
    throw new VmvaultError('PASSWORD', `repository ${where} is encrypted and no password was given`, {
      hint: 'set VMVAULT_PASSWORD, VMVAULT_PASSWORD_FILE, --password-file or VMVAULT_PASSWORD_COMMAND',
      exitCode: 12,
    });
  const password = await opts.password();
  const unlocked = await unlockMasterKey(backend, config.id, password, {
    ...(opts.keyHint !== undefined ? { hint: opts.keyHint } : {}),
    ...(opts.onDamagedKeySlot ? { onDamaged: opts.onDamagedKeySlot } : {}),
    ...(opts.kekCache ? { cache: opts.kekCache } : {}),
  });
  const { encKey, idKey } = splitMasterKey(unlocked.master);
  if (config.mac !== configMac(encKey, { ...config }))
    throw new RepoDamagedError(
      `the config of ${where} is damaged: its mac does not match (a field was edited)`,
      'put its config back from a copy of the repository',
    );
  if (config.keyId !== keyIdOf(idKey))
    throw new RepoDamagedError(`the config of ${where} is damaged: its keyId does not match the key slots`);
  return unlocked;
}

export function defaultHost(): string {
  return hostname();
}
