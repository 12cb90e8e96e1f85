import { nullProgress, printable, throwIfAborted, UsageError, type Progress } from '../util/index.js';
import { DiskIndex } from './disk-index.js';
import { CheckFailedError, ChunkCorruptError, ChunkMissingError, isNotFound } from './errors.js';
import { Keys, MAX_INDEX_BYTES, MAX_MANIFEST_BYTES } from './format.js';
import { BlobFormatError } from './blob.js';
import { SnapshotDamagedError } from './manifest-schema.js';
import type { Repository } from './repository.js';
import { shortId } from './snapshot.js';

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
  /** The manifest field that fails the schema (snapshot-damaged). */
  field?: string;
  /**
   * What is wrong (damage only; absent for missing objects, except a chunk `--repair` moved to
   * quarantine: then the damage it had).
   */
  reason?: string;
  /** An object `--repair` moved to quarantine/ (chunk, index or manifest): where its blob is now. */
  quarantineKey?: string;
}

/** A corrupt chunk that `--repair` moved from data/ to quarantine/. */
export interface RepairedChunk {
  chunkId: string;
  quarantineKey: string;
}

/** A damaged disk index or manifest that `--repair` moved to quarantine/. */
export interface RepairedObject {
  /** Index id or snapshot id. */
  id: string;
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
  /** Chunks read and verified (decoded, checked against the id): only with `readData`. */
  chunksRead: number;
  bytesRead: number;
  /** Distinct referenced chunks absent from storage (those `repair` moved to quarantine/ included). */
  chunksMissing: number;
  /** Distinct referenced chunks whose content is damaged and still in data/ (found only with `readData`). */
  chunksCorrupt: number;
  /** Corrupt chunks moved to quarantine/ by `repair`; they now count as missing. */
  repaired: RepairedChunk[];
  /** Damaged disk indexes moved to quarantine/ by `repair`; they now count as missing. */
  repairedIndexes: RepairedObject[];
  /** Damaged manifests moved to quarantine/ by `repair`: those snapshots are gone. */
  repairedSnapshots: RepairedObject[];
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
   * With `readData`: move every corrupt chunk's, damaged disk index's and damaged manifest's blob
   * to quarantine/, so that the next backup that reads the same data stores a sound copy again
   * (a manifest is simply gone). A manifest of a newer vmvault and an index that is sound but
   * disagrees with its manifest are never moved.
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

/**
 * An index that cannot be used. `own`: its blob itself is damaged (envelope, id, layout), so
 * `--repair` may move it; otherwise it is sound but does not fit its manifest or the repository.
 */
type IndexProblem = {
  ok: false;
  kind: 'index-missing' | 'index-damaged';
  reason?: string;
  own?: boolean;
  quarantineKey?: string;
};
type IndexState = { ok: true } | IndexProblem;

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

  // ---- 1. manifests: blob, id, JSON, schema (manifest-schema.ts) ------------------------------
  throwIfAborted(signal);
  const { snapshots: snaps, damaged: damagedManifests } = await repo.scanSnapshots();
  if (damagedManifests.length) unreferencedExact = false;

  // ---- 2. indexes and files: collect referenced chunks -----------------------------------------
  // id → plaintext length of the chunk; negated once the data/ listing has found it (lengths are ≥ 1).
  const refs = new Map<string, number>();
  const reference = (id: string, length: number): void => {
    if (!refs.has(id)) refs.set(id, length);
  };
  const indexState = new Map<string, IndexState>();
  const indexBytes = new Map<string, number>();
  for (const s of snaps) for (const d of s.disks) indexBytes.set(d.root, d.sizeBytes);
  const progress = opts.progressFor?.('indexes') ?? nullProgress;
  progress.start(
    'indexes',
    [...indexBytes.values()].reduce((a, b) => a + b, 0),
  );
  let files = 0;
  for (const s of snaps) {
    for (const d of s.disks) {
      throwIfAborted(signal);
      let state = indexState.get(d.root);
      if (!state) {
        const r = await readIndex(repo, d.root, d.sizeBytes, d.chunkSizeBytes);
        if (r instanceof DiskIndex) {
          for (let slot = 0; slot < r.slotCount; slot++) {
            const id = r.get(slot);
            if (id) reference(id, r.slotLength(slot));
          }
          state = { ok: true };
        } else state = r;
        indexState.set(d.root, state);
        progress.advance(d.sizeBytes);
      }
      if (!state.ok) unreferencedExact = false;
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
          else if (err instanceof ChunkCorruptError) corrupt.set(id, err.reason);
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
  const quarantinedManifests = new Map<string, string>();
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
  const repairedIndexes: RepairedObject[] = [];
  const repairedSnapshots: RepairedObject[] = [];
  if (repair) {
    const stamp = compactUtc(opts.now ?? new Date());
    for (const [id, state] of [...indexState].sort(([a], [b]) => (a < b ? -1 : 1))) {
      if (state.ok || !state.own) continue;
      throwIfAborted(signal);
      const quarantineKey = await quarantineObject(
        repo,
        Keys.index(id),
        Keys.quarantineIndex(id, stamp),
        repo.codec.blobBound(MAX_INDEX_BYTES),
        async (blob) => {
          const r = decodeIndex(repo, id, blob);
          return !(r instanceof DiskIndex) && r.own === true;
        },
      );
      if (quarantineKey === undefined) continue;
      indexState.set(id, {
        ok: false,
        kind: 'index-missing',
        ...(state.reason ? { reason: state.reason } : {}),
        quarantineKey,
      });
      repairedIndexes.push({ id, quarantineKey });
    }
    for (const d of damagedManifests) {
      if (d.unsupportedVersion) continue; // a newer vmvault's snapshot, not damage
      throwIfAborted(signal);
      const id = d.snapshotId;
      const quarantineKey = await quarantineObject(
        repo,
        Keys.snapshot(id),
        Keys.quarantineSnapshot(id, stamp),
        repo.codec.blobBound(MAX_MANIFEST_BYTES),
        async (blob) => {
          try {
            repo.decodeSnapshot(id, blob);
            return false;
          } catch (err) {
            if (err instanceof SnapshotDamagedError) return !err.unsupportedVersion;
            throw err;
          }
        },
      );
      if (quarantineKey === undefined) continue;
      quarantinedManifests.set(id, quarantineKey);
      repairedSnapshots.push({ id, quarantineKey });
    }
  }
  for (const d of damagedManifests) {
    const q = quarantinedManifests.get(d.snapshotId);
    problems.push({
      kind: 'snapshot-damaged',
      snapshot: d.snapshotId,
      vm: d.vm,
      reason: d.reason,
      ...(d.field !== undefined ? { field: d.field } : {}),
      ...(q !== undefined ? { quarantineKey: q } : {}),
    });
  }
  for (const s of snaps)
    for (const d of s.disks) {
      const state = indexState.get(d.root);
      if (!state || state.ok) continue;
      problems.push({
        kind: state.kind,
        snapshot: s.id,
        vm: s.vm.name,
        disk: d.target,
        index: d.root,
        ...(state.reason ? { reason: state.reason } : {}),
        ...(state.quarantineKey ? { quarantineKey: state.quarantineKey } : {}),
      });
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
        if (!indexState.get(d.root)?.ok) continue;
        const idx = await readIndex(repo, d.root, d.sizeBytes, d.chunkSizeBytes);
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
    snapshots: snaps.length + damagedManifests.length,
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
    repairedIndexes,
    repairedSnapshots,
    unreferencedChunks,
    unreferencedBytes,
    unreferencedExact,
    problems,
  };
}

// ---- reporting: per kind and per object, with short ids ------------------------------------------

/** The problems of one object (a chunk, an index or a manifest), however many places use it. */
export interface ProblemGroup {
  kind: CheckProblemKind;
  /** Chunk id, index id or snapshot id. */
  object: string;
  /** The first place it is used (or the manifest itself). */
  first: CheckProblem;
  /** Places (snapshot, disk or file, offset) it is used. */
  references: number;
  /** Distinct snapshots that use it. */
  snapshots: number;
}

/** Groups problems by kind and object, in the order they were found. */
export function groupProblems(problems: readonly CheckProblem[]): ProblemGroup[] {
  const groups = new Map<string, ProblemGroup & { snaps: Set<string> }>();
  for (const p of problems) {
    const object = p.kind.startsWith('chunk-')
      ? (p.chunkId ?? '')
      : p.kind.startsWith('index-')
        ? (p.index ?? '')
        : p.snapshot;
    const key = `${p.kind} ${object}`;
    let g = groups.get(key);
    if (!g)
      groups.set(
        key,
        (g = { kind: p.kind, object, first: p, references: 0, snapshots: 0, snaps: new Set() }),
      );
    g.references++;
    g.snaps.add(p.snapshot);
    g.snapshots = g.snaps.size;
  }
  return [...groups.values()].map(({ snaps: _snaps, ...g }) => g);
}

const plural = (n: number, one: string, many = `${one}s`): string => `${n} ${n === 1 ? one : many}`;

/** The error to end `vmvault check` with when it found problems (exit code INTEGRITY), else undefined. */
export function checkFailure(r: CheckResult): CheckFailedError | undefined {
  if (r.problems.length === 0) return undefined;
  const groups = groupProblems(r.problems);
  const parts: string[] = [];
  const usedBy = (kind: CheckProblemKind): string => {
    const snaps = new Set(r.problems.filter((p) => p.kind === kind).map((p) => p.snapshot)).size;
    return `referenced by ${plural(snaps, 'snapshot')}`;
  };
  const ofKind = (kind: CheckProblemKind): ProblemGroup[] => groups.filter((g) => g.kind === kind);
  const moved = r.repaired.length;
  const missing = ofKind('chunk-missing').length;
  if (missing)
    parts.push(
      `${plural(missing, 'chunk')} missing (${moved ? `${moved} corrupt, moved to quarantine/; ` : ''}${usedBy('chunk-missing')})`,
    );
  const corrupt = ofKind('chunk-corrupt').length;
  if (corrupt) parts.push(`${plural(corrupt, 'chunk')} corrupt (${usedBy('chunk-corrupt')})`);
  const movedIndexes = r.repairedIndexes.length;
  const indexMissing = ofKind('index-missing').length;
  if (indexMissing)
    parts.push(
      `${plural(indexMissing, 'disk index', 'disk indexes')} missing (${movedIndexes ? `${movedIndexes} damaged, moved to quarantine/; ` : ''}${usedBy('index-missing')})`,
    );
  const indexDamaged = ofKind('index-damaged').length;
  if (indexDamaged)
    parts.push(`${plural(indexDamaged, 'disk index', 'disk indexes')} damaged (${usedBy('index-damaged')})`);
  const manifests = ofKind('snapshot-damaged').length;
  const movedManifests = r.repairedSnapshots.length;
  if (manifests)
    parts.push(
      `${plural(manifests, 'snapshot manifest')} damaged${movedManifests ? ` (${movedManifests} moved to quarantine/)` : ''}`,
    );

  const hints: string[] = [];
  const toRepair = !r.repair && (corrupt > 0 || indexDamaged > 0 || manifests > movedManifests);
  if (toRepair)
    hints.push("run 'vmvault check --read-data --repair' to move the damaged objects to quarantine/");
  if (missing || corrupt || indexMissing || indexDamaged)
    hints.push(
      `${toRepair ? 'then ' : ''}a backup that reads the same data in full (backup -l full, backup-image) stores them again`,
    );
  if (missing || corrupt) hints.push("meanwhile 'vmvault restore --ignore-errors' restores the rest");
  if (manifests && !toRepair)
    hints.push('a snapshot whose manifest is damaged cannot be restored: take a new backup');
  return new CheckFailedError(`check found ${parts.join(', ')}`, hints.join('; '), {
    problems: r.problems.length,
    chunksMissing: r.chunksMissing,
    chunksCorrupt: r.chunksCorrupt,
    chunksRepaired: moved,
    indexesRepaired: movedIndexes,
    snapshotsRepaired: movedManifests,
    snapshotsDamaged: r.snapshotsDamaged,
  });
}

/** `0ab13ffa` for a 64-hex id; anything else printable and short. */
function short(id: string | undefined): string {
  return id === undefined ? '?' : /^[0-9a-f]{64}$/.test(id) ? shortId(id) : printable(id, 16);
}

/** A quarantine key with its 64-hex id shortened: `quarantine/index-476b7416…-20261201T201500Z`. */
function shortKey(key: string): string {
  return key.replace(/[0-9a-f]{64}/, (id) => `${shortId(id)}…`);
}

function place(p: CheckProblem): string {
  const where = [`snapshot ${shortId(p.snapshot)}${p.vm !== null ? ` (${printable(p.vm, 60)})` : ''}`];
  if (p.disk !== undefined) where.push(`disk ${printable(p.disk, 40)}`);
  if (p.file !== undefined) where.push(`file ${printable(p.file, 60)}`);
  if (p.offset !== undefined) where.push(`offset ${p.offset}`);
  return where.join(', ');
}

function what(p: CheckProblem): string {
  const why = p.reason ? `; ${printable(p.reason, 160)}` : '';
  const moved = (was: string): string =>
    p.quarantineKey !== undefined
      ? `; was ${was}${p.reason ? `: ${printable(p.reason, 160)}` : ''}; moved to ${shortKey(p.quarantineKey)}`
      : '';
  switch (p.kind) {
    case 'chunk-missing':
      return `chunk ${short(p.chunkId)} is missing: ${place(p)}${moved('corrupt')}`;
    case 'chunk-corrupt':
      return `chunk ${short(p.chunkId)} is corrupt: ${place(p)}${why}`;
    case 'index-missing':
      return `disk index ${short(p.index)} is missing: ${place(p)}${moved('damaged')}`;
    case 'index-damaged':
      return `disk index ${short(p.index)} is damaged: ${place(p)}${why}`;
    case 'snapshot-damaged':
      return `snapshot ${shortId(p.snapshot)}${p.vm !== null ? ` (${printable(p.vm, 60)})` : ''} is damaged: ${printable(p.reason ?? 'unreadable', 160)}${
        p.quarantineKey !== undefined ? `; moved to ${shortKey(p.quarantineKey)}` : ''
      }`;
  }
}

/** One short line per problem (one place): what, then where (short ids). */
export function describeProblem(p: CheckProblem): string {
  return what(p);
}

/** One short line per object: its first place, and how many more use it. */
export function describeGroup(g: ProblemGroup): string {
  const more = g.references - 1;
  return `${what(g.first)}${
    more > 0 ? ` (and ${plural(more, 'more place')}; ${plural(g.snapshots, 'snapshot')} in all)` : ''
  }`;
}

// ---- readers that classify damage instead of throwing -------------------------------------------

async function readIndex(
  repo: Repository,
  id: string,
  diskSizeBytes: number,
  chunkSizeBytes: number,
): Promise<DiskIndex | IndexProblem> {
  let blob: Buffer | undefined;
  try {
    blob = undefined as Buffer | undefined // placeholder: check is being rewritten for format 2;
  } catch (err) {
    if (err instanceof BlobFormatError)
      return { ok: false, kind: 'index-damaged', reason: err.message, own: true };
    throw err;
  }
  if (blob === undefined) return { ok: false, kind: 'index-missing' };
  const index = decodeIndex(repo, id, blob);
  if (!(index instanceof DiskIndex)) return index;
  if (index.diskSizeBytes !== diskSizeBytes || index.chunkSizeBytes !== chunkSizeBytes)
    return {
      ok: false,
      kind: 'index-damaged',
      reason: `the index maps ${index.diskSizeBytes} bytes in ${index.chunkSizeBytes}-byte chunks, the manifest says ${diskSizeBytes} in ${chunkSizeBytes}`,
    };
  return index;
}

/** An index blob decoded and verified on its own (envelope, id, layout, the repository's chunk size). */
function decodeIndex(repo: Repository, id: string, blob: Buffer): DiskIndex | IndexProblem {
  const damaged = (reason: string, own = true): IndexProblem => ({
    ok: false,
    kind: 'index-damaged',
    reason,
    own,
  });
  let index: DiskIndex;
  try {
    const plain = repo.codec.decode('index', blob);
    if (!repo.codec.verify(plain, id)) return damaged('content does not match its id');
    index = DiskIndex.decode(plain);
  } catch (err) {
    return damaged(errText(err));
  }
  if (index.chunkSizeBytes !== repo.chunkSizeBytes)
    return damaged(
      `the index uses ${index.chunkSizeBytes}-byte chunks, the repository ${repo.chunkSizeBytes}-byte chunks`,
      false,
    );
  return index;
}

/** Decoding is pure: whatever it throws (BlobFormatError, RepoFormatError, a malformed shape) is damage. */
function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** `20261201T201500Z`: the UTC time in quarantine keys (sorts by time, no ':' for file systems). */
export function compactUtc(d: Date): string {
  return d
    .toISOString()
    .replace(/\.\d+Z$/, 'Z')
    .replace(/[-:]/g, '');
}

/**
 * Moves a corrupt chunk's blob from data/ to quarantine/ (see `quarantineObject`). The blob is
 * verified again first: only one that is still damaged is moved (a concurrent repair and backup
 * may have stored a sound copy meanwhile).
 */
async function quarantineChunk(repo: Repository, id: string, stamp: string): Promise<string | undefined> {
  const max = repo.codec.blobBound(repo.chunkSizeBytes);
  return quarantineObject(repo, Keys.data(id), Keys.quarantine(id, stamp), max, async (blob) => {
    try {
      await repo.chunks.get(id); void blob;
      return false;
    } catch (err) {
      if (err instanceof ChunkCorruptError) return true;
      throw err;
    }
  });
}

/**
 * Moves a damaged object to quarantine/ through the Backend interface: get, check that it is
 * still damaged (`stillDamaged`), put the copy (create-if-absent), and only then delete the
 * original key, so the bytes exist somewhere at every moment. Returns the quarantine key, or
 * undefined when nothing was moved (the object is gone or now sound, or larger than `maxBytes`:
 * an untrusted size is never read into memory, and the finding stays for the user to delete).
 */
async function quarantineObject(
  repo: Repository,
  key: string,
  base: string,
  maxBytes: number,
  stillDamaged: (blob: Buffer) => Promise<boolean>,
): Promise<string | undefined> {
  let blob: Buffer;
  try {
    const st = await repo.backend.stat(key);
    if (st === undefined || st.sizeBytes > maxBytes) return undefined;
    blob = await repo.backend.get(key);
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
  if (!(await stillDamaged(blob))) return undefined;
  let to = base;
  for (let n = 2; !(await repo.backend.putIfAbsent(to, blob)); n++) {
    // Taken: by the same bytes (another check --repair of this object in the same second) is fine.
    const there = await repo.backend.get(to).catch((err: unknown) => {
      if (isNotFound(err)) return undefined;
      throw err;
    });
    if (there?.equals(blob)) break;
    if (n > 100) throw new Error(`cannot find a free quarantine key for ${key} (${base}.N taken)`);
    to = `${base}.${n}`;
  }
  await repo.backend.delete(key);
  return to;
}
