import { describe, expect, it } from 'vitest';
import {
  resolveSnapshotRef,
  type Snapshot,
  SnapshotNotFoundError,
  AmbiguousSnapshotError,
  SnapshotDamagedError,
} from '../../src/repo/index.js';

function snap(id: string, vm: string, time: string, checkpoint: string | null = null): Snapshot {
  return {
    id,
    vm: { name: vm },
    time,
    checkpoint,
    version: 2,
    host: 'h',
    tags: [],
    parent: null,
    mode: 'full',
    disks: [],
    files: [],
    program: 'x',
  } as unknown as Snapshot;
}

const all = [
  snap('aaaa1111'.padEnd(64, '0'), 'web', '2026-01-01T10:00:00.000Z', 'vmvault-1'),
  snap('aaaa2222'.padEnd(64, '0'), 'web', '2026-01-02T10:00:00.000Z', 'vmvault-2'),
  snap('bbbb3333'.padEnd(64, '0'), 'db', '2026-01-03T10:00:00.000Z'),
];

describe('snapshot references', () => {
  it('resolves ids, prefixes, VM@latest, VM@date and checkpoint names', () => {
    expect(resolveSnapshotRef(all[0]!.id, all)).toBe(all[0]);
    expect(resolveSnapshotRef('bbbb', all)).toBe(all[2]);
    expect(resolveSnapshotRef('web@latest', all)).toBe(all[1]);
    expect(resolveSnapshotRef('web@2026-01-01T12:00:00Z', all)).toBe(all[0]);
    expect(resolveSnapshotRef('web@2026-01-05', all)).toBe(all[1]);
    expect(resolveSnapshotRef('vmvault-1', all)).toBe(all[0]);
  });

  it('gives clear errors', () => {
    expect(() => resolveSnapshotRef('aaaa', all)).toThrow(AmbiguousSnapshotError);
    expect(() => resolveSnapshotRef('cccc', all)).toThrow(SnapshotNotFoundError);
    const hint = (ref: string): string | undefined => {
      try {
        resolveSnapshotRef(ref, all);
      } catch (err) {
        return (err as SnapshotNotFoundError).oneLine();
      }
      return undefined;
    };
    expect(hint('nosuch@latest')).toMatch(/no snapshots of VM 'nosuch'/);
    expect(hint('web@2025-01-01')).toMatch(/first snapshot of 'web' is from 2026-01-01/);
  });

  it('says that an id prefix needs 4 characters', () => {
    let line = '';
    try {
      resolveSnapshotRef('92', all);
    } catch (err) {
      line = (err as SnapshotNotFoundError).oneLine();
    }
    expect(line).toMatch(/^no snapshot matches '92'; an id prefix needs at least 4 characters/);
    expect(() => resolveSnapshotRef('bbb', all)).toThrow(SnapshotNotFoundError);
  });

  it('a ref naming exactly a damaged snapshot throws its error (exit 20); it counts for ambiguity', () => {
    const bad = new SnapshotDamagedError('cccc4444'.padEnd(64, '0'), 'vm is missing');
    expect(() => resolveSnapshotRef('cccc', all, [bad])).toThrow(bad);
    expect(bad.exitCode).toBe(20);
    expect(bad.oneLine()).toMatch(/^snapshot cccc4444 is damaged: vm is missing; .*--repair/);
    expect(() =>
      resolveSnapshotRef('bbbb', all, [new SnapshotDamagedError('bbbb5555'.padEnd(64, '0'), 'x')]),
    ).toThrow(AmbiguousSnapshotError);
    expect(resolveSnapshotRef('web@latest', all, [bad])).toBe(all[1]);
  });
});
