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

export type ChunkWorkerResult = { blob: Uint8Array } | { data: Uint8Array };

function handle(req: ChunkWorkerRequest): { result: ChunkWorkerResult; transfer: ArrayBuffer[] } {
  if (req.op === 'encode') {
    const blob = encodeBlob(req.data, { levelZstd: req.levelZstd });
    return { result: { blob }, transfer: [] };
  }
  let data: Buffer;
  try {
    data = decodeBlob(req.blob);
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
  return { result: { data }, transfer: [] };
}

parentPort?.on('message', (msg: { id: number; req: ChunkWorkerRequest }) => {
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
