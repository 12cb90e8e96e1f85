import { nullProgress, throwIfAborted, UsageError, type Progress } from '../util/index.js';
import { decodeBlob } from './blob.js';
import { hashBytes, isChunkId } from './chunk-id.js';
import { DiskIndex } from './disk-index.js';
import { CheckFailedError, ChunkCorruptError, ChunkMissingError, isNotFound } from './errors.js';
import { Keys } from './format.js';
import type { Repository } from './repository.js';
import { decodeManifest, shortId, type Snapshot } from './snapshot.js';
import { byTime } from './snapshot-ref.js';

export type CheckProblemKind =
  'snapshot-damaged' | 'index-missing' | 'index-damaged' | 'chunk-missing' | 'chunk-corrupt';

/** One thing wrong, located as precisely as the repository allows. */
export interface CheckProblem {
  kind: CheckProblemKind;
  /** Full snapshot id. */
  snapshot: string;
  /** VM name, when the manifest could be read. */
  vm: string | null;
  /** Disk target (indexes and disk chunks). */
  disk?: string;
  /** `kind:name` of a file stored beside the disks (file chunks). */
  file?: string;
  /** Byte offset of the chunk in the disk or file. */
  offset?: number;
  chunkId?: string;
  /** Index id (index problems). */
  index?: string;
  /**
   * What is wrong (damage only; absent for missing objects, except a chunk `--repair` moved to
   * quarantine: then the damage it had).
   */
  reason?: string;
  /** A chunk that was corrupt and that `--repair` moved out of data/: where its blob is now. */
  quarantineKey?: string;
}

/** A corrupt chunk that `--repair` moved from data/ to quarantine/. */
export interface RepairedChunk {
  chunkId: string;
  quarantineKey: string;
}

export interface CheckResult {
  readData: boolean;
  /** Whether corrupt chunks were to be moved to quarantine/ (`repair`). */
  repair: boolean;
  /** Snapshot manifests checked (damaged ones included). */
  snapshots: number;
  /** Snapshots with at least one problem. */
  snapshotsDamaged: number;
  /** Distinct disk indexes checked. */
  indexes: number;
  /** Files stored beside the disks (domain XML, nvram, …), over all snapshots. */
  files: number;
  /** Distinct non-zero chunks referenced by the indexes and files that could be read. */
  chunksReferenced: number;
  /** Plaintext bytes of those chunks. */
  bytesReferenced: number;
  /** Chunks read and verified (zstd, BLAKE3 against the id): only with `readData`. */
  chunksRead: number;
  bytesRead: number;
  /** Distinct referenced chunks absent from storage (those `repair` moved to quarantine/ included). */
  chunksMissing: number;
  /** Distinct referenced chunks whose content is damaged and still in data/ (found only with `readData`). */
  chunksCorrupt: number;
  /** Corrupt chunks moved to quarantine/ by `repair`; they now count as missing. */
  repaired: RepairedChunk[];
  /** Objects under data/ that no snapshot references: what a garbage collection would delete. */
  unreferencedChunks: number;
  unreferencedBytes: number;
  /**
   * False when a manifest or an index could not be read: the chunks only it references then
   * count as unreferenced although a snapshot needs them.
   */
  unreferencedExact: boolean;
  /** Every problem, one per affected snapshot / disk / offset. Empty when the repository is sound. */
  problems: CheckProblem[];
}

export interface CheckOptions {
  /** Also read and verify every referenced chunk once. */
  readData?: boolean;
  /**
   * With `readData`: move every corrupt chunk's blob from data/ to quarantine/, so that the next
   * backup that reads the same data stores a sound copy again. Manifests and indexes are not touched.
   */
  repair?: boolean;
  /** The time that names quarantine keys (default: now). */
  now?: Date;
  /** Chunks read and verified concurrently with `readData` (default 8). Bounds memory. */
  window?: number;
  /** Progress of a phase ('indexes', 'data'), in bytes of disk (indexes) or chunk plaintext (data). */
  progressFor?: (phase: 'indexes' | 'data') => Progress;
  signal?: AbortSignal;
}

const ZERO_ID = '0'.repeat(64);
const HEX64 = /^[0-9a-f]{64}$/;

type IndexState = { ok: true } | { ok: false; kind: 'index-missing' | 'index-damaged'; reason?: string };

/**
 * Verifies a repository (`vmvault check`): every snapshot manifest (blob tag, id = BLAKE3 of its
 * JSON, structure), every disk index it references (blob, id, trailing checksum, agreement with
 * the manifest), and that every chunk an index or file references is stored. Each distinct index
 * and chunk is checked once however many snapshots share it; the data/ prefix is listed once
 * (after the indexes are read, so a backup running meanwhile never looks like missing chunks).
 * With `readData`, every referenced chunk is also read and fully verified, a small window at a time.
 * With `repair` too, each chunk found corrupt is moved to quarantine/ and counts as missing from
 * then on (a backup that reads the same data in full stores it again).
 *
 * Problems are returned, not thrown; the caller decides (see `checkFailure`).
 */
export async function checkRepository(repo: Repository, opts: CheckOptions = {}): Promise<CheckResult> {
  const readData = opts.readData ?? false;
  const repair = opts.repair ?? false;
  if (repair && !readData)
    throw new UsageError(
      '--repair needs --read-data',
      'add --read-data: only reading the chunks finds the corrupt ones',
    );
  const signal = opts.signal;
  const problems: CheckProblem[] = [];
  let unreferencedExact = true;

  // ---- 1. manifests ----------------------------------------------------------------------------
  const ids = await repo.snapshotIds();
  const snaps: Snapshot[] = [];
  for (const id of ids) {
    throwIfAborted(signal);
    const r = await readManifest(repo, id);
    if (r === undefined) continue; // deleted meanwhile
    if ('reason' in r) {
      problems.push({ kind: 'snapshot-damaged', snapshot: id, vm: r.vm, reason: r.reason });
      unreferencedExact = false;
    } else snaps.push(r);
  }
  snaps.sort(byTime);

  // ---- 2. indexes and files: collect referenced chunks -----------------------------------------
  // id → plaintext length of the chunk; negated once the data/ listing has found it (lengths are ≥ 1).
  const refs = new Map<string, number>();
  const reference = (id: string, length: number): void => {
    if (!refs.has(id)) refs.set(id, length);
  };
  const indexState = new Map<string, IndexState>();
  const indexBytes = new Map<string, number>();
  for (const s of snaps) for (const d of s.disks) indexBytes.set(d.index, d.sizeBytes);
  const progress = opts.progressFor?.('indexes') ?? nullProgress;
  progress.start(
    'indexes',
    [...indexBytes.values()].reduce((a, b) => a + b, 0),
  );
  let files = 0;
  for (const s of snaps) {
    for (const d of s.disks) {
      throwIfAborted(signal);
      let state = indexState.get(d.index);
      if (!state) {
        const r = await readIndex(repo, d.index, d.sizeBytes, d.chunkSizeBytes);
        if (r instanceof DiskIndex) {
          for (let slot = 0; slot < r.slotCount; slot++) {
            const id = r.get(slot);
            if (id) reference(id, r.slotLength(slot));
          }
          state = { ok: true };
        } else state = r;
        indexState.set(d.index, state);
        progress.advance(d.sizeBytes);
      }
      if (!state.ok) {
        unreferencedExact = false;
        problems.push({
          kind: state.kind,
          snapshot: s.id,
          vm: s.vm.name,
          disk: d.target,
          index: d.index,
          ...(state.reason ? { reason: state.reason } : {}),
        });
      }
    }
    for (const f of s.files) {
      files++;
      let left = f.sizeBytes;
      for (const id of f.chunks) {
        const len = Math.min(left, repo.chunkSizeBytes);
        left -= len;
        if (id !== ZERO_ID && len > 0) reference(id, len);
      }
    }
  }
  progress.done();

  // ---- 3. one listing of data/ -----------------------------------------------------------------
  let unreferencedChunks = 0;
  let unreferencedBytes = 0;
  for await (const o of repo.backend.list(Keys.dataPrefix)) {
    throwIfAborted(signal);
    const id = o.key.slice(o.key.lastIndexOf('/') + 1);
    const len = refs.get(id);
    if (len !== undefined && o.key === Keys.data(id)) {
      if (len > 0) refs.set(id, -len);
    } else {
      unreferencedChunks++;
      unreferencedBytes += o.sizeBytes;
    }
  }
  const missing = new Set<string>();
  let bytesReferenced = 0;
  let presentBytes = 0;
  for (const [id, len] of refs) {
    bytesReferenced += Math.abs(len);
    if (len > 0) missing.add(id);
    else presentBytes -= len;
  }

  // ---- 4. --read-data: every present referenced chunk once, a window at a time -----------------
  const corrupt = new Map<string, string>();
  let chunksRead = 0;
  let bytesRead = 0;
  if (readData) {
    const window = Math.max(1, opts.window ?? 8);
    const dataProgress = opts.progressFor?.('data') ?? nullProgress;
    dataProgress.start('data', presentBytes);
    const todo = refs.entries();
    const next = (): [string, number] | undefined => {
      for (;;) {
        const r = todo.next();
        if (r.done) return undefined;
        if (r.value[1] < 0) return [r.value[0], -r.value[1]];
      }
    };
    // Each runner owns one chunk-sized shared buffer: workers decode straight into it, so memory
    // is `window` chunks whatever the repository's size.
    let stop = false;
    const runner = async (): Promise<void> => {
      const buf = Buffer.from(new SharedArrayBuffer(repo.chunkSizeBytes));
      for (let item = next(); item && !stop; item = next()) {
        throwIfAborted(signal);
        const [id, length] = item;
        try {
          const n = await repo.chunks.getInto(id, buf);
          if (n !== length) corrupt.set(id, `plaintext is ${n} bytes, the index expects ${length}`);
          else bytesRead += n;
        } catch (err) {
          if (err instanceof ChunkMissingError) missing.add(id);
          else if (err instanceof ChunkCorruptError) corrupt.set(id, corruptReason(err, id));
          else {
            stop = true;
            throw err;
          }
        }
        chunksRead++;
        dataProgress.advance(length);
      }
    };
    // On a failure (not damage: e.g. a permission error), the other runners stop at their next chunk.
    const settled = await Promise.allSettled(Array.from({ length: window }, runner));
    const failed = settled.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
    dataProgress.done();
  }

  // ---- 5. --repair: move corrupt chunks out of data/ ----------------------------------------------
  // One at a time (there are few); from here on they count as missing, which is what they are now.
  const repaired: RepairedChunk[] = [];
  const quarantined = new Map<string, { quarantineKey: string; reason: string }>();
  if (repair && corrupt.size) {
    const stamp = compactUtc(opts.now ?? new Date());
    for (const [id, reason] of [...corrupt].sort(([a], [b]) => (a < b ? -1 : 1))) {
      throwIfAborted(signal);
      const quarantineKey = await quarantineChunk(repo, id, stamp);
      if (quarantineKey === undefined) continue;
      corrupt.delete(id);
      missing.add(id);
      quarantined.set(id, { quarantineKey, reason });
      repaired.push({ chunkId: id, quarantineKey });
    }
  }

  // ---- 6. locate every reference to a bad chunk ------------------------------------------------
  if (missing.size || corrupt.size) {
    const bad = (id: string): Pick<CheckProblem, 'kind' | 'reason' | 'quarantineKey'> | undefined => {
      const q = quarantined.get(id);
      if (q) return { kind: 'chunk-missing', reason: q.reason, quarantineKey: q.quarantineKey };
      if (missing.has(id)) return { kind: 'chunk-missing' };
      const reason = corrupt.get(id);
      return reason === undefined ? undefined : { kind: 'chunk-corrupt', reason };
    };
    for (const s of snaps) {
      for (const d of s.disks) {
        throwIfAborted(signal);
        if (!indexState.get(d.index)?.ok) continue;
        const idx = await readIndex(repo, d.index, d.sizeBytes, d.chunkSizeBytes);
        if (!(idx instanceof DiskIndex)) continue; // changed under us: reported on the next run
        for (let slot = 0; slot < idx.slotCount; slot++) {
          const id = idx.get(slot);
          const b = id && bad(id);
          if (b)
            problems.push({
              ...b,
              snapshot: s.id,
              vm: s.vm.name,
              disk: d.target,
              offset: slot * idx.chunkSizeBytes,
              chunkId: id,
            });
        }
      }
      for (const f of s.files) {
        f.chunks.forEach((id, i) => {
          const b = bad(id);
          if (b)
            problems.push({
              ...b,
              snapshot: s.id,
              vm: s.vm.name,
              file: `${f.kind}:${f.name}`,
              offset: i * repo.chunkSizeBytes,
              chunkId: id,
            });
        });
      }
    }
  }

  return {
    readData,
    repair,
    snapshots: ids.length,
    snapshotsDamaged: new Set(problems.map((p) => p.snapshot)).size,
    indexes: indexState.size,
    files,
    chunksReferenced: refs.size,
    bytesReferenced,
    chunksRead,
    bytesRead,
    chunksMissing: missing.size,
    chunksCorrupt: corrupt.size,
    repaired,
    unreferencedChunks,
    unreferencedBytes,
    unreferencedExact,
    problems,
  };
}

/** The error to end `vmvault check` with when it found problems (exit code INTEGRITY), else undefined. */
export function checkFailure(r: CheckResult): CheckFailedError | undefined {
  if (r.problems.length === 0) return undefined;
  const count = (n: number, what: string): string => `${n} ${what}${n === 1 ? '' : 's'}`;
  const of = (kind: CheckProblemKind): number => r.problems.filter((p) => p.kind === kind).length;
  const parts: string[] = [];
  const moved = r.repaired.length;
  if (r.chunksMissing)
    parts.push(
      `${count(r.chunksMissing, 'missing chunk')}${moved ? `: ${moved} corrupt, moved to quarantine/` : ''}`,
    );
  if (r.chunksCorrupt) parts.push(count(r.chunksCorrupt, 'corrupt chunk'));
  const indexes = new Set(r.problems.filter((p) => p.kind.startsWith('index-')).map((p) => p.index ?? ''))
    .size;
  if (indexes) parts.push(count(indexes, 'missing or damaged index'));
  if (of('snapshot-damaged')) parts.push(count(of('snapshot-damaged'), 'damaged snapshot manifest'));
  const hints: string[] = [];
  const fullBackup = 'a backup that reads the same data in full (backup -l full, backup-image)';
  if (r.chunksCorrupt)
    hints.push(
      `run 'vmvault check --read-data --repair' to move the corrupt chunks to quarantine/, then ${fullBackup} stores ${r.chunksMissing ? 'them and the missing ones' : 'them'} again`,
    );
  else if (r.chunksMissing)
    hints.push(
      `${fullBackup} stores missing chunks again${moved ? ' (the ones moved to quarantine/ included)' : ''}`,
    );
  if (r.chunksMissing || r.chunksCorrupt)
    hints.push(
      "until then the snapshots that use them stay damaged: 'vmvault restore --ignore-errors' restores the rest of an affected snapshot",
    );
  if (indexes || of('snapshot-damaged'))
    hints.push(
      `a snapshot with a damaged manifest or index cannot be restored${r.repair ? ' (--repair does not touch them)' : ''}: delete its manifest (snapshots/<id>) and take a new backup`,
    );
  return new CheckFailedError(
    `check found ${count(r.problems.length, 'problem')} (${parts.join(', ')}) in ${count(r.snapshotsDamaged, 'snapshot')}`,
    hints.join('; '),
    {
      problems: r.problems.length,
      chunksMissing: r.chunksMissing,
      chunksCorrupt: r.chunksCorrupt,
      chunksRepaired: moved,
      snapshotsDamaged: r.snapshotsDamaged,
    },
  );
}

/** One line per problem: what, then where (snapshot short id and VM, disk or file, offset). */
export function describeProblem(p: CheckProblem): string {
  const where = [`snapshot ${shortId(p.snapshot)}${p.vm !== null ? ` (${p.vm})` : ''}`];
  if (p.disk !== undefined) where.push(`disk ${p.disk}`);
  if (p.file !== undefined) where.push(`file ${p.file}`);
  if (p.offset !== undefined) where.push(`offset ${p.offset}`);
  const why = p.reason ? `; ${p.reason}` : '';
  switch (p.kind) {
    case 'chunk-missing':
      return `chunk ${p.chunkId ?? '?'} is missing: ${where.join(', ')}${
        p.quarantineKey !== undefined
          ? `; was corrupt${p.reason ? `: ${p.reason}` : ''}; moved to ${p.quarantineKey}`
          : ''
      }`;
    case 'chunk-corrupt':
      return `chunk ${p.chunkId ?? '?'} is corrupt: ${where.join(', ')}${why}`;
    case 'index-missing':
      return `disk index ${p.index ?? '?'} is missing: ${where.join(', ')}`;
    case 'index-damaged':
      return `disk index ${p.index ?? '?'} is damaged: ${where.join(', ')}${why}`;
    case 'snapshot-damaged':
      return `snapshot ${p.snapshot} is damaged${p.vm !== null ? ` (${p.vm})` : ''}: ${p.reason ?? 'unreadable'}`;
  }
}

// ---- readers that classify damage instead of throwing -------------------------------------------

async function readManifest(
  repo: Repository,
  id: string,
): Promise<Snapshot | { reason: string; vm: string | null } | undefined> {
  let blob: Buffer;
  try {
    blob = await repo.backend.get(Keys.snapshot(id));
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
  let snap: Snapshot;
  try {
    snap = decodeManifest(id, decodeBlob(blob));
  } catch (err) {
    return { reason: errText(err), vm: null };
  }
  const bad = manifestProblem(snap, repo.chunkSizeBytes);
  if (bad === undefined) return snap;
  const vm: unknown = (snap as { vm?: unknown }).vm;
  const name = typeof vm === 'object' && vm !== null ? (vm as { name?: unknown }).name : undefined;
  return { reason: bad, vm: typeof name === 'string' ? name : null };
}

/** Structure a reader relies on; a manifest with the right id but the wrong shape is damage too. */
function manifestProblem(s: Snapshot, chunkSize: number): string | undefined {
  const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null;
  const isSize = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
  if (!isObj(s.vm) || typeof s.vm.name !== 'string') return 'the manifest has no VM name';
  if (typeof s.time !== 'string' || Number.isNaN(Date.parse(s.time))) return 'the manifest has no valid time';
  if (!Array.isArray(s.disks)) return 'the manifest has no disk list';
  for (const [i, d] of (s.disks as unknown[]).entries()) {
    if (!isObj(d) || typeof d.target !== 'string') return `disk ${i} of the manifest has no target`;
    if (typeof d.index !== 'string' || !HEX64.test(d.index)) return `disk ${d.target} has no valid index id`;
    if (!isSize(d.sizeBytes) || !isSize(d.chunkSizeBytes) || d.chunkSizeBytes === 0)
      return `disk ${d.target} has no valid size or chunk size`;
  }
  if (!Array.isArray(s.files)) return 'the manifest has no file list';
  for (const f of s.files as unknown[]) {
    if (!isObj(f) || typeof f.name !== 'string' || !isSize(f.sizeBytes) || !Array.isArray(f.chunks))
      return 'a file entry of the manifest is malformed';
    const chunks = f.chunks as unknown[];
    if (!chunks.every((c) => typeof c === 'string' && (c === ZERO_ID || isChunkId(c))))
      return `file ${f.name} lists an invalid chunk id`;
    if (chunks.length !== Math.ceil(f.sizeBytes / chunkSize))
      return `file ${f.name} lists ${chunks.length} chunks for ${f.sizeBytes} bytes`;
  }
  return undefined;
}

async function readIndex(
  repo: Repository,
  id: string,
  diskSizeBytes: number,
  chunkSizeBytes: number,
): Promise<DiskIndex | { ok: false; kind: 'index-missing' | 'index-damaged'; reason?: string }> {
  let blob: Buffer;
  try {
    blob = await repo.backend.get(Keys.index(id));
  } catch (err) {
    if (isNotFound(err)) return { ok: false, kind: 'index-missing' };
    throw err;
  }
  const damaged = (reason: string) => ({ ok: false as const, kind: 'index-damaged' as const, reason });
  let index: DiskIndex;
  try {
    const plain = decodeBlob(blob);
    if (hashBytes(plain).toString('hex') !== id) return damaged('content does not match its id');
    index = DiskIndex.decode(plain);
  } catch (err) {
    return damaged(errText(err));
  }
  if (index.chunkSizeBytes !== repo.chunkSizeBytes)
    return damaged(
      `the index uses ${index.chunkSizeBytes}-byte chunks, the repository ${repo.chunkSizeBytes}-byte chunks`,
    );
  if (index.diskSizeBytes !== diskSizeBytes || index.chunkSizeBytes !== chunkSizeBytes)
    return damaged(
      `the index maps ${index.diskSizeBytes} bytes in ${index.chunkSizeBytes}-byte chunks, the manifest says ${diskSizeBytes} in ${chunkSizeBytes}`,
    );
  return index;
}

/** Decoding is pure: whatever it throws (BlobFormatError, RepoFormatError, a malformed JSON shape) is damage. */
function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function corruptReason(err: ChunkCorruptError, id: string): string {
  const prefix = `chunk ${id} is corrupt: `;
  return err.message.startsWith(prefix) ? err.message.slice(prefix.length) : err.message;
}

/** `20261201T201500Z`: the UTC time in quarantine keys (sorts by time, no ':' for file systems). */
export function compactUtc(d: Date): string {
  return d
    .toISOString()
    .replace(/\.\d+Z$/, 'Z')
    .replace(/[-:]/g, '');
}

/**
 * Moves a corrupt chunk's blob from data/ to quarantine/ through the Backend interface: get, put
 * the copy (create-if-absent), and only then delete the data key, so the bytes exist somewhere at
 * every moment. The blob is verified again first: only one that is still damaged is moved (a
 * concurrent repair and backup may have stored a sound copy meanwhile). Returns the quarantine
 * key, or undefined when nothing was moved (the chunk is gone or now sound).
 */
async function quarantineChunk(repo: Repository, id: string, stamp: string): Promise<string | undefined> {
  const dataKey = Keys.data(id);
  let blob: Buffer;
  try {
    blob = await repo.backend.get(dataKey);
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
  try {
    await repo.chunks.decode(Buffer.from(blob), id); // a copy: decoding may move its buffer to a worker
    return undefined;
  } catch (err) {
    if (!(err instanceof ChunkCorruptError)) throw err;
  }
  const base = Keys.quarantine(id, stamp);
  let key = base;
  for (let n = 2; !(await repo.backend.putIfAbsent(key, blob)); n++) {
    // Taken: by the same bytes (another check --repair of this chunk in the same second) is fine.
    const there = await repo.backend.get(key).catch((err: unknown) => {
      if (isNotFound(err)) return undefined;
      throw err;
    });
    if (there?.equals(blob)) break;
    if (n > 100) throw new Error(`cannot find a free quarantine key for chunk ${id} (${base}.N taken)`);
    key = `${base}.${n}`;
  }
  await repo.backend.delete(dataKey);
  return key;
}
