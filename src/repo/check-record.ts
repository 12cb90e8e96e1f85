/**
 * `status/check`: the result of the last `vmvault check`, for `vmvault ui` (docs/format.md "Key
 * layout"). A sealed object of kind 6 (`status`), AAD = the key, JSON payload of at most 16 KiB.
 * Only informative: nothing else reads it, and a damaged one is reported as damaged, not trusted.
 */
import type { Backend } from './backend/backend.js';
import { BlobFormatError } from './blob.js';
import { describeGroup, groupProblems, type CheckResult } from './check.js';
import type { BlobCodec } from './codec.js';
import { isNotFound } from './errors.js';
import { Keys } from './format.js';

export const CHECK_RECORD_KEY = `${Keys.statusPrefix}check`;
const BINDER = Buffer.alloc(16);
const MAX_RECORD_BYTES = 16 * 1024;
const MAX_LINES = 10;
const MAX_LINE_CHARS = 400;

export interface CheckRecord {
  version: 1;
  /** When the check started and ended (ISO 8601, the checking host's clock). */
  startedAt: string;
  finishedAt: string;
  host: string;
  /** No problem found. */
  ok: boolean;
  readData: boolean;
  repair: boolean;
  /** `--read-data-subset` as given back, or null. */
  subset: string | null;
  snapshots: number;
  snapshotsDamaged: number;
  chunksReferenced: number;
  chunksRead: number;
  chunksMissing: number;
  chunksCorrupt: number;
  problems: number;
  /** The first damaged objects, one line each (as `check` prints them), at most 10. */
  lines: string[];
}

/** The record of a finished check. */
export function checkRecordOf(
  r: CheckResult,
  at: { startedAt: Date; finishedAt: Date; host: string },
): CheckRecord {
  return {
    version: 1,
    startedAt: at.startedAt.toISOString(),
    finishedAt: at.finishedAt.toISOString(),
    host: at.host.slice(0, 255),
    ok: r.problems.length === 0,
    readData: r.readData,
    repair: r.repair,
    subset: r.subset,
    snapshots: r.snapshots,
    snapshotsDamaged: r.snapshotsDamaged,
    chunksReferenced: r.chunksReferenced,
    chunksRead: r.chunksRead,
    chunksMissing: r.chunksMissing,
    chunksCorrupt: r.chunksCorrupt,
    problems: r.problems.length,
    lines: groupProblems(r.problems)
      .slice(0, MAX_LINES)
      .map((g) => describeGroup(g).slice(0, MAX_LINE_CHARS)),
  };
}

/** Replaces `status/check` (through `backend`, which must be writable). */
export async function writeCheckRecord(backend: Backend, codec: BlobCodec, rec: CheckRecord): Promise<void> {
  const json = Buffer.from(JSON.stringify(rec));
  if (json.length > MAX_RECORD_BYTES) throw new RangeError(`check record of ${json.length} bytes`);
  await backend.put(CHECK_RECORD_KEY, codec.sealObject('status', json, BINDER, { name: CHECK_RECORD_KEY }));
}

export type CheckRecordRead = { record: CheckRecord; modifiedMs?: number } | { damaged: string } | undefined;

/** The last check's record: undefined when there is none, `damaged` when it cannot be used. */
export async function readCheckRecord(backend: Backend, codec: BlobCodec): Promise<CheckRecordRead> {
  let blob: Buffer;
  let modifiedMs: number | undefined;
  try {
    const st = await backend.stat(CHECK_RECORD_KEY);
    if (st === undefined) return undefined;
    if (st.sizeBytes > codec.sealedObjectBytes(MAX_RECORD_BYTES) + 1024)
      return { damaged: `${st.sizeBytes} bytes, more than the record can be` };
    modifiedMs = st.modifiedMs;
    blob = Buffer.from(await backend.get(CHECK_RECORD_KEY));
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
  try {
    const json = codec.openObject('status', blob, {
      name: CHECK_RECORD_KEY,
      maxPlaintextBytes: MAX_RECORD_BYTES,
    });
    return {
      record: validate(JSON.parse(json.toString('utf8')) as unknown),
      ...(modifiedMs ? { modifiedMs } : {}),
    };
  } catch (err) {
    if (err instanceof BlobFormatError || err instanceof SyntaxError || err instanceof TypeError)
      return { damaged: err.message };
    throw err;
  }
}

function validate(v: unknown): CheckRecord {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new TypeError('not an object');
  const o = v as Record<string, unknown>;
  if (o.version !== 1) throw new TypeError(`unknown record version ${String(o.version).slice(0, 20)}`);
  const str = (k: string, max = 64): string => {
    const x = o[k];
    if (typeof x !== 'string' || x.length > max) throw new TypeError(`field ${k} is not a string`);
    return x;
  };
  const time = (k: string): string => {
    const x = str(k);
    if (!/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/.test(x) || Number.isNaN(Date.parse(x)))
      throw new TypeError(`field ${k} is not a time`);
    return x;
  };
  const count = (k: string): number => {
    const x = o[k];
    if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0)
      throw new TypeError(`field ${k} is not a count`);
    return x;
  };
  const bool = (k: string): boolean => {
    if (typeof o[k] !== 'boolean') throw new TypeError(`field ${k} is not a boolean`);
    return o[k];
  };
  const lines = o.lines;
  if (
    !Array.isArray(lines) ||
    lines.length > MAX_LINES ||
    !lines.every((l): l is string => typeof l === 'string' && l.length <= MAX_LINE_CHARS)
  )
    throw new TypeError('field lines is not a list of lines');
  const subset = o.subset === null ? null : str('subset', 20);
  return {
    version: 1,
    startedAt: time('startedAt'),
    finishedAt: time('finishedAt'),
    host: str('host', 255),
    ok: bool('ok'),
    readData: bool('readData'),
    repair: bool('repair'),
    subset,
    snapshots: count('snapshots'),
    snapshotsDamaged: count('snapshotsDamaged'),
    chunksReferenced: count('chunksReferenced'),
    chunksRead: count('chunksRead'),
    chunksMissing: count('chunksMissing'),
    chunksCorrupt: count('chunksCorrupt'),
    problems: count('problems'),
    lines,
  };
}
