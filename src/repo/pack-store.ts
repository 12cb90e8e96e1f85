import { availableParallelism } from 'node:os';
import { randomBytes } from 'node:crypto';
import { VmvaultError, WorkerPool, WorkerTaskError } from '../util/index.js';
import type { Backend } from './backend/backend.js';
import { shareSpec, sharedSpecOf, type BackendSpec } from './backend/open.js';
import { addS3RequestCounts, type S3RequestCounts } from './backend/s3.js';
import { BlobFormatError, zstdBound } from './blob.js';
import type { ChunkId } from './chunk-id.js';
import type { ChunkIndex } from './chunk-index/index.js';
import { decodeEntry, encodeEntryInto, ENTRY_BYTES, packKey, type IndexEntry } from './chunk-index/entry.js';
import { BlobCodec, RECORD_OVERHEAD, type RecordKind, type RecordMeta } from './codec.js';
import type { PageKind, PageStore } from './disk-tree.js';
import {
  BackendError,
  ChunkCorruptError,
  ChunkMissingError,
  isNotFound,
  RepoDamagedError,
  type ChunkLocation,
} from './errors.js';
import { MAX_PACK_BYTES, PackWriter, verifyPack, type SealedPack } from './pack.js';
import { RangeCoalescer } from './range-coalescer.js';
import type {
  PackWorkerData,
  PackWorkerRequest,
  PackWorkerResult,
  RecordRef,
  WrittenPack,
} from './pack-worker.js';

export interface PutResult {
  id: ChunkId;
  /** With `transfer`: the caller's buffer, back from the worker (same memory, new object). */
  buffer?: Buffer | undefined;
  /** True when this call stored the chunk; false when the repository already had it. */
  isNew: boolean;
  /** Record bytes this call added to a pack (0 when present). */
  storedBytes: number;
}

export interface PackStoreOptions {
  packSizeBytes: number;
  chunkSizeBytes: number;
  /** Worker threads (default: cores); 0 = inline on this thread. */
  workers?: number;
  /** A delta index object every this many packs (default 64) … */
  deltaEveryPacks?: number;
  /** … or this many ms (default 5 min), whichever first. */
  deltaEveryMs?: number;
}

/** What `PackStore.verifyPack` found in one pack. */
export interface PackVerifyResult {
  /** The trailer's entries (empty when the pack as a whole is damaged). */
  entries: IndexEntry[];
  problems: Array<{ offset: number | '*'; id?: Buffer; reason: string }>;
}

/** Largest page plaintext: a page of the most slots (design §3: 16 B header + 32 B per slot, 2^16 slots). */
const MAX_PAGE_BYTES = 16 + 32 * 65536;
/** Ids remembered as present (beyond: the set restarts; lookups go to the index again). */
const KNOWN_IDS_LIMIT = 500_000;

/** Chunks this process acknowledged as stored were lost before their pack was written. */
export class ChunksLostError extends VmvaultError {
  constructor(count: number, why: string) {
    super(
      'CHUNKS_LOST',
      `${count} chunk(s) stored by this run were lost before their pack was written (${why})`,
      {
        hint: 'run the backup again; nothing was committed, so the repository is consistent',
      },
    );
  }
}

/**
 * Chunk storage of format 2 (docs/format-2-design.md §1.5–§1.6): data records go to one open data
 * pack per worker thread, pages to one meta pack on this thread; the chunk index (`ChunkIndex`)
 * says which chunks the repository holds. `flush` is the commit step: seal every open pack,
 * barrier, add their entries to the index and write a delta. Every 64 packs or 5 minutes the same
 * happens for the packs written so far, so a killed run loses at most that.
 */
export class PackStore {
  private readonly known = new Set<string>();
  private readonly inFlight = new Map<string, Promise<PutResult>>();
  /** Ids in each worker's open pack (hex), slot by slot; the last slot is this thread's (inline). */
  private readonly openIds: Set<string>[];
  /** Packs written, not yet behind a barrier and in the index: their entries are found here. */
  private unsynced: { key: string; entries: IndexEntry[] }[] = [];
  private readonly recent = new Map<string, IndexEntry>();
  /** The meta pack open on this thread, and its records by id (for reads before it is sealed). */
  private meta: PackWriter | undefined;
  private readonly metaRecords = new Map<string, { record: Buffer; meta: RecordMeta }>();
  /** Inline data pack (no pool). */
  private inlineData: PackWriter | undefined;
  private pool: WorkerPool<PackWorkerRequest, PackWorkerResult> | undefined;
  private readonly workerSpec: BackendSpec | undefined;
  private readonly workers: number;
  private next = 0;
  private packsSinceDelta = 0;
  private lastDeltaMs = Date.now();
  private checkpointing: Promise<void> = Promise.resolve();
  private lost: ChunksLostError | undefined;
  readonly sessionId: Buffer = randomBytes(16);
  private readonly packSizeBytes: number;
  private readonly chunkSizeBytes: number;
  private readonly deltaEveryPacks: number;
  private readonly deltaEveryMs: number;

  /** Index-visible bytes this store wrote (records) — for statistics. */
  packsWritten = 0;
  /** Bytes of the data packs this store wrote (whole packs). */
  packBytesWritten = 0;

  constructor(
    private readonly backend: Backend,
    readonly codec: BlobCodec,
    readonly index: ChunkIndex,
    opts: PackStoreOptions,
  ) {
    this.packSizeBytes = opts.packSizeBytes;
    this.chunkSizeBytes = opts.chunkSizeBytes;
    this.deltaEveryPacks = opts.deltaEveryPacks ?? 64;
    this.deltaEveryMs = opts.deltaEveryMs ?? 5 * 60_000;
    const workers = opts.workers ?? availableParallelism();
    const shared = workers > 0 ? sharedSpecOf(backend) : undefined;
    this.workerSpec = shared === undefined ? undefined : shareSpec(shared, workers);
    this.workers = this.workerSpec === undefined ? 0 : workers;
    this.openIds = Array.from({ length: this.workers + 1 }, () => new Set<string>());
    this.coalescer =
      this.workers > 0 && backend.capabilities.preferLargeReads
        ? new RangeCoalescer(async (key, offset, dest) => {
            try {
              await backend.getRangeInto(key, offset, dest);
            } catch (err) {
              if (err instanceof BackendError && err.kind === 'range')
                throw new BlobFormatError(`pack ${key} is shorter than its index says`);
              throw err;
            }
          })
        : undefined;
  }

  /** Coalesces chunk reads on backends where each request is costly (S3). */
  readonly coalescer: RangeCoalescer | undefined;

  private getPool(): WorkerPool<PackWorkerRequest, PackWorkerResult> | undefined {
    if (this.workerSpec === undefined) return undefined;
    if (!this.pool) {
      const workerData: PackWorkerData = {
        codec: this.codec.spec,
        backend: this.workerSpec,
        packSizeBytes: this.packSizeBytes,
        sessionId: this.sessionId,
        chunkSizeBytes: this.chunkSizeBytes,
      };
      this.pool = new WorkerPool(workerScriptUrl(), this.workers, {
        workerData,
        onReport: (r) => {
          if (typeof r === 'object' && r !== null) addS3RequestCounts(r as Partial<S3RequestCounts>);
        },
      });
    }
    return this.pool;
  }

  /** Marks an id as present without asking the index (e.g. every id of a parent's tree). */
  remember(id: string): void {
    if (this.known.size >= KNOWN_IDS_LIMIT) this.known.clear();
    this.known.add(id);
  }

  /** The entry of `id` this process or the index knows (unsynced packs first). */
  private async locate(hex: string): Promise<IndexEntry | undefined> {
    return this.recent.get(hex) ?? (await this.index.lookup(Buffer.from(hex, 'hex')));
  }

  private isOpen(hex: string): boolean {
    return this.openIds.some((s) => s.has(hex));
  }

  /** Whether the repository holds the chunk (or this run stored it). */
  async has(id: string): Promise<boolean> {
    if (this.known.has(id) || this.isOpen(id)) return true;
    const e = await this.locate(id);
    if (e) this.remember(id);
    return e !== undefined;
  }

  /**
   * Stores a non-zero disk chunk unless the repository holds it. With `transfer`, `data` must be
   * the only view of its ArrayBuffer: it moves to the worker and comes back as `result.buffer`.
   */
  put(
    data: Buffer,
    id: ChunkId = this.codec.chunkId(data),
    opts: { transfer?: boolean } = {},
  ): Promise<PutResult> {
    const pending = this.inFlight.get(id);
    if (pending) return pending.then((r) => ({ id: r.id, isNew: false, storedBytes: 0, buffer: data }));
    const p = this.doPut(data, id, 1, opts.transfer ?? false).finally(() => this.inFlight.delete(id));
    this.inFlight.set(id, p);
    return p;
  }

  private async doPut(data: Buffer, id: ChunkId, kind: 1 | 2, transfer: boolean): Promise<PutResult> {
    if (this.lost) throw this.lost;
    if (await this.has(id)) return { id, isNew: false, storedBytes: 0, buffer: data };
    return this.store(data, id, kind, transfer);
  }

  /** Seals `data` into an open data pack (no presence check). */
  private async store(data: Buffer, id: ChunkId, kind: 1 | 2, transfer: boolean): Promise<PutResult> {
    const idBuf = Buffer.from(id, 'hex');
    const pool = this.getPool();
    if (!pool) {
      const slot = this.workers;
      const { record, meta } = this.codec.sealRecord(kind, idBuf, data);
      this.inlineData ??= new PackWriter(this.codec, 'data', this.sessionId);
      this.inlineData.add(record, meta);
      this.openIds[slot]!.add(id);
      if (this.inlineData.sizeBytes >= this.packSizeBytes) await this.sealInline();
      return { id, isNew: true, storedBytes: record.length, buffer: data };
    }
    const slot = this.next;
    this.next = (this.next + 1) % this.workers;
    const canTransfer = transfer && data.buffer instanceof ArrayBuffer && data.byteOffset === 0;
    // Acknowledged as stored once the worker appended it to its open pack.
    this.openIds[slot]!.add(id);
    let r: PackWorkerResult;
    try {
      r = await pool.runOn(
        slot,
        { op: 'add', data, id: idBuf, kind, transferred: canTransfer },
        canTransfer ? [data.buffer as ArrayBuffer] : [],
      );
    } catch (err) {
      // The pack this chunk went into may be gone with the error (its write failed): every chunk
      // acknowledged in it is lost, must not count as present, and fails the next flush.
      const mapped = this.fromWorker(err, id, {}, false);
      if (mapped instanceof BackendError || !(err instanceof WorkerTaskError)) this.packLost(slot, mapped);
      else this.openIds[slot]!.delete(id);
      throw mapped;
    }
    if (!('recordBytes' in r)) throw new Error('unexpected worker reply');
    if (r.written) await this.written(slot, r.written);
    const back = r.input ? Buffer.from(r.input.buffer, r.input.byteOffset, r.input.byteLength) : data;
    return { id, isNew: true, storedBytes: r.recordBytes, buffer: back };
  }

  /**
   * sync's verbatim copy: stores chunk `id` as `record`, a record sealed by a repository whose
   * codec `sealsLike` this one (a view of a SharedArrayBuffer when there are workers), unless the
   * repository holds the chunk. The record is opened in full first (seal, decompression, id): a
   * damaged one is a ChunkCorruptError and nothing is stored. It is not sealed again, so it keeps
   * the compression it came with.
   */
  putRecord(id: ChunkId, m: { codec: 0 | 1; plaintextBytes: number }, record: Buffer): Promise<PutResult> {
    const pending = this.inFlight.get(id);
    if (pending) return pending.then((r) => ({ id: r.id, isNew: false, storedBytes: 0 }));
    const p = (async (): Promise<PutResult> => {
      if (this.lost) throw this.lost;
      if (await this.has(id)) return { id, isNew: false, storedBytes: 0 };
      return this.storeRecord(id, m, record);
    })().finally(() => this.inFlight.delete(id));
    this.inFlight.set(id, p);
    return p;
  }

  private async storeRecord(
    id: ChunkId,
    m: { codec: 0 | 1; plaintextBytes: number },
    record: Buffer,
  ): Promise<PutResult> {
    const idBuf = Buffer.from(id, 'hex');
    const meta: RecordMeta = { kind: 1, codec: m.codec, plaintextBytes: m.plaintextBytes, id: idBuf };
    const pool = this.getPool();
    if (!pool) {
      try {
        this.codec.openRecord(meta, record, this.chunkSizeBytes);
      } catch (err) {
        if (err instanceof BlobFormatError) throw new ChunkCorruptError(id, err.message, {});
        throw err;
      }
      const slot = this.workers;
      this.inlineData ??= new PackWriter(this.codec, 'data', this.sessionId);
      this.inlineData.add(Buffer.from(record), meta);
      this.openIds[slot]!.add(id);
      if (this.inlineData.sizeBytes >= this.packSizeBytes) await this.sealInline();
      return { id, isNew: true, storedBytes: record.length };
    }
    let shared = record;
    if (!(record.buffer instanceof SharedArrayBuffer)) {
      shared = Buffer.from(new SharedArrayBuffer(record.length));
      record.copy(shared);
    }
    const slot = this.next;
    this.next = (this.next + 1) % this.workers;
    this.openIds[slot]!.add(id);
    let r: PackWorkerResult;
    try {
      r = await pool.runOn(slot, {
        op: 'append',
        src: shared.buffer as SharedArrayBuffer,
        srcOffset: shared.byteOffset,
        length: shared.length,
        id: idBuf,
        codec: m.codec,
        plaintextBytes: m.plaintextBytes,
      });
    } catch (err) {
      const mapped = this.fromWorker(err, id, {}, false);
      if (mapped instanceof BackendError || !(err instanceof WorkerTaskError)) this.packLost(slot, mapped);
      else this.openIds[slot]!.delete(id);
      throw mapped;
    }
    if (!('appended' in r)) throw new Error('unexpected worker reply');
    for (const w of r.packs) await this.written(slot, w);
    return { id, isNew: true, storedBytes: r.appended };
  }

  /**
   * Reads the stored record of chunk `id` as it is, not opened, into `dest` (its first copy in
   * the index): sync's verbatim copy, whose destination opens it before storing it. Returns the
   * record's codec, plaintext length and length. Missing → ChunkMissingError; longer than `dest`
   * or past its pack's end → BlobFormatError (the caller then reads it the checked way, `getInto`).
   */
  async readRecord(
    id: string,
    dest: Buffer,
    loc: ChunkLocation = {},
  ): Promise<{ codec: 0 | 1; plaintextBytes: number; length: number }> {
    const [e] = await this.candidates(id, loc);
    if (e === undefined) throw new ChunkMissingError(id, loc);
    if (e.kind !== 1 || e.length > dest.length)
      throw new BlobFormatError(`record of ${e.length} bytes (kind ${e.kind}) is not a disk chunk's`);
    try {
      if (this.coalescer) {
        const c = await this.coalescer.fetch(packKey(e), e.offset, e.length);
        try {
          dest.set(new Uint8Array(c.src, c.at, e.length));
        } finally {
          c.release();
        }
      } else await this.backend.getRangeInto(packKey(e), e.offset, dest.subarray(0, e.length));
    } catch (err) {
      if (err instanceof BackendError && err.kind === 'range')
        throw new BlobFormatError(`pack ${packKey(e)} is shorter than its index says`);
      if (err instanceof BackendError && err.kind === 'not-found') throw new ChunkMissingError(id, loc);
      throw err;
    }
    return { codec: e.codec, plaintextBytes: e.plaintextBytes, length: e.length };
  }

  /** Worker threads of this store (0: inline, `copyRecords` unavailable). */
  get workerCount(): number {
    return this.workers;
  }

  /**
   * prune's repack on worker `slot`: the worker reads pack `key` and appends the data records
   * `entries` name, verbatim, to its open pack (their seals checked first). Their ids count as
   * acknowledged in that open pack until it is written, so a worker that dies before fails the
   * next `flush` (ChunksLostError) and nothing is condemned on their account. One call per slot
   * at a time. Returns why the pack could not be copied (a damaged record), or undefined.
   */
  async copyRecords(
    slot: number,
    key: string,
    sizeBytes: number,
    entries: readonly IndexEntry[],
  ): Promise<{ damaged?: string; packs: number; bytes: number }> {
    const pool = this.getPool();
    if (!pool || slot < 0 || slot >= this.workers) throw new RangeError('copyRecords needs a worker slot');
    const records = Buffer.from(new ArrayBuffer(entries.length * 48));
    entries.forEach((e, i) => {
      const at = i * 48;
      e.id.copy(records, at);
      records.writeUInt32BE(e.offset, at + 32);
      records.writeUInt32BE(e.length, at + 36);
      records.writeUInt32BE(e.plaintextBytes, at + 40);
      records[at + 44] = e.kind;
      records[at + 45] = e.codec;
    });
    let r: PackWorkerResult;
    try {
      r = await pool.runOn(
        slot,
        { op: 'copy', key, sizeBytes, records, maxChunkBytes: this.chunkSizeBytes },
        [records.buffer as ArrayBuffer],
      );
    } catch (err) {
      const mapped = this.fromWorker(err, '', {}, true);
      if (mapped instanceof BackendError || !(err instanceof WorkerTaskError)) this.packLost(slot, mapped);
      throw mapped;
    }
    if (!('packs' in r) || 'appended' in r) throw new Error('unexpected worker reply');
    if (r.damaged !== undefined) return { damaged: r.damaged, packs: 0, bytes: 0 };
    for (const e of entries) this.openIds[slot]!.add(e.id.toString('hex'));
    let bytes = 0;
    for (const w of r.packs) {
      bytes += w.sizeBytes;
      await this.written(slot, w);
    }
    return { packs: r.packs.length, bytes };
  }

  /** The open pack of `slot` is gone (its write failed, its worker died): forget its chunks. */
  private packLost(slot: number, err: unknown): void {
    const n = this.openIds[slot]!.size;
    this.openIds[slot]!.clear();
    this.known.clear();
    if (n > 1) this.lost ??= new ChunksLostError(n - 1, err instanceof Error ? err.message : String(err));
  }

  /** Seals and writes the inline data pack (no pool); on failure its chunks are forgotten. */
  private async sealInline(): Promise<void> {
    const w = this.inlineData;
    this.inlineData = undefined;
    if (!w || w.count === 0) return;
    let written: WrittenPack;
    try {
      written = await this.writeSealed(w.finish());
    } catch (err) {
      this.openIds[this.workers]!.clear();
      this.known.clear();
      throw err;
    }
    await this.written(this.workers, written);
  }

  private async writeSealed(p: SealedPack): Promise<WrittenPack> {
    await this.backend.putIfAbsent(p.key, p.parts, { durable: 'at-barrier' });
    const entries = Buffer.alloc(p.entries.length * ENTRY_BYTES);
    return { key: p.key, sizeBytes: p.sizeBytes, entries: encodeAll(p.entries, entries) };
  }

  /** A pack of slot `slot` (or the meta pack, slot -1) was written: its ids leave the open set. */
  private async written(slot: number, w: WrittenPack): Promise<void> {
    const buf = Buffer.from(w.entries.buffer, w.entries.byteOffset, w.entries.byteLength);
    const entries: IndexEntry[] = [];
    for (let at = 0; at + ENTRY_BYTES <= buf.length; at += ENTRY_BYTES) entries.push(decodeEntry(buf, at));
    for (const e of entries) {
      const hex = e.id.toString('hex');
      this.recent.set(hex, e);
      if (slot >= 0) this.openIds[slot]!.delete(hex);
    }
    this.unsynced.push({ key: w.key, entries });
    this.packsWritten++;
    this.packBytesWritten += w.sizeBytes;
    this.packsSinceDelta++;
    if (this.packsSinceDelta >= this.deltaEveryPacks || Date.now() - this.lastDeltaMs >= this.deltaEveryMs)
      await this.checkpoint();
  }

  /**
   * Packs written so far → barrier → their entries into the index → a delta index object.
   * Serialized: a checkpoint never adds entries of a pack that is not behind its barrier.
   */
  checkpoint(): Promise<void> {
    const run = async (): Promise<void> => {
      const batch = this.unsynced;
      this.unsynced = [];
      this.packsSinceDelta = 0;
      this.lastDeltaMs = Date.now();
      if (batch.length === 0 && this.index.pendingEntries === 0) return;
      try {
        if (batch.length > 0) await this.backend.barrier(batch.map((b) => b.key));
        for (const b of batch) this.index.add(b.entries);
      } catch (err) {
        this.unsynced = batch.concat(this.unsynced);
        throw err;
      }
      for (const b of batch) for (const e of b.entries) this.recent.delete(e.id.toString('hex'));
      await this.index.writeDelta(this.sessionId);
    };
    const p = this.checkpointing.then(run, run);
    this.checkpointing = p.catch(() => undefined);
    return p;
  }

  /**
   * The commit step before anything refers to chunks or pages stored since the last call: seals
   * every open pack (data and meta), then `checkpoint`. A chunk acknowledged as stored whose pack
   * a dead worker took with it fails the flush (ChunksLostError): nothing may refer to it.
   */
  async flush(): Promise<void> {
    const pool = this.getPool();
    if (pool) {
      const replies = await Promise.all(
        Array.from({ length: this.workers }, (_, slot) =>
          pool.runOn(slot, { op: 'seal' }).then(
            (r) => ({ slot, r }),
            (err: unknown) => ({ slot, err }),
          ),
        ),
      );
      let failed: unknown;
      for (const x of replies) {
        if ('err' in x) {
          // The pack's write failed (a full disk, a permission): its chunks are gone with it, and
          // the cause is what the caller needs to see (the worker stack's BackendError, rebuilt).
          this.openIds[x.slot]!.clear();
          failed ??= this.fromWorker(x.err, '', {}, false);
          continue;
        }
        if ('written' in x.r && x.r.written) await this.written(x.slot, x.r.written);
        if (this.openIds[x.slot]!.size > 0) {
          // The worker was replaced since it acknowledged these: its open pack is gone.
          this.lost = new ChunksLostError(this.openIds[x.slot]!.size, 'a worker thread died');
          this.openIds[x.slot]!.clear();
        }
      }
      if (failed !== undefined) {
        this.known.clear();
        throw failed;
      }
    } else {
      await this.sealInline();
      if (this.openIds[this.workers]!.size > 0) {
        // Acknowledged chunks whose inline pack is gone (a failed write earlier).
        this.lost ??= new ChunksLostError(
          this.openIds[this.workers]!.size,
          'their pack could not be written',
        );
        this.openIds[this.workers]!.clear();
      }
    }
    if (this.lost) {
      // Forget what was acknowledged: nothing refers to it, a new run stores it again.
      this.known.clear();
      const err = this.lost;
      this.lost = undefined;
      throw err;
    }
    await this.sealMeta();
    await this.checkpoint();
  }

  private async sealMeta(): Promise<void> {
    const w = this.meta;
    this.meta = undefined;
    if (!w || w.count === 0) return;
    await this.written(-1, await this.writeSealed(w.finish()));
    this.metaRecords.clear();
  }

  // ---- reads ----

  private refOf(e: IndexEntry): RecordRef {
    return {
      key: packKey(e),
      offset: e.offset,
      length: e.length,
      kind: e.kind,
      codec: e.codec,
      plaintextBytes: e.plaintextBytes,
      id: e.id,
    };
  }

  private metaOf(e: IndexEntry): RecordMeta {
    return { kind: e.kind, codec: e.codec, plaintextBytes: e.plaintextBytes, id: e.id };
  }

  /** The entries to try for `id`: this run's first, then the index's copies. */
  private async candidates(id: string, loc: ChunkLocation): Promise<IndexEntry[]> {
    if (this.isOpen(id)) await this.flush(); // stored by this run, pack still open
    const recent = this.recent.get(id);
    const all = recent ? [recent] : await this.index.lookupAll(Buffer.from(id, 'hex'));
    if (all.length === 0) throw new ChunkMissingError(id, loc);
    return all;
  }

  private async readRecordHere(e: IndexEntry, max: number): Promise<Buffer> {
    if (e.length > RECORD_OVERHEAD + zstdBound(max))
      throw new BlobFormatError(`record of ${e.length} bytes is larger than any record of ${max} bytes`);
    const buf = Buffer.allocUnsafe(e.length);
    try {
      await this.backend.getRangeInto(packKey(e), e.offset, buf);
    } catch (err) {
      if (err instanceof BackendError && err.kind === 'range')
        throw new BlobFormatError(`pack ${packKey(e)} is shorter than its index says`);
      throw err;
    }
    return this.codec.openRecord(this.metaOf(e), buf, max);
  }

  /**
   * Tries each copy of `id` in turn: a damaged or missing copy makes the next one tried; the
   * first copy's error is reported when none works.
   */
  private async withCopies<T>(
    id: string,
    loc: ChunkLocation,
    read: (e: IndexEntry) => Promise<T>,
  ): Promise<T> {
    const copies = await this.candidates(id, loc);
    // Over a network (an object store) a record that fails verification may have been damaged on
    // the way: it is read once more before it counts as damaged (never accepted either way).
    const tries = this.backend.capabilities.preferLargeReads ? 2 : 1;
    let first: unknown;
    for (const e of copies) {
      for (let t = 1; t <= tries; t++) {
        try {
          return await read(e);
        } catch (err) {
          const mapped = this.readError(err, id, loc);
          if (!(mapped instanceof ChunkCorruptError || mapped instanceof ChunkMissingError)) throw mapped;
          first ??= mapped;
          if (mapped instanceof ChunkMissingError) break;
        }
      }
    }
    throw first;
  }

  /** Reads and verifies a chunk. Missing → ChunkMissingError; damaged → ChunkCorruptError. */
  async get(id: string, loc: ChunkLocation = {}): Promise<Buffer> {
    const pool = this.getPool();
    return this.withCopies(id, loc, async (e) => {
      if (!pool) return this.readRecordHere(e, this.chunkSizeBytes);
      const r = await pool.run({ op: 'read', ref: this.refOf(e), max: this.chunkSizeBytes });
      if (!('data' in r)) throw new Error('unexpected worker reply');
      return Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength);
    });
  }

  /**
   * Reads and verifies a chunk into `dest` (at least a chunk long); returns its length. With
   * workers, `dest` should be a view of a SharedArrayBuffer: the worker opens the record into it.
   */
  async getInto(id: string, dest: Buffer, loc: ChunkLocation = {}): Promise<number> {
    const pool = this.getPool();
    if (!pool || !(dest.buffer instanceof SharedArrayBuffer)) {
      const data = await this.get(id, loc);
      if (data.length > dest.length)
        throw new ChunkCorruptError(
          id,
          `plaintext is ${data.length} bytes, more than a chunk (${dest.length})`,
          loc,
        );
      data.copy(dest);
      return data.length;
    }
    const shared = dest.buffer;
    return this.withCopies(id, loc, async (e) => {
      // An object store: nearby records of one pack come in one ranged GET (range-coalescer.ts).
      let src: { src: SharedArrayBuffer; srcOffset: number } | undefined;
      let release: (() => void) | undefined;
      if (this.coalescer) {
        if (e.length > RECORD_OVERHEAD + zstdBound(dest.length))
          throw new BlobFormatError(
            `record of ${e.length} bytes is larger than any record of ${dest.length} bytes`,
          );
        const c = await this.coalescer.fetch(packKey(e), e.offset, e.length);
        src = { src: c.src, srcOffset: c.at };
        release = c.release;
      }
      let r: PackWorkerResult;
      try {
        r = await pool.run({
          op: 'read',
          ref: this.refOf(e),
          max: dest.length,
          dest: shared,
          destOffset: dest.byteOffset,
          destLength: dest.length,
          ...src,
        });
      } finally {
        release?.();
      }
      if (!('length' in r)) throw new Error('unexpected worker reply');
      return r.length;
    });
  }

  /**
   * A file chunk (domain XML, nvram, …): stored unless present; a copy found present is read back
   * and verified first (few and small), and a damaged one makes this run store a sound copy.
   */
  async putVerified(data: Buffer): Promise<PutResult> {
    const id = this.codec.chunkId(data);
    if (this.isOpen(id) || this.recent.has(id)) return { id, isNew: false, storedBytes: 0 };
    try {
      await this.get(id);
      this.remember(id);
      return { id, isNew: false, storedBytes: 0 };
    } catch (err) {
      if (!(err instanceof ChunkMissingError || err instanceof ChunkCorruptError)) throw err;
    }
    this.known.delete(id);
    if (this.lost) throw this.lost;
    return this.store(data, id, 2, false);
  }

  /**
   * check --read-data: reads the whole pack `key` (listed at `sizeBytes`) once and opens every
   * record (pack.ts `verifyPack`), in a worker when there is a pool. Damage is returned, never
   * thrown: a record's at its offset, the pack's as a whole (name, trailer, shorter than listed,
   * larger than any pack) at '*'. A pack gone meanwhile throws the backend's not-found error.
   */
  async verifyPack(key: string, sizeBytes: number): Promise<PackVerifyResult> {
    if (sizeBytes > MAX_PACK_BYTES)
      return {
        entries: [],
        problems: [{ offset: '*', reason: `${sizeBytes} bytes, more than any pack (${MAX_PACK_BYTES})` }],
      };
    const shorter = (): PackVerifyResult => ({
      entries: [],
      problems: [{ offset: '*', reason: `the pack is shorter than the ${sizeBytes} bytes listed` }],
    });
    const pool = this.getPool();
    if (!pool) {
      const bytes = Buffer.allocUnsafe(sizeBytes);
      try {
        await this.backend.getRangeInto(key, 0, bytes);
      } catch (err) {
        if (err instanceof BackendError && err.kind === 'range') return shorter();
        throw err;
      }
      const r = verifyPack(bytes, key, this.codec, (kind: RecordKind) =>
        kind <= 2 ? this.chunkSizeBytes : MAX_PAGE_BYTES,
      );
      return { entries: r.entries, problems: r.problems };
    }
    let r: PackWorkerResult;
    try {
      r = await pool.run({
        op: 'verify',
        key,
        sizeBytes,
        maxChunkBytes: this.chunkSizeBytes,
        maxPageBytes: MAX_PAGE_BYTES,
      });
    } catch (err) {
      if (!(err instanceof WorkerTaskError)) throw err;
      const rebuilt = BackendError.fromWire(err.message, err.hint, err.details);
      if (rebuilt?.kind === 'range') return shorter();
      throw rebuilt ?? err;
    }
    if (!('problems' in r)) throw new Error('unexpected worker reply');
    const buf = Buffer.from(r.entries.buffer, r.entries.byteOffset, r.entries.byteLength);
    const entries: IndexEntry[] = [];
    for (let at = 0; at + ENTRY_BYTES <= buf.length; at += ENTRY_BYTES) entries.push(decodeEntry(buf, at));
    return {
      entries,
      problems: r.problems.map((p) => ({
        offset: p.offset,
        reason: p.reason,
        ...(p.id ? { id: Buffer.from(p.id) } : {}),
      })),
    };
  }

  // ---- pages ----

  /** The page store of disk trees (disk-tree.ts) on this store's meta packs. */
  readonly pages: PageStore = {
    put: (kind, plaintext) => this.putPage(kind, plaintext),
    get: (kind, id) => this.getPage(kind, id),
  };

  /**
   * Stores a page unless the repository holds it. A page found in the index is trusted (its id is
   * the hash of its content, and `check` verifies pages); the meta pack is written at `flush`, or
   * as soon as it reaches the pack size.
   */
  async putPage(
    kind: PageKind,
    plaintext: Buffer,
  ): Promise<{ id: Buffer; written: boolean; storedBytes: number }> {
    const id = this.codec.chunkIdBytes(plaintext);
    const hex = id.toString('hex');
    if (this.metaRecords.has(hex) || this.known.has(hex)) return { id, written: false, storedBytes: 0 };
    if ((await this.locate(hex)) !== undefined) {
      // Found, but not read by this run (a parent's pages were, and are known): read it back
      // and verify it, so a snapshot never names a damaged page; a damaged copy gets a sound one.
      try {
        await this.getPage(kind, id);
        return { id, written: false, storedBytes: 0 };
      } catch (err) {
        if (!(err instanceof RepoDamagedError)) throw err;
      }
    }
    const { record, meta } = this.codec.sealRecord(kind, id, plaintext);
    this.meta ??= new PackWriter(this.codec, 'meta', this.sessionId);
    this.meta.add(record, meta);
    this.metaRecords.set(hex, { record, meta });
    if (this.meta.sizeBytes >= this.packSizeBytes) await this.sealMeta();
    return { id, written: true, storedBytes: record.length };
  }

  /** A page's verified plaintext; missing or damaged → RepoDamagedError naming the page. */
  async getPage(kind: PageKind, id: Buffer): Promise<Buffer> {
    const hex = id.toString('hex');
    const open = this.metaRecords.get(hex);
    if (open) return this.codec.openRecord(open.meta, open.record, MAX_PAGE_BYTES);
    const copies = this.recent.get(hex) ? [this.recent.get(hex)!] : await this.index.lookupAll(id);
    if (copies.length === 0) throw new RepoDamagedError(`disk index page ${hex.slice(0, 12)} is missing`);
    let why = '';
    for (const e of copies) {
      if (e.kind !== kind) {
        why ||= `is a page of kind ${e.kind} where kind ${kind} belongs`;
        continue;
      }
      try {
        const plain = await this.readRecordHere(e, MAX_PAGE_BYTES);
        this.remember(hex); // verified: putPage trusts it from now on
        return plain;
      } catch (err) {
        if (err instanceof BlobFormatError) why ||= `is damaged: ${err.message}`;
        else if (isNotFound(err)) why ||= `is missing (its pack ${packKey(e)} is gone)`;
        else throw err;
      }
    }
    throw new RepoDamagedError(`disk index page ${hex.slice(0, 12)} ${why}`);
  }

  // ---- errors ----

  /** A read's failure as the store reports it: damage → ChunkCorruptError, absence → ChunkMissingError. */
  private readError(err: unknown, id: string, loc: ChunkLocation): unknown {
    if (err instanceof BlobFormatError) return new ChunkCorruptError(id, err.message, loc);
    if (isNotFound(err)) return new ChunkMissingError(id, loc);
    return this.fromWorker(err, id, loc, true);
  }

  private fromWorker(err: unknown, id: string, loc: ChunkLocation, reading: boolean): unknown {
    if (!(err instanceof WorkerTaskError)) return err;
    if (err.code === 'BLOB_DAMAGED') return new ChunkCorruptError(id, err.message, loc);
    const rebuilt = BackendError.fromWire(err.message, err.hint, err.details);
    if (rebuilt === undefined) return err;
    return reading && rebuilt.kind === 'not-found' ? new ChunkMissingError(id, loc) : rebuilt;
  }

  async close(): Promise<void> {
    await this.pool?.close();
    this.pool = undefined;
  }
}

function encodeAll(entries: readonly IndexEntry[], out: Buffer): Buffer {
  entries.forEach((e, i) => encodeEntryInto(e, out, i * ENTRY_BYTES));
  return out;
}

function workerScriptUrl(): URL {
  const ext = import.meta.url.endsWith('.ts') ? 'ts' : 'js';
  return new URL(`./pack-worker.${ext}`, import.meta.url);
}

export { MAX_PAGE_BYTES };
