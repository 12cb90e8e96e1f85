import { printable } from '../util/index.js';
import { AmbiguousSnapshotError, SnapshotNotFoundError } from './errors.js';
import type { SnapshotDamagedError } from './manifest-schema.js';
import type { Snapshot } from './snapshot.js';

/** Id prefixes shorter than this are not taken as ids (too many would match). */
export const MIN_ID_PREFIX = 4;

/**
 * Resolves a snapshot reference (pure):
 *  - a full id or a unique id prefix (at least 4 hex characters)
 *  - `VM@latest`: the newest snapshot of VM
 *  - `VM@<date-time>`: the newest snapshot of VM taken at or before that time
 *  - a checkpoint name (the snapshot that ends at that libvirt checkpoint)
 *
 * `damaged` are the manifests that could not be used: an id or prefix that names exactly one of
 * them throws its error (it exists, but cannot be used), and they count when a prefix is ambiguous.
 */
export function resolveSnapshotRef(
  ref: string,
  snapshots: readonly Snapshot[],
  damaged: readonly SnapshotDamagedError[] = [],
): Snapshot {
  const at = ref.lastIndexOf('@');
  if (at > 0) {
    const vm = ref.slice(0, at);
    const when = ref.slice(at + 1);
    const ofVm = snapshots.filter((s) => s.vm.name === vm).sort(byTime);
    if (ofVm.length === 0) {
      const bad = damaged.filter((d) => d.vm === vm).length;
      throw new SnapshotNotFoundError(
        printable(ref),
        bad
          ? `the only snapshot${bad === 1 ? '' : 's'} of VM '${printable(vm)}' ${bad === 1 ? 'is' : 'are'} damaged; run 'vmvault check'`
          : `no snapshots of VM '${printable(vm)}'; list them with 'vmvault snapshots'`,
      );
    }
    if (when === 'latest') return ofVm[ofVm.length - 1]!;
    const t = Date.parse(when);
    if (Number.isNaN(t))
      throw new SnapshotNotFoundError(
        printable(ref),
        'use VM@latest or VM@<date-time>, e.g. VM@2026-11-22T10:00',
      );
    const before = ofVm.filter((s) => Date.parse(s.time) <= t);
    if (before.length === 0)
      throw new SnapshotNotFoundError(
        printable(ref),
        `the first snapshot of '${printable(vm)}' is from ${ofVm[0]!.time}`,
      );
    return before[before.length - 1]!;
  }
  const lower = ref.toLowerCase();
  if (new RegExp(`^[0-9a-f]{${MIN_ID_PREFIX},64}$`).test(lower)) {
    const matches = snapshots.filter((s) => s.id.startsWith(lower));
    const bad = damaged.filter((d) => d.snapshotId.startsWith(lower));
    if (matches.length + bad.length > 1) throw new AmbiguousSnapshotError(ref, matches.length + bad.length);
    if (matches.length === 1) return matches[0]!;
    if (bad.length === 1) throw bad[0]!;
  }
  const byCheckpoint = snapshots.filter((s) => s.checkpoint === ref);
  if (byCheckpoint.length >= 1) return byCheckpoint.sort(byTime)[byCheckpoint.length - 1]!;
  if (/^[0-9a-f]{1,3}$/.test(lower))
    throw new SnapshotNotFoundError(
      ref,
      `an id prefix needs at least ${MIN_ID_PREFIX} characters; list the ids with 'vmvault snapshots'`,
    );
  throw new SnapshotNotFoundError(printable(ref));
}

export function byTime(a: Snapshot, b: Snapshot): number {
  return Date.parse(a.time) - Date.parse(b.time) || (a.id < b.id ? -1 : 1);
}
