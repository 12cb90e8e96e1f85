import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ChunkCorruptError,
  ChunkMissingError,
  DiskIndex,
  LocalBackend,
  MemoryBackend,
  Repository,
  chunkIdOf,
  format,
} from '../../src/repo/index.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';

const KiB = 1024;
const compressible = Buffer.from('vmvault chunk '.repeat(9000)).subarray(0, 120 * KiB);
const random = seededBytes(128 * KiB, 11);
const shared = (): Buffer => Buffer.from(new SharedArrayBuffer(256 * KiB));

describe('ChunkStore reads (get / getInto) on every path', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => ({ dir, cleanup } = await makeTmpDir('vmvault-chunks-')));
  afterAll(async () => cleanup());

  // workers 2: the local backend's files are read by the worker threads themselves;
  // workers 0: everything inline; the memory backend: blobs travel to the workers.
  for (const [name, workers, memory] of [
    ['local, worker threads', 2, false],
    ['local, inline', 0, false],
    ['memory backend, worker threads', 2, true],
  ] as const) {
    describe(name, () => {
      let repo: Repository;
      let backend: LocalBackend | MemoryBackend;
      beforeAll(async () => {
        const path = join(dir, name.replace(/\W+/g, '-'));
        backend = memory ? new MemoryBackend() : new LocalBackend(path);
        await (await Repository.init(path, { chunkSizeBytes: 256 * KiB }, backend)).close();
        repo = await Repository.open(path, { workers }, backend);
        for (const c of [compressible, random]) await repo.chunks.put(Buffer.from(c));
      });
      afterAll(async () => repo.close());

      it('returns verified plaintext for zstd and stored chunks, into shared and plain buffers', async () => {
        for (const c of [compressible, random]) {
          const id = chunkIdOf(c);
          expect((await repo.chunks.get(id)).equals(c)).toBe(true);
          for (const dest of [shared(), Buffer.alloc(256 * KiB)]) {
            const n = await repo.chunks.getInto(id, dest);
            expect(n).toBe(c.length);
            expect(dest.subarray(0, n).equals(c)).toBe(true);
          }
        }
      });

      it('a missing chunk is ChunkMissingError; a damaged one ChunkCorruptError naming where', async () => {
        const gone = chunkIdOf(Buffer.from('never stored'));
        await expect(repo.chunks.get(gone)).rejects.toBeInstanceOf(ChunkMissingError);
        await expect(repo.chunks.getInto(gone, shared())).rejects.toBeInstanceOf(ChunkMissingError);

        const victim = Buffer.from(random);
        victim[0]! ^= 1;
        const id = chunkIdOf(victim);
        await repo.chunks.put(Buffer.from(victim));
        const key = format.Keys.data(id);
        const blob = await backend.get(key);
        blob[format.BLOB_HEADER_BYTES + 1000]! ^= 0xff; // one payload byte
        await backend.put(key, blob);
        const loc = { snapshot: 'abc', disk: 'vda', offset: 4096 };
        for (const read of [() => repo.chunks.get(id, loc), () => repo.chunks.getInto(id, shared(), loc)]) {
          const err = await read().then(
            () => undefined,
            (e: unknown) => e,
          );
          expect(err).toBeInstanceOf(ChunkCorruptError);
          expect((err as Error).message).toMatch(/BLAKE3 mismatch/);
          expect((err as Error).message).toContain('vda');
        }
      });

      it('refuses a chunk longer than the buffer it is read into', async () => {
        await expect(
          repo.chunks.getInto(chunkIdOf(random), shared().subarray(0, 64 * KiB)),
        ).rejects.toBeInstanceOf(ChunkCorruptError);
      });
    });
  }

  it('a truncated chunk file is ChunkCorruptError, whether stored raw (read straight into the buffer) or zstd', async () => {
    const path = join(dir, 'truncated');
    const backend = new LocalBackend(path);
    await (await Repository.init(path, { chunkSizeBytes: 256 * KiB }, backend)).close();
    const repo = await Repository.open(path, { workers: 1 }, backend);
    try {
      for (const c of [random, compressible]) {
        const id = chunkIdOf(c);
        await repo.chunks.put(Buffer.from(c), id);
        const key = format.Keys.data(id);
        const blob = await backend.get(key);
        await backend.put(key, blob.subarray(0, blob.length - 100));
        await expect(repo.chunks.getInto(id, shared())).rejects.toThrow(/does not match its header/);
        await expect(repo.chunks.getInto(id, shared())).rejects.toBeInstanceOf(ChunkCorruptError);
      }
    } finally {
      await repo.close();
    }
  });

  it("a directory in a chunk file's place is the backend's read error, naming the cause", async () => {
    const path = join(dir, 'unreadable');
    const backend = new LocalBackend(path);
    await (await Repository.init(path, { chunkSizeBytes: 256 * KiB }, backend)).close();
    const repo = await Repository.open(path, { workers: 1 }, backend);
    try {
      const id = chunkIdOf(random);
      const file = join(path, ...format.Keys.data(id).split('/'));
      // A directory where the chunk file should be: the worker's read through its stack fails.
      await mkdir(file, { recursive: true });
      await writeFile(join(file, 'x'), 'x');
      await expect(repo.chunks.getInto(id, shared())).rejects.toThrow(
        /cannot read .*: a directory is in its place/,
      );
      await rm(file, { recursive: true });
      await repo.chunks.put(Buffer.from(random), id);
      expect(await repo.chunks.getInto(id, shared())).toBe(random.length);
    } finally {
      await repo.close();
    }
  });
});

/** A local backend that records the order of name syncs and object writes. */
class RecordingBackend extends LocalBackend {
  readonly events: string[] = [];
  override async barrier(keys: Iterable<string>): Promise<void> {
    const list = [...keys];
    this.events.push(
      `sync ${list
        .map((k) => k.split('/').slice(0, 2).join('/'))
        .sort()
        .join(' ')}`,
    );
    await super.barrier(list);
  }
  override async putIfAbsent(key: string, data: Buffer): Promise<boolean> {
    this.events.push(`put ${key.split('/')[0]}`);
    return super.putIfAbsent(key, data);
  }
}

describe('ChunkStore writes through worker threads (local backend)', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => ({ dir, cleanup } = await makeTmpDir('vmvault-chunk-writes-')));
  afterAll(async () => cleanup());

  const open = async (name: string): Promise<{ repo: Repository; backend: RecordingBackend }> => {
    const path = join(dir, name);
    const backend = new RecordingBackend(path);
    await (await Repository.init(path, { chunkSizeBytes: 256 * KiB }, backend)).close();
    return { repo: await Repository.open(path, { workers: 2 }, backend), backend };
  };

  it('stores each chunk once, in files the backend reads back, and leaves no temp files', async () => {
    const { repo, backend } = await open('store');
    try {
      const first = await Promise.all([compressible, random].map((c) => repo.chunks.put(Buffer.from(c))));
      expect(first.map((r) => r.isNew)).toEqual([true, true]);
      for (const [i, c] of [compressible, random].entries()) {
        const blob = await backend.get(format.Keys.data(chunkIdOf(c)));
        expect(first[i]!.storedBytes).toBe(blob.length);
        expect((await repo.chunks.get(chunkIdOf(c))).equals(c)).toBe(true);
      }
      expect(first[0]!.storedBytes).toBeLessThan(compressible.length / 4); // zstd
      expect((await repo.chunks.put(Buffer.from(random))).isNew).toBe(false);
      expect(await readdir(join(dir, 'store', 'tmp'))).toEqual([]);
    } finally {
      await repo.close();
    }
    // Another process (a fresh store, nothing remembered) finds the file and stores nothing.
    const again = await Repository.open(join(dir, 'store'), { workers: 2 });
    try {
      expect(await again.chunks.put(Buffer.from(compressible))).toMatchObject({
        isNew: false,
        storedBytes: 0,
      });
    } finally {
      await again.close();
    }
  });

  it('syncs the names of stored and found chunks (one per directory) before an index is written', async () => {
    const { repo, backend } = await open('barrier');
    try {
      const ids = [compressible, random].map((c) => chunkIdOf(c));
      for (const c of [compressible, random]) await repo.chunks.put(Buffer.from(c));
      backend.events.length = 0;
      const index = DiskIndex.empty(512 * KiB, 256 * KiB);
      ids.forEach((id, slot) => index.set(slot, id));
      await repo.putIndex(index);
      const dirs = [...new Set(ids.map((id) => `data/${id.slice(0, 2)}`))].sort().join(' ');
      expect(backend.events).toEqual([`sync ${dirs}`, 'put index']);
      // Nothing new since: the next index needs no sync.
      backend.events.length = 0;
      await repo.putIndex(DiskIndex.empty(256 * KiB, 256 * KiB));
      expect(backend.events).toEqual(['put index']);
    } finally {
      await repo.close();
    }
  });

  it('a chunk that cannot be written is a BackendError naming it, and nothing is left half-made', async () => {
    const { repo } = await open('broken');
    try {
      const id = chunkIdOf(random);
      // Where the chunk's directory should be there is a plain file: its link fails.
      await mkdir(join(dir, 'broken', 'data'), { recursive: true });
      await writeFile(join(dir, 'broken', 'data', id.slice(0, 2)), 'x');
      await expect(repo.chunks.put(Buffer.from(random), id)).rejects.toMatchObject({
        code: expect.stringMatching(/^BACKEND_/),
        message: expect.stringContaining(id.slice(0, 2)),
      });
      expect(await readdir(join(dir, 'broken', 'tmp'))).toEqual([]);
      await rm(join(dir, 'broken', 'data', id.slice(0, 2)));
      expect((await repo.chunks.put(Buffer.from(random), id)).isNew).toBe(true);
    } finally {
      await repo.close();
    }
  });
});
