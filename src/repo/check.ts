import { nullProgress, throwIfAborted, UsageError, printable, type Progress } from '../util/index.js';
import { BlobFormatError } from './blob.js';
import {
  ChunkIndex,
  codecSectionSealer,
  packKey,
  type IndexEntry,
  type VoidRecord,
} from './chunk-index/index.js';
import { treePages } from './disk-tree.js';
import type { DiskIndex } from './disk-index.js';
import { CheckFailedError, isNotFound, RepoDamagedError } from './errors.js';
import { Keys, MAX_MANIFEST_BYTES } from './format.js';
import { SnapshotDamagedError } from './manifest-schema.js';
import { parsePackKey, readPackTrailer } from './pack.js';
import type { Repository } from './repository.js';
import { shortId } from './snapshot.js';

export type CheckProblemKind =
  | 'snapshot-damaged'
  | 'index-missing'
  | 'index-damaged'
  | 'chunk-missing'
  | 'chunk-corrupt'
  /** A pack (data/ or meta/) whose trailer, name or records are damaged, or that its index entries overrun. */
  | 'pack-damaged'
  /** A pack that index entries name but storage does not hold. */
  | 'pack-missing'
  /** A chunk index object (index/) that cannot be used, or index/ empty while packs exist. */
  | 'index-object-damaged';

/** One thing wrong, located as precisely as the repository allows. */
export interface CheckProblem {
  kind: CheckProblemKind;
  /** Full snapshot id; '' for a problem of the repository as a whole (packs, index objects). */
  snapshot: string;
  /** VM name, when the manifest could be read. */
  vm: string | null;
  /** Disk target (disk index trees and disk chunks). */
  disk?: string;
  /** `kind:name` of a file stored beside the disks (file chunks). */
  file?: string;
  /** Byte offset of the chunk in the disk or file; of the record in its pack (pack-damaged). */
  offset?: number;
  chunkId?: string;
  /** Disk index root page id (index-missing/-damaged), or the index object key (index-object-damaged). */
  index?: string;
  /** Pack key, `data/hh/<32 hex>` or `meta/hh/<32 hex>` (pack problems). */
  pack?: string;
  /** The manifest field that fails the schema (snapshot-damaged). */
  field?: string;
  /**
   * What is wrong (damage only; absent for missing objects, except one `--repair` voided: then
   * the damage it had).
   */
  reason?: string;
  /** The void record (`quarantine/<32 hex>`) or quarantined manifest `--repair` wrote for it. */
  quarantineKey?: string;
}

/** A corrupt chunk whose every copy `--repair` voided (so the next backup stores it again). */
export interface RepairedChunk {
  chunkId: string;
  /** The void record, `quarantine/<32 hex>`. */
  quarantineKey: string;
}

/** A disk index whose page `--repair` voided (id: root page id), or a manifest it quarantined. */
export interface RepairedObject {
  /** Disk index root id or snapshot id. */
  id: string;
  quarantineKey: string;
}

/** The chunk index `--repair` rebuilt from the pack trailers. */
export interface RebuiltIndex {
  /** Names of the rebuilt objects written. */
  written: string[];
  /** Names of the index objects they superseded (deleted). */
  superseded: string[];
  entries: number;
}

export interface CheckResult {
  readData: boolean;
  /** Whether damage was to be voided and the index rebuilt (`repair`). */
  repair: boolean;
  /** Snapshot manifests checked (damaged ones included). */
  snapshots: number;
  /** Snapshots with at least one problem. */
  snapshotsDamaged: number;
  /** Distinct disk index trees checked. */
  indexes: number;
  /** Files stored beside the disks (domain XML, nvram, …), over all snapshots. */
  files: number;
  /** Distinct non-zero chunks referenced by the trees and files that could be read. */
  chunksReferenced: number;
  /** Plaintext bytes of those chunks. */
  bytesReferenced: number;
  /** Records read and verified (every pack read once): only with `readData`. */
  chunksRead: number;
  /** Plaintext bytes of those records. */
  bytesRead: number;
  /** `--read-data-subset` as given back (`2/5`, `10%`), or null: every pack. */
  subset: string | null;
  /** `--max-time` in milliseconds, or null. */
  maxTimeMs: number | null;
  /** Packs the subset selects (all packs without one), and their bytes: 0 without `readData`. */
  packsSelected: number;
  packBytesSelected: number;
  /** Packs read whole and verified (`readData`), and their bytes. */
  packsRead: number;
  packBytesRead: number;
  /** Whether `maxTimeMs` ran out before every selected pack was read. */
  stoppedEarly: boolean;
  /** Whether the packs were read in rotation (a percentage or `maxTimeMs`): from after `startAfter`. */
  rotating: boolean;
  /** The pack name (32 hex) this run started after, when rotating and given one. */
  startAfter: string | null;
  /** The last pack name read, in rotation order: where the next run continues after. */
  lastPack: string | null;
  /** The first pack name the next run reads (when rotating), or null. */
  nextPack: string | null;
  /** Distinct referenced chunks with no usable index entry (those `repair` voided included). */
  chunksMissing: number;
  /** Distinct referenced chunks whose every copy is damaged (found only with `readData`). */
  chunksCorrupt: number;
  /** Corrupt chunks `repair` voided; they now count as missing. */
  repaired: RepairedChunk[];
  /** Disk indexes whose damaged pages `repair` voided; they now count as missing. */
  repairedIndexes: RepairedObject[];
  /** Damaged manifests moved to quarantine/ by `repair`: those snapshots are gone. */
  repairedSnapshots: RepairedObject[];
  /** The chunk index rebuilt by `repair`, when it was. */
  rebuiltIndex: RebuiltIndex | undefined;
  /** Void records `repair` wrote. */
  voids: string[];
  /** Packs listed under data/ and meta/. */
  packs: number;
  /** Bytes of those packs. */
  packBytes: number;
  /** Packs with a problem (trailer, name, records, entries past their end). */
  packsDamaged: number;
  /** Packs no index entry names (a killed backup's, or a rebuild's to make): counted unreferenced. */
  orphanPacks: number;
  /** Keys under data/ and meta/ that are not pack names: ignored (first 100). */
  ignoredKeys: string[];
  /** Index entries (records) that no snapshot references, plus orphan packs: what a GC would free. */
  unreferencedChunks: number;
  /** Record bytes of those entries, plus the bytes of orphan packs. */
  unreferencedBytes: number;
  /**
   * False when a manifest or a disk index could not be read: the chunks only it references then
   * count as unreferenced although a snapshot needs them.
   */
  unreferencedExact: boolean;
  /** Every problem, one per affected snapshot / disk / offset. Empty when the repository is sound. */
  problems: CheckProblem[];
}

export interface CheckOptions {
  /** Also read every pack once and verify every record. */
  readData?: boolean;
  /**
   * With `readData`: rebuild a damaged chunk index from the pack trailers, write a void record
   * per damaged record or pack (the next backup that reads the same data stores it again), and
   * move damaged manifests to quarantine/. A manifest of a newer vmvault is never moved.
   */
  repair?: boolean;
  /** The time of void records and of quarantine keys (default: now). */
  now?: Date;
  /**
   * With `readData`: only these packs. `{ part: K, of: N }` is the K-th of N stable parts (by the
   * first 4 bytes of the pack name, mod N); `{ percent }` the next that many percent of the packs
   * in rotation (see `startAfter`).
   */
  subset?: DataSubset;
  /**
   * With `readData`: stop starting pack reads once this many milliseconds have passed since the
   * check began (the reads under way finish; at least one pack is always read). Packs are then
   * read in rotation from `startAfter`.
   */
  maxTimeMs?: number;
  /**
   * Rotation (a percentage or `maxTimeMs`): the pack name (32 hex) the previous run read last;
   * this run starts at the next name in name order, wrapping around to the first.
   */
  startAfter?: string;
  /** The clock of `maxTimeMs`, in milliseconds (default Date.now; tests make it run fast). */
  clock?: () => number;
  /** Packs read and verified at once with `readData` (default 3, at most 4). Bounds memory. */
  window?: number;
  /** Progress of a phase ('indexes': bytes of disk; 'data': bytes of pack). */
  progressFor?: (phase: 'indexes' | 'data') => Progress;
  signal?: AbortSignal;
}

/** `--read-data-subset`: the K-th of N parts, or a percentage of the packs. */
export type DataSubset = { part: number; of: number } | { percent: number };

/** Parses `--read-data-subset`: `K/N` (1 ≤ K ≤ N ≤ 1000000) or `P%` (0 < P ≤ 100, decimals allowed). */
export function parseDataSubset(text: string): DataSubset {
  const hint =
    'use K/N for the K-th of N parts (1/5 … 5/5: five runs read every pack once) or a percentage such as 10%';
  const shown = printable(text, 40);
  const s = text.trim();
  const part = /^(\d{1,7})\/(\d{1,7})$/.exec(s);
  if (part) {
    const k = Number(part[1]);
    const n = Number(part[2]);
    if (n < 1 || n > 1_000_000 || k < 1 || k > n)
      throw new UsageError(`invalid --read-data-subset '${shown}': K/N needs 1 ≤ K ≤ N ≤ 1000000`, hint);
    return { part: k, of: n };
  }
  const pct = /^(\d{1,3}(?:\.\d{1,6})?)%$/.exec(s);
  if (pct) {
    const p = Number(pct[1]);
    if (!(p > 0 && p <= 100))
      throw new UsageError(
        `invalid --read-data-subset '${shown}': a percentage must be above 0 and at most 100`,
        hint,
      );
    return { percent: p };
  }
  throw new UsageError(`invalid --read-data-subset '${shown}'`, hint);
}

/** `2/5` or `10%`. */
export function formatDataSubset(s: DataSubset): string {
  return 'percent' in s ? `${s.percent}%` : `${s.part}/${s.of}`;
}

/** The part (0 … n-1) a pack name (32 hex) belongs to: its first 4 bytes, big-endian, mod n. */
export function packPart(name: string, n: number): number {
  return Number.parseInt(name.slice(0, 8), 16) % n;
}

/**
 * The packs `--read-data` reads, in order: every pack (or those of part K/N) sorted by name; when
 * rotating, starting after `startAfter` and wrapping around; a percentage takes the first
 * ceil(P% of all packs) of that order. `all` is the selection in name order (for `nextPack`).
 */
export function selectPacks(
  packs: ReadonlyMap<string, number>,
  opts: { subset?: DataSubset; rotate: boolean; startAfter?: string },
): {
  order: Array<[key: string, size: number, name: string]>;
  all: Array<[key: string, size: number, name: string]>;
} {
  const all: Array<[string, number, string]> = [];
  for (const [key, size] of packs) {
    const name = parsePackKey(key)?.name.toString('hex');
    if (name === undefined) continue;
    const sub = opts.subset;
    if (sub && !('percent' in sub) && packPart(name, sub.of) !== sub.part - 1) continue;
    all.push([key, size, name]);
  }
  all.sort((a, b) => (a[2] < b[2] ? -1 : a[2] > b[2] ? 1 : a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  let order = all;
  if (opts.rotate && opts.startAfter !== undefined) {
    const after = opts.startAfter.toLowerCase();
    const at = all.findIndex((p) => p[2] > after);
    if (at > 0) order = [...all.slice(at), ...all.slice(0, at)];
  }
  const sub = opts.subset;
  if (sub && 'percent' in sub && order.length)
    order = order.slice(0, Math.min(order.length, Math.max(1, Math.ceil((packs.size * sub.percent) / 100))));
  return { order, all };
}

const ZERO_ID = '0'.repeat(64);
const MAX_IGNORED_LISTED = 100;
const TRAILER_CONCURRENCY = 8;

type TreeState =
  | { ok: true }
  | { ok: false; kind: 'index-missing' | 'index-damaged'; reason?: string; quarantineKey?: string };

/** A damaged record (offset) or pack ('*'), from the trailer reads, the index stream or --read-data. */
interface Damage {
  reason: string;
  id?: Buffer | undefined;
}

/** Damage found per pack key: offset (or '*') → damage. */
class DamageMap {
  readonly packs = new Map<string, Map<number | '*', Damage>>();
  add(key: string, offset: number | '*', d: Damage): void {
    let m = this.packs.get(key);
    if (!m) this.packs.set(key, (m = new Map()));
    if (!m.has(offset)) m.set(offset, d);
  }
  /** The damage that makes entry `e` unusable, if any. */
  of(e: IndexEntry): Damage | undefined {
    const m = this.packs.get(packKey(e));
    return m?.get('*') ?? m?.get(e.offset);
  }
  get size(): number {
    return this.packs.size;
  }
}

async function forEachLimit<T>(
  items: Iterable<T>,
  limit: number,
  fn: (item: T) => Promise<void>,
): Promise<void> {
  const it = items[Symbol.iterator]();
  let stop = false;
  const runner = async (): Promise<void> => {
    for (let r = it.next(); !r.done && !stop; r = it.next()) {
      try {
        await fn(r.value);
      } catch (err) {
        stop = true;
        throw err;
      }
    }
  };
  const settled = await Promise.allSettled(Array.from({ length: Math.max(1, limit) }, runner));
  const failed = settled.find((s) => s.status === 'rejected');
  if (failed) throw failed.reason;
}

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Verifies a format 2 repository (`vmvault check`, docs/format-2-design.md §8): every manifest;
 * every distinct disk index tree (its pages read and checked); that every referenced chunk and page
 * has a usable index entry (its pack listed, the record inside the pack); the live chunk index
 * (damaged objects, entries of missing packs); every pack's trailer (one ranged read); orphan packs.
 * With `readData`, every pack is read once and every record opened (a few packs at a time); a
 * referenced chunk whose every copy is damaged is corrupt. With `repair` too: the chunk index is
 * rebuilt from the trailers when it is damaged or lacks entries a trailer has, every damaged record
 * (or pack) gets a void record, so lookups stop finding it and the next backup stores the data
 * again, and damaged manifests move to quarantine/.
 *
 * Problems are returned, not thrown; the caller decides (see `checkFailure`).
 */
export async function checkRepository(repo: Repository, opts: CheckOptions = {}): Promise<CheckResult> {
  const readData = opts.readData ?? false;
  const repair = opts.repair ?? false;
  if (repair && !readData)
    throw new UsageError(
      '--repair needs --read-data',
      'add --read-data: only reading the packs finds the damaged records',
    );
  if (!readData && (opts.subset !== undefined || opts.maxTimeMs !== undefined))
    throw new UsageError(
      `${opts.subset !== undefined ? '--read-data-subset' : '--max-time'} needs --read-data`,
      'add --read-data: they bound how many packs it reads',
    );
  const signal = opts.signal;
  const clock = opts.clock ?? Date.now;
  const startedMs = clock();
  const now = opts.now ?? new Date();
  const problems: CheckProblem[] = [];
  let unreferencedExact = true;
  const repoProblem = (p: Omit<CheckProblem, 'snapshot' | 'vm'>): void => {
    problems.push({ snapshot: '', vm: null, ...p });
  };

  // ---- 1. manifests: blob, id, JSON, schema (manifest-schema.ts) ------------------------------
  throwIfAborted(signal);
  const { snapshots: snaps, damaged: damagedManifests } = await repo.scanSnapshots();
  if (damagedManifests.length) unreferencedExact = false;
  // The index as of now: every manifest listed above committed its entries before it was written.
  await repo.index.reload();

  // ---- 2. disk index trees and files: collect referenced chunks and pages ------------------------
  // id → plaintext length of the chunk; negated once the index stream found a usable copy.
  // Doubt: this map holds every distinct referenced id (~100 B each: 10 M chunks ≈ 1 GB). The
  // design (§8) wants lookups instead; a sorted external set or a second tree walk would bound it.
  const refs = new Map<string, number>();
  const reference = (id: string, length: number): void => {
    if (!refs.has(id)) refs.set(id, length);
  };
  // Page id → the roots of the trees that use it (pages are ~1/1000 of the chunks).
  const pageRefs = new Map<string, Set<string>>();
  const pageFound = new Set<string>();
  const treeState = new Map<string, TreeState>();
  const treeBytes = new Map<string, number>();
  for (const s of snaps) for (const d of s.disks) treeBytes.set(d.root, d.sizeBytes);
  const progress = opts.progressFor?.('indexes') ?? nullProgress;
  progress.start(
    'indexes',
    [...treeBytes.values()].reduce((a, b) => a + b, 0),
  );
  let files = 0;
  for (const s of snaps) {
    for (const d of s.disks) {
      throwIfAborted(signal);
      let state = treeState.get(d.root);
      if (!state) {
        state = await readTreeRefs(repo, d, pageRefs, reference);
        treeState.set(d.root, state);
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

  // ---- 3. one listing of data/ and meta/ (after the trees: a backup meanwhile adds only orphans) --
  const packs = new Map<string, number>();
  const ignoredKeys: string[] = [];
  let packBytes = 0;
  for (const prefix of [Keys.dataPrefix, 'meta/']) {
    for await (const o of repo.backend.list(prefix)) {
      throwIfAborted(signal);
      if (parsePackKey(o.key) === undefined) {
        if (ignoredKeys.length < MAX_IGNORED_LISTED) ignoredKeys.push(o.key);
        continue;
      }
      packs.set(o.key, o.sizeBytes);
      packBytes += o.sizeBytes;
    }
  }

  // ---- 4. the live index entries, streamed in id order (copies of an id are adjacent) ------------
  const damage = new DamageMap();
  const named = new Set<string>();
  const missingPacks = new Map<string, number>();
  let unreferencedChunks = 0;
  let unreferencedBytes = 0;
  let streamDamaged: string | undefined;
  try {
    for await (const e of repo.index.entries()) {
      throwIfAborted(signal);
      const key = packKey(e);
      const size = packs.get(key);
      const hex = e.id.toString('hex');
      let usable = true;
      if (size === undefined) {
        missingPacks.set(key, (missingPacks.get(key) ?? 0) + 1);
        usable = false;
      } else {
        named.add(key);
        if (e.offset + e.length > size) {
          damage.add(key, e.offset, {
            id: e.id,
            reason: `the index places a record at ${e.offset}+${e.length}, past the pack's ${size} bytes`,
          });
          usable = false;
        }
      }
      const len = refs.get(hex);
      if (len !== undefined) {
        if (usable && len > 0) refs.set(hex, -len);
      } else if (e.kind >= 3 && pageRefs.has(hex)) {
        if (usable) pageFound.add(hex);
      } else {
        unreferencedChunks++;
        unreferencedBytes += e.length;
      }
    }
  } catch (err) {
    if (!(err instanceof BlobFormatError || err instanceof RepoDamagedError)) throw err;
    streamDamaged = errText(err);
  }
  let orphanPacks = 0;
  for (const [key, size] of packs)
    if (!named.has(key)) {
      orphanPacks++;
      unreferencedBytes += size;
    }
  for (const [key, n] of missingPacks)
    repoProblem({
      kind: 'pack-missing',
      pack: key,
      reason: `${n} index entr${n === 1 ? 'y names' : 'ies name'} it`,
    });

  const indexDamage = repo.index.damaged.filter((d) => d.key.startsWith(Keys.indexPrefix));
  const voidDamage = repo.index.damaged.filter((d) => !d.key.startsWith(Keys.indexPrefix));
  const indexEmpty = repo.index.liveObjects().length === 0 && packs.size > 0;
  for (const d of indexDamage) repoProblem({ kind: 'index-object-damaged', index: d.key, reason: d.reason });
  for (const d of voidDamage)
    repoProblem({ kind: 'index-object-damaged', index: d.key, reason: `void record: ${d.reason}` });
  if (streamDamaged !== undefined)
    repoProblem({ kind: 'index-object-damaged', index: Keys.indexPrefix, reason: streamDamaged });
  if (indexEmpty)
    repoProblem({
      kind: 'index-object-damaged',
      index: Keys.indexPrefix,
      reason: `index/ holds no usable index object while ${packs.size} pack${packs.size === 1 ? '' : 's'} exist`,
    });

  const missing = new Set<string>();
  let bytesReferenced = 0;
  for (const [id, len] of refs) {
    bytesReferenced += Math.abs(len);
    if (len > 0) missing.add(id);
  }
  const missingPages = new Set<string>();
  for (const id of pageRefs.keys()) if (!pageFound.has(id)) missingPages.add(id);

  // ---- 5. every pack's trailer: damage; the trailers list ids the index lacks? --------------------
  const inTrailers = new Map<string, string>(); // missing id → a pack whose trailer lists it
  await forEachLimit(packs, TRAILER_CONCURRENCY, async ([key, size]) => {
    throwIfAborted(signal);
    try {
      const t = await readPackTrailer(repo.backend, key, repo.codec, size);
      for (const e of t.entries) {
        const hex = e.id.toString('hex');
        if (missing.has(hex) || missingPages.has(hex)) inTrailers.set(hex, key);
      }
    } catch (err) {
      // A pack voided as a whole (by an earlier --repair) is known damage: not reported again.
      if (err instanceof BlobFormatError) {
        const name = parsePackKey(key)?.name;
        if (name && !repo.index.isVoided({ pack: name, offset: 0 }))
          damage.add(key, '*', { reason: `trailer: ${err.message}` });
      } else if (!isNotFound(err)) throw err; // deleted meanwhile (prune): nothing to check
    }
  });

  // ---- 6. --read-data: every pack once, a few at a time ------------------------------------------
  let chunksRead = 0;
  let bytesRead = 0;
  const rotating =
    readData && (opts.maxTimeMs !== undefined || (opts.subset !== undefined && 'percent' in opts.subset));
  let packsSelected = 0;
  let packBytesSelected = 0;
  let packsRead = 0;
  let packBytesRead = 0;
  let stoppedEarly = false;
  let lastPack: string | null = null;
  let nextPack: string | null = null;
  if (readData) {
    const window = Math.min(4, Math.max(1, opts.window ?? 3));
    const { order, all } = selectPacks(packs, {
      ...(opts.subset ? { subset: opts.subset } : {}),
      rotate: rotating,
      ...(opts.startAfter !== undefined ? { startAfter: opts.startAfter } : {}),
    });
    packsSelected = all.length;
    for (const p of all) packBytesSelected += p[1];
    const dataProgress = opts.progressFor?.('data') ?? nullProgress;
    dataProgress.start(
      'data',
      order.reduce((a, p) => a + p[1], 0),
    );
    // Shared by the readers: a pack read starts only while time is left (the first always does),
    // so every pack before the last one started is read when the readers are done.
    const deadline = opts.maxTimeMs === undefined ? Infinity : startedMs + opts.maxTimeMs;
    let started = 0;
    const budgeted = function* (): Generator<[string, number, string]> {
      for (const p of order) {
        if (started > 0 && clock() >= deadline) {
          stoppedEarly = true;
          return;
        }
        started++;
        lastPack = p[2];
        yield p;
      }
    };
    await forEachLimit(budgeted(), window, async ([key, size]) => {
      throwIfAborted(signal);
      let r: Awaited<ReturnType<typeof repo.chunks.verifyPack>>;
      try {
        r = await repo.chunks.verifyPack(key, size);
      } catch (err) {
        if (isNotFound(err)) return; // deleted meanwhile
        throw err;
      }
      packsRead++;
      packBytesRead += size;
      const bad = new Set<number | '*'>();
      const name = parsePackKey(key)!.name;
      for (const p of r.problems) {
        // Damage an earlier --repair voided is known: its entries are gone from the index already.
        if (repo.index.isVoided({ pack: name, offset: p.offset === '*' ? 0 : p.offset })) {
          bad.add(p.offset);
          continue;
        }
        bad.add(p.offset);
        damage.add(key, p.offset, { reason: p.reason, ...(p.id ? { id: p.id } : {}) });
      }
      if (!bad.has('*'))
        for (const e of r.entries)
          if (!bad.has(e.offset)) {
            chunksRead++;
            bytesRead += e.plaintextBytes;
          }
      dataProgress.advance(size);
    });
    dataProgress.done();
    if (rotating && lastPack !== null) {
      const last: string = lastPack;
      nextPack = (all.find((p) => p[2] > last) ?? all[0])?.[2] ?? null;
    }
  }

  // ---- 7a. --repair: the index, rebuilt from every readable trailer when damaged, empty, or lacking
  // entries; then the trees that could not be read before are read again.
  let rebuiltIndex: RebuiltIndex | undefined;
  const missingReason = new Map<string, string>();
  for (const [hex, key] of inTrailers)
    missingReason.set(
      hex,
      `no index entry, but the trailer of ${key} lists it ('check --read-data --repair' rebuilds the index)`,
    );
  if (repair && (indexDamage.length || streamDamaged !== undefined || indexEmpty || inTrailers.size)) {
    throwIfAborted(signal);
    rebuiltIndex = await ChunkIndex.rebuild(
      repo.backend,
      codecSectionSealer(repo.codec),
      trailerEntries(repo, packs, damage),
      { sessionId: repo.chunks.sessionId },
    );
    await repo.index.reload();
    missingReason.clear();
    const usable = async (hex: string): Promise<boolean> => {
      for (const c of await repo.index.lookupAll(Buffer.from(hex, 'hex'))) {
        const size = packs.get(packKey(c));
        if (size !== undefined && c.offset + c.length <= size) return true;
      }
      return false;
    };
    for (const hex of [...missing, ...missingPages]) {
      if (!(await usable(hex))) continue;
      missing.delete(hex);
      missingPages.delete(hex);
      const len = refs.get(hex);
      if (len !== undefined) refs.set(hex, -Math.abs(len));
    }
    const disks = new Map<string, { root: string; sizeBytes: number; chunkSizeBytes: number }>();
    for (const s of snaps) for (const d of s.disks) disks.set(d.root, d);
    for (const [root, state] of treeState) {
      if (state.ok) continue;
      throwIfAborted(signal);
      const added: string[] = [];
      const next = await readTreeRefs(repo, disks.get(root)!, pageRefs, (id, length) => {
        if (refs.has(id)) return;
        refs.set(id, length);
        bytesReferenced += length;
        added.push(id);
      });
      treeState.set(root, next);
      for (const id of added) {
        if (await usable(id)) refs.set(id, -refs.get(id)!);
        else missing.add(id);
      }
    }
    for (const hex of pageRefs.keys()) if (!(await usable(hex))) missingPages.add(hex);
  }

  // ---- the entries each damaged record or pack stands for (one more stream, only on damage) ------
  const damagedEntries: Array<{ e: IndexEntry; d: Damage }> = [];
  if (damage.size) {
    for await (const e of repo.index.entries()) {
      const d = damage.of(e);
      if (d) damagedEntries.push({ e, d });
    }
  }
  for (const [key, m] of damage.packs)
    for (const [offset, d] of m)
      repoProblem({
        kind: 'pack-damaged',
        pack: key,
        ...(offset === '*' ? {} : { offset }),
        ...(d.id ? { chunkId: d.id.toString('hex') } : {}),
        reason: d.reason,
      });

  /** Whether every indexed copy of `id` is damaged or gone (a referenced id then is corrupt). */
  const noSoundCopy = async (id: Buffer): Promise<boolean> => {
    for (const c of await repo.index.lookupAll(id)) {
      const size = packs.get(packKey(c));
      if (size !== undefined && c.offset + c.length <= size && !damage.of(c)) return false;
    }
    return true;
  };
  const corrupt = new Map<string, string>();
  const corruptPages = new Map<string, string>();
  for (const { e, d } of damagedEntries) {
    const hex = e.id.toString('hex');
    const isChunk = refs.has(hex) && !missing.has(hex);
    const isPage = pageRefs.has(hex) && !missingPages.has(hex);
    if ((!isChunk && !isPage) || corrupt.has(hex) || corruptPages.has(hex)) continue;
    if (!(await noSoundCopy(e.id))) continue;
    (isChunk ? corrupt : corruptPages).set(hex, d.reason);
  }

  // ---- 7b. --repair: void records, manifests ------------------------------------------------------
  const voids: string[] = [];
  const repaired: RepairedChunk[] = [];
  const repairedIndexes: RepairedObject[] = [];
  const repairedSnapshots: RepairedObject[] = [];
  const quarantined = new Map<string, { quarantineKey: string; reason: string }>();
  const quarantinedManifests = new Map<string, string>();
  if (repair) {
    // b. Void records: one per damaged record, or per pack ('*'); one void object per pack.
    for (const [key, m] of damage.packs) {
      throwIfAborted(signal);
      const parsed = parsePackKey(key);
      if (!parsed) continue;
      const records: VoidRecord[] = [...m].map(([offset, d]) => ({
        pack: parsed.name,
        offset,
        ...(d.id ? { id: d.id } : {}),
        reason: d.reason,
        timeMs: now.getTime(),
      }));
      const keys = await repo.index.writeVoid(records);
      voids.push(...keys);
      const voidKey = keys[0]!;
      for (const { e, d } of damagedEntries) {
        if (packKey(e) !== key) continue;
        const hex = e.id.toString('hex');
        if (corrupt.has(hex)) {
          corrupt.delete(hex);
          missing.add(hex);
          quarantined.set(hex, { quarantineKey: voidKey, reason: d.reason });
          repaired.push({ chunkId: hex, quarantineKey: voidKey });
        } else if (corruptPages.has(hex)) {
          corruptPages.delete(hex);
          for (const root of pageRefs.get(hex) ?? []) {
            treeState.set(root, {
              ok: false,
              kind: 'index-missing',
              reason: `page ${hex.slice(0, 12)}: ${d.reason}`,
              quarantineKey: voidKey,
            });
            repairedIndexes.push({ id: root, quarantineKey: voidKey });
          }
        }
      }
    }
    // c. Manifests: moved to quarantine/snapshot-… (docs/format.md "Key layout").
    const stamp = compactUtc(now);
    for (const d of damagedManifests) {
      if (d.unsupportedVersion) continue; // a newer vmvault's snapshot, not damage
      throwIfAborted(signal);
      const id = d.snapshotId;
      const quarantineKey = await quarantineObject(
        repo,
        Keys.snapshot(id),
        Keys.quarantineSnapshot(id, stamp),
        repo.codec.sealedObjectBytes(MAX_MANIFEST_BYTES) + 1024,
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
  // Trees whose pages are missing or corrupt (and were not voided above).
  for (const [hex, roots] of pageRefs) {
    const why = missingPages.has(hex)
      ? {
          kind: 'index-missing' as const,
          reason: missingReason.get(hex) ?? `page ${hex.slice(0, 12)} has no usable index entry`,
        }
      : corruptPages.has(hex)
        ? { kind: 'index-damaged' as const, reason: `page ${hex.slice(0, 12)}: ${corruptPages.get(hex)!}` }
        : undefined;
    if (!why) continue;
    for (const root of roots) if (treeState.get(root)?.ok) treeState.set(root, { ok: false, ...why });
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
      const state = treeState.get(d.root);
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

  // ---- 8. locate every reference to a bad chunk ------------------------------------------------
  if (missing.size || corrupt.size) {
    const bad = (id: string): Pick<CheckProblem, 'kind' | 'reason' | 'quarantineKey'> | undefined => {
      const q = quarantined.get(id);
      if (q) return { kind: 'chunk-missing', reason: q.reason, quarantineKey: q.quarantineKey };
      if (missing.has(id)) {
        const why = missingReason.get(id);
        return why === undefined ? { kind: 'chunk-missing' } : { kind: 'chunk-missing', reason: why };
      }
      const reason = corrupt.get(id);
      return reason === undefined ? undefined : { kind: 'chunk-corrupt', reason };
    };
    for (const s of snaps) {
      for (const d of s.disks) {
        throwIfAborted(signal);
        const state = treeState.get(d.root);
        // A tree made unreadable by the repair itself (a voided page) was read in step 2.
        if (state === undefined || (!state.ok && state.quarantineKey === undefined)) continue;
        let idx: DiskIndex;
        try {
          idx = await repo.getIndex(d);
        } catch (err) {
          if (err instanceof RepoDamagedError) continue; // changed under us: reported on the next run
          throw err;
        }
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
    snapshotsDamaged: new Set(problems.filter((p) => p.snapshot !== '').map((p) => p.snapshot)).size,
    indexes: treeState.size,
    files,
    chunksReferenced: refs.size,
    bytesReferenced,
    chunksRead,
    bytesRead,
    subset: readData && opts.subset ? formatDataSubset(opts.subset) : null,
    maxTimeMs: readData ? (opts.maxTimeMs ?? null) : null,
    packsSelected,
    packBytesSelected,
    packsRead,
    packBytesRead,
    stoppedEarly,
    rotating,
    startAfter: rotating ? (opts.startAfter ?? null) : null,
    lastPack,
    nextPack,
    chunksMissing: missing.size,
    chunksCorrupt: corrupt.size,
    repaired,
    repairedIndexes,
    repairedSnapshots,
    rebuiltIndex,
    voids,
    packs: packs.size,
    packBytes,
    packsDamaged: damage.size,
    orphanPacks,
    ignoredKeys,
    unreferencedChunks,
    unreferencedBytes,
    unreferencedExact,
    problems,
  };
}

/**
 * Reads one disk's tree: every distinct page named (`treePages`: inner pages read and checked)
 * and remembered with the root, then the whole tree (`readTree`: leaves read and checked), whose
 * non-zero slots are referenced. Pages shared with a tree read before are read again (each tree
 * once; a page cache would make it each page once).
 */
async function readTreeRefs(
  repo: Repository,
  d: { root: string; sizeBytes: number; chunkSizeBytes: number },
  pageRefs: Map<string, Set<string>>,
  reference: (id: string, length: number) => void,
): Promise<TreeState> {
  if (d.chunkSizeBytes !== repo.chunkSizeBytes)
    return {
      ok: false,
      kind: 'index-damaged',
      reason: `the manifest says ${d.chunkSizeBytes}-byte chunks, the repository uses ${repo.chunkSizeBytes}`,
    };
  const note = (id: string): void => {
    let roots = pageRefs.get(id);
    if (!roots) pageRefs.set(id, (roots = new Set()));
    roots.add(d.root);
  };
  // The root first: when it has no entry (index/ lost), a trailer that lists it triggers a rebuild.
  if (d.root !== ZERO_ID) note(d.root);
  try {
    for await (const p of treePages(
      d.root,
      d.sizeBytes,
      d.chunkSizeBytes,
      repo.config.pageSlots,
      repo.chunks.pages,
    )) {
      note(p.id);
    }
    const idx = await repo.getIndex(d);
    for (let slot = 0; slot < idx.slotCount; slot++) {
      const id = idx.get(slot);
      if (id) reference(id, idx.slotLength(slot));
    }
    return { ok: true };
  } catch (err) {
    if (err instanceof RepoDamagedError || err instanceof BlobFormatError)
      return {
        ok: false,
        kind: /is missing/.test(err.message) ? 'index-missing' : 'index-damaged',
        reason: err.message,
      };
    throw err;
  }
}

/** Every entry of every readable pack trailer (for `ChunkIndex.rebuild`), a pack at a time. */
async function* trailerEntries(
  repo: Repository,
  packs: ReadonlyMap<string, number>,
  damage: DamageMap,
): AsyncGenerator<IndexEntry> {
  for (const [key, size] of packs) {
    if (damage.packs.get(key)?.has('*')) continue;
    try {
      const t = await readPackTrailer(repo.backend, key, repo.codec, size);
      yield* t.entries;
    } catch (err) {
      if (!(err instanceof BlobFormatError || isNotFound(err))) throw err;
    }
  }
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
        : p.kind.startsWith('pack-')
          ? `${p.pack ?? ''}${p.offset !== undefined ? `@${p.offset}` : ''}`
          : p.snapshot;
    const key = `${p.kind} ${object}`;
    let g = groups.get(key);
    if (!g)
      groups.set(
        key,
        (g = { kind: p.kind, object, first: p, references: 0, snapshots: 0, snaps: new Set() }),
      );
    g.references++;
    if (p.snapshot !== '') g.snaps.add(p.snapshot);
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
    const snaps = new Set(
      r.problems.filter((p) => p.kind === kind && p.snapshot !== '').map((p) => p.snapshot),
    ).size;
    return `referenced by ${plural(snaps, 'snapshot')}`;
  };
  const ofKind = (kind: CheckProblemKind): ProblemGroup[] => groups.filter((g) => g.kind === kind);
  const moved = r.repaired.length;
  const missing = ofKind('chunk-missing').length;
  if (missing)
    parts.push(
      `${plural(missing, 'chunk')} missing (${moved ? `${moved} corrupt, voided; ` : ''}${usedBy('chunk-missing')})`,
    );
  const corrupt = ofKind('chunk-corrupt').length;
  if (corrupt) parts.push(`${plural(corrupt, 'chunk')} corrupt (${usedBy('chunk-corrupt')})`);
  const movedIndexes = r.repairedIndexes.length;
  const indexMissing = ofKind('index-missing').length;
  if (indexMissing)
    parts.push(
      `${plural(indexMissing, 'disk index', 'disk indexes')} missing (${movedIndexes ? `${movedIndexes} with a damaged page, voided; ` : ''}${usedBy('index-missing')})`,
    );
  const indexDamaged = ofKind('index-damaged').length;
  if (indexDamaged)
    parts.push(`${plural(indexDamaged, 'disk index', 'disk indexes')} damaged (${usedBy('index-damaged')})`);
  const packsDamaged = new Set(ofKind('pack-damaged').map((g) => g.first.pack)).size;
  if (packsDamaged) parts.push(`${plural(packsDamaged, 'pack')} damaged${r.voids.length ? ' (voided)' : ''}`);
  const packsMissing = ofKind('pack-missing').length;
  if (packsMissing) parts.push(`${plural(packsMissing, 'pack')} missing`);
  const indexObjects = ofKind('index-object-damaged').length;
  if (indexObjects)
    parts.push(
      `${plural(indexObjects, 'chunk index problem')}${r.rebuiltIndex ? ' (index rebuilt from the pack trailers)' : ''}`,
    );
  const manifests = ofKind('snapshot-damaged').length;
  const movedManifests = r.repairedSnapshots.length;
  if (manifests)
    parts.push(
      `${plural(manifests, 'snapshot manifest')} damaged${movedManifests ? ` (${movedManifests} moved to quarantine/)` : ''}`,
    );

  const hints: string[] = [];
  const toRepair =
    !r.repair &&
    (corrupt > 0 || indexDamaged > 0 || packsDamaged > 0 || indexObjects > 0 || manifests > movedManifests);
  if (toRepair)
    hints.push(
      "run 'vmvault check --read-data --repair' to rebuild the chunk index, void the damaged records and move damaged manifests to quarantine/",
    );
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
    packsDamaged: r.packsDamaged,
    voids: r.voids.length,
    indexRebuilt: r.rebuiltIndex !== undefined,
    indexesRepaired: movedIndexes,
    snapshotsRepaired: movedManifests,
    snapshotsDamaged: r.snapshotsDamaged,
  });
}

/** `0ab13ffa` for a 64-hex id; anything else printable and short. */
function short(id: string | undefined): string {
  return id === undefined ? '?' : /^[0-9a-f]{64}$/.test(id) ? shortId(id) : printable(id, 16);
}

/** A quarantine key with its 64-hex id shortened: `quarantine/snapshot-476b7416…-20261201T201500Z`. */
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
      ? `; was ${was}${p.reason ? `: ${printable(p.reason, 160)}` : ''}; voided by ${shortKey(p.quarantineKey)}`
      : why;
  switch (p.kind) {
    case 'chunk-missing':
      return `chunk ${short(p.chunkId)} is missing: ${place(p)}${moved('corrupt')}`;
    case 'chunk-corrupt':
      return `chunk ${short(p.chunkId)} is corrupt: ${place(p)}${why}`;
    case 'index-missing':
      return `disk index ${short(p.index)} is missing: ${place(p)}${moved('damaged')}`;
    case 'index-damaged':
      return `disk index ${short(p.index)} is damaged: ${place(p)}${why}`;
    case 'pack-damaged':
      return `pack ${printable(p.pack ?? '?', 60)} is damaged${p.offset !== undefined ? ` (record at ${p.offset}${p.chunkId ? `, id ${short(p.chunkId)}` : ''})` : ''}${why}`;
    case 'pack-missing':
      return `pack ${printable(p.pack ?? '?', 60)} is missing${why}`;
    case 'index-object-damaged':
      return `chunk index ${printable(p.index ?? '?', 60)} is damaged${why}`;
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

/** `20261201T201500Z`: the UTC time in quarantine keys (sorts by time, no ':' for file systems). */
export function compactUtc(d: Date): string {
  return d
    .toISOString()
    .replace(/\.\d+Z$/, 'Z')
    .replace(/[-:]/g, '');
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
