import { availableParallelism } from 'node:os';
import { WorkerPool, WorkerTaskError } from '../util/index.js';
import type { Backend } from './backend/backend.js';
import { sharedSpecOf, type BackendSpec } from './backend/open.js';
import { isPlausibleBlobSize, BlobFormatError } from './blob.js';
import type { ChunkId } from './chunk-id.js';
import type { ChunkWorkerData, ChunkWorkerRequest, ChunkWorkerResult } from './chunk-worker.js';
import { BlobCodec, codecSpec } from './codec.js';
import {
  BackendError,
  ChunkCorruptError,
  ChunkMissingError,
  isNotFound,
  type ChunkLocation,
} from './errors.js';
import { Keys, MAX_CHUNK_SIZE } from './format.js';

export interface PutResult {
  id: ChunkId;
  /**
   * With `transfer`, the caller's buffer may have been moved to a worker and back: this is the
   * buffer to reuse (same memory, new object). The buffer passed in must not be used any more.
   */
  buffer?: Buffer | undefined;
  /** True when this call stored the chunk; false when the repository already had it. */
  isNew: boolean;
  /** Bytes written to storage (blob size) when new, else 0. */
  storedBytes: number;
}

/** Upper bound on ids remembered as present; beyond it the set restarts (bounded memory). */
const KNOWN_IDS_LIMIT = 500_000;

/**
 * Content-addressed chunk storage: put is idempotent (an existing chunk is never rewritten),
 * get verifies the plaintext against its id. The repository's `BlobCodec` encodes, decodes and
 * hashes. Chunk work (storing: stat, encode, create-if-absent; reading: read, decode, verify) runs
 * in a pool of worker threads sized to the cores, each with the same codec and its own storage
 * stack, both built once at start from the specs the store sends (`specOf(backend)`): every
 * storage access goes through the `Backend` interface, in the workers too.
 *
 * A backend that another thread cannot open as the same storage (a memory backend: each stack
 * built from its spec is empty; a backend no spec describes) gets no pool: its chunk work runs
 * inline on the calling thread, as with `workers` 0.
 */
export class ChunkStore {
  private readonly known = new Set<string>();
  private readonly inFlight = new Map<string, Promise<PutResult>>();
  /** One key per data/<hh> directory whose names this process created or relied on since `flush`. */
  private readonly unsynced = new Map<string, string>();
  private pool: WorkerPool<ChunkWorkerRequest, ChunkWorkerResult> | undefined;

  /** The spec each worker builds its stack from; undefined: no pool, chunk work runs inline. */
  private readonly workerSpec: BackendSpec | undefined;
  /** New names become durable only at `barrier` (flush). */
  private readonly needsBarrier: boolean;

  /** Encodes, decodes and hashes every chunk (the workers build the same one from its spec). */
  readonly codec: BlobCodec;

  constructor(
    private readonly backend: Backend,
    /** The repository's codec; a number: format 1's codec with that chunk zstd level (0 = none). */
    codec: BlobCodec | number,
    private readonly workers: number = availableParallelism(),
    /** The repository chunk size: no chunk's plaintext is longer (bounds what a blob may claim). */
    private readonly chunkSizeBytes: number = MAX_CHUNK_SIZE,
  ) {
    this.workerSpec = workers > 0 ? sharedSpecOf(backend) : undefined;
    this.needsBarrier = backend.capabilities.needsBarrier;
    this.codec = typeof codec === 'number' ? BlobCodec.fromSpec(codecSpec(codec)) : codec;
  }

  private getPool(): WorkerPool<ChunkWorkerRequest, ChunkWorkerResult> | undefined {
    if (this.workerSpec === undefined) return undefined;
    if (!this.pool) {
      // Each worker builds the store's codec and storage stack from their specs, once, at start.
      const workerData: ChunkWorkerData = { codec: this.codec.spec, backend: this.workerSpec };
      this.pool = new WorkerPool(workerScriptUrl(), this.workers, { workerData });
    }
    return this.pool;
  }

  /** Marks ids as present without asking storage (e.g. every id of a parent index). */
  remember(id: string): void {
    if (this.known.size >= KNOWN_IDS_LIMIT) this.known.clear();
    this.known.add(id);
  }

  /**
   * Whether the chunk is stored: a regular file (in a file-backed backend; a directory in its
   * place is an error) of at least a blob's envelope. `put` checks the size against the chunk too.
   */
  async has(id: string): Promise<boolean> {
    if (this.known.has(id)) return true;
    const st = await this.backend.stat(Keys.data(id));
    const present = st !== undefined && isPlausibleBlobSize(st.sizeBytes, this.chunkSizeBytes);
    if (present) this.found(id);
    return present;
  }

  /** A chunk found present: remembered, and its name made durable at the next flush. */
  private found(id: string): void {
    this.remember(id);
    // Another process may have created it without syncing its name yet: see flush().
    this.unsynced.set(id.slice(0, 2), Keys.data(id));
  }

  /**
   * Stores a non-zero chunk unless present. `id` may be passed when already computed. With
   * `transfer`, `data` must be the only view of its own ArrayBuffer: it is moved to the worker
   * thread without a copy and comes back as `result.buffer`.
   */
  put(
    data: Buffer,
    id: ChunkId = this.codec.chunkId(data),
    opts: { transfer?: boolean } = {},
  ): Promise<PutResult> {
    const pending = this.inFlight.get(id);
    if (pending) return pending.then((r) => ({ id: r.id, isNew: false, storedBytes: 0, buffer: data }));
    const p = this.doPut(data, id, opts.transfer ?? false).finally(() => this.inFlight.delete(id));
    this.inFlight.set(id, p);
    return p;
  }

  private async doPut(data: Buffer, id: ChunkId, transfer: boolean): Promise<PutResult> {
    if (this.known.has(id)) return { id, isNew: false, storedBytes: 0, buffer: data };
    const key = Keys.data(id);
    const pool = this.getPool();
    if (pool) {
      // A worker checks for the object, encodes and creates it: one message, no storage call here.
      const canTransfer = transfer && data.buffer instanceof ArrayBuffer && data.byteOffset === 0;
      let r: ChunkWorkerResult;
      try {
        r = await pool.run(
          { op: 'store', data, key, transferred: canTransfer },
          canTransfer ? [data.buffer as ArrayBuffer] : [],
        );
      } catch (err) {
        throw this.fromWorker(err, id, {}, false);
      }
      if (!('stored' in r)) throw new Error('unexpected worker reply');
      if (r.replaced) this.replaced++;
      this.unsynced.set(id.slice(0, 2), key);
      this.remember(id);
      const back = r.input ? Buffer.from(r.input.buffer, r.input.byteOffset, r.input.byteLength) : data;
      return { id, isNew: r.stored, storedBytes: r.storedBytes, buffer: back };
    }
    // Inline, the same steps. Only a blob of a size this chunk's blob can have counts as present
    // (see isPlausibleBlobSize); anything else of its name is damage, replaced atomically.
    const st = await this.backend.stat(key);
    if (st && isPlausibleBlobSize(st.sizeBytes, data.length)) {
      this.found(id);
      return { id, isNew: false, storedBytes: 0, buffer: data };
    }
    const blob = this.codec.encode('chunk', data);
    let created: boolean;
    if (st) {
      await this.backend.put(key, blob, { durable: 'at-barrier' });
      this.replaced++;
      created = true;
    } else created = await this.backend.putIfAbsent(key, blob, { durable: 'at-barrier' });
    this.unsynced.set(id.slice(0, 2), key);
    this.remember(id);
    return { id, isNew: created, storedBytes: created ? blob.length : 0, buffer: data };
  }

  /**
   * Stores a chunk like `put`, but a chunk found present is read back and verified first (for the
   * few small chunks of a snapshot's files, where that costs nothing): a damaged one is replaced
   * atomically by the good bytes, so the snapshot never references a blob this run has not
   * verified or written. Errors other than damage (a directory in the chunk's place) are thrown.
   */
  async putVerified(data: Buffer): Promise<PutResult> {
    const id = this.codec.chunkId(data);
    try {
      await this.get(id);
      this.found(id);
      return { id, isNew: false, storedBytes: 0 };
    } catch (err) {
      if (err instanceof ChunkMissingError) {
        this.known.delete(id);
        return this.put(data, id);
      }
      if (!(err instanceof ChunkCorruptError)) throw err;
    }
    const blob = await this.encode(data);
    await this.backend.put(Keys.data(id), blob);
    this.replaced++;
    this.remember(id);
    return { id, isNew: true, storedBytes: blob.length };
  }

  /** Damaged chunk files this store replaced with good bytes (a backup heals what it finds). */
  replaced = 0;

  /**
   * The durability barrier before anything refers to chunks stored (or found) since the last call:
   * chunks are written `{ durable: 'at-barrier' }` (by the workers' stacks or inline), and this
   * `barrier` makes them durable (local: one directory fsync per data/<hh> touched, instead of one
   * per chunk). Chunks found present count too: another process may have created them and not yet
   * synced their names. Repository calls it before writing an index or a manifest. Nothing to do
   * where the backend needs no barrier.
   */
  async flush(): Promise<void> {
    if (this.unsynced.size === 0) return;
    const keys = [...this.unsynced.values()];
    this.unsynced.clear();
    if (this.needsBarrier) await this.backend.barrier(keys);
  }

  private async encodeChunk(data: Buffer, transfer: boolean): Promise<{ blob: Buffer; buffer: Buffer }> {
    const pool = this.getPool();
    if (!pool) return { blob: this.codec.encode('chunk', data), buffer: data };
    const canTransfer = transfer && data.buffer instanceof ArrayBuffer && data.byteOffset === 0;
    const req = { op: 'encode' as const, data, transferred: canTransfer };
    const r = await pool.run(req, canTransfer ? [data.buffer as ArrayBuffer] : []);
    if (!('blob' in r)) throw new Error('unexpected worker reply');
    const blob = Buffer.from(r.blob.buffer, r.blob.byteOffset, r.blob.byteLength);
    const back = r.input ? Buffer.from(r.input.buffer, r.input.byteOffset, r.input.byteLength) : data;
    return { blob, buffer: back };
  }

  async encode(data: Buffer): Promise<Buffer> {
    return (await this.encodeChunk(data, false)).blob;
  }

  /** Reads and verifies a chunk. Missing → ChunkMissingError; damaged → ChunkCorruptError. */
  async get(id: string, loc: ChunkLocation = {}): Promise<Buffer> {
    const pool = this.getPool();
    if (!pool) return this.decode(await this.fetchBlob(id, loc), id, loc);
    // A worker reads the object through its own stack, decodes and verifies it.
    let r: ChunkWorkerResult;
    try {
      r = await pool.run({
        op: 'decode',
        key: Keys.data(id),
        expectId: id,
        maxPlaintextBytes: this.chunkSizeBytes,
      });
    } catch (err) {
      throw this.fromWorker(err, id, loc, true);
    }
    if (!('data' in r)) throw new Error('unexpected worker reply');
    return Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength);
  }

  /**
   * Reads and verifies a chunk into `dest` (at least a chunk long) and returns its length. With
   * worker threads, `dest` should be a view of a SharedArrayBuffer: a worker reads
   * (`getRangeInto`), decompresses and verifies straight into it, so nothing is allocated or moved
   * per chunk. Errors as `get`.
   */
  async getInto(id: string, dest: Buffer, loc: ChunkLocation = {}): Promise<number> {
    const pool = this.getPool();
    if (!pool) {
      const blob = await this.fetchBlob(id, loc);
      try {
        const n = this.codec.decodeInto('chunk', blob, dest, { verifyTag: false });
        if (!this.codec.verify(dest.subarray(0, n), id))
          throw new BlobFormatError('content does not match its id (BLAKE3 mismatch)');
        return n;
      } catch (err) {
        throw this.damage(err, id, loc);
      }
    }
    if (!(dest.buffer instanceof SharedArrayBuffer)) {
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
    let r: ChunkWorkerResult;
    try {
      r = await pool.run({
        op: 'decodeInto',
        key: Keys.data(id),
        expectId: id,
        dest: dest.buffer,
        destOffset: dest.byteOffset,
        destLength: dest.length,
      });
    } catch (err) {
      throw this.fromWorker(err, id, loc, true);
    }
    if (!('length' in r)) throw new Error('unexpected worker reply');
    return r.length;
  }

  private async fetchBlob(id: string, loc: ChunkLocation): Promise<Buffer> {
    try {
      return await this.backend.get(Keys.data(id));
    } catch (err) {
      if (isNotFound(err)) throw new ChunkMissingError(id, loc);
      throw err;
    }
  }

  async decode(blob: Buffer, id: string | null, loc: ChunkLocation = {}): Promise<Buffer> {
    const pool = this.getPool();
    try {
      if (!pool) {
        const data = this.codec.decode('chunk', blob, {
          verifyTag: id === null,
          maxPlaintextBytes: this.chunkSizeBytes,
        });
        if (id !== null && !this.codec.verify(data, id))
          throw new BlobFormatError('content does not match its id (BLAKE3 mismatch)');
        return data;
      }
      const r = await pool.run(
        { op: 'decode', blob, expectId: id, maxPlaintextBytes: this.chunkSizeBytes },
        ownsBuffer(blob) ? [blob.buffer as ArrayBuffer] : [],
      );
      if (!('data' in r)) throw new Error('unexpected worker reply');
      return Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength);
    } catch (err) {
      throw this.damage(err, id, loc);
    }
  }

  /**
   * A worker's failure as the store reports it: damage → ChunkCorruptError, a chunk that is not
   * there (`reading`) → ChunkMissingError, the worker stack's BackendError rebuilt as it was.
   */
  private fromWorker(err: unknown, id: string, loc: ChunkLocation, reading: boolean): unknown {
    if (!(err instanceof WorkerTaskError)) return err;
    if (err.code === 'BLOB_DAMAGED') return this.damage(err, id, loc);
    const rebuilt = BackendError.fromWire(err.message, err.hint, err.details);
    if (rebuilt === undefined) return err;
    return reading && rebuilt.kind === 'not-found' ? new ChunkMissingError(id, loc) : rebuilt;
  }

  /** Damage found while decoding becomes a ChunkCorruptError naming the chunk; other errors pass. */
  private damage(err: unknown, id: string | null, loc: ChunkLocation): unknown {
    if (err instanceof BlobFormatError || (err instanceof WorkerTaskError && err.code === 'BLOB_DAMAGED'))
      return new ChunkCorruptError(id ?? 'unknown', err.message, loc);
    return err;
  }

  async close(): Promise<void> {
    await this.pool?.close();
    this.pool = undefined;
  }
}

/** A buffer that alone backs its ArrayBuffer, so it can move to a worker without a copy. */
function ownsBuffer(b: Buffer): boolean {
  return b.byteOffset === 0 && b.buffer instanceof ArrayBuffer && b.buffer.byteLength === b.length;
}

function workerScriptUrl(): URL {
  const ext = import.meta.url.endsWith('.ts') ? 'ts' : 'js';
  return new URL(`./chunk-worker.${ext}`, import.meta.url);
}
