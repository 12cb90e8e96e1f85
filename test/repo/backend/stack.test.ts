import { readFile, readdir, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { mapError } from '../../../src/repo/backend/local-files.js';
import {
  BackendError,
  BackendWrapper,
  BlobCodec,
  ChunkIndex,
  PackStore,
  codecSectionSealer,
  codecSpec,
  FaultBackend,
  LimitBackend,
  MemoryBackend,
  ReadOnlyBackend,
  Repository,
  RetryBackend,
  openBackend,
  specOf,
  type Backend,
  type BackendSpec,
  type FaultRule,
  type Payload,
  type PutOptions,
} from '../../../src/repo/index.js';
import { CancelledError } from '../../../src/util/index.js';
import { makeTmpDir } from '../../helpers/tmp.js';
import { conformanceCases } from './conformance-cases.js';
import { runConformanceInWorker } from './worker-run.js';
import { wrappedSpec } from './stacks.js';

const storeCodec = BlobCodec.fromSpec(codecSpec(1));
/** A pack store on `b` (4 MiB packs: chunks are written at `flush`). */
async function packStore(b: Backend, workers: number): Promise<PackStore> {
  const index = await ChunkIndex.load(b, codecSectionSealer(storeCodec));
  return new PackStore(b, storeCodec, index, {
    packSizeBytes: 4 * 1024 * 1024,
    chunkSizeBytes: 1024 * 1024,
    workers,
  });
}
/** Stores a chunk and commits (the pack is written at the flush). */
async function putAndFlush(store: PackStore, data: Buffer): Promise<{ id: string; isNew: boolean }> {
  const r = await store.put(data);
  await store.flush();
  return r;
}

/** The layers of a stack, outermost first. */
function layers(b: Backend): Backend[] {
  const out: Backend[] = [b];
  while (out[out.length - 1] instanceof BackendWrapper)
    out.push((out[out.length - 1] as BackendWrapper).inner);
  return out;
}
function layer<T extends Backend>(b: Backend, cls: abstract new (...a: never[]) => T): T {
  const found = layers(b).find((x): x is T => x instanceof cls);
  if (!found) throw new Error(`no ${cls.name} in the stack`);
  return found;
}

const fast = { attempts: 5, baseDelayMs: 1, maxDelayMs: 4 };
const memWith = (faults: FaultRule[], retry: BackendSpec['retry'] = fast): Backend =>
  openBackend({ kind: 'memory', location: 'memory:', retry, faults });

async function withDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const t = await makeTmpDir();
  try {
    return await fn(t.dir);
  } finally {
    await t.cleanup();
  }
}

describe('the wrapper stack is built in one place, from a plain JSON spec', () => {
  it('a spec survives JSON and builds read-only → retry → limit → faults → backend', () => {
    const spec: BackendSpec = { ...wrappedSpec('local', '/srv/repo'), readOnly: true };
    const b = openBackend(JSON.parse(JSON.stringify(spec)) as BackendSpec);
    expect(layers(b).map((x) => x.constructor.name)).toEqual([
      'ReadOnlyBackend',
      'RetryBackend',
      'LimitBackend',
      'FaultBackend',
      'LocalBackend',
    ]);
    expect(b.location).toBe('/srv/repo');
    expect(b.capabilities).toEqual({
      parallelOps: 4,
      atomicCreate: true,
      needsBarrier: true,
      modTimes: true,
      preferLargeReads: false,
    });
  });

  it('a location string gives retry over the backend, with no way around the interface', async () => {
    await withDir(async (dir) => {
      const b = openBackend(dir);
      expect(layers(b).map((x) => x.constructor.name)).toEqual(['RetryBackend', 'LocalBackend']);
      // The chunk store's workers build this stack from its spec: no file access to pass on.
      for (const escape of ['filePath', 'fileStore', 'syncNames'])
        for (const layer of layers(b)) expect(escape in layer).toBe(false);
      expect(typeof b.removeStaleTemp).toBe('function');
      expect(layers(openBackend('memory:')).map((x) => x.constructor.name)).toEqual([
        'RetryBackend',
        'MemoryBackend',
      ]);
      expect(() => openBackend('sftp://host/x')).toThrow(/unsupported repository location/);
      const s3 = openBackend('s3:http://127.0.0.1:9/bucket/x');
      expect(layers(s3).map((x) => x.constructor.name)).toEqual(['RetryBackend', 'S3Backend']);
      await s3.close();
      expect(() => openBackend({ kind: 'local', location: 'relative' })).toThrow(/absolute path/);
    });
  });
});

describe('conformance inside a worker thread (the worker builds the stack from the spec)', () => {
  it.each([
    ['memory', () => Promise.resolve({ dir: 'memory:', cleanup: async () => {} })],
    ['local', () => makeTmpDir()],
  ] as const)('%s, through the whole wrapper stack', async (kind, make) => {
    const t = await make();
    try {
      // The worker gets the spec of a stack built here, and builds the same one.
      const spec = specOf(openBackend(wrappedSpec(kind, t.dir)));
      expect(spec).toEqual(wrappedSpec(kind, t.dir));
      const report = await runConformanceInWorker(spec!);
      expect(report.inWorker).toBe(true);
      expect(report.results.filter((r) => !r.ok)).toEqual([]);
      expect(report.results.map((r) => r.name)).toEqual(conformanceCases.map((c) => c.name));
      // The spec's faults were injected in the worker, and its retry hid them.
      expect(report.injected).toBeGreaterThanOrEqual(conformanceCases.length);
    } finally {
      await t.cleanup();
    }
  });
});

describe("the chunk store's workers build the stack from the spec and go through it", () => {
  const chunk = (n: number): Buffer => Buffer.alloc(64 * 1024, n);
  const shared = (): Buffer => Buffer.from(new SharedArrayBuffer(1 << 20));
  const caught = (p: Promise<unknown>): Promise<unknown> =>
    p.then(
      () => undefined,
      (e: unknown) => e,
    );

  it('faults injected in worker-side stores and reads reach the caller; the main stack sees no call', async () => {
    await withDir(async (dir) => {
      await (await Repository.init(dir, {})).close();
      const stack = (faults: FaultRule[]): Backend =>
        openBackend({ kind: 'local', location: dir, retry: fast, faults });

      // Every chunk write fails with a full disk, in the worker's stack: the caller gets its error.
      const full = stack([{ op: 'putIfAbsent', keyPrefix: 'data/', times: 'always', fail: 'no-space' }]);
      const writes = await packStore(full, 2);
      try {
        const err = (await caught(putAndFlush(writes, chunk(1)))) as BackendError;
        expect(err).toBeInstanceOf(BackendError);
        expect(err.kind).toBe('no-space');
        expect(err.retryable).toBe(false);
        expect(err.oneLine()).toMatch(/^cannot write data\/\S+: no space left on the device; free space/);
      } finally {
        await writes.close();
      }
      // The main thread's stack only listed the (empty) chunk index: no chunk write went through it.
      expect(layer(full, FaultBackend).calls.get('putIfAbsent') ?? 0).toBe(0);

      // A chunk stored; then every ranged read of a chunk fails, in the worker's stack.
      const plain = await packStore(openBackend(dir), 2);
      const { id } = await plain.put(chunk(2));
      await plain.flush();
      await plain.close();
      const denied = stack([{ op: 'getRangeInto', keyPrefix: 'data/', times: 'always', fail: 'permission' }]);
      const reads = await packStore(denied, 2);
      try {
        for (const read of [() => reads.getInto(id, shared()), () => reads.get(id)]) {
          const err = (await caught(read())) as BackendError;
          expect(err).toBeInstanceOf(BackendError);
          expect(err.kind).toBe('permission');
          expect(err.message).toMatch(/^cannot read data\/\S+: permission denied$/);
        }
      } finally {
        await reads.close();
      }
      // (The main thread's stack reads index pages; the packs' records are read in the workers.)

      // Transient faults on the first store and the first read: the worker stack's retry hides them.
      const flaky = stack([
        { op: 'putIfAbsent', keyPrefix: 'data/', times: 1, fail: 'transient' },
        { op: 'getRangeInto', keyPrefix: 'data/', times: 1, fail: 'transient' },
      ]);
      const retried = await packStore(flaky, 1);
      try {
        const r = await putAndFlush(retried, chunk(3));
        expect(r.isNew).toBe(true);
        const dest = shared();
        expect(await retried.getInto(r.id, dest)).toBe(64 * 1024);
        expect(dest.subarray(0, 64 * 1024).equals(chunk(3))).toBe(true);
      } finally {
        await retried.close();
      }
      // (The main thread's stack wrote the delta index object; the pack was written by a worker.)
    });
  });

  it('a memory stack cannot be shared with workers: its chunk work runs inline, on its own objects', async () => {
    const b = memWith([]);
    const store = await packStore(b, 2);
    try {
      const { id, isNew } = await putAndFlush(store, chunk(4));
      expect(isNew).toBe(true);
      let packs = 0;
      for await (const o of b.list('data/')) if (o.key.startsWith('data/')) packs++;
      expect(packs).toBe(1);
      expect((await store.get(id)).equals(chunk(4))).toBe(true);
    } finally {
      await store.close();
    }
  });
});

describe('retry', () => {
  it('retries transient errors, with backoff, until the call succeeds', async () => {
    const b = memWith([{ op: 'put', nth: 1, times: 3, fail: 'transient' }]);
    await b.put('k', Buffer.from('v'));
    expect((await b.get('k')).toString()).toBe('v');
    expect(layer(b, FaultBackend).calls.get('put')).toBe(4);
    expect(layer(b, RetryBackend).retries).toBe(3);
  });

  it('a retried write of a gather list resends the same parts, even if the caller reuses its array', async () => {
    const seen: (readonly Buffer[])[] = [];
    class Recording extends MemoryBackend {
      override async put(key: string, data: Payload, opts?: PutOptions): Promise<void> {
        seen.push(data instanceof Uint8Array ? [data] : [...data]);
        return super.put(key, data, opts);
      }
    }
    const faulty = new FaultBackend(new Recording(), [{ op: 'put', nth: 1, times: 2, fail: 'transient' }]);
    const b = new RetryBackend(faulty, fast, { random: () => 0 });
    const parts = [Buffer.from('ab'), Buffer.alloc(0), Buffer.from('cde')];
    const p = b.put('k', parts);
    parts.length = 0; // the caller goes on with its array at once
    parts.push(Buffer.from('zzz'));
    await p;
    expect(faulty.calls.get('put')).toBe(3);
    expect(seen).toHaveLength(1); // only the third try reached the backend
    expect(seen[0]!.map((x) => x.toString())).toEqual(['ab', '', 'cde']);
    expect((await b.get('k')).toString()).toBe('abcde');
  });

  it.each(['permission', 'no-space', 'not-found', 'other', 'range'] as const)(
    'never retries a %s error',
    async (kind) => {
      const b = memWith([{ op: 'any', times: 'always', fail: kind }]);
      const err = await b.get('k').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(BackendError);
      expect((err as BackendError).kind).toBe(kind);
      expect(layer(b, FaultBackend).calls.get('get')).toBe(1);
      expect(layer(b, RetryBackend).retries).toBe(0);
    },
  );

  it('gives up after `attempts` tries with the last error as it was', async () => {
    const b = memWith([{ op: 'stat', times: 'always', fail: 'transient' }], { ...fast, attempts: 3 });
    await expect(b.stat('a/b')).rejects.toThrow(/^cannot stat a\/b: EAGAIN$/);
    expect(layer(b, FaultBackend).calls.get('stat')).toBe(3);
  });

  it('starts no retry whose wait would end beyond `totalMs`', async () => {
    const inner = new FaultBackend(new MemoryBackend(), [{ op: 'get', times: 'always', fail: 'transient' }]);
    const opts = { attempts: 100, baseDelayMs: 1000, maxDelayMs: 1000, totalMs: 1400 };
    const b = new RetryBackend(inner, opts, { random: () => 0.5 }); // waits of 500 ms
    await expect(b.get('k')).rejects.toMatchObject({ kind: 'transient' });
    expect(inner.calls.get('get')).toBe(3); // at 0, 500 and 1000 ms; a wait to 1500 ms is not started
  });

  it('backs off exponentially with full jitter, capped at maxDelayMs', async () => {
    const delays: number[] = [];
    const inner = new FaultBackend(new MemoryBackend(), [{ op: 'get', times: 4, fail: 'transient' }]);
    await inner.inner.put('k', Buffer.from('v'));
    const b = new RetryBackend(
      inner,
      { attempts: 5, baseDelayMs: 10, maxDelayMs: 30 },
      { random: () => 0.5, onRetry: (i) => delays.push(i.delayMs) },
    );
    expect((await b.get('k')).toString()).toBe('v');
    expect(delays).toEqual([5, 10, 15, 15]); // half of min(30, 10·2^n)
  });

  it('an abort ends a backoff at once', async () => {
    const ac = new AbortController();
    const inner = new FaultBackend(new MemoryBackend(), [{ op: 'get', times: 'always', fail: 'transient' }]);
    const b = new RetryBackend(
      inner,
      { baseDelayMs: 60_000, maxDelayMs: 60_000, totalMs: 600_000 },
      {
        signal: ac.signal,
        random: () => 0.99,
      },
    );
    const p = b.get('k');
    setTimeout(() => ac.abort(), 20);
    await expect(p).rejects.toBeInstanceOf(CancelledError);
  });

  it('a listing that fails before its first item is retried, and lists every key once', async () => {
    const b = memWith([{ op: 'list', times: 2, fail: 'transient' }]);
    for (const k of ['l/1', 'l/2', 'l/3']) await b.put(k, Buffer.from(k));
    const keys: string[] = [];
    for await (const o of b.list('l/')) keys.push(o.key);
    expect(keys).toEqual(['l/1', 'l/2', 'l/3']);
    expect(layer(b, RetryBackend).retries).toBe(2);
  });
});

describe('concurrency limit', () => {
  class Counting extends MemoryBackend {
    now = 0;
    peak = 0;
    override async get(key: string): Promise<Buffer> {
      this.peak = Math.max(this.peak, ++this.now);
      try {
        await new Promise((r) => setTimeout(r, 5));
        return await super.get(key);
      } finally {
        this.now--;
      }
    }
  }
  it('keeps at most maxInFlight operations in flight', async () => {
    const inner = new Counting();
    await inner.put('k', Buffer.from('v'));
    const b = new LimitBackend(inner, 3);
    await Promise.all(Array.from({ length: 20 }, () => b.get('k')));
    expect(inner.peak).toBe(3);
  });
  it('a listing holds no slot while the caller works on an item (no deadlock at 1)', async () => {
    const inner = new Counting();
    for (const k of ['a/1', 'a/2']) await inner.put(k, Buffer.from(k));
    const b = new LimitBackend(inner, 1);
    const got: string[] = [];
    for await (const o of b.list('a/')) got.push((await b.get(o.key)).toString());
    expect(got).toEqual(['a/1', 'a/2']);
  });
});

describe('read-only', () => {
  it('every mutating call fails with one line, before the backend sees it; reads pass', async () => {
    await withDir(async (dir) => {
      await openBackend(dir).put('snapshots/one', Buffer.from('s'));
      const b = openBackend({
        kind: 'local',
        location: dir,
        readOnly: true,
        faults: [{ op: 'any', delayMs: 0 }],
      });
      expect((await b.get('snapshots/one')).toString()).toBe('s');
      for (const [what, op] of [
        ['write', () => b.put('snapshots/one', Buffer.from('x'))],
        ['write', () => b.putIfAbsent('snapshots/two', Buffer.from('x'))],
        ['delete', () => b.delete('snapshots/one')],
      ] as const) {
        const err = (await op().catch((e: unknown) => e)) as BackendError;
        expect(err).toBeInstanceOf(BackendError);
        expect(err.kind).toBe('permission');
        expect(err.message).toMatch(
          new RegExp(`^cannot ${what} snapshots/\\w+: the repository is opened read-only$`),
        );
        expect(err.oneLine()).not.toContain('\n');
      }
      expect(layer(b, FaultBackend).calls.get('put') ?? 0).toBe(0);
      expect((await b.get('snapshots/one')).toString()).toBe('s');
      // Nothing writes around it: no create, no temp cleanup.
      expect(b.create).toBeUndefined();
      expect(b.removeStaleTemp).toBeUndefined();
      await b.barrier(['snapshots/one']);
      const store = await packStore(b, 2);
      try {
        await expect(putAndFlush(store, Buffer.alloc(4096, 1))).rejects.toThrow(
          /the repository is opened read-only/,
        );
      } finally {
        await store.close();
      }
    });
  });
  it('ReadOnlyBackend over any backend', async () => {
    const mem = new MemoryBackend();
    await mem.put('x', Buffer.from('1'));
    const b = new ReadOnlyBackend(mem);
    expect(await b.exists('x')).toBe(true);
    await expect(b.put('x', Buffer.from('2'))).rejects.toThrow(
      'cannot write x: the repository is opened read-only',
    );
  });
});

describe('fault injection: failures leave nothing referenced lost', () => {
  it('a write that fails half-way leaves no object, and the next open removes its temp file', async () => {
    await withDir(async (dir) => {
      await (await Repository.init(dir, {})).close();
      const b = openBackend({
        kind: 'local',
        location: dir,
        faults: [{ op: 'write', keyPrefix: 'index/', halfWrite: true }],
      });
      const data = Buffer.alloc(64 * 1024, 9);
      await expect(b.putIfAbsent('index/ab/half', data)).rejects.toThrow(
        /^cannot write index\/ab\/half: input\/output error$/,
      );
      expect(await b.stat('index/ab/half')).toBeUndefined();
      const listed: string[] = [];
      for await (const o of b.list('index/')) listed.push(o.key);
      expect(listed).toEqual([]);
      const temps = await readdir(join(dir, 'tmp'));
      expect(temps).toHaveLength(1);
      // The writer died long ago: the next open (through the default stack) removes its leftover.
      const old = new Date(Date.now() - 25 * 3600_000);
      await utimes(join(dir, 'tmp', temps[0]!), old, old);
      await (await Repository.open(dir)).close();
      expect(await readdir(join(dir, 'tmp'))).toEqual([]);
      // A second try of the same write succeeds.
      expect(await b.putIfAbsent('index/ab/half', data)).toBe(true);
    });
  });

  it('a gather-list write that fails half-way leaves no object, only a temp file with the first half', async () => {
    await withDir(async (dir) => {
      await (await Repository.init(dir, {})).close();
      const b = openBackend({
        kind: 'local',
        location: dir,
        retry: false,
        faults: [{ op: 'write', keyPrefix: 'packs/', times: 2, halfWrite: true }],
      });
      const parts = Array.from({ length: 1500 }, (_, i) => Buffer.alloc(i % 4 === 0 ? 0 : 97, i & 0xff));
      const whole = Buffer.concat(parts);
      for (const write of [() => b.putIfAbsent('packs/ab/half', parts), () => b.put('packs/ab/half', parts)])
        await expect(write()).rejects.toThrow(/^cannot write packs\/ab\/half: input\/output error$/);
      expect(await b.stat('packs/ab/half')).toBeUndefined();
      const listed: string[] = [];
      for await (const o of b.list('packs/')) listed.push(o.key);
      expect(listed).toEqual([]);
      const temps = await readdir(join(dir, 'tmp'));
      expect(temps).toHaveLength(2);
      for (const t of temps)
        expect((await readFile(join(dir, 'tmp', t))).equals(whole.subarray(0, whole.length >> 1))).toBe(true);
      // The next try stores the whole concatenation.
      expect(await b.putIfAbsent('packs/ab/half', parts)).toBe(true);
      expect((await b.get('packs/ab/half')).equals(whole)).toBe(true);
      await b.close();
    });
  });

  it('a gather-list write that fails half-way in memory leaves nothing', async () => {
    const b = new FaultBackend(new MemoryBackend(), [{ op: 'write', halfWrite: true }]);
    await expect(b.putIfAbsent('packs/x', [Buffer.from('ab'), Buffer.from('cd')])).rejects.toMatchObject({
      kind: 'other',
    });
    expect(await b.exists('packs/x')).toBe(false);
  });

  it('a full disk fails cleanly with the ENOSPC message, and the next run stores the data', async () => {
    await withDir(async (dir) => {
      await (await Repository.init(dir, {})).close();
      const full = openBackend({
        kind: 'local',
        location: dir,
        faults: [{ op: 'write', keyPrefix: 'data/', times: 'always', fail: 'no-space' }],
      });
      const repo = await Repository.open(dir, { workers: 2 }, full);
      let err: unknown;
      try {
        err = await (async () => {
          await repo.putFile('domain-xml', 'web.xml', Buffer.from('<domain/>'));
          await repo.chunks.flush(); // the pack is written here
        })().catch((e: unknown) => e);
      } finally {
        await repo.close();
      }
      expect(err).toBeInstanceOf(BackendError);
      const e = err as BackendError;
      expect(e.kind).toBe('no-space');
      expect(e.retryable).toBe(false);
      const key = /^cannot write (data\/\S+): /.exec(e.message)?.[1];
      expect(key).toBeDefined();
      // Word for word what a real ENOSPC from the file system gives.
      const real = mapError(
        Object.assign(new Error('ENOSPC'), { code: 'ENOSPC' }),
        key!,
        'write',
      ) as BackendError;
      expect(e.oneLine()).toBe(real.oneLine());
      expect(e.oneLine()).toMatch(/no space left on the device; free space on the repository storage/);
      // The workers' own stacks wrote (and met the fault); this thread's stack stored nothing.
      expect(layer(full, FaultBackend).calls.get('putIfAbsent') ?? 0).toBe(0);
      const objects: string[] = [];
      for await (const o of openBackend(dir).list('data/')) objects.push(o.key);
      expect(objects).toEqual([]);
      const again = await Repository.open(dir, { workers: 2 });
      try {
        const f = await again.putFile('domain-xml', 'web.xml', Buffer.from('<domain/>'));
        expect((await again.getFile(f)).toString()).toBe('<domain/>');
      } finally {
        await again.close();
      }
    });
  });

  it('a delay-only rule slows the chosen calls and fails nothing', async () => {
    const b = memWith([{ op: 'read', nth: 1, times: 1, delayMs: 30 }]);
    await b.put('k', Buffer.from('v'));
    const t0 = Date.now();
    expect((await b.get('k')).toString()).toBe('v');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(25);
    expect(layer(b, FaultBackend).failed).toBe(0);
  });

  it('refuses a malformed rule', () => {
    expect(() => memWith([{ op: 'get', nth: 0 }])).toThrow(/invalid fault rule/);
  });
});
