/**
 * Worker thread script of the pack store (format 2, docs/format-2-design.md §1.5): each worker
 * seals the chunks it is given into records of its own open data pack and writes the pack through
 * its own storage stack once it reaches the target size (or when told to seal); it also reads and
 * opens records straight into the caller's shared memory. It builds the repository's codec and
 * storage stack once, from the specs in workerData. Messages: { id, req: PackWorkerRequest } →
 * WorkerReply.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { VmvaultError } from '../util/index.js';
import type { Backend } from './backend/backend.js';
import { openBackend, type BackendSpec } from './backend/open.js';
import { s3RequestCounts, type S3RequestCounts } from './backend/s3.js';
import { encodeEntryInto, ENTRY_BYTES, type IndexEntry } from './chunk-index/entry.js';
import { BlobCodec, RECORD_OVERHEAD, type CodecSpec, type RecordKind, type RecordMeta } from './codec.js';
import { BlobFormatError, zstdBound } from './blob.js';
import { BackendError } from './errors.js';
import { PackWriter, verifyPack } from './pack.js';

export interface PackWorkerData {
  codec: CodecSpec;
  backend: BackendSpec;
  /** A pack is closed once it holds at least this many bytes. */
  packSizeBytes: number;
  /** 16 bytes: the writing process's session id (in every pack header). */
  sessionId: Uint8Array;
  /** The largest chunk (bounds a record: slabs hold a pack and one more record). */
  chunkSizeBytes: number;
}

/** A record's location and what opens it (an index entry without the pack name, plus the key). */
export interface RecordRef {
  key: string;
  offset: number;
  length: number;
  kind: RecordKind;
  codec: 0 | 1;
  plaintextBytes: number;
  id: Uint8Array;
}

export type PackWorkerRequest =
  /** Seals `data` (of id `id`) as a record of this worker's open data pack. */
  | { op: 'add'; data: Uint8Array; id: Uint8Array; kind: 1 | 2; transferred?: boolean }
  /** Closes and writes this worker's open pack, if any. */
  | { op: 'seal' }
  /**
   * Reads and opens one record; into `dest` when given, else returned. With `src`, the record's
   * bytes are already there (at `srcOffset`: a coalesced range the main thread read) and are not
   * read from the backend.
   */
  | {
      op: 'read';
      ref: RecordRef;
      max: number;
      src?: SharedArrayBuffer;
      srcOffset?: number;
      dest?: SharedArrayBuffer;
      destOffset?: number;
      destLength?: number;
    }
  /**
   * prune's repack: reads pack `key` whole, checks the seal of each record `records` names (48
   * bytes each: id 32, offset u32, length u32, plaintext length u32, kind u8, codec u8, 0 u16) and
   * appends them verbatim to this worker's open data pack (written when full, as `add` does). A
   * damaged record copies nothing of the pack and is reported.
   */
  | { op: 'copy'; key: string; sizeBytes: number; records: Uint8Array; maxChunkBytes: number }
  /**
   * sync's verbatim copy: one data record sealed by a repository with the same keys and chunk
   * level, at `srcOffset` of `src` (`length` bytes). It is opened in full (seal, decompression, id)
   * into scratch memory, then appended as it is to this worker's open data pack.
   */
  | {
      op: 'append';
      src: SharedArrayBuffer;
      srcOffset: number;
      length: number;
      id: Uint8Array;
      codec: 0 | 1;
      plaintextBytes: number;
    }
  /** check --read-data: reads a whole pack and opens every record. */
  | { op: 'verify'; key: string; sizeBytes: number; maxChunkBytes: number; maxPageBytes: number };

/** A pack this worker wrote: its key and its entries (64 bytes each, docs/format-2-index.md). */
export interface WrittenPack {
  key: string;
  sizeBytes: number;
  entries: Uint8Array;
}

export type PackWorkerResult =
  | { recordBytes: number; written?: WrittenPack; input?: Uint8Array }
  | { written?: WrittenPack }
  | { data: Uint8Array }
  | { length: number }
  | { entries: Uint8Array; problems: Array<{ offset: number | '*'; id?: Uint8Array; reason: string }> }
  | { packs: WrittenPack[]; damaged?: string }
  | { appended: number; packs: WrittenPack[] };

const data = workerData as PackWorkerData;
const codec = BlobCodec.fromSpec(data.codec);
const backend: Backend = openBackend(data.backend, { blocking: true });
const sessionId = Buffer.from(data.sessionId);

/**
 * The open pack and the slab its records are sealed into: one buffer of pack size + one record,
 * reused once the pack is written (a fresh ArrayBuffer per record is external memory the GC frees
 * late: RSS grew by hundreds of MiB). A pack closes at ≥ the target, so a slab always has room.
 */
let open: { writer: PackWriter; slab: Buffer; used: number } | undefined;
const freeSlabs: Buffer[] = [];
const freePackBuffers: Buffer[] = [];
const slabBytes = data.packSizeBytes + RECORD_OVERHEAD + data.chunkSizeBytes;
/** Slabs in use (the open pack's, and those of packs being written): at most two. */
let slabsOut = 0;
let slabWaiters: Array<() => void> = [];

/**
 * An open pack to add to. When two slabs are out (one pack filling, one being written), the next
 * pack waits for the write: the reply to the chunk waits too, which holds back the reader (memory
 * stays bounded however slow the storage is).
 */
async function openPack(): Promise<void> {
  if (open !== undefined) return;
  if (slabsOut >= 2) {
    await new Promise<void>((r) => slabWaiters.push(r));
    return;
  }
  slabsOut++;
  open = {
    writer: new PackWriter(codec, 'data', sessionId),
    slab: freeSlabs.pop() ?? Buffer.allocUnsafeSlow(slabBytes),
    used: 0,
  };
}

function releaseSlab(slab: Buffer): void {
  slabsOut--;
  if (slabsOut + freeSlabs.length < 2) freeSlabs.push(slab);
  const waiting = slabWaiters;
  slabWaiters = [];
  for (const w of waiting) w();
}

function damaged(message: string): Error {
  return Object.assign(new Error(message), { code: 'BLOB_DAMAGED' });
}

function encodeEntries(entries: readonly IndexEntry[]): Uint8Array {
  const out = Buffer.from(new ArrayBuffer(entries.length * ENTRY_BYTES));
  entries.forEach((e, i) => encodeEntryInto(e, out, i * ENTRY_BYTES));
  return out;
}

async function sealOpen(): Promise<WrittenPack | undefined> {
  const o = open;
  open = undefined;
  if (o === undefined) return undefined;
  try {
    if (o.writer.count === 0) return undefined;
    const p = o.writer.finish();
    await backend.putIfAbsent(p.key, p.parts, { durable: 'at-barrier' });
    return { key: p.key, sizeBytes: p.sizeBytes, entries: encodeEntries(p.entries) };
  } finally {
    releaseSlab(o.slab);
  }
}

async function add(req: Extract<PackWorkerRequest, { op: 'add' }>): Promise<Handled> {
  if (req.data.length > data.chunkSizeBytes)
    throw new RangeError(`a chunk of ${req.data.length} bytes is larger than the chunk size`);
  // Re-checked after every wait: another task may have filled and sealed the pack meanwhile.
  // From here to `add` nothing awaits, so the record goes into the pack this loop saw open.
  while (open === undefined) await openPack();
  const o = open;
  const { record, meta } = codec.sealRecordInto(
    req.kind,
    Buffer.from(req.id),
    req.data,
    o.slab.subarray(o.used),
  );
  o.used += record.length;
  o.writer.add(record, meta);
  let written: WrittenPack | undefined;
  if (o.writer.sizeBytes >= data.packSizeBytes) written = await sealOpen();
  const transfer: ArrayBuffer[] = written ? [written.entries.buffer as ArrayBuffer] : [];
  const result: PackWorkerResult = { recordBytes: record.length, ...(written ? { written } : {}) };
  if (req.transferred && req.data.buffer instanceof ArrayBuffer) {
    transfer.push(req.data.buffer);
    return { result: { ...result, input: req.data }, transfer };
  }
  return { result, transfer };
}

async function readRecord(ref: RecordRef, into: Uint8Array): Promise<Uint8Array> {
  const buf = into.subarray(0, ref.length);
  try {
    await backend.getRangeInto(ref.key, ref.offset, buf);
  } catch (err) {
    if (err instanceof BackendError && err.kind === 'range')
      throw damaged(`pack ${ref.key} is shorter than its index says (record at ${ref.offset})`);
    throw err;
  }
  return buf;
}

const scratch: Buffer[] = [];

async function read(req: Extract<PackWorkerRequest, { op: 'read' }>): Promise<Handled> {
  const { ref } = req;
  const meta: RecordMeta = {
    kind: ref.kind,
    codec: ref.codec,
    plaintextBytes: ref.plaintextBytes,
    id: Buffer.from(ref.id),
  };
  if (ref.length > RECORD_OVERHEAD + zstdBound(req.max) || ref.plaintextBytes > req.max)
    throw damaged(`record of ${ref.length} bytes is larger than a record of ${req.max} bytes can be`);
  let buf = scratch.pop();
  if (!buf || buf.length < ref.length) buf = Buffer.allocUnsafeSlow(Math.max(ref.length, 1024 * 1024 + 4096));
  try {
    let record: Uint8Array;
    if (req.src !== undefined) {
      const at = req.srcOffset ?? 0;
      if (!(at >= 0 && at + ref.length <= req.src.byteLength))
        throw new RangeError('record outside its source range');
      record = new Uint8Array(req.src, at, ref.length);
    } else record = await readRecord(ref, buf);
    if (req.dest !== undefined) {
      const dest = new Uint8Array(req.dest, req.destOffset ?? 0, req.destLength ?? req.dest.byteLength);
      const n = decoding(() => codec.openRecordInto(meta, record, dest));
      return { result: { length: n }, transfer: [] };
    }
    const plain = decoding(() => codec.openRecord(meta, record, req.max));
    // A raw record is a view of the scratch buffer: copy it out.
    const out = plain.buffer === buf.buffer ? Buffer.from(plain) : plain;
    return { result: { data: out }, transfer: out.buffer instanceof ArrayBuffer ? [out.buffer] : [] };
  } finally {
    if (scratch.length < 4) scratch.push(buf);
  }
}

/**
 * Appends a sealed record as it is to the open data pack; the packs that fill (and are written)
 * meanwhile go to `packs`. Nothing awaits between finding the pack open and adding to it.
 */
async function appendVerbatim(record: Uint8Array, meta: RecordMeta, packs: WrittenPack[]): Promise<void> {
  for (;;) {
    while (open === undefined) await openPack();
    const o = open;
    if (o.used + record.length <= o.slab.length) {
      o.slab.set(record, o.used);
      o.writer.add(o.slab.subarray(o.used, o.used + record.length), meta);
      o.used += record.length;
      if (o.writer.sizeBytes >= data.packSizeBytes) {
        const w = await sealOpen();
        if (w) packs.push(w);
      }
      return;
    }
    const w = await sealOpen(); // no room for this (long) record: the next pack takes it
    if (w) packs.push(w);
  }
}

/** Plaintext of the record `append` verifies (never leaves the worker). */
let appendScratch: Buffer | undefined;

async function append(req: Extract<PackWorkerRequest, { op: 'append' }>): Promise<Handled> {
  const max = data.chunkSizeBytes;
  if (!(req.srcOffset >= 0 && req.length >= 0 && req.srcOffset + req.length <= req.src.byteLength))
    throw new RangeError('record outside its source range');
  if (req.length > RECORD_OVERHEAD + zstdBound(max))
    throw damaged(`record of ${req.length} bytes is larger than a record of ${max} bytes can be`);
  const record = new Uint8Array(req.src, req.srcOffset, req.length);
  const meta: RecordMeta = {
    kind: 1,
    codec: req.codec,
    plaintextBytes: req.plaintextBytes,
    id: Buffer.from(req.id),
  };
  appendScratch ??= Buffer.allocUnsafeSlow(max);
  const plain = appendScratch;
  decoding(() => codec.openRecordInto(meta, record, plain));
  const packs: WrittenPack[] = [];
  await appendVerbatim(record, meta, packs);
  return {
    result: { appended: req.length, packs },
    transfer: packs.map((p) => p.entries.buffer as ArrayBuffer),
  };
}

async function copy(req: Extract<PackWorkerRequest, { op: 'copy' }>): Promise<Handled> {
  let buf = freePackBuffers.pop();
  if (!buf || buf.length < req.sizeBytes)
    buf = Buffer.allocUnsafeSlow(Math.max(req.sizeBytes, slabBytes + 4096));
  try {
    const bytes = buf.subarray(0, req.sizeBytes);
    await backend.getRangeInto(req.key, 0, bytes);
    const r = Buffer.from(req.records.buffer, req.records.byteOffset, req.records.byteLength);
    const recs: Array<{ record: Buffer; meta: RecordMeta }> = [];
    for (let at = 0; at + 48 <= r.length; at += 48) {
      const offset = r.readUInt32BE(at + 32);
      const length = r.readUInt32BE(at + 36);
      const meta: RecordMeta = {
        id: Buffer.from(r.subarray(at, at + 32)),
        plaintextBytes: r.readUInt32BE(at + 40),
        kind: r[at + 44] as RecordKind,
        codec: r[at + 45] as 0 | 1,
      };
      const where = `record ${meta.id.toString('hex').slice(0, 12)} at ${offset}`;
      if (meta.kind !== 1 && meta.kind !== 2)
        return { result: { packs: [], damaged: `${where} is not a data record` }, transfer: [] };
      if (offset + length > req.sizeBytes || length > RECORD_OVERHEAD + zstdBound(req.maxChunkBytes))
        return {
          result: { packs: [], damaged: `${where} lies outside the pack or is too long` },
          transfer: [],
        };
      const record = bytes.subarray(offset, offset + length);
      try {
        codec.checkRecordSeal(meta, record, req.maxChunkBytes);
      } catch (err) {
        if (!(err instanceof BlobFormatError)) throw err;
        return { result: { packs: [], damaged: `${where} is damaged (${err.message})` }, transfer: [] };
      }
      recs.push({ record, meta });
    }
    const packs: WrittenPack[] = [];
    for (const { record, meta } of recs) await appendVerbatim(record, meta, packs);
    return { result: { packs }, transfer: packs.map((p) => p.entries.buffer as ArrayBuffer) };
  } finally {
    if (freePackBuffers.length < 2) freePackBuffers.push(buf);
  }
}

async function verify(req: Extract<PackWorkerRequest, { op: 'verify' }>): Promise<Handled> {
  // Pack buffers are reused (at most two kept): a pack is read whole, verified and dropped.
  let buf = freePackBuffers.pop();
  if (!buf || buf.length < req.sizeBytes)
    buf = Buffer.allocUnsafeSlow(Math.max(req.sizeBytes, slabBytes + 4096));
  let r: ReturnType<typeof verifyPack>;
  try {
    const bytes = buf.subarray(0, req.sizeBytes);
    await backend.getRangeInto(req.key, 0, bytes);
    r = verifyPack(bytes, req.key, codec, (kind) => (kind <= 2 ? req.maxChunkBytes : req.maxPageBytes));
  } finally {
    if (freePackBuffers.length < 2) freePackBuffers.push(buf);
  }
  const entries = encodeEntries(r.entries);
  return {
    result: {
      entries,
      problems: r.problems.map((p) => ({
        offset: p.offset,
        reason: p.reason,
        ...(p.id ? { id: p.id } : {}),
      })),
    },
    transfer: [entries.buffer as ArrayBuffer],
  };
}

function decoding<T>(step: () => T): T {
  try {
    return step();
  } catch (err) {
    throw damaged(err instanceof Error ? err.message : String(err));
  }
}

interface Handled {
  result: PackWorkerResult;
  transfer: ArrayBuffer[];
}

async function handle(req: PackWorkerRequest): Promise<Handled> {
  switch (req.op) {
    case 'copy':
      return copy(req);
    case 'append':
      return append(req);
    case 'add':
      return add(req);
    case 'seal': {
      const written = await sealOpen();
      return {
        result: written ? { written } : {},
        transfer: written ? [written.entries.buffer as ArrayBuffer] : [],
      };
    }
    case 'read':
      return read(req);
    case 'verify':
      return verify(req);
  }
}

/** S3 requests this worker made since its last reply (the main thread adds them up: --json). */
let reported: S3RequestCounts = s3RequestCounts();
function report(): { report?: Partial<S3RequestCounts> } {
  const now = s3RequestCounts();
  const delta: Partial<S3RequestCounts> = {};
  let any = false;
  for (const k of Object.keys(now) as (keyof S3RequestCounts)[]) {
    const d = now[k] - reported[k];
    if (d > 0) {
      delta[k] = d;
      any = true;
    }
  }
  reported = now;
  return any ? { report: delta } : {};
}

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
  parentPort?.postMessage({ id, ok: false, code, message, ...extra, ...report() });
}

// Tasks of one worker run in arrival order up to their first await; `add` appends synchronously,
// so records enter the open pack in the order the store sent them.
parentPort?.on('message', (msg: { id: number; req: PackWorkerRequest }) => {
  handle(msg.req).then(
    (h) => parentPort?.postMessage({ id: msg.id, ok: true, result: h.result, ...report() }, h.transfer),
    (err: unknown) => replyError(msg.id, err),
  );
});
