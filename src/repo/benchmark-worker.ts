/**
 * Worker thread script of `benchmark` (benchmark.ts): builds one chunk of sample data and the
 * repository's codec once (`prepare`), then runs one operation on it in a loop for a given time
 * (`run`) and reports the bytes it processed. Messages: { id, req: BenchWorkerRequest } →
 * WorkerReply<BenchWorkerResult>.
 */
import { randomFillSync } from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import { zstdBound, zstdCompressTo, zstdDecompressInto } from './blob.js';
import { BlobCodec, recordBound, type CodecSpec, type RecordMeta } from './codec.js';

/** The CPU-bound steps of a backup and a restore that the benchmark measures. */
export type CpuOp = 'hash' | 'compress' | 'decompress' | 'encrypt' | 'decrypt';

export type BenchWorkerRequest =
  /**
   * Sample data of `chunkBytes` and the codecs: `idSpec` hashes as the repository does (its id
   * function, keyed with a random key when it is keyed), `level` is its zstd level, and `encSpec`
   * is an encrypted codec that does not compress (AES-256-GCM alone).
   */
  | { op: 'prepare'; chunkBytes: number; idSpec: CodecSpec; encSpec: CodecSpec; level: number }
  | { op: 'run'; what: CpuOp; seconds: number };

export interface BenchWorkerResult {
  /** Plaintext bytes processed. */
  bytes: number;
  /** Wall time the loop took, in seconds. */
  seconds: number;
  /** compress only: bytes of the compressed output (for the ratio). */
  outBytes?: number;
}

interface State {
  data: Buffer;
  idCodec: BlobCodec;
  encCodec: BlobCodec;
  level: number;
  /** The data zstd-compressed at `level` (for decompress). */
  frame: Buffer;
  scratch: Buffer;
  out: Buffer;
  /** The data sealed by `encCodec` (for decrypt). */
  record: Buffer;
  meta: RecordMeta;
}

let state: State | undefined;

/**
 * Data a disk holds, roughly: per 4 KiB block, alternately random bytes and text-like bytes
 * (words from a small vocabulary), so that zstd finds about half of it compressible.
 */
export function sampleData(bytes: number): Buffer {
  const data = Buffer.allocUnsafeSlow(bytes);
  const words = ['the ', 'vmvault ', 'backup ', 'of ', 'disk ', 'chunk ', 'data ', 'log: ', '0x1f ', '\n'];
  let seed = 0x9e3779b9;
  const next = (): number => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return seed >>> 0;
  };
  for (let at = 0, block = 0; at < bytes; at += 4096, block++) {
    const end = Math.min(bytes, at + 4096);
    if (block % 2 === 0) {
      randomFillSync(data, at, end - at);
      continue;
    }
    let p = at;
    while (p < end) p += data.write(words[next() % words.length]!, p, end - p, 'latin1');
  }
  return data;
}

function prepare(req: Extract<BenchWorkerRequest, { op: 'prepare' }>): void {
  const data = sampleData(req.chunkBytes);
  const idCodec = BlobCodec.fromSpec(req.idSpec);
  const encCodec = BlobCodec.fromSpec(req.encSpec);
  const scratch = Buffer.allocUnsafeSlow(zstdBound(data.length));
  let frame = Buffer.alloc(0);
  if (req.level !== 0) {
    const n = zstdCompressTo(scratch, data, req.level);
    frame = Buffer.from(scratch.subarray(0, n));
  }
  const id = encCodec.chunkIdBytes(data);
  const sealed = encCodec.sealRecord(1, id, data);
  state = {
    data,
    idCodec,
    encCodec,
    level: req.level,
    frame,
    scratch,
    out: Buffer.allocUnsafeSlow(Math.max(data.length, recordBound(data.length))),
    record: sealed.record,
    meta: sealed.meta,
  };
}

/** One pass of `what` over the sample data; returns the output bytes (compress) or 0. */
function once(s: State, what: CpuOp): number {
  switch (what) {
    case 'hash':
      s.idCodec.chunkIdBytes(s.data);
      return 0;
    case 'compress':
      return zstdCompressTo(s.scratch, s.data, s.level);
    case 'decompress':
      zstdDecompressInto(s.out, s.frame, s.data.length);
      return 0;
    case 'encrypt':
      s.encCodec.sealRecordInto(1, s.meta.id, s.data, s.out);
      return 0;
    case 'decrypt':
      s.encCodec.checkRecordSeal(s.meta, s.record, s.data.length);
      return 0;
  }
}

function run(what: CpuOp, seconds: number): BenchWorkerResult {
  const s = state;
  if (s === undefined) throw new Error('benchmark worker: run before prepare');
  once(s, what); // warm-up (contexts, caches) outside the measured time
  const start = process.hrtime.bigint();
  const deadline = start + BigInt(Math.round(seconds * 1e9));
  let bytes = 0;
  let outBytes = 0;
  let now = start;
  do {
    outBytes += once(s, what);
    bytes += s.data.length;
    now = process.hrtime.bigint();
  } while (now < deadline);
  return {
    bytes,
    seconds: Number(now - start) / 1e9,
    ...(what === 'compress' ? { outBytes } : {}),
  };
}

parentPort?.on('message', (msg: { id: number; req: BenchWorkerRequest }) => {
  try {
    const result = msg.req.op === 'prepare' ? prepare(msg.req) : run(msg.req.what, msg.req.seconds);
    parentPort?.postMessage({ id: msg.id, ok: true, result: result ?? { bytes: 0, seconds: 0 } });
  } catch (err) {
    parentPort?.postMessage({
      id: msg.id,
      ok: false,
      code: 'BENCHMARK',
      message: err instanceof Error ? err.message : String(err),
    });
  }
});
