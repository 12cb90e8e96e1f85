import { chmod, cp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  checkFailure,
  checkRepository,
  chunkIdOf,
  DiskIndex,
  format,
  MemoryBackend,
  Repository,
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
    const imgA = join(dir, 'a.raw');
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
    for (const snap of [snapA, snapB])
      expect(text.stdout).toContain(
        `chunk ${id} is missing: snapshot ${snap.slice(0, 8)} (web), disk vda, offset ${4 * MiB}`,
      );
    expect(text.stdout).toMatch(/^damaged chunks\s+1 missing/m);
    expect(expectOneLineError(text)).toMatch(
      /^vmvault: check found 2 problems \(1 missing chunk\) in 2 snapshots; .*stores missing chunks again/,
    );

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
        `^chunk ${id} is corrupt: snapshot ${snapB.slice(0, 8)} \\(web\\), disk vda, offset ${2 * MiB}; `,
        'm',
      ),
    );
    expect(text.stdout).toMatch(/^chunks read\s+7 /m);
    expect(expectOneLineError(text)).toMatch(
      /^vmvault: check found 1 problem \(1 corrupt chunk\) in 1 snapshot; delete the corrupt chunk files/,
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
    expect(text.stdout).toContain(`snapshot ${snapB} is damaged: integrity tag mismatch`);
    expect(expectOneLineError(text)).toMatch(
      /check found 1 problem \(1 damaged snapshot manifest\) in 1 snapshot; .*delete its manifest/,
    );
    const { json } = await checkJson(r);
    expect(json).toMatchObject({ snapshots: 2, snapshotsDamaged: 1, indexes: 1, unreferencedExact: false });
    expect(json.problems).toEqual([
      expect.objectContaining({ kind: 'snapshot-damaged', snapshot: snapB, vm: null }),
    ]);
  });

  it('a damaged or missing disk index is reported with its snapshot and disk', async () => {
    const show = await runCli(['show', snapA, '-r', repo, '--json']);
    const indexId = (JSON.parse(show.stdout) as { disks: Array<{ index: string }> }).disks[0]!.index;
    const indexFile = (r: string): string => join(r, 'index', indexId.slice(0, 2), indexId);

    const r = await copyRepo();
    await flipByte(indexFile(r), 40);
    const text = await check(r);
    expect(text.code).toBe(20);
    expect(text.stdout).toContain(
      `disk index ${indexId} is damaged: snapshot ${snapA.slice(0, 8)} (web), disk vda; integrity tag mismatch`,
    );
    expect(expectOneLineError(text)).toMatch(
      /check found 1 problem \(1 missing or damaged index\) in 1 snapshot/,
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
});

describe('checkRepository (library, memory backend)', () => {
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
      const snap = await repo.putSnapshot({
        version: 1,
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
            sizeBytes: 128 * KiB,
            chunkSizeBytes: 64 * KiB,
            index: idx.id,
            allocatedBytes: 64 * KiB,
            stats: {
              bytesRead: 0,
              bytesNew: 0,
              bytesDedup: 0,
              bytesZero: 0,
              bytesReused: 0,
              bytesStored: 0,
              chunksNew: 0,
            },
          },
        ],
        files: [file],
        program: 'test',
      });
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
