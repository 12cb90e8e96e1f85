import { chmod, cp, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  checkFailure,
  checkRepository,
  chunkIdOf,
  DiskIndex,
  emptyDiskStats,
  format,
  MemoryBackend,
  Repository,
  type SnapshotFile,
  type SnapshotManifest,
} from '../../src/repo/index.js';
import { expectOneLineError, runCli, type CliResult } from '../helpers/cli.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const run = requireTools(['qemu-img']);

interface CheckJson {
  ok: boolean;
  readData: boolean;
  snapshots: number;
  snapshotsDamaged: number;
  indexes: number;
  chunksReferenced: number;
  bytesReferenced: number;
  chunksRead: number;
  bytesRead: number;
  chunksMissing: number;
  chunksCorrupt: number;
  repair: boolean;
  repaired: Array<{ chunkId: string; quarantineKey: string }>;
  unreferencedChunks: number;
  unreferencedBytes: number;
  unreferencedExact: boolean;
  problems: Array<{
    kind: string;
    snapshot: string;
    shortId: string;
    vm: string | null;
    disk?: string;
    offset?: number;
    chunkId?: string;
    index?: string;
    reason?: string;
    quarantineKey?: string;
    message: string;
  }>;
}

const chunkFile = (repo: string, id: string): string => join(repo, 'data', id.slice(0, 2), id);

async function flipByte(path: string, at: number): Promise<void> {
  const buf = await readFile(path);
  buf[at] = buf[at]! ^ 0xff;
  await chmod(path, 0o644);
  await writeFile(path, buf);
}

describe.runIf(run)('vmvault check', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: string;
  let snapA: string;
  let snapB: string;
  /** Chunk ids of image A's slots 0..5 (6 MiB of distinct random data, then a 2 MiB hole). */
  const slotsA: string[] = [];
  let slot2B: string;
  let imgA: string;
  let copies = 0;

  /** A private copy of the two-snapshot repository, for a test to damage. */
  async function copyRepo(): Promise<string> {
    const to = join(dir, `copy-${copies++}`);
    await cp(repo, to, { recursive: true });
    return to;
  }

  const check = async (r: string, ...flags: string[]): Promise<CliResult> =>
    runCli(['check', '-r', r, ...flags]);
  const checkJson = async (r: string, ...flags: string[]): Promise<{ res: CliResult; json: CheckJson }> => {
    const res = await check(r, '--json', ...flags);
    return { res, json: JSON.parse(res.stdout) as CheckJson };
  };

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir('vmvault-check-'));
    repo = join(dir, 'repo');
    const a = seededBytes(6 * MiB, 11);
    for (let s = 0; s < 6; s++) slotsA.push(chunkIdOf(a.subarray(s * MiB, (s + 1) * MiB)));
    imgA = join(dir, 'a.raw');
    const imgB = join(dir, 'b.raw');
    for (const [path, data] of [
      [imgA, a],
      [imgB, Buffer.concat([a.subarray(0, 2 * MiB), seededBytes(MiB, 12), a.subarray(3 * MiB)])],
    ] as const) {
      const fh = await open(path, 'w');
      await fh.truncate(8 * MiB);
      await fh.write(data, 0, data.length, 0);
      await fh.close();
    }
    slot2B = chunkIdOf(seededBytes(MiB, 12));
    expect((await runCli(['init', repo])).code).toBe(0);
    const ra = await runCli(['backup-image', '-r', repo, '--vm', 'web', `${imgA}:vda`, '--json']);
    expect(ra.code, ra.stderr).toBe(0);
    snapA = (JSON.parse(ra.stdout) as { snapshot: string }).snapshot;
    const rb = await runCli(['backup-image', '-r', repo, '--vm', 'web', `${imgB}:vda`, '--json']);
    expect(rb.code, rb.stderr).toBe(0);
    snapB = (JSON.parse(rb.stdout) as { snapshot: string }).snapshot;
  });
  afterAll(async () => cleanup());

  it('a sound repository passes: counts each shared chunk once, exit 0, nothing on stderr', async () => {
    const text = await check(repo);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stderr).toBe('');
    expect(text.stdout).toMatch(/^snapshots\s+2 checked, 0 damaged$/m);
    expect(text.stdout).toMatch(/^indexes\s+2 checked$/m);
    expect(text.stdout).toMatch(/^chunks referenced\s+7 /m);
    expect(text.stdout).toMatch(/^unreferenced\s+0 chunks, 0 B/m);
    expect(text.stdout).toMatch(/no problems found/);

    const { res, json } = await checkJson(repo);
    expect(res.code).toBe(0);
    expect(json).toMatchObject({
      ok: true,
      readData: false,
      snapshots: 2,
      snapshotsDamaged: 0,
      indexes: 2,
      chunksReferenced: 7, // 6 of A, 5 of them shared with B, + B's own slot 2
      bytesReferenced: 7 * MiB,
      chunksRead: 0,
      chunksMissing: 0,
      chunksCorrupt: 0,
      unreferencedChunks: 0,
      unreferencedBytes: 0,
      unreferencedExact: true,
      problems: [],
    });

    const full = await checkJson(repo, '--read-data');
    expect(full.res.code, full.res.stderr).toBe(0);
    expect(full.json).toMatchObject({ ok: true, readData: true, chunksRead: 7, bytesRead: 7 * MiB });
  });

  it('a deleted chunk is missing in every snapshot that uses it (no --read-data needed)', async () => {
    const r = await copyRepo();
    const id = slotsA[4]!;
    await rm(chunkFile(r, id));
    const text = await check(r);
    expect(text.code).toBe(20);
    // One line for the chunk (short ids), however many snapshots use it; --json lists each place.
    const lines = text.stdout.split('\n').filter((l) => l.startsWith('chunk '));
    expect(lines).toEqual([
      `chunk ${id.slice(0, 8)} is missing: snapshot ${snapA.slice(0, 8)} (web), disk vda, offset ${4 * MiB} (and 1 more place; 2 snapshots in all)`,
    ]);
    expect(text.stdout).not.toContain(id);
    expect(text.stdout).toMatch(/^damaged chunks\s+1 missing/m);
    const err = expectOneLineError(text);
    expect(err).toMatch(
      /^vmvault: check found 1 chunk missing \(referenced by 2 snapshots\); a backup that reads the same data in full .* stores them again; meanwhile 'vmvault restore --ignore-errors'/,
    );
    expect(err.length).toBeLessThan(220);

    const { res, json } = await checkJson(r);
    expect(res.code).toBe(20);
    expect(JSON.parse(res.stderr.trim().split('\n').pop()!)).toMatchObject({
      message_type: 'exit_error',
      code: 'CHECK_FAILED',
      exit_code: 20,
    });
    expect(json.ok).toBe(false);
    expect(json.chunksMissing).toBe(1);
    expect(json.problems).toHaveLength(2);
    expect(json.problems.map((p) => p.snapshot).sort()).toEqual([snapA, snapB].sort());
    for (const p of json.problems)
      expect(p).toMatchObject({
        kind: 'chunk-missing',
        vm: 'web',
        disk: 'vda',
        offset: 4 * MiB,
        chunkId: id,
      });
  });

  it('a corrupt chunk passes the presence check and fails --read-data, named with its location', async () => {
    const r = await copyRepo();
    const id = slot2B; // only snapshot B uses it
    await flipByte(chunkFile(r, id), 36 + 1000); // a payload byte
    const plain = await check(r);
    expect(plain.code, plain.stderr).toBe(0);

    const text = await check(r, '--read-data');
    expect(text.code).toBe(20);
    expect(text.stdout).toMatch(
      new RegExp(
        `^chunk ${id.slice(0, 8)} is corrupt: snapshot ${snapB.slice(0, 8)} \\(web\\), disk vda, offset ${2 * MiB}; `,
        'm',
      ),
    );
    expect(text.stdout).toMatch(/^chunks read\s+7 /m);
    expect(expectOneLineError(text)).toMatch(
      /^vmvault: check found 1 chunk corrupt \(referenced by 1 snapshot\); run 'vmvault check --read-data --repair' to move the damaged objects to quarantine\/; then .*stores them again/,
    );
    const { json } = await checkJson(r, '--read-data');
    expect(json).toMatchObject({ ok: false, chunksRead: 7, chunksCorrupt: 1, chunksMissing: 0 });
    expect(json.problems).toEqual([
      expect.objectContaining({
        kind: 'chunk-corrupt',
        snapshot: snapB,
        disk: 'vda',
        offset: 2 * MiB,
        chunkId: id,
      }),
    ]);
  });

  it('--repair moves a corrupt chunk to quarantine/; a full backup of the same data stores it again', async () => {
    const r = await copyRepo();
    const id = slotsA[1]!; // used by both snapshots, at offset 1 MiB
    await flipByte(chunkFile(r, id), 36 + 1000);
    const damaged = await readFile(chunkFile(r, id));

    const text = await check(r, '--read-data', '--repair');
    expect(text.code).toBe(20); // the snapshots are still not whole
    const key = new RegExp(`quarantine/${id}-\\d{8}T\\d{6}Z`);
    expect(text.stdout).toMatch(
      new RegExp(
        `^chunk ${id.slice(0, 8)} is missing: snapshot ${snapA.slice(0, 8)} \\(web\\), disk vda, offset ${MiB}; was corrupt: .+; moved to quarantine/${id.slice(0, 8)}…-\\d{8}T\\d{6}Z \\(and 1 more place; 2 snapshots in all\\)$`,
        'm',
      ),
    );
    expect(text.stdout).toMatch(/^damaged chunks\s+1 missing, 0 corrupt$/m);
    expect(text.stdout).toMatch(/^repaired\s+1 corrupt chunk moved to quarantine\//m);
    expect(text.stdout).toMatch(
      /stay damaged until a full backup of the same data \(backup -l full, backup-image\)/,
    );
    expect(expectOneLineError(text)).toMatch(
      /^vmvault: check found 1 chunk missing \(1 corrupt, moved to quarantine\/; referenced by 2 snapshots\); a backup that reads the same data in full .*stores them again; meanwhile .*--ignore-errors/,
    );

    // Moved, not deleted: the damaged bytes are kept under quarantine/, data/ no longer has them.
    const moved = await readdir(join(r, 'quarantine'));
    expect(moved).toHaveLength(1);
    expect(`quarantine/${moved[0]!}`).toMatch(new RegExp(`^${key.source}$`));
    expect((await readFile(join(r, 'quarantine', moved[0]!))).equals(damaged)).toBe(true);
    await expect(stat(chunkFile(r, id))).rejects.toMatchObject({ code: 'ENOENT' });

    // A plain check now reports it missing; quarantine/ is not listed as chunks.
    const plain = await checkJson(r);
    expect(plain.res.code).toBe(20);
    expect(plain.json).toMatchObject({
      chunksMissing: 1,
      unreferencedChunks: 0,
      repair: false,
      repaired: [],
    });
    expect(plain.json.problems.map((p) => p.kind)).toEqual(['chunk-missing', 'chunk-missing']);

    // A full read of the same data stores it again: the repository is whole, the old snapshot
    // restores byte-identical.
    const b = await runCli(['backup-image', '-r', r, '--vm', 'web', `${imgA}:vda`, '--json']);
    expect(b.code, b.stderr).toBe(0);
    const after = await checkJson(r, '--read-data');
    expect(after.res.code, after.res.stderr).toBe(0);
    expect(after.json).toMatchObject({ ok: true, chunksRead: 7, chunksMissing: 0, unreferencedChunks: 0 });
    const out = join(dir, `repaired-${copies}.raw`);
    const restored = await runCli(['restore', snapA, '-r', r, '--disk', 'vda', '-o', out]);
    expect(restored.code, restored.stderr).toBe(0);
    expect((await readFile(out)).equals(await readFile(imgA))).toBe(true);
  });

  it('--repair --json lists the moved chunks; missing chunks cannot be repaired', async () => {
    const r = await copyRepo();
    await flipByte(chunkFile(r, slot2B), 36 + 1000);
    await rm(chunkFile(r, slotsA[4]!));
    const { res, json } = await checkJson(r, '--read-data', '--repair');
    expect(res.code).toBe(20);
    expect(JSON.parse(res.stderr.trim().split('\n').pop()!)).toMatchObject({
      code: 'CHECK_FAILED',
      exit_code: 20,
    });
    expect(json).toMatchObject({ ok: false, repair: true, chunksMissing: 2, chunksCorrupt: 0 });
    expect(json.repaired).toEqual([
      {
        chunkId: slot2B,
        quarantineKey: expect.stringMatching(new RegExp(`^quarantine/${slot2B}-\\d{8}T\\d{6}Z$`)),
      },
    ]);
    const repairedProblem = json.problems.find((p) => p.chunkId === slot2B);
    expect(repairedProblem).toMatchObject({
      kind: 'chunk-missing',
      snapshot: snapB,
      offset: 2 * MiB,
      quarantineKey: json.repaired[0]!.quarantineKey,
    });
    // The message is short (ids shortened); the full key is in quarantineKey.
    expect(repairedProblem?.message).toContain(
      `moved to ${json.repaired[0]!.quarantineKey.replace(slot2B, `${slot2B.slice(0, 8)}…`)}`,
    );
    expect(
      json.problems.filter((p) => p.chunkId === slotsA[4]).every((p) => p.quarantineKey === undefined),
    ).toBe(true);

    const text = await check(await copyRepo(), '--read-data', '--repair');
    expect(text.stdout).toMatch(/^repaired\s+0 corrupt chunks moved to quarantine\/$/m);
    expect(text.code).toBe(0);
    const r2 = await copyRepo();
    await rm(chunkFile(r2, slotsA[4]!));
    const missing = await check(r2, '--read-data', '--repair');
    expect(missing.code).toBe(20);
    expect(missing.stdout).toMatch(/^1 missing chunk cannot be repaired: only a full backup/m);
  });

  it('--repair without --read-data is a usage error', async () => {
    const r = await check(repo, '--repair');
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(expectOneLineError(r)).toMatch(/^vmvault: --repair needs --read-data; add --read-data/);
  });

  it('unreferenced chunks are counted but are not an error', async () => {
    // An extra valid blob written through the repository API.
    const r = await copyRepo();
    const extra = await Repository.open(r, { workers: 0 });
    const put = await extra.chunks.put(seededBytes(MiB, 99));
    await extra.close();
    expect(put.isNew).toBe(true);
    const { res, json } = await checkJson(r, '--read-data');
    expect(res.code, res.stderr).toBe(0);
    expect(json).toMatchObject({
      ok: true,
      chunksReferenced: 7,
      chunksRead: 7,
      unreferencedChunks: 1,
      unreferencedBytes: (await stat(chunkFile(r, put.id))).size,
      unreferencedExact: true,
    });

    // A deleted manifest leaves the chunk only its snapshot used.
    const r2 = await copyRepo();
    await rm(join(r2, 'snapshots', snapB));
    const text = await check(r2);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/^snapshots\s+1 checked/m);
    expect(text.stdout).toMatch(/^unreferenced\s+1 chunk, 1\.00 MiB \(not an error/m);
    const { json: j2 } = await checkJson(r2);
    expect(j2).toMatchObject({ ok: true, snapshots: 1, chunksReferenced: 6, unreferencedChunks: 1 });
    expect(j2.unreferencedBytes).toBe((await stat(chunkFile(r2, slot2B))).size);
  });

  it('a damaged snapshot manifest is reported by id, other snapshots are still checked', async () => {
    const r = await copyRepo();
    await flipByte(join(r, 'snapshots', snapB), 40);
    const text = await check(r);
    expect(text.code).toBe(20);
    expect(text.stdout).toContain(`snapshot ${snapB.slice(0, 8)} is damaged: integrity tag mismatch`);
    expect(expectOneLineError(text)).toMatch(
      /check found 1 snapshot manifest damaged; run 'vmvault check --read-data --repair' to move the damaged objects to quarantine\//,
    );
    const { json } = await checkJson(r);
    expect(json).toMatchObject({ snapshots: 2, snapshotsDamaged: 1, indexes: 1, unreferencedExact: false });
    expect(json.problems).toEqual([
      expect.objectContaining({ kind: 'snapshot-damaged', snapshot: snapB, vm: null }),
    ]);
  });

  it('a damaged or missing disk index is reported with its snapshot and disk', async () => {
    const show = await runCli(['show', snapA, '-r', repo, '--json']);
    const indexId = (JSON.parse(show.stdout) as { disks: Array<{ root: string }> }).disks[0]!.root;
    const indexFile = (r: string): string => join(r, 'index', indexId.slice(0, 2), indexId);

    const r = await copyRepo();
    await flipByte(indexFile(r), 40);
    const text = await check(r);
    expect(text.code).toBe(20);
    expect(text.stdout).toContain(
      `disk index ${indexId.slice(0, 8)} is damaged: snapshot ${snapA.slice(0, 8)} (web), disk vda; integrity tag mismatch`,
    );
    expect(expectOneLineError(text)).toMatch(
      /check found 1 disk index damaged \(referenced by 1 snapshot\); run 'vmvault check --read-data --repair'/,
    );

    const r2 = await copyRepo();
    await rm(indexFile(r2));
    const { res, json } = await checkJson(r2);
    expect(res.code).toBe(20);
    expect(json.problems).toEqual([
      expect.objectContaining({
        kind: 'index-missing',
        snapshot: snapA,
        vm: 'web',
        disk: 'vda',
        index: indexId,
      }),
    ]);
    // Snapshot B's index is still read: its chunks are referenced, none is missing.
    expect(json).toMatchObject({ chunksReferenced: 6, chunksMissing: 0, unreferencedChunks: 1 });
  });

  it('--repair moves a damaged disk index to quarantine/; a full backup stores it again', async () => {
    const show = await runCli(['show', snapA, '-r', repo, '--json']);
    const indexId = (JSON.parse(show.stdout) as { disks: Array<{ root: string }> }).disks[0]!.root;
    const r = await copyRepo();
    const indexFile = join(r, 'index', indexId.slice(0, 2), indexId);
    await flipByte(indexFile, 40);
    const damaged = await readFile(indexFile);
    const { res, json } = await checkJson(r, '--read-data', '--repair');
    expect(res.code).toBe(20);
    const q = json as CheckJson & { repairedIndexes: Array<{ id: string; quarantineKey: string }> };
    expect(q.repairedIndexes).toEqual([
      {
        id: indexId,
        quarantineKey: expect.stringMatching(new RegExp(`^quarantine/index-${indexId}-\\d{8}T\\d{6}Z$`)),
      },
    ]);
    expect(json.problems).toEqual([
      expect.objectContaining({
        kind: 'index-missing',
        snapshot: snapA,
        index: indexId,
        quarantineKey: q.repairedIndexes[0]!.quarantineKey,
      }),
    ]);
    await expect(stat(indexFile)).rejects.toMatchObject({ code: 'ENOENT' });
    const moved = join(r, q.repairedIndexes[0]!.quarantineKey);
    expect((await readFile(moved)).equals(damaged)).toBe(true);
    // Snapshot A is damaged (reported), B restores; a full backup of A's data stores the index again.
    const text = await check(r);
    expect(text.stdout).toMatch(
      new RegExp(
        `^disk index ${indexId.slice(0, 8)} is missing: snapshot ${snapA.slice(0, 8)} \\(web\\), disk vda$`,
        'm',
      ),
    );
    expect(expectOneLineError(text)).toMatch(
      /^vmvault: check found 1 disk index missing \(referenced by 1 snapshot\)/,
    );
    const b = await runCli(['backup-image', '-r', r, '--vm', 'web', `${imgA}:vda`, '--json']);
    expect(b.code, b.stderr).toBe(0);
    const after = await check(r, '--read-data');
    expect(after.code, after.stdout + after.stderr).toBe(0);
  });

  it('--repair moves a damaged manifest to quarantine/: the snapshot is gone from listings', async () => {
    const r = await copyRepo();
    await flipByte(join(r, 'snapshots', snapB), 40);
    const list = await runCli(['snapshots', '-r', r]);
    expect(list.code, list.stderr).toBe(0);
    expect(list.stderr).toMatch(
      new RegExp(
        `^warning: snapshot ${snapB.slice(0, 8)} is damaged: integrity tag mismatch \\(skipped\\); .*check --read-data --repair`,
      ),
    );
    const { res, json } = await checkJson(r, '--read-data', '--repair');
    expect(res.code).toBe(20);
    const q = json as CheckJson & { repairedSnapshots: Array<{ id: string; quarantineKey: string }> };
    expect(q.repairedSnapshots).toEqual([
      {
        id: snapB,
        quarantineKey: expect.stringMatching(new RegExp(`^quarantine/snapshot-${snapB}-\\d{8}T\\d{6}Z$`)),
      },
    ]);
    expect(json.problems).toEqual([
      expect.objectContaining({
        kind: 'snapshot-damaged',
        snapshot: snapB,
        quarantineKey: q.repairedSnapshots[0]!.quarantineKey,
      }),
    ]);
    const after = await check(r);
    expect(after.code, after.stdout).toBe(0);
    expect(after.stdout).toMatch(/^snapshots\s+1 checked, 0 damaged$/m);
    const list2 = await runCli(['snapshots', '-r', r]);
    expect(list2.stderr).toBe('');
    expect(list2.stdout).toContain(snapA.slice(0, 8));
    expect(list2.stdout).not.toContain(snapB.slice(0, 8));
  });
});

describe('checkRepository (library, memory backend)', () => {
  it('repair copies the blob to quarantine/ before it deletes the data key', async () => {
    const ops: string[] = [];
    class Recording extends MemoryBackend {
      override async putIfAbsent(key: string, data: Buffer): Promise<boolean> {
        ops.push(`putIfAbsent ${key}`);
        return super.putIfAbsent(key, data);
      }
      override async put(key: string, data: Buffer): Promise<void> {
        ops.push(`put ${key}`);
        return super.put(key, data);
      }
      override async delete(key: string): Promise<void> {
        ops.push(`delete ${key}`);
        return super.delete(key);
      }
    }
    const backend = new Recording();
    const KiB = 1024;
    const repo = await Repository.init('memory:', { chunkSizeBytes: 64 * KiB }, backend);
    try {
      const put = await repo.chunks.put(seededBytes(64 * KiB, 7));
      const index = DiskIndex.empty(64 * KiB, 64 * KiB);
      index.set(0, put.id);
      const idx = await repo.putIndex(index);
      await repo.putSnapshot(oneDiskManifest(idx.id, 64 * KiB, 64 * KiB));
      const dataKey = format.Keys.data(put.id);
      const blob = await backend.get(dataKey);
      blob[100] = blob[100]! ^ 0xff;
      await backend.put(dataKey, blob);
      await expect(checkRepository(repo, { repair: true })).rejects.toMatchObject({ exitCode: 2 });

      ops.length = 0;
      const now = new Date('2026-12-01T20:15:00.123Z');
      const r = await checkRepository(repo, { readData: true, repair: true, now });
      const quarantineKey = `quarantine/${put.id}-20261201T201500Z`;
      expect(r.repaired).toEqual([{ chunkId: put.id, quarantineKey }]);
      expect(ops).toEqual([`putIfAbsent ${quarantineKey}`, `delete ${dataKey}`]);
      expect((await backend.get(quarantineKey)).equals(blob)).toBe(true);
      expect(await backend.exists(dataKey)).toBe(false);
      expect(r).toMatchObject({ chunksMissing: 1, chunksCorrupt: 0, unreferencedChunks: 0 });
      expect(r.problems).toEqual([
        expect.objectContaining({ kind: 'chunk-missing', chunkId: put.id, offset: 0, quarantineKey }),
      ]);
      expect(checkFailure(r)?.exitCode).toBe(20);

      // The same data stored again (by another process: this one's ChunkStore remembers the id
      // as present): sound, and the quarantined copy is never read.
      const next = await Repository.open('memory:', { workers: 0 }, backend);
      try {
        expect((await next.chunks.put(seededBytes(64 * KiB, 7))).isNew).toBe(true);
        const again = await checkRepository(next, { readData: true, repair: true });
        expect(again.problems).toEqual([]);
        expect(again.repaired).toEqual([]);
      } finally {
        await next.close();
      }
    } finally {
      await repo.close();
    }
  });

  it('checks the files stored beside the disks and names a missing file chunk', async () => {
    const backend = new MemoryBackend();
    const KiB = 1024;
    const repo = await Repository.init('memory:', { chunkSizeBytes: 64 * KiB }, backend);
    try {
      const data = seededBytes(64 * KiB, 5);
      const put = await repo.chunks.put(data);
      const index = DiskIndex.empty(128 * KiB, 64 * KiB);
      index.set(1, put.id);
      const idx = await repo.putIndex(index);
      const xml = Buffer.concat([Buffer.from('<domain/>'.repeat(10000)), Buffer.alloc(64 * KiB)]);
      const file = await repo.putFile('domain-xml', 'vm.xml', xml);
      expect(file.chunks).toHaveLength(3); // two data chunks, one zero chunk
      const snap = await repo.putSnapshot(oneDiskManifest(idx.id, 128 * KiB, 64 * KiB, [file]));
      const clean = await checkRepository(repo, { readData: true });
      expect(clean).toMatchObject({ snapshots: 1, indexes: 1, files: 1, chunksReferenced: 3, chunksRead: 3 });
      expect(clean.problems).toEqual([]);
      expect(checkFailure(clean)).toBeUndefined();

      await backend.delete(format.Keys.data(file.chunks[1]!));
      const r = await checkRepository(repo);
      expect(r.problems).toEqual([
        {
          kind: 'chunk-missing',
          snapshot: snap.id,
          vm: 'vm',
          file: 'domain-xml:vm.xml',
          offset: 64 * KiB,
          chunkId: file.chunks[1],
        },
      ]);
      expect(r.unreferencedChunks).toBe(0);
      expect(checkFailure(r)?.exitCode).toBe(20);
    } finally {
      await repo.close();
    }
  });
});

/** A manifest of one image snapshot with disk vda (and optional stored files), for library tests. */
function oneDiskManifest(
  root: string,
  sizeBytes: number,
  chunkSizeBytes: number,
  files: SnapshotFile[] = [],
): SnapshotManifest {
  return {
    version: format.MANIFEST_VERSION,
    vm: { name: 'vm' },
    time: new Date().toISOString(),
    host: 'h',
    tags: [],
    parent: null,
    mode: 'image',
    checkpoint: null,
    disks: [
      {
        target: 'vda',
        sizeBytes,
        chunkSizeBytes,
        root,
        allocatedBytes: sizeBytes,
        stats: emptyDiskStats(),
      },
    ],
    files,
    program: 'test',
  };
}
