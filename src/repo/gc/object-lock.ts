import { mapLimit } from '../../util/index.js';
import type { ObjectLockPolicy, ObjectVersion, VersionRef } from '../backend/backend.js';
import { BlobFormatError } from '../blob.js';
import { BackendError, isNotFound } from '../errors.js';
import { objectLockPolicy, type Repository } from '../repository.js';
import { GC_PREFIX } from './steps.js';

/**
 * Object Lock upkeep, run by prune on a locked repository (docs/s3.md "Object Lock"):
 *
 * - **Extend**: every object is written retained for the period P. When some current object's
 *   retention (as known from its write time and the rounds recorded in `gc/retention`) ends within
 *   P/2, a round sets the retention of every current locked object to now + P, then records the
 *   round. So live data is always retained at least P/2 ahead, at the cost of one request per
 *   object every P/2.
 * - **Purge**: deleting a key in a versioned bucket leaves its bytes as a noncurrent version
 *   behind a delete marker. Noncurrent versions whose retention has ended (or that never had one:
 *   session heartbeats) are deleted for good, then the delete markers left with nothing behind
 *   them. The storage refuses versions still retained; those wait for a later prune.
 *
 * Retention estimates only save requests: the storage enforces the real one. An estimate used to
 * skip an extension must never be too high, so it is taken low by a margin (clock differences,
 * writes in flight during a round); one used to skip a purge is taken high.
 */
export interface ObjectLockReport {
  /** A round ran (or would, in a dry run): every current locked object extended. */
  extendedRound: boolean;
  extended: number;
  /** Extensions the storage refused (permission, or a longer retention already set). */
  extendRefused?: number;
  /** Retention ends (ms) this round set, when it ran. */
  extendedUntilMs?: number;
  purgedVersions: number;
  purgedBytes: number;
  deleteMarkersRemoved: number;
  /** Noncurrent versions still retained (skipped by estimate, or refused by the storage). */
  lockedVersions: number;
  lockedBytes: number;
  /** The earliest time a retained noncurrent version may go (by estimate), if any. */
  nextPurgeMs?: number;
}

export const RETENTION_RECORD = `${GC_PREFIX}retention`;
const RECORD_BINDER = Buffer.from('ffffffff000000ee0000000000000000', 'hex');
const MAX_RECORD_BYTES = 64 * 1024;
const MAX_ROUNDS = 16;

interface Round {
  startMs: number;
  untilMs: number;
}

/**
 * The safety margin of estimates: P/20, at least 2 s (server times come in whole seconds), at
 * most 1 h (the clocks of writers that differ more from the storage's are covered by the
 * storage: it refuses a retention shorter than one set, and prune then warns).
 */
function marginOf(periodMs: number): number {
  return Math.min(3_600_000, Math.max(2000, Math.floor(periodMs / 20)));
}

async function readRounds(repo: Repository, warnings: string[]): Promise<Round[]> {
  let blob: Buffer;
  try {
    const st = await repo.backend.stat(RETENTION_RECORD);
    if (st === undefined) return [];
    if (st.sizeBytes > repo.codec.sealedObjectBytes(MAX_RECORD_BYTES) + 1024)
      throw new BlobFormatError(`${st.sizeBytes} bytes, more than the record can be`);
    blob = await repo.backend.get(RETENTION_RECORD);
  } catch (err) {
    if (isNotFound(err)) return [];
    if (!(err instanceof BlobFormatError)) throw err;
    warnings.push(`${RETENTION_RECORD} is damaged (ignored: every object is extended): ${err.message}`);
    return [];
  }
  try {
    const json = repo.codec.openObject('gc', blob, {
      name: RETENTION_RECORD,
      maxPlaintextBytes: MAX_RECORD_BYTES,
    });
    const v: unknown = JSON.parse(json.toString('utf8'));
    const rounds = (v as { rounds?: unknown } | null)?.rounds;
    if ((v as { version?: unknown }).version !== 1 || !Array.isArray(rounds) || rounds.length > MAX_ROUNDS)
      throw new BlobFormatError('not a retention record');
    return rounds.map((r: unknown) => {
      const o = r as Record<string, unknown> | null;
      const s = o?.startMs;
      const u = o?.untilMs;
      if (
        typeof s !== 'number' ||
        typeof u !== 'number' ||
        !Number.isSafeInteger(s) ||
        !Number.isSafeInteger(u) ||
        u < s
      )
        throw new BlobFormatError('a round is not {startMs, untilMs}');
      return { startMs: s, untilMs: u };
    });
  } catch (err) {
    if (!(err instanceof BlobFormatError) && !(err instanceof SyntaxError)) throw err;
    warnings.push(`${RETENTION_RECORD} is damaged (ignored: every object is extended): ${err.message}`);
    return [];
  }
}

async function writeRounds(repo: Repository, rounds: Round[]): Promise<void> {
  const sealed = repo.codec.sealObject(
    'gc',
    Buffer.from(JSON.stringify({ version: 1, rounds }), 'utf8'),
    RECORD_BINDER,
    {
      name: RETENTION_RECORD,
    },
  );
  await repo.backend.put(RETENTION_RECORD, sealed);
}

/**
 * Retention of a version by estimate: `low` (for extending: never above the real one) and
 * `high` (for purging: never below it). `supersededMs`: when a newer version or delete marker
 * replaced it (Infinity for a current one).
 */
function retention(
  v: ObjectVersion,
  supersededMs: number,
  policy: ObjectLockPolicy,
  rounds: readonly Round[],
): { low: number; high: number } {
  const m = marginOf(policy.periodMs);
  let low = v.modifiedMs + policy.periodMs - m;
  let high = v.modifiedMs + policy.periodMs + m;
  for (const r of rounds) {
    // Surely extended: written well before the round, replaced well after its start.
    if (v.modifiedMs < r.startMs - m && supersededMs > r.startMs + m) low = Math.max(low, r.untilMs);
    // Perhaps extended.
    if (v.modifiedMs < r.startMs + m && supersededMs > r.startMs - m) high = Math.max(high, r.untilMs + m);
  }
  return { low, high };
}

export async function maintainObjectLock(
  repo: Repository,
  opts: { nowMs: number; dryRun: boolean; concurrency: number; warnings: string[] },
): Promise<ObjectLockReport | undefined> {
  const b = repo.backend;
  if (repo.config.objectLock === undefined || !b.listVersions) return undefined;
  const policy = objectLockPolicy(repo.config);
  const exempt = (key: string): boolean => policy.exemptPrefixes.some((p) => key.startsWith(p));
  const now = opts.nowMs;
  const rounds = (await readRounds(repo, opts.warnings)).filter((r) => r.untilMs > now - policy.periodMs);
  const report: ObjectLockReport = {
    extendedRound: false,
    extended: 0,
    purgedVersions: 0,
    purgedBytes: 0,
    deleteMarkersRemoved: 0,
    lockedVersions: 0,
    lockedBytes: 0,
  };

  // One pass over every version, key by key (newest first within a key).
  const current: Array<{ key: string; low: number; modifiedMs: number }> = [];
  let minLow = Number.POSITIVE_INFINITY;
  const purge: Array<VersionRef & { sizeBytes: number }> = [];
  /** Delete markers to remove once every version behind them is gone, by key. */
  const markers = new Map<string, VersionRef>();
  const pendingKeys = new Set<string>(); // keys with a version not purged in this run

  const flushPurge = async (force: boolean): Promise<void> => {
    if (purge.length === 0 || (!force && purge.length < 1000)) return;
    const batch = purge.splice(0, 1000);
    if (opts.dryRun || !b.deleteVersions) {
      for (const v of batch) {
        report.purgedVersions++;
        report.purgedBytes += v.sizeBytes;
      }
      return;
    }
    const { locked } = await b.deleteVersions(batch);
    const refused = new Set(locked.map((l) => `${l.key}\0${l.versionId}`));
    for (const v of batch) {
      if (refused.has(`${v.key}\0${v.versionId}`)) {
        report.lockedVersions++;
        report.lockedBytes += v.sizeBytes;
        pendingKeys.add(v.key);
      } else {
        report.purgedVersions++;
        report.purgedBytes += v.sizeBytes;
      }
    }
  };

  const handleKey = async (versions: ObjectVersion[]): Promise<void> => {
    // Newest first: the latest version, then each older one, superseded by the one before it.
    let supersededMs = Number.POSITIVE_INFINITY;
    for (const v of versions) {
      const key = v.key;
      if (v.latest && v.deleteMarker) {
        markers.set(key, { key, versionId: v.versionId });
      } else if (v.latest) {
        if (!exempt(key)) {
          const { low } = retention(v, supersededMs, policy, rounds);
          current.push({ key, low, modifiedMs: v.modifiedMs });
          minLow = Math.min(minLow, low);
        }
      } else if (v.deleteMarker) {
        purge.push({ key, versionId: v.versionId, sizeBytes: 0 }); // a marker behind a newer version
      } else if (exempt(key)) {
        purge.push({ key, versionId: v.versionId, sizeBytes: v.sizeBytes });
      } else {
        const { high } = retention(v, supersededMs, policy, rounds);
        if (high <= now) purge.push({ key, versionId: v.versionId, sizeBytes: v.sizeBytes });
        else {
          report.lockedVersions++;
          report.lockedBytes += v.sizeBytes;
          report.nextPurgeMs = Math.min(report.nextPurgeMs ?? Number.POSITIVE_INFINITY, high);
          pendingKeys.add(key);
        }
      }
      supersededMs = Math.min(supersededMs, v.modifiedMs);
      await flushPurge(false);
    }
  };

  let group: ObjectVersion[] = [];
  for await (const v of b.listVersions('')) {
    if (group.length > 0 && group[0]!.key !== v.key) {
      await handleKey(group);
      group = [];
    }
    group.push(v);
  }
  if (group.length > 0) await handleKey(group);
  await flushPurge(true);

  // A delete marker goes only when nothing is left behind it (else the old version would show).
  const goneMarkers = [...markers.values()].filter((m) => !pendingKeys.has(m.key));
  for (let i = 0; i < goneMarkers.length; i += 1000) {
    const batch = goneMarkers.slice(i, i + 1000);
    if (!opts.dryRun && b.deleteVersions) await b.deleteVersions(batch);
    report.deleteMarkersRemoved += batch.length;
  }

  // Extend when some live object's retention ends within half a period.
  if (minLow < now + policy.periodMs / 2) {
    const untilMs = now + policy.periodMs;
    report.extendedRound = true;
    report.extendedUntilMs = untilMs;
    // Objects written within the margin are left as they are: their own retention is about as
    // long, the round does not count them as extended (retention()), and a writer's clock a
    // little ahead of the storage's would make the new date a shortening, which is refused.
    const m = marginOf(policy.periodMs);
    const todo = current.filter((c) => c.low < untilMs && c.modifiedMs < now - m);
    if (opts.dryRun || !b.extendRetention) report.extended = todo.length;
    else {
      const extend = b.extendRetention.bind(b);
      const refused: string[] = [];
      await mapLimit(todo, opts.concurrency, async (c) => {
        try {
          if ((await extend(c.key, untilMs)) === 'extended') report.extended++;
        } catch (err) {
          if (!(err instanceof BackendError) || err.kind !== 'permission') throw err;
          refused.push(err.message);
        }
      });
      // A round is recorded only when it extended everything; else the next prune tries again.
      if (refused.length === 0)
        await writeRounds(repo, [...rounds, { startMs: now, untilMs }].slice(-MAX_ROUNDS));
      else
        opts.warnings.push(
          `the retention of ${refused.length} object${refused.length === 1 ? '' : 's'} could not be extended (a longer one set by a host whose clock is ahead, or no s3:PutObjectRetention); the first: ${refused[0]}`,
        );
      report.extendRefused = refused.length;
    }
  }
  if (report.nextPurgeMs === undefined) delete report.nextPurgeMs;
  return report;
}
