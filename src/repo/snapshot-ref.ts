import { AmbiguousSnapshotError, SnapshotNotFoundError } from './errors.js';
import type { Snapshot } from './snapshot.js';

/**
 * Resolves a snapshot reference (pure):
 *  - a full id or a unique id prefix (at least 4 hex characters)
 *  - `VM@latest`: the newest snapshot of VM
 *  - `VM@<date-time>`: the newest snapshot of VM taken at or before that time
 *  - a checkpoint name (the snapshot that ends at that libvirt checkpoint)
 */
export function resolveSnapshotRef(ref: string, snapshots: readonly Snapshot[]): Snapshot {
  const at = ref.lastIndexOf('@');
  if (at > 0) {
    const vm = ref.slice(0, at);
    const when = ref.slice(at + 1);
    const ofVm = snapshots.filter((s) => s.vm.name === vm).sort(byTime);
    if (ofVm.length === 0)
      throw new SnapshotNotFoundError(ref, `no snapshots of VM '${vm}'; list them with 'vmvault snapshots'`);
    if (when === 'latest') return ofVm[ofVm.length - 1]!;
    const t = Date.parse(when);
    if (Number.isNaN(t))
      throw new SnapshotNotFoundError(ref, 'use VM@latest or VM@<date-time>, e.g. VM@2026-11-22T10:00');
    const before = ofVm.filter((s) => Date.parse(s.time) <= t);
    if (before.length === 0)
      throw new SnapshotNotFoundError(ref, `the first snapshot of '${vm}' is from ${ofVm[0]!.time}`);
    return before[before.length - 1]!;
  }
  const lower = ref.toLowerCase();
  if (/^[0-9a-f]{4,64}$/.test(lower)) {
    const matches = snapshots.filter((s) => s.id.startsWith(lower));
    if (matches.length === 1) return matches[0]!;
    if (matches.length > 1) throw new AmbiguousSnapshotError(ref, matches.length);
  }
  const byCheckpoint = snapshots.filter((s) => s.checkpoint === ref);
  if (byCheckpoint.length >= 1) return byCheckpoint.sort(byTime)[byCheckpoint.length - 1]!;
  throw new SnapshotNotFoundError(ref);
}

export function byTime(a: Snapshot, b: Snapshot): number {
  return Date.parse(a.time) - Date.parse(b.time) || (a.id < b.id ? -1 : 1);
}
