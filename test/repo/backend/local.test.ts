import { spawn } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { errnoMeaning, mapError } from '../../../src/repo/backend/local-files.js';
import {
  BlobCodec,
  ChunkIndex,
  LocalBackend,
  PackStore,
  Repository,
  codecSectionSealer,
  codecSpec,
  openBackend,
} from '../../../src/repo/index.js';
import { makeTmpDir } from '../../helpers/tmp.js';
import { defineBackendConformance } from './conformance.js';
import { wrappedSpec } from './stacks.js';

let current: string | undefined;

/** Several OS processes race putIfAbsent on one key; each prints whether it created it. */
async function raceInProcesses(key: string, writers: number): Promise<boolean[]> {
  const script = `
    import { LocalBackend } from ${JSON.stringify(new URL('../../../src/repo/backend/local.ts', import.meta.url).pathname)};
    const b = new LocalBackend(process.argv[1]);
    const r = await b.putIfAbsent(process.argv[2], Buffer.alloc(1 << 20, 3));
    process.stdout.write(String(r));`;
  const runs = Array.from(
    { length: writers },
    () =>
      new Promise<boolean>((resolve, reject) => {
        const p = spawn(
          process.execPath,
          ['--import', 'tsx', '--input-type=module', '-e', script, current!, key],
          { stdio: ['ignore', 'pipe', 'inherit'] },
        );
        let out = '';
        p.stdout.on('data', (d: Buffer) => (out += d.toString()));
        p.on('close', (code) =>
          code === 0 ? resolve(out === 'true') : reject(new Error(`writer exited ${code}`)),
        );
      }),
  );
  return Promise.all(runs);
}

defineBackendConformance('local', {
  make: async () => {
    const t = await makeTmpDir();
    current = t.dir;
    return { backend: new LocalBackend(t.dir), cleanup: t.cleanup };
  },
  raceInProcesses,
});

// What the chunk store's workers open (OpenRuntime.blocking): synchronous reads and stats.
defineBackendConformance('local, blocking (as in a worker thread)', {
  make: async () => {
    const t = await makeTmpDir();
    current = t.dir;
    return { backend: new LocalBackend(t.dir, { blocking: true }), cleanup: t.cleanup };
  },
  raceInProcesses,
});

defineBackendConformance('local, through the wrapper stack', {
  make: async () => {
    const t = await makeTmpDir();
    current = t.dir;
    return { backend: openBackend(wrappedSpec('local', t.dir)), cleanup: t.cleanup };
  },
  raceInProcesses,
});

describe('local backend specifics', () => {
  it('leaves no temp files behind and maps ENOSPC-like errors to typed errors', async () => {
    const t = await makeTmpDir();
    try {
      const b = new LocalBackend(t.dir);
      await b.put('a/b', Buffer.from('x'));
      expect(await b.putIfAbsent('a/b', Buffer.from('y'))).toBe(false);
      expect(await readdir(join(t.dir, 'tmp'))).toEqual([]);
      // A root that is a regular file: every write fails with a typed error, not a raw errno.
      await b.put('plainfile', Buffer.from('x'));
      const broken = new LocalBackend(join(t.dir, 'plainfile'));
      await expect(broken.put('k/x', Buffer.from('x'))).rejects.toMatchObject({
        code: expect.stringMatching(/^BACKEND_/),
      });
    } finally {
      await t.cleanup();
    }
  });
});

/** A local backend that records every directory fsync (in order). */
class RecordingBackend extends LocalBackend {
  /** Below the root: '/index/ab', the root: '/'. */
  readonly synced: string[] = [];
  readonly absolute: string[] = [];
  protected override async fsyncDir(dir: string): Promise<void> {
    await super.fsyncDir(dir);
    this.synced.push(dir.slice(this.root.length) || '/');
    this.absolute.push(dir);
  }
}

describe('local backend durability of new directories', () => {
  it('put and putIfAbsent fsync the parent of every directory they made, once per directory', async () => {
    const t = await makeTmpDir();
    try {
      const b = new RecordingBackend(t.dir);
      await b.putIfAbsent('index/ab/one', Buffer.from('1'));
      // The object's directory (its name), then index/ (entry ab), then the root (entry index).
      expect(b.synced).toEqual(['/index/ab', '/index', '/']);
      b.synced.length = 0;
      await b.put('index/ab/two', Buffer.from('2'));
      expect(b.synced).toEqual(['/index/ab']);
      b.synced.length = 0;
      await b.put('index/cd/three', Buffer.from('3'));
      expect(b.synced).toEqual(['/index/cd', '/index']);
    } finally {
      await t.cleanup();
    }
  });

  it("writes durable 'at-barrier' sync nothing; the barrier syncs their directories and new parents once", async () => {
    const t = await makeTmpDir();
    try {
      const b = new RecordingBackend(t.dir);
      const late = { durable: 'at-barrier' } as const;
      expect(await b.putIfAbsent('index/ab/one', Buffer.from('1'), late)).toBe(true);
      await b.put('index/ab/two', Buffer.from('2'), late);
      await b.put('index/cd/three', Buffer.from('3'), late);
      expect(b.synced).toEqual([]);
      await b.barrier(['index/ab/one', 'index/ab/two', 'index/cd/three']);
      expect(b.synced.slice(0, 2).sort()).toEqual(['/index/ab', '/index/cd']);
      expect(b.synced.slice(2)).toEqual(['/index', '/']);
      b.synced.length = 0;
      await b.barrier(['index/ab/one']);
      expect(b.synced).toEqual(['/index/ab']);
    } finally {
      await t.cleanup();
    }
  });

  it('packs made by worker threads: the barrier (PackStore.flush) syncs data/<hh>, data/ and the root', async () => {
    const t = await makeTmpDir();
    try {
      const b = new RecordingBackend(t.dir);
      await (await Repository.init(t.dir, { chunkSizeBytes: 64 * 1024 }, b)).close();
      b.synced.length = 0;
      const codec = BlobCodec.fromSpec(codecSpec(1));
      const index = await ChunkIndex.load(b, codecSectionSealer(codec));
      const store = new PackStore(b, codec, index, {
        packSizeBytes: 4 << 20,
        chunkSizeBytes: 64 * 1024,
        workers: 2,
      });
      try {
        const chunks = [1, 2, 3, 4].map((i) => Buffer.alloc(64 * 1024, i));
        for (const c of chunks) await store.put(c);
        expect(b.synced).toEqual([]); // the chunks are in the workers' open packs: nothing written yet
        await store.flush();
        const packs: string[] = [];
        for await (const o of openBackend(t.dir).list('data/')) packs.push(o.key);
        expect(packs.length).toBeGreaterThanOrEqual(1);
        const hh = [...new Set(packs.map((k) => `/${k.slice(0, k.lastIndexOf('/'))}`))].sort();
        // The packs' directories, then data/ and the root, all before the index object is written.
        expect(b.synced.slice(0, hh.length).sort()).toEqual(hh);
        expect(b.synced.slice(hh.length, hh.length + 2)).toEqual(['/data', '/']);
        b.synced.length = 0;
        await store.put(Buffer.alloc(64 * 1024, 1)); // known: no new directory, nothing to sync
        await store.flush();
        expect(b.synced).toEqual([]);
      } finally {
        await store.close();
      }
    } finally {
      await t.cleanup();
    }
  });

  it('init fsyncs the parent of the repository directory and of each parent it made', async () => {
    const t = await makeTmpDir();
    try {
      const b = new RecordingBackend(join(t.dir, 'a', 'b', 'repo'));
      await (await Repository.init(b.root, {}, b)).close();
      // a, a/b and repo were made: their parents first, then config's directory (the root).
      expect(b.absolute).toEqual([t.dir, join(t.dir, 'a'), join(t.dir, 'a', 'b'), b.root]);
    } finally {
      await t.cleanup();
    }
  });
});

describe('errno mapping', () => {
  const err = (code: string): NodeJS.ErrnoException => Object.assign(new Error(code), { code });
  it.each([
    ['EROFS', 'permission', /read-only file system; mount it read-write/],
    ['EACCES', 'permission', /permission denied; check the permissions/],
    ['EPERM', 'permission', /permission denied/],
    ['ENOSPC', 'no-space', /no space left on the device/],
    ['EDQUOT', 'no-space', /disk quota exceeded/],
    ['ENOENT', 'not-found', /not found/],
    ['EISDIR', 'not-a-file', /a directory is in its place/],
    ['ENOTDIR', 'other', /a file is in the way/],
    ['ELOOP', 'other', /symbolic links/],
    ['ENAMETOOLONG', 'other', /file name too long/],
    ['EMFILE', 'other', /too many open files; raise the limit/],
    ['EIO', 'other', /input\/output error; the storage device reported a failure/],
    ['EXDEV', 'other', /different file systems/],
    ['EAGAIN', 'transient', /EAGAIN/],
  ])('%s on a write is %s', (code, kind, text) => {
    const e = mapError(err(code), 'data/ab/x', 'write') as InstanceType<typeof Error> & {
      kind: string;
      oneLine(): string;
    };
    expect(e.kind).toBe(kind);
    expect(e.oneLine()).toMatch(/^cannot write data\/ab\/x: /);
    expect(e.oneLine()).toMatch(text);
  });
  it('a path through a file is "not found" when reading (the object cannot be there)', () => {
    expect(errnoMeaning(err('ENOTDIR'), true).kind).toBe('not-found');
    expect(errnoMeaning(err('ENOTDIR'), false).kind).toBe('other');
  });
});
