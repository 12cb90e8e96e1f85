/**
 * Worker thread script for the chunk store: compresses + encodes blobs, and decodes + verifies
 * them, off the main thread. Messages: { id, req: ChunkWorkerRequest } → WorkerReply.
 */
import { parentPort } from 'node:worker_threads';
import { blake3 } from '@napi-rs/blake-hash';
import { decodeBlob, encodeBlob } from './blob.js';

export type ChunkWorkerRequest =
  | { op: 'encode'; data: Uint8Array; levelZstd: number }
  | { op: 'decode'; blob: Uint8Array; expectId: string | null };

/** `input` is the request's buffer handed back when it was transferred in (zero-copy both ways). */
export type ChunkWorkerResult = { blob: Uint8Array; input?: Uint8Array } | { data: Uint8Array };

/** An ArrayBuffer we may transfer: one that backs this view alone (not a pooled slab). */
function ownBuffer(b: Uint8Array): ArrayBuffer | undefined {
  return b.byteOffset === 0 &&
    b.buffer instanceof ArrayBuffer &&
    b.buffer.byteLength < 2 * b.byteLength + 65536
    ? b.buffer
    : undefined;
}

function handle(req: ChunkWorkerRequest & { transferred?: boolean }): {
  result: ChunkWorkerResult;
  transfer: ArrayBuffer[];
} {
  if (req.op === 'encode') {
    const blob = encodeBlob(req.data, { levelZstd: req.levelZstd });
    const transfer: ArrayBuffer[] = [];
    const own = ownBuffer(blob);
    if (own) transfer.push(own);
    if (req.transferred && req.data.buffer instanceof ArrayBuffer) {
      transfer.push(req.data.buffer);
      return { result: { blob, input: req.data }, transfer };
    }
    return { result: { blob }, transfer };
  }
  let data: Buffer;
  try {
    data = decodeBlob(req.blob, { verifyTag: req.expectId === null });
  } catch (err) {
    throw Object.assign(new Error(err instanceof Error ? err.message : String(err)), {
      code: 'BLOB_DAMAGED',
    });
  }
  if (req.expectId !== null && blake3(data).toString('hex') !== req.expectId) {
    throw Object.assign(new Error('content does not match its id (BLAKE3 mismatch)'), {
      code: 'BLOB_DAMAGED',
    });
  }
  // The plaintext lives either in a fresh ArrayBuffer (zstd) or inside the blob this thread owns
  // (codec none): either way it can move to the main thread without a copy.
  return { result: { data }, transfer: data.buffer instanceof ArrayBuffer ? [data.buffer] : [] };
}

parentPort?.on('message', (msg: { id: number; req: ChunkWorkerRequest & { transferred?: boolean } }) => {
  try {
    const { result, transfer } = handle(msg.req);
    parentPort?.postMessage({ id: msg.id, ok: true, result }, transfer);
  } catch (err) {
    const code =
      typeof err === 'object' && err && 'code' in err
        ? String((err as { code: unknown }).code)
        : 'WORKER_ERROR';
    parentPort?.postMessage({
      id: msg.id,
      ok: false,
      code,
      message: err instanceof Error ? err.message : String(err),
    });
  }
});
