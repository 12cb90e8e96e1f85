import { ExitCode, VmvaultError } from '../util/index.js';
import type { Repository } from './repository.js';
import { RepoFormatError } from './errors.js';
import { Keys } from './format.js';
import { shortId } from './snapshot.js';

export interface RepoStats {
  /** Sound snapshots (the figures are theirs). */
  snapshots: number;
  /** Manifests that could not be used: left out of every figure. */
  snapshotsDamaged: number;
  /** Disk indexes that could not be read: their disks' data is left out of logical and unique data. */
  indexesDamaged: number;
  vms: number;
  /** Sum over snapshots of their disks' virtual sizes. */
  virtualBytes: number;
  /** Sum over snapshots of their disks' non-zero data: what a naive copy of every backup would hold. */
  logicalBytes: number;
  /** Plaintext bytes of the distinct chunks the snapshots reference. */
  uniqueBytes: number;
  chunksReferenced: number;
  /** Records of the chunk index (chunks and file chunks, including unreferenced ones awaiting gc). */
  chunksStored: number;
  /** Data packs (objects under data/). */
  packsStored: number;
  /** Bytes of every object in the repository (chunks, indexes, manifests, config). */
  storedBytes: number;
  dataStoredBytes: number;
  /** logical / unique. */
  dedupRatio: number;
  /** unique / stored chunk bytes. */
  compressionRatio: number;
}

export interface StatsOptions {
  /** Told about each disk index that could not be read (one line, to print as a warning). */
  onDamagedIndex?: (message: string) => void;
}

/**
 * Storage statistics computed from the indexes (chunk lengths) and a listing (stored sizes).
 * Damaged manifests (reported to the repository's `onDamagedSnapshot`) and damaged indexes are
 * left out and counted, never fatal.
 */
export async function repoStats(repo: Repository, opts: StatsOptions = {}): Promise<RepoStats> {
  const { snapshots: snaps, damaged } = await repo.scanSnapshots();
  repo.reportDamagedSnapshots(damaged);
  const badIndexes = new Set<string>();
  const chunkLen = new Map<string, number>();
  let logicalBytes = 0;
  let virtualBytes = 0;
  const seenIndexes = new Map<string, number>();
  for (const s of snaps) {
    for (const d of s.disks) {
      virtualBytes += d.sizeBytes;
      const cached = seenIndexes.get(d.root);
      if (cached !== undefined) {
        logicalBytes += cached;
        continue;
      }
      if (badIndexes.has(d.root)) continue;
      let idx;
      try {
        idx = await repo.getIndex(d);
      } catch (err) {
        if (!(
          err instanceof RepoFormatError ||
          (err instanceof VmvaultError && err.exitCode === ExitCode.INTEGRITY)
        ))
          throw err;
        badIndexes.add(d.root);
        opts.onDamagedIndex?.(
          `disk index ${shortId(d.root)} (snapshot ${shortId(s.id)}, disk ${d.target}) cannot be read, its data is left out: ${err.message}; run 'vmvault check'`,
        );
        continue;
      }
      let alloc = 0;
      for (let slot = 0; slot < idx.slotCount; slot++) {
        const id = idx.get(slot);
        if (!id) continue;
        const len = idx.slotLength(slot);
        alloc += len;
        chunkLen.set(id, len);
      }
      seenIndexes.set(d.root, alloc);
      logicalBytes += alloc;
    }
    for (const f of s.files) {
      let left = f.sizeBytes;
      for (const id of f.chunks) {
        const len = Math.min(left, repo.chunkSizeBytes);
        left -= len;
        if (!/^0+$/.test(id)) chunkLen.set(id, len);
      }
    }
  }
  let uniqueBytes = 0;
  for (const v of chunkLen.values()) uniqueBytes += v;
  let storedBytes = 0;
  let dataStoredBytes = 0;
  let packsStored = 0;
  for await (const o of repo.backend.list('')) {
    storedBytes += o.sizeBytes;
    if (o.key.startsWith(Keys.dataPrefix)) {
      dataStoredBytes += o.sizeBytes;
      packsStored++;
    }
  }
  // Records the chunk index lists (a chunk stored twice, by concurrent writers, counts twice).
  const chunksStored = repo.index.stats().entries;
  return {
    snapshots: snaps.length,
    snapshotsDamaged: damaged.length,
    indexesDamaged: badIndexes.size,
    vms: new Set(snaps.map((s) => s.vm.name)).size,
    virtualBytes,
    logicalBytes,
    uniqueBytes,
    chunksReferenced: chunkLen.size,
    chunksStored,
    packsStored,
    storedBytes,
    dataStoredBytes,
    dedupRatio: uniqueBytes ? logicalBytes / uniqueBytes : 1,
    compressionRatio: dataStoredBytes ? uniqueBytes / dataStoredBytes : 1,
  };
}
