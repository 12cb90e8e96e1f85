import { readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { backupImages } from '../../src/backup/index.js';
import {
  IdSet,
  LocalBackend,
  prune,
  readGenerations,
  Repository,
  type Snapshot,
} from '../../src/repo/index.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';

const MiB = 1024 * 1024;

/** Every byte of a snapshot's first disk, read back through the chunk store (each chunk verified). */
async function diskBytes(repo: Repository, s: Snapshot): Promise<Buffer> {
  const d = s.disks[0]!;
  const idx = await repo.getIndex(d);
  const parts: Buffer[] = [];
  for (let slot = 0; slot < idx.slotCount; slot++) {
    const id = idx.get(slot);
    parts.push(id ? await repo.chunks.get(id) : Buffer.alloc(idx.slotLength(slot)));
  }
  return Buffer.concat(parts);
}

async function packBytes(dir: string): Promise<number> {
  let total = 0;
  for (const top of ['data', 'meta']) {
    let subs: string[] = [];
    try {
      subs = await readdir(join(dir, top));
    } catch {
      continue;
    }
    for (const s of subs)
      for (const f of await readdir(join(dir, top, s))) total += (await stat(join(dir, top, s, f))).size;
  }
  return total;
}

describe('IdSet', () => {
  it('holds what was added, by the first 8 bytes, and grows', () => {
    const s = new IdSet(4);
    const ids = Array.from({ length: 50_000 }, (_, i) => seededBytes(32, i + 1));
    for (const id of ids) expect(s.add(id)).toBe(true);
    for (const id of ids) expect(s.add(id)).toBe(false);
    expect(s.size).toBe(ids.length);
    for (const id of ids) expect(s.has(id)).toBe(true);
    let falsePositives = 0;
    for (let i = 0; i < 10_000; i++) if (s.has(seededBytes(32, 1_000_000 + i))) falsePositives++;
    expect(falsePositives).toBe(0);
    const zero = Buffer.alloc(32);
    expect(s.has(zero)).toBe(false);
    expect(s.add(zero)).toBe(true);
    expect(s.has(zero)).toBe(true);
  });
});

describe('prune (library, local repository)', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let repoDir: string;
  const open = async (command = 'test', workers = 0): Promise<Repository> => {
    const r = await Repository.open(repoDir, { workers }, new LocalBackend(repoDir));
    await r.startSession(command);
    return r;
  };
  const image = async (name: string, seeds: number[]): Promise<string> => {
    const p = join(dir, name);
    await writeFile(p, Buffer.concat(seeds.map((s) => seededBytes(MiB, s))));
    return p;
  };
  const bytesOf = (seeds: number[]): Buffer => Buffer.concat(seeds.map((s) => seededBytes(MiB, s)));
  const backup = async (repo: Repository, vm: string, path: string): Promise<Snapshot> =>
    backupImages(repo, { vm, images: [{ path, target: 'vda' }] });

  beforeEach(async () => {
    ({ dir, cleanup } = await makeTmpDir());
    repoDir = join(dir, 'repo');
    await Repository.init(repoDir, { packSizeBytes: 4 * MiB });
  });
  afterEach(async () => cleanup?.());

  it('forget all but one, prune: only that snapshot’s data is left, and it restores', async () => {
    const repo = await open();
    const snaps: Snapshot[] = [];
    for (let i = 0; i < 5; i++)
      snaps.push(await backup(repo, 'vm', await image('a.raw', [1, 2, 10 + i, 20 + i])));
    const keep = snaps[4]!;
    const before = await packBytes(repoDir);
    for (const s of snaps.slice(0, 4)) await repo.forgetSnapshot(s);
    const r1 = await prune(repo, { graceMs: 0 });
    expect(r1.deleted.length).toBe(1);
    expect(r1.freedBytes).toBeGreaterThan(0);
    const r2 = await prune(repo, { graceMs: 0 });
    expect(r2.condemned).toBeUndefined();
    const after = await packBytes(repoDir);
    // 4 MiB of kept data (+ pages and overhead), from 12 MiB.
    expect(before).toBeGreaterThan(11 * MiB);
    expect(after).toBeLessThan(4.4 * MiB);
    expect(after).toBeGreaterThan(4 * MiB);
    await repo.close();
    const fresh = await open();
    expect((await diskBytes(fresh, keep)).equals(bytesOf([1, 2, 14, 24]))).toBe(true);
    await fresh.close();
  });

  it('a session alive at condemnation holds the deletion; a chunk it reused is kept', async () => {
    const setup = await open();
    const old = await backup(setup, 'vm', await image('a.raw', [1, 2, 3]));
    await setup.forgetSnapshot(old);
    await setup.close();

    // A writer that started before the condemnation and reuses chunk 2 of the forgotten snapshot.
    const writer = await open('backup');
    const gc = await open('prune');
    const r1 = await prune(gc, { graceMs: 0 });
    expect(r1.condemned?.packs).toBeGreaterThan(0);
    expect(r1.deleted).toEqual([]);
    expect(r1.waiting?.sessions).toEqual([writer.session!.id.toString('hex')]);
    const snap = await backup(writer, 'vm2', await image('b.raw', [2, 4]));
    await writer.close();

    const r2 = await prune(gc, { graceMs: 0 });
    // Generation 1 keeps the pack of the reused chunk; a generation 2 may then repack it.
    expect(r2.deleted[0]!.generation).toBe(1);
    expect(r2.deleted[0]!.uncondemned).toBeGreaterThan(0);
    await gc.close();
    const reader = await open();
    expect((await diskBytes(reader, snap)).equals(bytesOf([2, 4]))).toBe(true);
    await reader.close();
  });

  it('a writer that starts after the condemnation stores fresh copies, not the condemned ones', async () => {
    const setup = await open();
    const old = await backup(setup, 'vm', await image('a.raw', [5, 6]));
    await setup.forgetSnapshot(old);
    await setup.close();
    const blocker = await open('backup'); // keeps the generation waiting
    const gc = await open('prune');
    const r1 = await prune(gc, { graceMs: 0 });
    expect(r1.waiting).toBeDefined();
    const gens = await readGenerations(gc.backend, gc.codec);
    expect(gens.generations[0]?.condemned?.packs.length).toBeGreaterThan(0);

    const late = await open('backup');
    expect(late.index.hiddenPacks).toBeGreaterThan(0);
    const snap = await backup(late, 'vm2', await image('b.raw', [5, 6]));
    // Both chunks were stored again: the snapshot does not depend on the condemned packs.
    expect(snap.disks[0]!.stats.bytesNew).toBeGreaterThanOrEqual(2 * MiB);
    // It was committed after the mark: an incremental must not build on it while the generation is pending.
    expect(await late.parentUsable(snap)).toBe(false);
    await late.close();
    await blocker.close();

    const r2 = await prune(gc, { graceMs: 0 });
    expect(r2.deleted[0]!.uncondemned).toBe(0);
    await gc.close();
    const reader = await open();
    expect((await diskBytes(reader, snap)).equals(bytesOf([5, 6]))).toBe(true);
    await reader.close();
  });

  it('a session that began after the condemnation and pins a forgotten snapshot holds the deletion', async () => {
    const setup = await open();
    const junk = await backup(setup, 'junk', await image('j.raw', [70]));
    const s = await backup(setup, 'vm', await image('a.raw', [7]));
    await setup.forgetSnapshot(junk);
    await setup.close();
    // A generation kept pending by a session alive at its condemnation ...
    const blocker = await open('backup');
    const gc = await open('prune');
    const r1 = await prune(gc, { graceMs: 0 });
    expect(r1.waiting?.sessions).toEqual([blocker.session!.id.toString('hex')]);
    // ... a restore that starts after it (not in its wait set) pins s, which is then forgotten.
    const restore = await open('restore');
    await restore.session!.pin([s.id]);
    await gc.forgetSnapshot(s);
    await blocker.close();
    // Only the pin holds the deletion now (s's data is live for the mark it was condemned by,
    // and it must not become deletable while the restore reads it).
    const r2 = await prune(gc, { graceMs: 0 });
    expect(r2.deleted).toEqual([]);
    expect(r2.waiting?.reasons).toEqual([
      expect.stringMatching(/still reads snapshot .*forgotten meanwhile/),
    ]);
    expect(r2.waiting?.sessions).toEqual([]);
    await restore.close();
    const r3 = await prune(gc, { graceMs: 0 });
    expect(r3.deleted.length).toBeGreaterThan(0);
    await gc.close();
  });

  it('the grace period holds the deletion until it is over', async () => {
    const repo = await open();
    await repo.forgetSnapshot(await backup(repo, 'vm', await image('a.raw', [8])));
    const r = await prune(repo, { graceMs: 3600_000 });
    // Packs younger than the grace are not even condemned.
    expect(r.condemned).toBeUndefined();
    const r0 = await prune(repo, { graceMs: 0 });
    expect(r0.deleted.length).toBe(1);
    await repo.close();
  });

  it.each([0, 2])(
    'repacks a pack whose unused share exceeds --max-unused (%i worker threads)',
    async (workers) => {
      const repo = await open('prune', workers);
      // One 4 MiB pack holding four chunks; three of them become garbage.
      const a = await backup(repo, 'vm', await image('a.raw', [11, 12, 13, 14]));
      const b = await backup(repo, 'vm2', await image('b.raw', [11]));
      await repo.forgetSnapshot(a);
      const dry = await prune(repo, { graceMs: 0, dryRun: true });
      expect(dry.condemned?.repackedPacks).toBeGreaterThan(0);
      const r = await prune(repo, { graceMs: 0, maxUnusedPercent: 10 });
      expect(r.condemned?.repackedRecords).toBeGreaterThan(0);
      expect(r.deleted.length).toBe(1);
      expect(await packBytes(repoDir)).toBeLessThan(1.2 * MiB);
      await repo.close();
      const reader = await open();
      expect((await diskBytes(reader, b)).equals(bytesOf([11]))).toBe(true);
      await reader.close();
    },
  );

  it('with nothing to delete, merges the chunk index when backups left many deltas', async () => {
    const repo = await open();
    for (let i = 0; i < 34; i++) await backup(repo, `vm${i}`, await image('a.raw', [500 + i]));
    const before = repo.index.liveObjects().length;
    expect(before).toBeGreaterThan(32);
    const r = await prune(repo, { graceMs: 0 });
    expect(r.deleted).toEqual([]);
    expect(r.compacted?.objects).toBe(before);
    await repo.index.reload();
    expect(repo.index.liveObjects().length).toBeLessThan(3);
    await repo.close();
  });

  it('an encrypted repository prunes the same way', async () => {
    const encDir = join(dir, 'enc');
    const kdf = { N: 16384, r: 8, p: 1 };
    await (
      await Repository.init(encDir, {
        packSizeBytes: 4 * MiB,
        encryption: 'aes-256-gcm',
        password: 'pw',
        kdf,
      })
    ).close();
    const openEnc = async (): Promise<Repository> => {
      const r = await Repository.open(
        encDir,
        { workers: 0, password: async () => 'pw' },
        new LocalBackend(encDir),
      );
      await r.startSession('test');
      return r;
    };
    const repo = await openEnc();
    const gone = await backup(repo, 'vm', await image('a.raw', [31, 32, 33]));
    const kept = await backup(repo, 'vm', await image('b.raw', [31, 34]));
    await repo.forgetSnapshot(gone);
    const r = await prune(repo, { graceMs: 0 });
    expect(r.deleted.length).toBe(1);
    expect(r.freedBytes).toBeGreaterThan(MiB);
    await repo.close();
    const reader = await openEnc();
    expect((await diskBytes(reader, kept)).equals(bytesOf([31, 34]))).toBe(true);
    await reader.close();
  });

  it('a writer whose heartbeats fail commits nothing, and prune counts its session gone', async () => {
    const { FaultBackend } = await import('../../src/repo/backend/fault.js');
    // The first session PUT succeeds, every later one fails (a partition, lost credentials).
    const faulty = new FaultBackend(new LocalBackend(repoDir), [
      { op: 'put', keyPrefix: 'sessions/', nth: 2, times: 'always', fail: 'transient' },
    ]);
    const writer = await Repository.open(repoDir, { workers: 0 }, faulty);
    await writer.startSession('backup', { heartbeatMs: 50, fenceMs: 300 });
    await new Promise((r) => setTimeout(r, 500));
    const err = await backup(writer, 'vm', await image('a.raw', [41])).catch((e: unknown) => e);
    expect((err as Error).name).toBe('SessionExpiredError');
    const gc = await open('prune');
    expect(await gc.listSnapshots()).toEqual([]);
    // Silent past the expiry: gone to prune (its object is still there).
    await new Promise((r) => setTimeout(r, 300));
    const r = await prune(gc, { graceMs: 0, expiredAfterMs: 200 });
    expect(r.waiting).toBeUndefined();
    await writer.close();
    await gc.close();
  });
});
