import { readFile, rm, writeFile, chmod } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  checkFailure,
  checkRepository,
  DiskIndex,
  format,
  Repository,
  type ChunkId,
  type Snapshot,
  type SnapshotManifest,
} from '../../src/repo/index.js';
import { packKey, type IndexEntry } from '../../src/repo/chunk-index/index.js';
import { imageManifest } from '../helpers/manifests.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';

const KiB = 1024;
const CS = 64 * KiB;

/** Flips one byte of a file of the repository (packs are read-only files). */
async function flipByte(path: string, at: number): Promise<void> {
  const buf = await readFile(path);
  buf[at] = buf[at]! ^ 0xff;
  await chmod(path, 0o644);
  await writeFile(path, buf);
}

const manifest = (root: string, sizeBytes: number): SnapshotManifest => imageManifest(root, sizeBytes, CS);

describe('checkRepository (format 2, local packs)', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let loc: string;
  /** Chunk data by name: A, B, C in snapshot 1 (slots 0-2, slot 3 zero), A, B, D in snapshot 2. */
  const data = { A: seededBytes(CS, 1), B: seededBytes(CS, 2), C: seededBytes(CS, 3), D: seededBytes(CS, 4) };
  const ids = {} as Record<keyof typeof data, ChunkId>;
  let s1: Snapshot;
  let s2: Snapshot;
  const open: Repository[] = [];

  const openRepo = async (workers = 0): Promise<Repository> => {
    const r = await Repository.open(loc, { workers });
    open.push(r);
    return r;
  };
  const entryOf = async (repo: Repository, id: string): Promise<IndexEntry> => {
    const e = await repo.index.lookup(Buffer.from(id, 'hex'));
    if (!e) throw new Error(`no entry for ${id}`);
    return e;
  };

  beforeEach(async () => {
    ({ dir, cleanup } = await makeTmpDir('vmvault-check2-'));
    loc = join(dir, 'repo');
    await (await Repository.init(loc, { chunkSizeBytes: CS })).close();
    const repo = await openRepo();
    for (const k of Object.keys(data) as Array<keyof typeof data>)
      ids[k] = (await repo.chunks.put(data[k])).id;
    const one = DiskIndex.empty(4 * CS, CS);
    one.set(0, ids.A);
    one.set(1, ids.B);
    one.set(2, ids.C);
    s1 = await repo.putSnapshot(manifest((await repo.putIndex(one)).id, 4 * CS));
    const two = DiskIndex.empty(3 * CS, CS);
    two.set(0, ids.A);
    two.set(1, ids.B);
    two.set(2, ids.D);
    s2 = await repo.putSnapshot(manifest((await repo.putIndex(two)).id, 3 * CS));
  });
  afterEach(async () => {
    for (const r of open.splice(0)) await r.close();
    await cleanup();
  });

  it('a sound repository passes, with and without --read-data (inline and in workers)', async () => {
    const repo = await openRepo();
    const r = await checkRepository(repo);
    expect(r.problems).toEqual([]);
    expect(r).toMatchObject({
      snapshots: 2,
      snapshotsDamaged: 0,
      indexes: 2,
      chunksReferenced: 4,
      bytesReferenced: 4 * CS,
      chunksMissing: 0,
      chunksCorrupt: 0,
      unreferencedChunks: 0,
      unreferencedExact: true,
      orphanPacks: 0,
      packsDamaged: 0,
      ignoredKeys: [],
    });
    expect(r.packs).toBeGreaterThanOrEqual(2); // a data pack and a meta pack
    expect(checkFailure(r)).toBeUndefined();
    for (const workers of [0, 2]) {
      const full = await checkRepository(await openRepo(workers), { readData: true });
      expect(full.problems).toEqual([]);
      expect(full.chunksRead).toBeGreaterThanOrEqual(4 + 2); // 4 chunks and the pages of 2 trees
      expect(full.bytesRead).toBeGreaterThanOrEqual(4 * CS);
    }
  });

  it('a deleted pack: its chunks are missing where they are used, the pack is reported', async () => {
    const repo = await openRepo();
    const key = packKey(await entryOf(repo, ids.C));
    await rm(join(loc, key));
    const r = await checkRepository(repo);
    expect(r.problems).toContainEqual(expect.objectContaining({ kind: 'pack-missing', pack: key }));
    expect(r.problems).toContainEqual({
      kind: 'chunk-missing',
      snapshot: s1.id,
      vm: 'vm',
      disk: 'vda',
      offset: 2 * CS,
      chunkId: ids.C,
    });
    expect(r.chunksMissing).toBeGreaterThanOrEqual(1);
    expect(checkFailure(r)?.exitCode).toBe(20);
  });

  it('a corrupt record is found only by --read-data; --repair voids it; a new put stores it again', async () => {
    const repo = await openRepo();
    const e = await entryOf(repo, ids.B);
    await flipByte(join(loc, packKey(e)), e.offset + e.length - 20);
    expect((await checkRepository(repo)).problems).toEqual([]);

    const found = await checkRepository(repo, { readData: true });
    expect(found.chunksCorrupt).toBe(1);
    const corrupt = found.problems.filter((p) => p.kind === 'chunk-corrupt');
    expect(corrupt.map((p) => [p.snapshot, p.offset, p.chunkId]).sort()).toEqual(
      [
        [s1.id, CS, ids.B],
        [s2.id, CS, ids.B],
      ].sort(),
    );
    expect(found.problems).toContainEqual(
      expect.objectContaining({ kind: 'pack-damaged', pack: packKey(e), offset: e.offset }),
    );
    expect(checkFailure(found)?.exitCode).toBe(20);
    await expect(checkRepository(repo, { repair: true })).rejects.toMatchObject({ exitCode: 2 });

    const now = new Date('2026-12-01T20:15:00Z');
    const fixed = await checkRepository(repo, { readData: true, repair: true, now });
    expect(fixed.repaired).toHaveLength(1);
    const q = fixed.repaired[0]!;
    expect(q.chunkId).toBe(ids.B);
    expect(q.quarantineKey).toMatch(/^quarantine\/[0-9a-f]{32}$/);
    expect(fixed.voids).toEqual([q.quarantineKey]);
    expect(fixed).toMatchObject({ chunksMissing: 1, chunksCorrupt: 0 });
    expect(fixed.problems).toContainEqual(
      expect.objectContaining({ kind: 'chunk-missing', chunkId: ids.B, quarantineKey: q.quarantineKey }),
    );

    // Another process: the index no longer finds B, so a put stores it again.
    const next = await openRepo();
    expect(await next.chunks.has(ids.B)).toBe(false);
    expect((await next.chunks.put(data.B)).isNew).toBe(true);
    await next.chunks.flush();
    const again = await checkRepository(await openRepo(), { readData: true });
    expect(again.problems).toEqual([]);
    expect((await next.chunks.get(ids.B)).equals(data.B)).toBe(true);
  });

  it('index/ deleted: check reports it, --repair rebuilds it from the trailers, reads work again', async () => {
    await rm(join(loc, 'index'), { recursive: true, force: true });
    const repo = await openRepo();
    const r = await checkRepository(repo);
    expect(r.problems).toContainEqual(
      expect.objectContaining({ kind: 'index-object-damaged', index: 'index/' }),
    );
    expect(
      r.problems
        .filter((p) => p.kind === 'index-missing')
        .map((p) => p.snapshot)
        .sort(),
    ).toEqual([s1.id, s2.id].sort());
    expect(checkFailure(r)?.exitCode).toBe(20);

    const fixed = await checkRepository(repo, { readData: true, repair: true });
    expect(fixed.rebuiltIndex).toBeDefined();
    expect(fixed.rebuiltIndex!.entries).toBeGreaterThanOrEqual(6);
    // The trees are read again after the rebuild: only the index problem that was repaired is left.
    expect(fixed.problems.map((p) => p.kind)).toEqual(['index-object-damaged']);
    expect(fixed).toMatchObject({ chunksReferenced: 4, chunksMissing: 0, chunksCorrupt: 0 });

    const after = await openRepo();
    const clean = await checkRepository(after, { readData: true });
    expect(clean.problems).toEqual([]);
    expect(clean.chunksReferenced).toBe(4);
    expect((await after.chunks.get(ids.C)).equals(data.C)).toBe(true);
    expect((await after.getIndex(s1.disks[0]!)).get(2)).toBe(ids.C);
  });

  it('index/ deleted and a record damaged: one --repair rebuilds the index and voids the record', async () => {
    const first = await openRepo();
    const e = await entryOf(first, ids.D);
    await flipByte(join(loc, packKey(e)), e.offset + e.length - 20);
    await rm(join(loc, 'index'), { recursive: true, force: true });
    const repo = await openRepo();
    const fixed = await checkRepository(repo, { readData: true, repair: true });
    expect(fixed.rebuiltIndex).toBeDefined();
    expect(fixed.repaired.map((r) => r.chunkId)).toEqual([ids.D]);
    expect(fixed.problems.filter((p) => p.kind.startsWith('chunk-'))).toEqual([
      expect.objectContaining({ kind: 'chunk-missing', snapshot: s2.id, offset: 2 * CS, chunkId: ids.D }),
    ]);
    const after = await openRepo();
    expect(await after.chunks.has(ids.D)).toBe(false);
    expect((await after.chunks.get(ids.A)).equals(data.A)).toBe(true);
  });

  it('a damaged page record: the disk index is damaged; --repair voids the page', async () => {
    const repo = await openRepo();
    const root = s1.disks[0]!.root;
    const e = await entryOf(repo, root);
    expect(e.kind).toBeGreaterThanOrEqual(3);
    await flipByte(join(loc, packKey(e)), e.offset + e.length - 20);
    const r = await checkRepository(repo);
    expect(r.problems).toContainEqual(
      expect.objectContaining({ kind: 'index-damaged', snapshot: s1.id, disk: 'vda', index: root }),
    );
    const fixed = await checkRepository(repo, { readData: true, repair: true });
    expect(fixed.repairedIndexes).toEqual([
      { id: root, quarantineKey: expect.stringMatching(/^quarantine\//) },
    ]);
    expect(fixed.problems).toContainEqual(
      expect.objectContaining({ kind: 'index-missing', snapshot: s1.id }),
    );
  });

  it('a damaged manifest is reported, and --repair moves it to quarantine/snapshot-…', async () => {
    const path = join(loc, format.Keys.snapshot(s2.id));
    await flipByte(path, 40);
    const repo = await openRepo();
    const r = await checkRepository(repo);
    expect(r.problems).toContainEqual(expect.objectContaining({ kind: 'snapshot-damaged', snapshot: s2.id }));
    expect(r.unreferencedExact).toBe(false);
    const now = new Date('2026-12-01T20:15:00.123Z');
    const fixed = await checkRepository(repo, { readData: true, repair: true, now });
    const quarantineKey = format.Keys.quarantineSnapshot(s2.id, '20261201T201500Z');
    expect(fixed.repairedSnapshots).toEqual([{ id: s2.id, quarantineKey }]);
    await expect(readFile(join(loc, quarantineKey))).resolves.toBeInstanceOf(Buffer);
    await expect(readFile(path)).rejects.toMatchObject({ code: 'ENOENT' });
    const again = await checkRepository(await openRepo());
    expect(again.problems).toEqual([]);
    expect(again.snapshots).toBe(1);
  });
});
