import { describe, expect, it } from 'vitest';
import { emptyDiskStats, format, validateManifest, type SnapshotManifest } from '../../src/repo/index.js';

const CHUNK = 1024 * 1024;
const HEX = (c: string): string => c.repeat(64);

function manifest(
  patch: Record<string, unknown> = {},
  disk: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    version: format.MANIFEST_VERSION,
    vm: { name: 'web' },
    time: '2026-12-02T08:00:00.000Z',
    host: 'h',
    tags: [],
    parent: null,
    mode: 'image',
    checkpoint: null,
    disks: [
      {
        target: 'vda',
        sizeBytes: 4 * CHUNK,
        chunkSizeBytes: CHUNK,
        root: HEX('a'),
        allocatedBytes: CHUNK,
        stats: emptyDiskStats(),
        ...disk,
      },
    ],
    files: [],
    program: 'test',
    ...patch,
  };
}

const refuse = (m: unknown, field: string, why: RegExp): void => {
  expect(() => validateManifest(m, CHUNK)).toThrow(
    expect.objectContaining({ name: 'ManifestFieldError', field, message: expect.stringMatching(why) }),
  );
};

describe('manifest version 2', () => {
  it('reads a disk root, the zero marker for an all-zero disk, and keeps the bytes it was written as', () => {
    const m = manifest();
    const v = validateManifest(m, CHUNK);
    expect(v.version).toBe(2);
    expect(v.disks[0]!.root).toBe(HEX('a'));
    expect(JSON.stringify(v)).toBe(JSON.stringify(m));
    const zero = validateManifest(manifest({}, { root: HEX('0'), allocatedBytes: 0 }), CHUNK);
    expect(zero.disks[0]!.root).toBe(HEX('0'));
  });

  it('refuses a root that is not a page id, or the zero marker for a disk with data', () => {
    refuse(manifest({}, { root: 'Z'.repeat(64) }), 'disks[0].root', /not a disk index page id/);
    refuse(manifest({}, { root: undefined, index: HEX('a') }), 'disks[0].root', /not a disk index page id/);
    refuse(manifest({}, { root: HEX('0') }), 'disks[0].root', /zero marker .* 1048576 allocated bytes/);
  });

  it('refuses a format 1 manifest with its reason, and a newer one as unsupported', () => {
    refuse(
      manifest({ version: 1 }),
      'version',
      /is 1, a manifest of repository format 1, which this vmvault no longer reads/,
    );
    expect(() => validateManifest(manifest({ version: 3 }), CHUNK)).toThrow(
      expect.objectContaining({ field: 'version', unsupportedVersion: true }),
    );
    expect(() => validateManifest(manifest({ version: 1 }), CHUNK)).toThrow(
      expect.objectContaining({ unsupportedVersion: false }),
    );
  });

  it('reads origin, protected, note, edited and bytesMeta, in the order they were written', () => {
    const stats = { ...emptyDiskStats(), bytesMeta: 65_000 };
    const m = manifest(
      {
        note: 'kept for the audit — ünïcödé 🙂',
        origin: { snapshot: HEX('c'), repository: HEX('b') },
        protected: true,
        edited: '2026-12-02T09:00:00.000+01:00',
        unknown: 'dropped',
      },
      { stats },
    );
    const v: SnapshotManifest = validateManifest(m, CHUNK);
    expect(v.origin).toEqual({ repository: HEX('b'), snapshot: HEX('c') });
    expect(v.protected).toBe(true);
    expect(v.note).toBe('kept for the audit — ünïcödé 🙂');
    expect(v.edited).toBe('2026-12-02T09:00:00.000+01:00');
    expect(v.disks[0]!.stats.bytesMeta).toBe(65_000);
    const { unknown: _, ...known } = m;
    void _;
    expect(JSON.stringify(v)).toBe(JSON.stringify(known));
    // Absent optional fields stay absent.
    const plain = validateManifest(manifest(), CHUNK);
    expect(Object.keys(plain)).not.toContain('origin');
    expect(Object.keys(plain.disks[0]!.stats)).not.toContain('bytesMeta');
  });

  it.each<[string, Record<string, unknown>, Record<string, unknown>, string, RegExp]>([
    ['origin not an object', { origin: 'x' }, {}, 'origin', /is a string, not an object/],
    [
      'origin repository not hex',
      { origin: { repository: 'r', snapshot: HEX('c') } },
      {},
      'origin.repository',
      /not a repository id/,
    ],
    [
      'origin snapshot missing',
      { origin: { repository: HEX('b') } },
      {},
      'origin.snapshot',
      /not a snapshot id/,
    ],
    ['protected not a boolean', { protected: 'yes' }, {}, 'protected', /not true or false/],
    ['note not a string', { note: 5 }, {}, 'note', /is a number, not a string/],
    ['note with a newline', { note: 'a\nvmvault: ok' }, {}, 'note', /at most 4096 printable characters/],
    ['note with an escape', { note: '\u001b[2J' }, {}, 'note', /printable/],
    ['note with a lone surrogate', { note: 'a\ud800b' }, {}, 'note', /printable/],
    ['note too long', { note: 'x'.repeat(4097) }, {}, 'note', /at most 4096/],
    ['edited not a time', { edited: 'today' }, {}, 'edited', /not an ISO 8601/],
    [
      'bytesMeta negative',
      {},
      { stats: { ...emptyDiskStats(), bytesMeta: -1 } },
      'disks[0].stats.bytesMeta',
      /is -1/,
    ],
    [
      'bytesMeta fractional',
      {},
      { stats: { ...emptyDiskStats(), bytesMeta: 0.5 } },
      'disks[0].stats.bytesMeta',
      /0\.5/,
    ],
  ])('refuses %s', (_, patch, disk, field, why) => refuse(manifest(patch, disk), field, why));

  it('counts a note in characters, not UTF-16 units', () => {
    expect(validateManifest(manifest({ note: '🙂'.repeat(4096) }), CHUNK).note).toHaveLength(8192);
  });
});
