/**
 * Worker thread script for the chunk store: compresses + encodes blobs, and decodes + verifies
 * them, off the main thread, with the codec built from the `CodecSpec` the store passed as
 * workerData at start. Messages: { id, req: ChunkWorkerRequest } → WorkerReply.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import {
  createObjectFile,
  objectFileState,
  renameIntoPlace,
  writeTempFile,
  type LocalFileSpec,
} from './backend/local-files.js';
import { isPlausibleBlobSize } from './blob.js';
import { BlobCodec, type CodecSpec } from './codec.js';
import { BLOB_HEADER_BYTES, MAX_CHUNK_SIZE } from './format.js';

/** What the chunk store passes as workerData. */
export interface ChunkWorkerData {
  codec: CodecSpec;
}

/** This thread's codec: the repository's, from the spec the store sent once. */
const codec = BlobCodec.fromSpec((workerData as ChunkWorkerData).codec);

/**
 * A blob to decode: its bytes, or the path of the file that holds it (backends that store objects
 * as files: the worker reads it itself, sparing the main thread four asynchronous fs calls and a
 * buffer per chunk). A file that cannot be read fails with code READ_FAILED, and the caller reads
 * the object through its backend instead (which reports the error properly, e.g. not found).
 */
export type BlobSource = { blob: Uint8Array; path?: undefined } | { path: string; blob?: undefined };

export type ChunkWorkerRequest =
  | { op: 'encode'; data: Uint8Array }
  /**
   * Stores a chunk as object `key` in a file-backed backend unless the object exists: encodes it
   * and creates the file itself (local-files.ts), so the main thread sees one message per chunk.
   * Only a regular file of a size the chunk's blob can have counts as present; a file of any other
   * size is damage and is replaced (atomically) by the new blob; a non-file in its place is an
   * error (NOT_A_FILE).
   */
  | {
      op: 'store';
      data: Uint8Array;
      spec: LocalFileSpec;
      key: string;
      transferred?: boolean;
    }
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
  /** `replaced`: a damaged file of the chunk's name was there and the new blob took its place. */
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

// One read buffer per thread for blobs read from files, grown to the largest blob seen. Blobs
// are read to offset 4, so that their payload (after the 36-byte header) is 8-byte aligned: V8
// copies into shared memory (SharedArrayBuffer) about 5x slower from an unaligned source.
let fileScratch = Buffer.alloc(0);
const SCRATCH_AT = 4;

function readFailed(err: unknown): Error {
  return Object.assign(new Error(err instanceof Error ? err.message : String(err)), { code: 'READ_FAILED' });
}

function openForRead(path: string): number {
  try {
    return openSync(path, 'r');
  } catch (err) {
    throw readFailed(err);
  }
}

/** Reads `length` bytes at `position` into `into` at `at`; returns how many there were. */
function readFully(fd: number, into: Uint8Array, at: number, length: number, position: number): number {
  let done = 0;
  try {
    while (done < length) {
      const n = readSync(fd, into, at + done, length - done, position + done);
      if (n === 0) break;
      done += n;
    }
  } catch (err) {
    throw readFailed(err);
  }
  return done;
}

function sizeOf(fd: number): number {
  try {
    return fstatSync(fd).size;
  } catch (err) {
    throw readFailed(err);
  }
}

function readOpenFile(fd: number, size: number): Uint8Array {
  if (fileScratch.length < SCRATCH_AT + size)
    fileScratch = Buffer.allocUnsafeSlow(Math.max(SCRATCH_AT + size, fileScratch.length * 2));
  const n = readFully(fd, fileScratch, SCRATCH_AT, size, 0);
  return fileScratch.subarray(SCRATCH_AT, SCRATCH_AT + n);
}

/** Reads a blob file whole, unless it is larger than a blob of `maxPlaintextBytes` can be (damage). */
function readWholeFile(path: string, maxPlaintextBytes: number): Uint8Array {
  const fd = openForRead(path);
  try {
    const size = sizeOf(fd);
    if (size > codec.blobBound(maxPlaintextBytes))
      throw damaged(`blob is ${size} bytes, more than a blob of ${maxPlaintextBytes} bytes can be`);
    return readOpenFile(fd, size);
  } finally {
    closeSync(fd);
  }
}

const head = Buffer.alloc(BLOB_HEADER_BYTES);

/**
 * Decodes the blob in file `path` into `dest` and returns the plaintext length. A stored (codec
 * none) payload is read from the file straight into `dest`: no copy through a read buffer, which
 * for incompressible data was a third of this thread's time. Anything else is read whole and
 * decoded. The caller verifies the plaintext against its id (the tag is not checked here).
 */
function decodeFileInto(path: string, dest: Uint8Array): number {
  const fd = openForRead(path);
  try {
    const size = sizeOf(fd);
    if (readFully(fd, head, 0, BLOB_HEADER_BYTES, 0) === BLOB_HEADER_BYTES) {
      const v = decoding(() => codec.verbatimPayload(head, size));
      if (v && v.length <= dest.length) {
        const n = readFully(fd, dest, 0, v.length, v.offset);
        if (n !== v.length) throw damaged(`blob is ${v.offset + n} bytes, its header says more`);
        return n;
      }
    }
    if (size > codec.blobBound(dest.length))
      throw damaged(`blob is ${size} bytes, more than a blob of ${dest.length} bytes can be`);
    const blob = readOpenFile(fd, size);
    return decoding(() => codec.decodeInto('chunk', blob, dest, { verifyTag: false }));
  } finally {
    closeSync(fd);
  }
}

function blobOf(src: BlobSource, maxPlaintextBytes: number): Uint8Array {
  return src.path !== undefined ? readWholeFile(src.path, maxPlaintextBytes) : src.blob;
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
  const state = objectFileState(req.spec, req.key);
  const replace = state.kind === 'file' && !isPlausibleBlobSize(state.sizeBytes, req.data.length);
  if (state.kind === 'absent' || replace) {
    const bound = codec.blobBound(req.data.length);
    let buf = freeBlobBuffers.pop();
    if (!buf || buf.length < bound) buf = Buffer.allocUnsafeSlow(bound);
    try {
      const blob = codec.encode('chunk', req.data, buf);
      if (replace) {
        renameIntoPlace(req.spec, await writeTempFile(req.spec, blob), req.key);
        stored = true;
      } else stored = await createObjectFile(req.spec, req.key, blob);
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

function handle(req: ChunkWorkerRequest & { transferred?: boolean }): Handled | Promise<Handled> {
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
      req.path !== undefined
        ? decodeFileInto(req.path, dest)
        : decoding(() => codec.decodeInto('chunk', req.blob, dest, { verifyTag: false }));
    if (!codec.verify(dest.subarray(0, n), req.expectId))
      throw damaged('content does not match its id (BLAKE3 mismatch)');
    return { result: { length: n }, transfer: [] };
  }
  const max = req.maxPlaintextBytes ?? MAX_CHUNK_SIZE;
  const blob = blobOf(req, max);
  let data = decoding(() =>
    codec.decode('chunk', blob, { verifyTag: req.expectId === null, maxPlaintextBytes: max }),
  );
  // Read from a file, a stored (codec none) plaintext is a view of the thread's read buffer.
  if (data.buffer === fileScratch.buffer) data = Buffer.from(data);
  if (req.expectId !== null && !codec.verify(data, req.expectId))
    throw damaged('content does not match its id (BLAKE3 mismatch)');
  // The plaintext lives either in a fresh ArrayBuffer (zstd) or inside the blob this thread owns
  // (codec none): either way it can move to the main thread without a copy.
  return { result: { data }, transfer: data.buffer instanceof ArrayBuffer ? [data.buffer] : [] };
}

function reply(id: number, { result, transfer }: Handled): void {
  parentPort?.postMessage({ id, ok: true, result }, transfer);
}

/** Errors cross as { code, message }: BLOB_DAMAGED, READ_FAILED, or an errno code (ENOSPC, ...). */
function replyError(id: number, err: unknown): void {
  const code =
    typeof err === 'object' && err && 'code' in err
      ? String((err as { code: unknown }).code)
      : 'WORKER_ERROR';
  parentPort?.postMessage({ id, ok: false, code, message: err instanceof Error ? err.message : String(err) });
}

parentPort?.on('message', (msg: { id: number; req: ChunkWorkerRequest & { transferred?: boolean } }) => {
  try {
    const handled = handle(msg.req);
    // A store waits for its fdatasync in libuv's pool; meanwhile this thread takes the next task.
    if (handled instanceof Promise)
      handled.then(
        (h) => reply(msg.id, h),
        (err: unknown) => replyError(msg.id, err),
      );
    else reply(msg.id, handled);
  } catch (err) {
    replyError(msg.id, err);
  }
});
