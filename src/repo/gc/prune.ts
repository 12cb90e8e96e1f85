import { mapLimit, throwIfAborted, VmvaultError } from '../../util/index.js';
import { BlobFormatError } from '../blob.js';
import { packKey, type IndexEntry } from '../chunk-index/index.js';
import { treePages, LEAF_PAGE_KIND, ZERO_ROOT } from '../disk-tree.js';
import { isNotFound, RepoDamagedError } from '../errors.js';
import { Keys } from '../format.js';
import {
  MAX_PACK_BYTES,
  PACK_FOOTER_BYTES,
  PackWriter,
  TRAILER_ENTRY_BYTES,
  parsePackHeader,
  parsePackKey,
} from '../pack.js';
import { MAX_PAGE_BYTES } from '../pack-store.js';
import type { Repository } from '../repository.js';
import type { ListedSession } from '../session.js';
import type { Snapshot } from '../snapshot.js';
import { PACK_HEADER_BYTES, TRAILER_OVERHEAD } from '../codec.js';
import { IdSet } from './id-set.js';
import { maintainObjectLock, type ObjectLockReport } from './object-lock.js';
import { releaseLock, takeLock } from './lock.js';
import {
  MAX_CONDEMNED_PACKS,
  pendingGenerations,
  readGenerations,
  writeStep,
  type CondemnedStep,
  type Generation,
} from './steps.js';

/**
 * `prune` (docs/gc.md): mark what the snapshots reach, condemn the packs nothing needs (after
 * copying the live records of mostly-dead packs into new ones), and once every session that
 * could have missed the condemnation is gone, delete them. Never blocks a writer; holds the
 * maintenance lock (one prune at a time). Safe to kill anywhere and to run again.
 */
export interface PruneOptions {
  dryRun?: boolean;
  /** Repack a pack whose unused share exceeds this (percent, default 10). */
  maxUnusedPercent?: number;
  /**
   * Minimum time from condemnation to deletion, and the age a pack must have at the mark before
   * it may be condemned (ms; default 1 h).
   */
  graceMs?: number;
  /** A session whose heartbeat is older than this counts as gone (default: session TTL + 5 min). */
  expiredAfterMs?: number;
  signal?: AbortSignal;
  /** Progress: phase name, units done, units in all (bytes or objects). */
  progress?: (phase: PrunePhase, done: number, total: number) => void;
  /** Test hook: called as each phase begins (a test kills the process here). */
  onPhase?: (phase: PrunePhase) => void | Promise<void>;
  /** Storage calls in flight for deletions and pack reads (default 8). */
  concurrency?: number;
}

export type PrunePhase = 'mark' | 'repack' | 'condemn' | 'wait' | 'remark' | 'reindex' | 'delete' | 'done';

export interface PruneResult {
  dryRun: boolean;
  /** The generation this run condemned (undefined when it had nothing to condemn). */
  condemned?: {
    generation: number;
    packs: number;
    bytes: number;
    repackedPacks: number;
    repackedRecords: number;
    repackedBytes: number;
    newPacks: number;
  };
  /** Generations this run finished (deleted their packs). */
  deleted: Array<{
    generation: number;
    packs: number;
    bytes: number;
    freedBytes: number;
    uncondemned: number;
  }>;
  /** A generation whose deletion must wait (sessions alive, grace not over), and why. */
  waiting?: { generation: number; reasons: string[]; sessions: string[]; notBeforeMs?: number };
  mark?: {
    snapshots: number;
    liveIds: number;
    pagesRead: number;
    packs: number;
    packBytes: number;
    liveBytes: number;
    deadPacks: number;
    orphanPacks: number;
    repackCandidates: number;
    keptDamaged: number;
    idSetBytes: number;
    seconds: number;
  };
  /** Bytes freed by the deletions of this run, net of the packs their repacks wrote. */
  freedBytes: number;
  /** Index objects this run merged when it deleted nothing (deletions write a base anyway). */
  compacted?: { kind: 'merge' | 'base'; objects: number; entries: number };
  /** Object Lock upkeep (a locked S3 repository only): retention extended, versions purged. */
  objectLock?: ObjectLockReport;
  warnings: string[];
}

const HOUR = 3600_000;
const MAX_SKEW_MS = 5 * 60_000;
const DEFAULT_GRACE_MS = HOUR;

interface PackStat {
  key: string;
  sizeBytes: number;
  modifiedMs: number;
  liveBytes: number;
  liveRecords: number;
  records: number;
}

/** Server time (the storage's clock, or this host's for local storage). */
async function serverNow(repo: Repository): Promise<number> {
  return (await repo.backend.serverTimeMs?.()) ?? Date.now();
}

/**
 * Adds to `live` every chunk and page id a snapshot reaches. Pages already in `pages` (read for
 * an earlier snapshot) are not read again: one read per distinct page in the whole mark.
 */
async function markSnapshot(repo: Repository, s: Snapshot, live: IdSet, pages: IdSet): Promise<number> {
  let read = 0;
  for (const f of s.files) for (const id of f.chunks) if (!/^0+$/.test(id)) live.addHex(id);
  for (const d of s.disks) {
    if (d.root === ZERO_ROOT) continue;
    if (d.chunkSizeBytes !== repo.chunkSizeBytes)
      throw new RepoDamagedError(
        `snapshot ${s.id.slice(0, 8)} says its disk ${d.target} has ${d.chunkSizeBytes}-byte chunks, the repository ${repo.chunkSizeBytes}`,
        "run 'vmvault check' to see the damage",
      );
    if (pages.hasHex(d.root)) continue; // the same tree as an earlier snapshot's (an unchanged disk)
    const leaves: string[] = [];
    for await (const p of treePages(
      d.root,
      d.sizeBytes,
      d.chunkSizeBytes,
      repo.config.pageSlots,
      repo.chunks.pages,
    )) {
      live.addHex(p.id);
      if (p.kind === LEAF_PAGE_KIND && pages.addHex(p.id)) leaves.push(p.id);
      else if (p.kind !== LEAF_PAGE_KIND) pages.addHex(p.id);
    }
    pages.addHex(d.root);
    await mapLimit(leaves, 8, async (id) => {
      const plain = await repo.chunks.pages.get(LEAF_PAGE_KIND, Buffer.from(id, 'hex'));
      read++;
      if (
        plain.length < 16 ||
        plain.readUInt32BE(0) !== 0x564d564c ||
        plain[4] !== 2 ||
        (plain.length - 16) % 32 !== 0
      )
        throw new RepoDamagedError(
          `disk index page ${id.slice(0, 12)} is not a leaf page`,
          "run 'vmvault check'",
        );
      const n = plain.readUInt32BE(12);
      if (16 + 32 * n !== plain.length)
        throw new RepoDamagedError(
          `disk index page ${id.slice(0, 12)} has a wrong entry count`,
          "run 'vmvault check'",
        );
      for (let i = 0; i < n; i++) {
        const at = 16 + 32 * i;
        // Zero markers: 32 zero bytes (first 8 zero and the rest zero; a real id has 8 zero
        // leading bytes with probability 2^-64, and would only be kept as a false positive).
        if (plain[at] === 0 && plain.readUInt32BE(at) === 0 && isZero(plain, at, 32)) continue;
        live.add(plain, at);
      }
    });
  }
  return read;
}

/** The share of a pack no live record uses (its header, footer and the live records' trailer entries count as used). */
function unusedShare(p: PackStat): number {
  const used = p.liveBytes + PACK_OVERHEAD + TRAILER_ENTRY_BYTES * p.liveRecords;
  return Math.max(0, p.sizeBytes - used) / p.sizeBytes;
}
/** Header, footer, the trailer's seal and its 8-byte head. */
const PACK_OVERHEAD = PACK_HEADER_BYTES + PACK_FOOTER_BYTES + TRAILER_OVERHEAD + 8;

function isZero(b: Buffer, at: number, n: number): boolean {
  for (let i = at; i < at + n; i++) if (b[i] !== 0) return false;
  return true;
}

/** Every pack object (data/ and meta/), by key. */
async function listPacks(repo: Repository, nowMs: number): Promise<Map<string, PackStat>> {
  const out = new Map<string, PackStat>();
  for (const prefix of [Keys.dataPrefix, Keys.metaPrefix])
    for await (const o of repo.backend.list(prefix)) {
      if (parsePackKey(o.key) === undefined) continue;
      out.set(o.key, {
        key: o.key,
        sizeBytes: o.sizeBytes,
        modifiedMs: o.modifiedMs ?? nowMs,
        liveBytes: 0,
        liveRecords: 0,
        records: 0,
      });
    }
  return out;
}

function liveSessions(
  sessions: readonly ListedSession[],
  own: string,
  expiredAfterMs: number,
): ListedSession[] {
  return sessions.filter((s) => s.id !== own && !isGone(s, expiredAfterMs));
}

/** A session counts as gone when its heartbeat is older than the expiry, or its host says its process is gone. */
function isGone(s: ListedSession, expiredAfterMs: number): boolean {
  return s.ageMs > expiredAfterMs || s.processGone === true;
}

export async function prune(repo: Repository, opts: PruneOptions = {}): Promise<PruneResult> {
  const dryRun = opts.dryRun ?? false;
  const own = repo.session?.id.toString('hex') ?? '';
  if (!dryRun && !repo.session) throw new Error('prune needs a session (open the repository for writing)');
  const result: PruneResult = { dryRun, deleted: [], freedBytes: 0, warnings: [] };
  // The collector sees everything, condemned packs included (a writer's view hides them).
  repo.index.showAllPacks();
  // Times are the storage's; a host whose clock is far off would misjudge this host's own
  // session ages and pids (docs/gc.md): refuse rather than guess.
  const server = await repo.backend.serverTimeMs?.();
  if (server !== undefined && Math.abs(server - Date.now()) > MAX_SKEW_MS)
    throw new VmvaultError(
      'CLOCK_SKEW',
      `this host's clock is ${Math.round((Date.now() - server) / 1000)} s off the storage's (${repo.backend.location}), more than prune allows (${MAX_SKEW_MS / 60_000} min)`,
      { hint: 'set the clock right (NTP, chrony) and run prune again' },
    );
  if (!dryRun) await takeLock(repo.backend, repo.codec, own, 'prune', () => repo.listSessions());
  try {
    await collect(repo, opts, result);
    // Object Lock upkeep runs whatever the collection did (also while a generation waits).
    const lock = await maintainObjectLock(repo, {
      nowMs: await serverNow(repo),
      dryRun,
      concurrency: opts.concurrency ?? 8,
      warnings: result.warnings,
    });
    if (lock) result.objectLock = lock;
    return result;
  } finally {
    if (!dryRun) await releaseLock(repo.backend, repo.codec, own);
  }
}

/** The collection proper: finish pending generations, then mark, condemn and finish a new one. */
async function collect(repo: Repository, opts: PruneOptions, result: PruneResult): Promise<void> {
  const dryRun = result.dryRun;
  const { generations, damaged } = await readGenerations(repo.backend, repo.codec);
  for (const d of damaged) result.warnings.push(`GC step ${d.key} is damaged (ignored): ${d.reason}`);
  if (!dryRun) await dropFinished(repo, generations);
  const pending = pendingGenerations(generations);
  for (const g of pending) {
    if (dryRun) {
      result.waiting = { generation: g.generation, reasons: ['dry run'], sessions: [] };
      return;
    }
    const done = await finishGeneration(repo, g, opts, result);
    if (!done) return;
  }
  const next = 1 + generations.reduce((m, g) => Math.max(m, g.generation), 0);
  const condemned = await markAndCondemn(repo, next, opts, result);
  if (dryRun) return;
  if (condemned) await finishGeneration(repo, { generation: next, condemned, keys: [] }, opts, result);
  // Nothing deleted (so no base written): merge the deltas backups left when they are many
  // (ChunkIndex.compact's own policy: > 32 of them, or a new base past 1/8 of the old).
  if (result.deleted.length === 0 && !result.waiting) {
    const c = await repo.index.compact({ sessionId: repo.chunks.sessionId });
    if (c) result.compacted = { kind: c.kind, objects: c.merged.length, entries: c.entries };
  }
}

/** Removes the step objects of finished generations but the newest finished one (kept as history). */
async function dropFinished(repo: Repository, gens: readonly Generation[]): Promise<void> {
  const finished = gens.filter((g) => g.deleted);
  for (const g of finished.slice(0, -1))
    for (const k of g.keys) await repo.backend.delete(k).catch(() => undefined);
}

async function markAndCondemn(
  repo: Repository,
  generation: number,
  opts: PruneOptions,
  result: PruneResult,
): Promise<CondemnedStep | undefined> {
  const t0 = performance.now();
  const graceMs = opts.graceMs ?? DEFAULT_GRACE_MS;
  const maxUnused = (opts.maxUnusedPercent ?? 10) / 100;
  const signal = opts.signal;
  await opts.onPhase?.('mark');
  const markedMs = await serverNow(repo);
  const expiredAfterMs = opts.expiredAfterMs ?? defaultExpiry();
  const own = repo.session?.id.toString('hex') ?? '';
  const sessionsAtMark = liveSessions(await repo.listSessions(), own, expiredAfterMs);
  const { snapshots, damaged } = await repo.scanSnapshots();
  if (damaged.length > 0)
    throw new RepoDamagedError(
      `${damaged.length} snapshot manifest${damaged.length === 1 ? ' is' : 's are'} damaged, so prune cannot tell what ${damaged.length === 1 ? 'it needs' : 'they need'}`,
      "run 'vmvault check --read-data --repair' first (it moves damaged manifests to quarantine/), then prune",
    );
  // The index as of now: every manifest listed above committed its entries before it was written.
  await repo.index.reload();

  const live = new IdSet(64 * 1024);
  const pagesSeen = new IdSet(1024);
  let pagesRead = 0;
  let done = 0;
  for (const s of snapshots) {
    throwIfAborted(signal);
    pagesRead += await markSnapshot(repo, s, live, pagesSeen);
    opts.progress?.('mark', ++done, snapshots.length);
  }

  // Per pack: live bytes (the first entry of each live id; later copies are dead).
  const packs = await listPacks(repo, markedMs);
  const found = new IdSet(live.size);
  let prev: Buffer | undefined;
  let entriesMissingPack = 0;
  for await (const e of repo.index.entries()) {
    throwIfAborted(signal);
    const p = packs.get(packKey(e));
    const first = !prev || !prev.equals(e.id);
    prev = e.id;
    if (!p) {
      entriesMissingPack++;
      continue;
    }
    p.records++;
    if (first && live.has(e.id)) {
      found.add(e.id);
      p.liveBytes += e.length;
      p.liveRecords++;
    }
  }
  const missing = live.size - found.size;
  if (missing > 0)
    throw new RepoDamagedError(
      `${missing} chunk${missing === 1 ? '' : 's'} or page${missing === 1 ? '' : 's'} the snapshots need ${missing === 1 ? 'is' : 'are'} not in the chunk index, so prune stops before deleting anything`,
      "run 'vmvault check --read-data --repair' (it rebuilds the index from the packs), then prune",
    );
  if (entriesMissingPack > 0)
    result.warnings.push(
      `${entriesMissingPack} index entr${entriesMissingPack === 1 ? 'y names a pack' : 'ies name packs'} that no longer exist${entriesMissingPack === 1 ? 's' : ''}; 'vmvault check' tells more`,
    );

  // What may go: packs older than the mark by the grace, not written by a session alive at it.
  const before = markedMs - graceMs;
  const liveSessionIds = new Set(sessionsAtMark.map((s) => s.id));
  const dead: PackStat[] = [];
  const orphans: PackStat[] = [];
  const repack: PackStat[] = [];
  let packBytes = 0;
  let liveBytes = 0;
  for (const p of packs.values()) {
    packBytes += p.sizeBytes;
    liveBytes += p.liveBytes;
    if (p.modifiedMs >= before) continue;
    if (p.records === 0) orphans.push(p);
    else if (p.liveRecords === 0) dead.push(p);
    else if (unusedShare(p) > maxUnused) repack.push(p);
  }
  // An orphan (in no index object) of a session still alive will be indexed by it: spare it.
  const orphansToGo: PackStat[] = [];
  await mapLimit(orphans, opts.concurrency ?? 8, async (p) => {
    try {
      const h = Buffer.alloc(PACK_HEADER_BYTES);
      await repo.backend.getRangeInto(p.key, 0, h);
      const header = parsePackHeader(h, repo.codec);
      if (!liveSessionIds.has(header.sessionId.toString('hex'))) orphansToGo.push(p);
    } catch (err) {
      if (isNotFound(err)) return;
      // A pack whose header is damaged and that no index names holds nothing anyone can use.
      if (err instanceof BlobFormatError) orphansToGo.push(p);
      else throw err;
    }
  });
  result.mark = {
    snapshots: snapshots.length,
    liveIds: live.size,
    pagesRead,
    packs: packs.size,
    packBytes,
    liveBytes,
    deadPacks: dead.length,
    orphanPacks: orphansToGo.length,
    repackCandidates: repack.length,
    keptDamaged: 0,
    idSetBytes: live.bytes + pagesSeen.bytes + found.bytes,
    seconds: 0,
  };
  const condemnedPacks = [...dead, ...orphansToGo].sort((a, b) => (a.key < b.key ? -1 : 1));
  let repackedRecords = 0;
  let repackedBytes = 0;
  let newPacks = 0;
  let writtenBytes = 0;
  let repacked: PackStat[] = [];
  if (opts.dryRun) {
    result.mark.seconds = (performance.now() - t0) / 1000;
    if (condemnedPacks.length + repack.length === 0) return undefined;
    result.condemned = {
      generation,
      packs: condemnedPacks.length + repack.length,
      bytes: [...condemnedPacks, ...repack].reduce((s, p) => s + p.sizeBytes, 0),
      repackedPacks: repack.length,
      repackedRecords: repack.reduce((s, p) => s + p.liveRecords, 0),
      repackedBytes: repack.reduce((s, p) => s + p.liveBytes, 0),
      newPacks: 0,
    };
    result.mark.seconds = (performance.now() - t0) / 1000;
    return undefined;
  }
  result.mark.seconds = (performance.now() - t0) / 1000;
  if (repack.length > 0) {
    await opts.onPhase?.('repack');
    const r = await repackPacks(repo, repack, live, opts, result);
    repacked = r.repacked;
    repackedRecords = r.records;
    repackedBytes = r.bytes;
    newPacks = r.newPacks;
    writtenBytes = r.writtenBytes;
    result.mark.keptDamaged = repack.length - repacked.length;
  }
  const all = [...condemnedPacks, ...repacked].slice(0, MAX_CONDEMNED_PACKS);
  if (all.length === 0) return undefined;

  await opts.onPhase?.('condemn');
  const step: CondemnedStep = {
    version: 1,
    generation,
    markedMs,
    condemnedMs: await serverNow(repo),
    snapshots: snapshots.map((s) => s.id),
    packs: all.map((p) => p.key),
    repacked: repacked.length,
    writtenBytes,
  };
  await writeStep(repo.backend, repo.codec, '2-condemned', step);
  // Every session visible now is one that may have missed the condemnation: wait for them.
  await writeWait(repo, generation, expiredAfterMs);
  result.condemned = {
    generation,
    packs: all.length,
    bytes: all.reduce((s, p) => s + p.sizeBytes, 0),
    repackedPacks: repacked.length,
    repackedRecords,
    repackedBytes,
    newPacks,
  };
  return step;
}

async function writeWait(repo: Repository, generation: number, expiredAfterMs: number): Promise<string[]> {
  const own = repo.session?.id.toString('hex') ?? '';
  const sessions = liveSessions(await repo.listSessions(), own, expiredAfterMs).map((s) => s.id);
  await writeStep(repo.backend, repo.codec, '2-wait', { version: 1, generation, sessions });
  return sessions;
}

/**
 * Copies the live records of `packs` verbatim into new packs (each verified first), writes their
 * index entries (one delta per 64 new packs and at the end, durable before the condemnation that
 * follows). A pack with a damaged live record is not repacked (nor condemned): its sound records
 * stay where they are, and the warning sends the user to `check --repair`.
 */
async function repackPacks(
  repo: Repository,
  packs: PackStat[],
  live: IdSet,
  opts: PruneOptions,
  result: PruneResult,
): Promise<{ repacked: PackStat[]; records: number; bytes: number; newPacks: number; writtenBytes: number }> {
  const wanted = new Map(packs.map((p) => [p.key, [] as IndexEntry[]]));
  let prev: Buffer | undefined;
  for await (const e of repo.index.entries()) {
    const first = !prev || !prev.equals(e.id);
    prev = e.id;
    if (!first || !live.has(e.id)) continue;
    wanted.get(packKey(e))?.push(e);
  }
  const sessionId = repo.chunks.sessionId;
  const writers: { data?: PackWriter; meta?: PackWriter } = {};
  const written: string[] = [];
  let pendingEntries: IndexEntry[] = [];
  let records = 0;
  let bytes = 0;
  let writtenBytes = 0;
  let sinceDelta = 0;
  // Records are copied into one staging buffer per pack kind (reused once its pack is written),
  // and packs are read into one reused buffer: no allocation per record or per pack.
  const stageBytes = repo.config.packSizeBytes + repo.chunkSizeBytes + 64 * 1024;
  const stages: Record<'data' | 'meta', { buf?: Buffer; used: number }> = {
    data: { used: 0 },
    meta: { used: 0 },
  };
  let readBuf = Buffer.alloc(0);
  const seal = async (kind: 'data' | 'meta'): Promise<void> => {
    const w = writers[kind];
    if (!w || w.count === 0) return;
    writers[kind] = undefined;
    const sealed = w.finish();
    await repo.backend.putIfAbsent(sealed.key, sealed.parts, { durable: 'at-barrier' });
    stages[kind].used = 0;
    written.push(sealed.key);
    writtenBytes += sealed.sizeBytes;
    pendingEntries.push(...sealed.entries);
    if (++sinceDelta >= 64) await checkpoint();
  };
  const checkpoint = async (): Promise<void> => {
    sinceDelta = 0;
    if (pendingEntries.length === 0) return;
    await repo.backend.barrier(written);
    repo.index.add(pendingEntries);
    pendingEntries = [];
    await repo.index.writeDelta(sessionId);
  };
  const repacked: PackStat[] = [];
  let done = 0;
  const total = packs.reduce((s, p) => s + p.liveBytes, 0);
  // Data packs go to the pack store's worker threads, one pack per worker at a time (each reads,
  // checks and copies in parallel); meta packs (pages, few) and a store without workers below.
  const workers = repo.chunks.workerCount;
  let workerPacks = 0;
  const onWorkers = workers > 0 ? packs.filter((p) => p.key.startsWith(Keys.dataPrefix)) : [];
  const here = workers > 0 ? packs.filter((p) => !p.key.startsWith(Keys.dataPrefix)) : packs;
  if (onWorkers.length > 0) {
    const before = repo.chunks.packBytesWritten;
    const packsBefore = repo.chunks.packsWritten;
    let next = 0;
    await Promise.all(
      Array.from({ length: workers }, async (_, slot) => {
        for (let p = onWorkers[next++]; p; p = onWorkers[next++]) {
          throwIfAborted(opts.signal);
          const entries = (wanted.get(p.key) ?? []).sort((a, b) => a.offset - b.offset);
          if (p.sizeBytes > MAX_PACK_BYTES) {
            result.warnings.push(`pack ${p.key} was not repacked: ${p.sizeBytes} bytes, more than any pack`);
            continue;
          }
          let r: { damaged?: string };
          try {
            r = await repo.chunks.copyRecords(slot, p.key, p.sizeBytes, entries);
          } catch (err) {
            if (isNotFound(err)) continue;
            throw err;
          }
          if (r.damaged !== undefined) {
            result.warnings.push(
              `pack ${p.key} was not repacked: ${r.damaged}; 'vmvault check --read-data --repair' voids it, and the next backup stores that data again`,
            );
            continue;
          }
          repacked.push(p);
          records += entries.length;
          for (const e of entries) bytes += e.length;
          done += p.liveBytes;
          opts.progress?.('repack', done, total);
        }
      }),
    );
    // Seal the workers' open packs, barrier, and their entries into a delta: durable and indexed
    // before anything is condemned (a worker lost meanwhile fails here, before condemning).
    await repo.chunks.flush();
    writtenBytes += repo.chunks.packBytesWritten - before;
    workerPacks = repo.chunks.packsWritten - packsBefore;
  }
  for (const p of here) {
    throwIfAborted(opts.signal);
    const entries = (wanted.get(p.key) ?? []).sort((a, b) => a.offset - b.offset);
    if (p.sizeBytes > MAX_PACK_BYTES) {
      result.warnings.push(`pack ${p.key} was not repacked: ${p.sizeBytes} bytes, more than any pack`);
      continue;
    }
    if (readBuf.length < p.sizeBytes)
      readBuf = Buffer.allocUnsafe(Math.min(MAX_PACK_BYTES, Math.max(p.sizeBytes, 2 * readBuf.length)));
    const bytesOfPack = readBuf.subarray(0, p.sizeBytes);
    try {
      await repo.backend.getRangeInto(p.key, 0, bytesOfPack);
    } catch (err) {
      if (isNotFound(err)) continue;
      throw err;
    }
    const copies: Array<{ record: Buffer; e: IndexEntry }> = [];
    let bad = '';
    for (const e of entries) {
      const record = bytesOfPack.subarray(e.offset, e.offset + e.length);
      try {
        if (record.length !== e.length) throw new BlobFormatError('the pack is shorter than its index says');
        // The tag (GCM when encrypted) over the record and its AAD (kind, codec, length, id):
        // the bytes are as sealed. Decompressing and re-hashing would prove no more about a copy
        // made verbatim, which every reader verifies in full anyway.
        repo.codec.checkRecordSeal(
          { kind: e.kind, codec: e.codec, plaintextBytes: e.plaintextBytes, id: e.id },
          record,
          e.kind <= 2 ? repo.chunkSizeBytes : MAX_PAGE_BYTES,
        );
        copies.push({ record, e });
      } catch (err) {
        if (!(err instanceof BlobFormatError)) throw err;
        bad = `record ${e.id.toString('hex').slice(0, 12)} at ${e.offset} is damaged (${err.message})`;
        break;
      }
    }
    if (bad) {
      result.warnings.push(
        `pack ${p.key} was not repacked: ${bad}; 'vmvault check --read-data --repair' voids it, and the next backup stores that data again`,
      );
      continue;
    }
    for (const { record, e } of copies) {
      const kind = e.kind <= 2 ? 'data' : 'meta';
      const stage = stages[kind];
      if (stage.used + record.length > stageBytes) await seal(kind);
      stage.buf ??= Buffer.allocUnsafe(stageBytes);
      const copy = stage.buf.subarray(stage.used, stage.used + record.length);
      record.copy(copy);
      stage.used += record.length;
      const w = (writers[kind] ??= new PackWriter(repo.codec, kind, sessionId));
      w.add(copy, { kind: e.kind, codec: e.codec, plaintextBytes: e.plaintextBytes, id: e.id });
      records++;
      bytes += e.length;
      if (w.sizeBytes >= repo.config.packSizeBytes) await seal(kind);
    }
    repacked.push(p);
    done += p.liveBytes;
    opts.progress?.('repack', done, total);
  }
  await seal('data');
  await seal('meta');
  await checkpoint();
  return { repacked, records, bytes, newPacks: written.length + workerPacks, writtenBytes };
}

/**
 * The delete phase of generation `g`: once every session that could have missed its
 * condemnation is gone and the grace is over, marks again from the snapshots committed since
 * (and checks the pins of the sessions alive now), keeps the condemned packs those need, drops
 * the others' entries from the chunk index (a new base), deletes them and records it. False
 * when it must wait (then `result.waiting` says why).
 */
async function finishGeneration(
  repo: Repository,
  g: Generation & { condemned: CondemnedStep },
  opts: PruneOptions,
  result: PruneResult,
): Promise<boolean> {
  const graceMs = opts.graceMs ?? DEFAULT_GRACE_MS;
  const expiredAfterMs = opts.expiredAfterMs ?? defaultExpiry();
  const own = repo.session?.id.toString('hex') ?? '';
  await opts.onPhase?.('wait');
  const waitFor = g.wait?.sessions ?? (await writeWait(repo, g.generation, expiredAfterMs));
  const sessions = await repo.listSessions();
  const alive = liveSessions(sessions, own, expiredAfterMs);
  const blocking = alive.filter((s) => waitFor.includes(s.id));
  const reasons: string[] = [];
  for (const s of blocking)
    reasons.push(
      `session ${s.id.slice(0, 8)} (${s.info?.command ?? '?'} on ${s.info?.host ?? '?'}, pid ${s.info?.pid ?? '?'}) may use condemned data until it ends`,
    );
  const now = await serverNow(repo);
  const notBeforeMs = g.condemned.condemnedMs + graceMs;
  const inGrace = graceMs > 0 && now < notBeforeMs;
  if (inGrace) reasons.push(`the grace period runs until ${new Date(notBeforeMs).toISOString()} (--grace)`);
  await opts.onPhase?.('remark');
  const { snapshots, damaged } = await repo.scanSnapshots();
  if (damaged.length > 0)
    reasons.push(
      `${damaged.length} snapshot manifest(s) are damaged: run 'vmvault check --read-data --repair'`,
    );
  const existing = new Set<string>(snapshots.map((s) => s.id));
  for (const s of alive)
    for (const pin of s.info?.pins ?? [])
      if (!existing.has(pin))
        reasons.push(
          `session ${s.id.slice(0, 8)} still reads snapshot ${pin.slice(0, 8)}, which was forgotten meanwhile`,
        );
  if (reasons.length > 0) {
    result.waiting = {
      generation: g.generation,
      reasons,
      sessions: blocking.map((s) => s.id),
      ...(inGrace ? { notBeforeMs } : {}),
    };
    return false;
  }
  // Re-mark: what snapshots committed since the mark need.
  const marked = new Set<string>(g.condemned.snapshots);
  await repo.index.reload();
  const live = new IdSet(1024);
  const pages = new IdSet(1024);
  for (const s of snapshots) if (!marked.has(s.id)) await markSnapshot(repo, s, live, pages);
  const condemned = new Set(g.condemned.packs);
  const keep = new Set<string>();
  if (live.size > 0) {
    // For each id they need: when every copy is condemned, its packs stay.
    let cur: Buffer | undefined;
    let group: string[] = [];
    let sound = false;
    const close = (): void => {
      if (cur && live.has(cur) && !sound) for (const k of group) keep.add(k);
    };
    for await (const e of repo.index.entries()) {
      if (!cur || !cur.equals(e.id)) {
        close();
        cur = e.id;
        group = [];
        sound = false;
      }
      const k = packKey(e);
      if (condemned.has(k)) group.push(k);
      else sound = true;
    }
    close();
  }
  const toDelete = [...condemned].filter((k) => !keep.has(k));
  const names = new Set(toDelete.map((k) => k.slice(-32)));

  // The index without their entries: a new base superseding every live object (compaction).
  await opts.onPhase?.('reindex');
  const drop = (b: Buffer, at: number): boolean => names.has(b.toString('hex', at + 32, at + 48));
  for (let attempt = 0; ; attempt++) {
    const r = await repo.index.compact({ force: 'base', sessionId: repo.chunks.sessionId, drop });
    if (r?.kind === 'base') break;
    if (r === undefined) {
      if (attempt >= 3) throw new Error('the chunk index changed under prune four times; run prune again');
      await repo.index.reload();
    }
  }

  await opts.onPhase?.('delete');
  // Sizes from one listing (no HEAD per pack); packs already gone (a killed run) are skipped.
  const present = await listPacks(repo, now);
  const gone = toDelete.filter((k) => present.has(k));
  let bytes = 0;
  for (const k of gone) bytes += present.get(k)!.sizeBytes;
  const deleted = gone.length;
  let n = 0;
  const deleteMany = repo.backend.deleteMany?.bind(repo.backend);
  if (deleteMany) {
    const batches: string[][] = [];
    for (let i = 0; i < gone.length; i += 1000) batches.push(gone.slice(i, i + 1000));
    await mapLimit(batches, 4, async (b) => {
      throwIfAborted(opts.signal);
      await deleteMany(b);
      opts.progress?.('delete', (n += b.length), gone.length);
    });
  } else
    await mapLimit(gone, opts.concurrency ?? 8, async (key) => {
      throwIfAborted(opts.signal);
      await repo.backend.delete(key);
      opts.progress?.('delete', ++n, gone.length);
    });
  await writeStep(repo.backend, repo.codec, '3-deleted', {
    version: 1,
    generation: g.generation,
    deletedMs: await serverNow(repo),
    deleted,
    deletedBytes: bytes,
    uncondemned: [...keep],
  });
  await opts.onPhase?.('done');
  // Net: the new packs its repack wrote are what the deleted ones' live records became.
  const freed = Math.max(0, bytes - g.condemned.writtenBytes);
  result.deleted.push({
    generation: g.generation,
    packs: deleted,
    bytes,
    freedBytes: freed,
    uncondemned: keep.size,
  });
  result.freedBytes += freed;
  return true;
}

/** TTL + 5 minutes (docs/gc.md), or the test override's TTL. */
function defaultExpiry(): number {
  return 35 * 60_000;
}
