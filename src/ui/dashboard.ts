import {
  lockIsStale,
  readCheckRecord,
  readLock,
  repoStats,
  type Backend,
  type CheckRecord,
  type GrowthPoint,
  type RepoStats,
  type Repository,
  type VmStats,
} from '../repo/index.js';
import { errorMessage } from '../util/index.js';

/** One disk of a snapshot as the page shows it. */
export interface DashboardDisk {
  target: string;
  sizeBytes: number;
  allocatedBytes: number;
  /** Plaintext of the chunks this backup stored new, and the bytes it wrote for them. */
  bytesNew: number;
  bytesStored: number;
}

export interface DashboardSnapshot {
  id: string;
  vm: string;
  time: string;
  mode: string;
  tags: string[];
  note: string | null;
  protected: boolean;
  disks: DashboardDisk[];
  virtualBytes: number;
  newBytes: number;
  storedBytes: number;
}

export interface DashboardSession {
  id: string;
  host: string | null;
  pid: number | null;
  command: string | null;
  startedAt: string | null;
  lastHeartbeat: string;
  ageMs: number;
  stale: boolean;
  damaged: string | null;
}

/** What `GET /api/dashboard` answers: everything the page shows. */
export interface Dashboard {
  version: 1;
  generatedAt: string;
  repository: { location: string; id: string; encryption: string; chunkSizeBytes: number };
  /** The figures of `vmvault stats --json` (without its `s3` request counts). */
  stats: RepoStats;
  vms: VmStats[];
  /** Oldest first. */
  snapshots: DashboardSnapshot[];
  /** The repository's figures after each snapshot, oldest first. */
  growth: GrowthPoint[];
  sessions: DashboardSession[];
  maintenanceLock: {
    session: string | null;
    host: string | null;
    pid: number | null;
    command: string | null;
    since: string | null;
    damaged: string | null;
    stale: boolean;
  } | null;
  /** The last `check`'s record (status/check), `damaged` when it cannot be read, null: none. */
  check: { record: CheckRecord; modifiedAt: string | null } | { damaged: string } | null;
  /** Warnings of this read: damaged manifests and disk indexes left out. */
  warnings: string[];
}

const MAX_WARNINGS = 100;

/**
 * Reads everything the dashboard shows from an open (read-only) repository. A session is held
 * for the read only (through `sessionVia`, a writable stack of its own, when the storage lets it
 * be written), so that a prune never waits for the ui between reads.
 */
export async function readDashboard(repo: Repository, sessionVia?: () => Backend): Promise<Dashboard> {
  const warnings: string[] = [];
  const warn = (m: string): void => {
    if (warnings.length < MAX_WARNINGS) warnings.push(m);
  };
  if (sessionVia) {
    let via: Backend | undefined;
    try {
      via = sessionVia();
      await repo.startSession('ui', undefined, via);
    } catch {
      // Read-only storage or credentials: the ui reads without a lease (as stats does).
      await via?.close().catch(() => undefined);
    }
  }
  try {
    await repo.index.reload();
    const listing = await repo.scanSnapshots();
    for (const d of listing.damaged) warn(`${d.message} (left out)`);
    const detail = await repoStats(repo, { detail: true, listing, onDamagedIndex: warn });
    const { vmStats, growth, ...stats } = detail;
    const snapshots = listing.snapshots.map((s): DashboardSnapshot => {
      const disks = s.disks.map((d) => ({
        target: d.target,
        sizeBytes: d.sizeBytes,
        allocatedBytes: d.allocatedBytes,
        bytesNew: d.stats.bytesNew,
        bytesStored: d.stats.bytesStored,
      }));
      return {
        id: s.id,
        vm: s.vm.name,
        time: s.time,
        mode: s.mode,
        tags: s.tags,
        note: s.note ?? null,
        protected: s.protected === true,
        disks,
        virtualBytes: disks.reduce((a, d) => a + d.sizeBytes, 0),
        newBytes: disks.reduce((a, d) => a + d.bytesNew, 0),
        storedBytes: disks.reduce((a, d) => a + d.bytesStored, 0),
      };
    });
    const listed = await repo.listSessions();
    // The read's own lease is not news to its reader.
    const own = repo.session?.id.toString('hex');
    const sessions = listed
      .filter((s) => s.id !== own)
      .map((s): DashboardSession => ({
        id: s.id,
        host: s.info?.host ?? null,
        pid: s.info?.pid ?? null,
        command: s.info?.command ?? null,
        startedAt: s.info?.startedAt ?? null,
        lastHeartbeat: new Date(s.modifiedMs).toISOString(),
        ageMs: s.ageMs,
        stale: s.stale,
        damaged: s.damaged ?? null,
      }));
    const lock = await readLock(repo.backend, repo.codec);
    const check = await readCheckRecord(repo.backend, repo.codec).catch(
      (err: unknown) => ({ damaged: errorMessage(err) }) as const,
    );
    return {
      version: 1,
      generatedAt: new Date().toISOString(),
      repository: {
        location: repo.location,
        id: repo.config.id,
        encryption: repo.config.encryption,
        chunkSizeBytes: repo.chunkSizeBytes,
      },
      stats,
      vms: vmStats,
      snapshots,
      growth,
      sessions,
      maintenanceLock: lock
        ? {
            session: lock.holder?.session ?? null,
            host: lock.holder?.host ?? null,
            pid: lock.holder?.pid ?? null,
            command: lock.holder?.command ?? null,
            since: lock.holder?.since ?? null,
            damaged: lock.damaged ?? null,
            stale: lockIsStale(lock, listed),
          }
        : null,
      check:
        check === undefined
          ? null
          : 'record' in check
            ? {
                record: check.record,
                modifiedAt: check.modifiedMs ? new Date(check.modifiedMs).toISOString() : null,
              }
            : { damaged: check.damaged },
      warnings,
    };
  } finally {
    await repo.endSession().catch(() => undefined);
  }
}

/**
 * The dashboard of a repository, re-read on request once the last read is older than `maxAgeMs`
 * (one read at a time; requests meanwhile share it).
 */
export class DashboardSource {
  private last: { at: number; data: Dashboard } | undefined;
  private reading: Promise<Dashboard> | undefined;

  constructor(
    private readonly repo: Repository,
    private readonly opts: { maxAgeMs: number; sessionVia?: () => Backend },
  ) {}

  /** The dashboard; `error` set when this read failed and an older one is given instead. */
  async get(): Promise<{ data: Dashboard; error?: string }> {
    if (this.last && Date.now() - this.last.at < this.opts.maxAgeMs) return { data: this.last.data };
    this.reading ??= readDashboard(this.repo, this.opts.sessionVia).finally(() => {
      this.reading = undefined;
    });
    try {
      const data = await this.reading;
      this.last = { at: Date.now(), data };
      return { data };
    } catch (err) {
      if (this.last) return { data: this.last.data, error: errorMessage(err) };
      throw err;
    }
  }
}
