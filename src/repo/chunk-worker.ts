/**
 * Worker thread script for the chunk store: stores chunks (encode + create-if-absent) and reads
 * them (read + decode + verify) off the main thread. It builds, once, the repository's codec from
 * the `CodecSpec` and its own storage stack from the `BackendSpec` the store passed as workerData,
 * and does all its storage through that stack's `Backend` interface (wrappers included: retry, the
 * limit, read-only, test faults). Messages: { id, req: ChunkWorkerRequest } → WorkerReply.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { VmvaultError } from '../util/index.js';
import type { Backend } from './backend/backend.js';
import { openBackend, type BackendSpec } from './backend/open.js';
import { isPlausibleBlobSize } from './blob.js';
import { BlobCodec, type CodecSpec } from './codec.js';
import { BackendError } from './errors.js';
import { BLOB_HEADER_BYTES, MAX_CHUNK_SIZE } from './format.js';

/** What the chunk store passes as workerData. */
export interface ChunkWorkerData {
  codec: CodecSpec;
  /** The repository's stack (`specOf`); this thread builds the same one. */
  backend: BackendSpec;
}

const data = workerData as ChunkWorkerData;
/** This thread's codec: the repository's, from the spec the store sent once. */
const codec = BlobCodec.fromSpec(data.codec);
/**
 * This thread's stack, built from the store's spec. This thread may block on it: the local
 * backend reads and stats with synchronous calls (cheaper than a thread-pool round trip each).
 */
const backend: Backend = openBackend(data.backend, { blocking: true });

/** A blob to decode: its bytes (codec work only), or the key of the object this thread reads. */
export type BlobSource = { blob: Uint8Array; key?: undefined } | { key: string; blob?: undefined };

export type ChunkWorkerRequest =
  | { op: 'encode'; data: Uint8Array }
  /**
   * Stores a chunk as object `key` unless present: stat, encode, `putIfAbsent(key, blob, {
   * durable: 'at-barrier' })`; the main thread sees one message per chunk and makes the names
   * durable with one `barrier`. Only an object of a size the chunk's blob can have counts as
   * present; one of any other size is damage and is replaced (atomically, `put`) by the new blob;
   * a non-file in its place is the backend's error.
   */
  | { op: 'store'; data: Uint8Array; key: string; transferred?: boolean }
  /** `maxPlaintextBytes`: the most a chunk can hold (the repository chunk size; default the largest). */
  | ({ op: 'decode'; expectId: string | null; maxPlaintextBytes?: number } & BlobSource)
  /** Decodes into shared memory the caller owns (`dest` bytes at `destOffset`): nothing moves back. */
  | ({
      op: 'decodeInto';
      expectId: string;
      dest: SharedArrayBuffer;
      destOffset: number;
      destLength: number;
    } & BlobSource);

/** `input` is the request's buffer handed back when it was transferred in (zero-copy both ways). */
export type ChunkWorkerResult =
  | { blob: Uint8Array; input?: Uint8Array }
  /** `replaced`: a damaged object of the chunk's name was there and the new blob took its place. */
  | { stored: boolean; storedBytes: number; replaced?: boolean; input?: Uint8Array }
  | { data: Uint8Array }
  | { length: number };

function damaged(message: string): Error {
  return Object.assign(new Error(message), { code: 'BLOB_DAMAGED' });
}

/** Runs a decode step; whatever it throws (BlobFormatError, zstd) is damage to the blob. */
function decoding<T>(step: () => T): T {
  try {
    return step();
  } catch (err) {
    throw damaged(err instanceof Error ? err.message : String(err));
  }
}

/** A read past the end of a chunk's object (it is shorter than its header says) is damage. */
async function reading<T>(step: () => Promise<T>): Promise<T> {
  try {
    return await step();
  } catch (err) {
    if (err instanceof BackendError && err.kind === 'range') throw damaged(err.message);
    throw err;
  }
}

// Read buffers for whole blobs, reused across tasks (a task holds one across its awaits: a retry's
// backoff lets other tasks run meanwhile). Blobs are read to offset 4, so that their payload
// (after the 36-byte header) is 8-byte aligned: V8 copies into shared memory (SharedArrayBuffer)
// about 5x slower from an unaligned source.
const freeScratch: Buffer[] = [];
const SCRATCH_AT = 4;

/** Reads the whole object `key` of `size` bytes into a scratch buffer; give it back with `release`. */
async function readWhole(key: string, size: number): Promise<{ blob: Uint8Array; release: () => void }> {
  let buf = freeScratch.pop();
  if (!buf || buf.length < SCRATCH_AT + size)
    buf = Buffer.allocUnsafeSlow(Math.max(SCRATCH_AT + size, (buf?.length ?? 0) * 2));
  const scratch = buf;
  const release = (): void => {
    if (freeScratch.length < 4) freeScratch.push(scratch);
  };
  const blob = scratch.subarray(SCRATCH_AT, SCRATCH_AT + size);
  try {
    await reading(() => backend.getRangeInto(key, 0, blob));
  } catch (err) {
    release();
    throw err;
  }
  return { blob, release };
}

/**
 * The header and size of object `key`, in one storage call (`getRangeInto` resolves to the
 * object's size): a missing object or a directory in its place fails as a read does. An object
 * shorter than a header is damage.
 */
async function headOf(key: string): Promise<{ head: Buffer; size: number }> {
  const head = Buffer.allocUnsafe(BLOB_HEADER_BYTES);
  try {
    return { head, size: await backend.getRangeInto(key, 0, head) };
  } catch (err) {
    if (err instanceof BackendError && err.kind === 'range')
      throw damaged(`blob too short (less than its ${BLOB_HEADER_BYTES}-byte header)`);
    throw err;
  }
}

/**
 * Decodes the chunk object `key` into `dest` and returns the plaintext length. A stored (codec
 * none) payload is read straight into `dest` (`getRangeInto`): no copy through a read buffer,
 * which for incompressible data was a third of this thread's time. Anything else is read whole
 * and decoded. The caller verifies the plaintext against its id (the tag is not checked here).
 */
async function decodeObjectInto(key: string, dest: Uint8Array): Promise<number> {
  const { head, size } = await headOf(key);
  const v = decoding(() => codec.verbatimPayload(head, size));
  if (v && v.length <= dest.length) {
    await reading(() => backend.getRangeInto(key, v.offset, dest.subarray(0, v.length)));
    return v.length;
  }
  if (size > codec.blobBound(dest.length))
    throw damaged(`blob is ${size} bytes, more than a blob of ${dest.length} bytes can be`);
  const { blob, release } = await readWhole(key, size);
  try {
    return decoding(() => codec.decodeInto('chunk', blob, dest, { verifyTag: false }));
  } finally {
    release();
  }
}

/** Decodes the chunk object `key` whole, unless it is larger than a blob of `max` can be (damage). */
async function decodeObject(key: string, expectId: string | null, max: number): Promise<Buffer> {
  const { size } = await headOf(key);
  if (size > codec.blobBound(max))
    throw damaged(`blob is ${size} bytes, more than a blob of ${max} bytes can be`);
  const { blob, release } = await readWhole(key, size);
  try {
    const data = decoding(() =>
      codec.decode('chunk', blob, { verifyTag: expectId === null, maxPlaintextBytes: max }),
    );
    // A stored (codec none) plaintext is a view of the read buffer, which goes back to the pool.
    return data.buffer === blob.buffer ? Buffer.from(data) : data;
  } finally {
    release();
  }
}

/** An ArrayBuffer we may transfer: one that backs this view alone (not a pooled slab). */
function ownBuffer(b: Uint8Array): ArrayBuffer | undefined {
  return b.byteOffset === 0 &&
    b.buffer instanceof ArrayBuffer &&
    b.buffer.byteLength < 2 * b.byteLength + 65536
    ? b.buffer
    : undefined;
}

interface Handled {
  result: ChunkWorkerResult;
  transfer: ArrayBuffer[];
}

// Blob buffers for this thread's stores in flight (each is free again once its store settles).
const freeBlobBuffers: Buffer[] = [];

async function store(req: Extract<ChunkWorkerRequest, { op: 'store' }>): Promise<Handled> {
  let stored = false;
  let storedBytes = 0;
  const st = await backend.stat(req.key);
  const replace = st !== undefined && !isPlausibleBlobSize(st.sizeBytes, req.data.length);
  if (st === undefined || replace) {
    const bound = codec.blobBound(req.data.length);
    let buf = freeBlobBuffers.pop();
    if (!buf || buf.length < bound) buf = Buffer.allocUnsafeSlow(bound);
    try {
      const blob = codec.encode('chunk', req.data, buf);
      if (replace) {
        await backend.put(req.key, blob, { durable: 'at-barrier' });
        stored = true;
      } else stored = await backend.putIfAbsent(req.key, blob, { durable: 'at-barrier' });
      if (stored) storedBytes = blob.length;
    } finally {
      if (freeBlobBuffers.length < 16) freeBlobBuffers.push(buf);
    }
  }
  if (req.transferred && req.data.buffer instanceof ArrayBuffer)
    return {
      result: { stored, storedBytes, replaced: replace, input: req.data },
      transfer: [req.data.buffer],
    };
  return { result: { stored, storedBytes, replaced: replace }, transfer: [] };
}

async function handle(req: ChunkWorkerRequest & { transferred?: boolean }): Promise<Handled> {
  if (req.op === 'store') return store(req);
  if (req.op === 'encode') {
    const blob = codec.encode('chunk', req.data);
    const transfer: ArrayBuffer[] = [];
    const own = ownBuffer(blob);
    if (own) transfer.push(own);
    if (req.transferred && req.data.buffer instanceof ArrayBuffer) {
      transfer.push(req.data.buffer);
      return { result: { blob, input: req.data }, transfer };
    }
    return { result: { blob }, transfer };
  }
  if (req.op === 'decodeInto') {
    const dest = new Uint8Array(req.dest, req.destOffset, req.destLength);
    const n =
      req.key !== undefined
        ? await decodeObjectInto(req.key, dest)
        : decoding(() => codec.decodeInto('chunk', req.blob, dest, { verifyTag: false }));
    if (!codec.verify(dest.subarray(0, n), req.expectId))
      throw damaged('content does not match its id (BLAKE3 mismatch)');
    return { result: { length: n }, transfer: [] };
  }
  const max = req.maxPlaintextBytes ?? MAX_CHUNK_SIZE;
  const data =
    req.key !== undefined
      ? await decodeObject(req.key, req.expectId, max)
      : decoding(() =>
          codec.decode('chunk', req.blob, { verifyTag: req.expectId === null, maxPlaintextBytes: max }),
        );
  if (req.expectId !== null && !codec.verify(data, req.expectId))
    throw damaged('content does not match its id (BLAKE3 mismatch)');
  // The plaintext lives either in a fresh ArrayBuffer (zstd, or copied out of the read buffer) or
  // inside the blob this thread owns (codec none): either way it can move without a copy.
  return { result: { data }, transfer: data.buffer instanceof ArrayBuffer ? [data.buffer] : [] };
}

function reply(id: number, { result, transfer }: Handled): void {
  parentPort?.postMessage({ id, ok: true, result }, transfer);
}

/**
 * Errors cross as { code, message }: BLOB_DAMAGED, or a VmvaultError's code with
 * its hint and details (a BackendError's kind: the store rebuilds it, `BackendError.fromWire`).
 */
function replyError(id: number, err: unknown): void {
  const code =
    typeof err === 'object' && err && 'code' in err
      ? String((err as { code: unknown }).code)
      : 'WORKER_ERROR';
  const message = err instanceof Error ? err.message : String(err);
  const extra =
    err instanceof BackendError
      ? { details: err.wire(), ...(err.hint === undefined ? {} : { hint: err.hint }) }
      : err instanceof VmvaultError && err.hint !== undefined
        ? { hint: err.hint }
        : {};
  parentPort?.postMessage({ id, ok: false, code, message, ...extra });
}

parentPort?.on('message', (msg: { id: number; req: ChunkWorkerRequest & { transferred?: boolean } }) => {
  // A store waits for its fdatasync in libuv's pool; meanwhile this thread takes the next task.
  handle(msg.req).then(
    (h) => reply(msg.id, h),
    (err: unknown) => replyError(msg.id, err),
  );
});
