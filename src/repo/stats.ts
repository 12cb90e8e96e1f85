import { ExitCode, VmvaultError } from '../util/index.js';
import type { Repository, SnapshotListing } from './repository.js';
import { RepoFormatError } from './errors.js';
import { Keys } from './format.js';
import { shortId, type Snapshot } from './snapshot.js';
import { byTime } from './snapshot-ref.js';

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
  /** Bytes of every object in the repository (chunks, indexes, manifests, config), sessions left out. */
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
  /** Also figures per VM and after each snapshot (`RepoStatsDetail`, for `vmvault ui`). */
  detail?: boolean;
  /** A listing the caller made (`scanSnapshots`), instead of a second one. */
  listing?: SnapshotListing;
}

/** A VM's share of the figures: its snapshots alone, as if the repository held nothing else. */
export interface VmStats {
  name: string;
  snapshots: number;
  virtualBytes: number;
  logicalBytes: number;
  /** Plaintext bytes of the distinct chunks this VM's snapshots reference (some may be shared). */
  uniqueBytes: number;
  chunksReferenced: number;
  /** logical / unique of this VM's snapshots. */
  dedupRatio: number;
  /** Plaintext of the chunks its backups stored new ÷ the bytes they wrote for them (manifest stats). */
  compressionRatio: number;
}

/** The repository's figures right after one snapshot (in time order): its growth. */
export interface GrowthPoint {
  id: string;
  time: string;
  vm: string;
  /** Logical and unique data of this snapshot and every earlier one. */
  logicalBytes: number;
  uniqueBytes: number;
  /** Bytes the backups up to this one wrote for new chunks (the manifests' bytesStored). */
  storedBytes: number;
}

export interface RepoStatsDetail extends RepoStats {
  vmStats: VmStats[];
  growth: GrowthPoint[];
}

/**
 * Storage statistics computed from the indexes (chunk lengths) and a listing (stored sizes).
 * Damaged manifests (reported to the repository's `onDamagedSnapshot`) and damaged indexes are
 * left out and counted, never fatal.
 */
export async function repoStats(
  repo: Repository,
  opts: StatsOptions & { detail: true },
): Promise<RepoStatsDetail>;
export async function repoStats(repo: Repository, opts?: StatsOptions): Promise<RepoStats>;
export async function repoStats(
  repo: Repository,
  opts: StatsOptions = {},
): Promise<RepoStats | RepoStatsDetail> {
  const { snapshots: scanned, damaged } = opts.listing ?? (await repo.scanSnapshots());
  repo.reportDamagedSnapshots(damaged);
  // In time order, so that the growth after each snapshot can be taken on the way (the totals
  // do not depend on the order).
  const snaps = [...scanned].sort(byTime);
  const detail = opts.detail === true ? new Detail() : undefined;
  const badIndexes = new Set<string>();
  const chunkLen = new Map<string, number>();
  let logicalBytes = 0;
  let virtualBytes = 0;
  const seenIndexes = new Map<string, number>();
  let running = 0;
  const setLen = (id: string, len: number): void => {
    running += len - (chunkLen.get(id) ?? 0);
    chunkLen.set(id, len);
  };
  for (const s of snaps) {
    const vm = detail?.vm(s);
    for (const d of s.disks) {
      virtualBytes += d.sizeBytes;
      if (vm) {
        vm.virtualBytes += d.sizeBytes;
        vm.newBytes += d.stats.bytesNew;
        vm.storedNewBytes += d.stats.bytesStored;
        detail!.storedBytes += d.stats.bytesStored;
      }
      const cached = seenIndexes.get(d.root);
      // A VM's own chunk set needs the ids of an index another VM's snapshot read first.
      if (cached !== undefined && (!vm || vm.roots.has(d.root))) {
        logicalBytes += cached;
        if (vm) vm.logicalBytes += cached;
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
        if (cached === undefined) setLen(id, len);
        vm?.chunkLen.set(id, len);
      }
      if (vm) {
        vm.roots.add(d.root);
        vm.logicalBytes += alloc;
      }
      if (cached === undefined) seenIndexes.set(d.root, alloc);
      logicalBytes += alloc;
    }
    for (const f of s.files) {
      let left = f.sizeBytes;
      for (const id of f.chunks) {
        const len = Math.min(left, repo.chunkSizeBytes);
        left -= len;
        if (!/^0+$/.test(id)) {
          setLen(id, len);
          vm?.chunkLen.set(id, len);
        }
      }
    }
    detail?.growth.push({
      id: s.id,
      time: s.time,
      vm: s.vm.name,
      logicalBytes,
      uniqueBytes: running,
      storedBytes: detail.storedBytes,
    });
  }
  let uniqueBytes = 0;
  for (const v of chunkLen.values()) uniqueBytes += v;
  let storedBytes = 0;
  let dataStoredBytes = 0;
  let packsStored = 0;
  for await (const o of repo.backend.list('')) {
    // Sessions are the leases of running processes (the ui's own read holds one), not content:
    // counting them made two reads of the same repository differ.
    if (o.key.startsWith(Keys.sessionPrefix)) continue;
    storedBytes += o.sizeBytes;
    if (o.key.startsWith(Keys.dataPrefix)) {
      dataStoredBytes += o.sizeBytes;
      packsStored++;
    }
  }
  // Records the chunk index lists (a chunk stored twice, by concurrent writers, counts twice).
  const chunksStored = repo.index.stats().entries;
  const totals: RepoStats = {
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
  if (!detail) return totals;
  const full: RepoStatsDetail = { ...totals, vmStats: detail.vmStats(), growth: detail.growth };
  return full;
}

interface VmAcc {
  snapshots: number;
  virtualBytes: number;
  logicalBytes: number;
  newBytes: number;
  storedNewBytes: number;
  chunkLen: Map<string, number>;
  roots: Set<string>;
}

/** What `detail` adds on the way: per-VM accumulators and the growth series. */
class Detail {
  private readonly vms = new Map<string, VmAcc>();
  readonly growth: GrowthPoint[] = [];
  storedBytes = 0;

  vm(s: Snapshot): VmAcc {
    let v = this.vms.get(s.vm.name);
    if (!v) {
      v = {
        snapshots: 0,
        virtualBytes: 0,
        logicalBytes: 0,
        newBytes: 0,
        storedNewBytes: 0,
        chunkLen: new Map(),
        roots: new Set(),
      };
      this.vms.set(s.vm.name, v);
    }
    v.snapshots++;
    return v;
  }

  vmStats(): VmStats[] {
    return [...this.vms].map(([name, v]) => {
      let uniqueBytes = 0;
      for (const len of v.chunkLen.values()) uniqueBytes += len;
      return {
        name,
        snapshots: v.snapshots,
        virtualBytes: v.virtualBytes,
        logicalBytes: v.logicalBytes,
        uniqueBytes,
        chunksReferenced: v.chunkLen.size,
        dedupRatio: uniqueBytes ? v.logicalBytes / uniqueBytes : 1,
        compressionRatio: v.storedNewBytes ? v.newBytes / v.storedNewBytes : 1,
      };
    });
  }
}
