import type { Repository } from './repository.js';
import { Keys } from './format.js';

export interface RepoStats {
  snapshots: number;
  vms: number;
  /** Sum over snapshots of their disks' virtual sizes. */
  virtualBytes: number;
  /** Sum over snapshots of their disks' non-zero data: what a naive copy of every backup would hold. */
  logicalBytes: number;
  /** Plaintext bytes of the distinct chunks the snapshots reference. */
  uniqueBytes: number;
  chunksReferenced: number;
  /** Objects under data/ (chunks, including unreferenced ones awaiting gc). */
  chunksStored: number;
  /** Bytes of every object in the repository (chunks, indexes, manifests, config). */
  storedBytes: number;
  dataStoredBytes: number;
  /** logical / unique. */
  dedupRatio: number;
  /** unique / stored chunk bytes. */
  compressionRatio: number;
}

/** Storage statistics computed from the indexes (chunk lengths) and a listing (stored sizes). */
export async function repoStats(repo: Repository): Promise<RepoStats> {
  const snaps = await repo.listSnapshots();
  const chunkLen = new Map<string, number>();
  let logicalBytes = 0;
  let virtualBytes = 0;
  const seenIndexes = new Map<string, number>();
  for (const s of snaps) {
    for (const d of s.disks) {
      virtualBytes += d.sizeBytes;
      const cached = seenIndexes.get(d.index);
      if (cached !== undefined) {
        logicalBytes += cached;
        continue;
      }
      const idx = await repo.getIndex(d.index);
      let alloc = 0;
      for (let slot = 0; slot < idx.slotCount; slot++) {
        const id = idx.get(slot);
        if (!id) continue;
        const len = idx.slotLength(slot);
        alloc += len;
        chunkLen.set(id, len);
      }
      seenIndexes.set(d.index, alloc);
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
  let chunksStored = 0;
  for await (const o of repo.backend.list('')) {
    storedBytes += o.sizeBytes;
    if (o.key.startsWith(Keys.dataPrefix)) {
      dataStoredBytes += o.sizeBytes;
      chunksStored++;
    }
  }
  return {
    snapshots: snaps.length,
    vms: new Set(snaps.map((s) => s.vm.name)).size,
    virtualBytes,
    logicalBytes,
    uniqueBytes,
    chunksReferenced: chunkLen.size,
    chunksStored,
    storedBytes,
    dataStoredBytes,
    dedupRatio: uniqueBytes ? logicalBytes / uniqueBytes : 1,
    compressionRatio: dataStoredBytes ? uniqueBytes / dataStoredBytes : 1,
  };
}
