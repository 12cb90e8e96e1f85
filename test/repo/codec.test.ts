import { createHash, randomBytes } from 'node:crypto';
import { blake3 } from '@napi-rs/blake-hash';
import { afterAll, describe, expect, it } from 'vitest';
import {
  BlobCodec,
  ChunkStore,
  DiskIndex,
  LocalBackend,
  MemoryBackend,
  Repository,
  codecSpec,
  format,
  newConfig,
  type ChunkId,
  type CodecSpec,
} from '../../src/repo/index.js';
import { WorkerPool } from '../../src/util/index.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

const inputs = {
  random: seededBytes(1 << 20, 7),
  text: Buffer.from('vmvault golden '.repeat(70000).slice(0, 1 << 20)),
  small: Buffer.from('{"a":1}'),
};

/**
 * What vmvault wrote before the codec existed (commit 2c953ed: blake3() ids, encodeBlob with the
 * chunk level, indexes and manifests at zstd:3): SHA-256 of each blob, and each id.
 */
const FORMAT1 = {
  ids: {
    random: '873ad93b836eb7c4de4aaa827b81dfd523de3ca4e9745f5a95edff555cdff5f5',
    text: '96159b839d2c6595014e72a95768023f6eb8fc9dab40f8ce99dea3c9b8ef516b',
    small: 'd59b6562d7c9b121bc9760873d787890ef4d429aad33a70b405baa0fa08a1f53',
  },
  blobs: {
    random: { 0: 'e3381d11', 1: 'e3381d11', 3: 'e3381d11', [-4]: 'e3381d11' },
    text: { 0: 'e16046d9', 1: 'b76a67a9', 3: '5562eaea', [-4]: 'aaa9eb4f' },
    small: { 0: 'ea7e9103', 1: 'ea7e9103', 3: 'ea7e9103', [-4]: 'ea7e9103' },
  } as Record<keyof typeof inputs, Record<number, string>>,
  fullBlobSha: {
    random: 'e3381d11930eaed7bad32db87ce6ef5e6de6baa748ea6807362ca0d2fc29ccd1',
    text3: '5562eaea7bfd305db208c7352073a04dbb5d5c9b8cfc5c24a6b68361bf40dffc',
  },
  index: {
    plain: 'a0e49566e9ba6117673f2995df16fc8d4a075ce16a08ec901275cfc12e6e6c3e',
    blob: '54b8e4a98c98fb2f667283444e89805a8408b3a08139d842a81c528b0695cc3f',
    id: '638c9465a4569d4dc0ef6794ea7422a09821dcd1c01bbb7bd2ed7f2c8e5c1590',
  },
};

const tmp = await makeTmpDir('vmvault-codec-');
afterAll(() => tmp.cleanup());

describe('BlobCodec', () => {
  it('format 1: ids and blobs are byte-identical to what vmvault wrote before the codec', () => {
    for (const level of [0, 1, 3, -4]) {
      const codec = BlobCodec.fromSpec(codecSpec(level));
      for (const [name, data] of Object.entries(inputs) as Array<[keyof typeof inputs, Buffer]>) {
        expect(codec.chunkId(data)).toBe(FORMAT1.ids[name]);
        expect(codec.objectId(data)).toBe(FORMAT1.ids[name]);
        expect(codec.chunkId(data)).toBe(blake3(data).toString('hex'));
        expect(sha(codec.encode('chunk', data)).slice(0, 8), `${name} at ${level}`).toBe(
          FORMAT1.blobs[name][level],
        );
        // Indexes and manifests are zstd:3 whatever the chunk level.
        expect(sha(codec.encode('manifest', data)).slice(0, 8)).toBe(FORMAT1.blobs[name][3]);
        const out = Buffer.alloc(codec.blobBound(data.length));
        expect(codec.encode('chunk', data, out).equals(codec.encode('chunk', data))).toBe(true);
        expect(codec.decode('chunk', codec.encode('chunk', data)).equals(data)).toBe(true);
        const into = Buffer.alloc(data.length);
        expect(codec.decodeInto('chunk', codec.encode('index', data), into)).toBe(data.length);
        expect(into.equals(data)).toBe(true);
        expect(codec.verify(data, FORMAT1.ids[name])).toBe(true);
      }
    }
    expect(sha(BlobCodec.fromSpec(codecSpec(1)).encode('chunk', inputs.random))).toBe(
      FORMAT1.fullBlobSha.random,
    );
    expect(sha(BlobCodec.fromSpec(codecSpec(0)).encode('index', inputs.text))).toBe(
      FORMAT1.fullBlobSha.text3,
    );
  });

  it("format 1: a repository's disk index (checksum, id, blob) is byte-identical", async () => {
    const codec = BlobCodec.fromSpec(codecSpec(1));
    const idx = DiskIndex.empty(3 << 20, 1 << 20);
    idx.set(0, codec.chunkId(seededBytes(1 << 20, 7)));
    idx.set(2, codec.chunkId(inputs.small));
    const plain = idx.encode();
    expect(sha(plain)).toBe(FORMAT1.index.plain);
    expect(codec.objectId(plain)).toBe(FORMAT1.index.id);
    expect(sha(codec.encode('index', plain))).toBe(FORMAT1.index.blob);

    const backend = new MemoryBackend();
    const repo = await Repository.init('memory', { chunkSizeBytes: 1 << 20 }, backend);
    try {
      const { id } = await repo.putIndex(idx);
      expect(id).toBe(FORMAT1.index.id);
      expect(sha(await backend.get(format.Keys.index(id)))).toBe(FORMAT1.index.blob);
    } finally {
      await repo.close();
    }
  });

  it('is built from the repository config (compression level; none)', () => {
    expect(BlobCodec.fromConfig(newConfig({ levelZstd: 5 })).spec).toEqual({
      compression: { chunk: 5, metadata: 3 },
      id: { fn: 'blake3-256' },
    });
    expect(BlobCodec.fromConfig(newConfig({ levelZstd: 0 })).spec.compression.chunk).toBe(0);
    expect(() => BlobCodec.fromConfig({ ...newConfig({}), hash: 'sha256' as 'blake3-256' })).toThrow(
      /unknown id function/,
    );
  });

  it('keyed ids differ from unkeyed ones and from each other per key, and are stable', () => {
    const plain = BlobCodec.fromSpec(codecSpec(1));
    const k1 = randomBytes(32);
    const k2 = randomBytes(32);
    const a = BlobCodec.fromSpec(codecSpec(1, { idKey: k1 }));
    const a2 = BlobCodec.fromSpec(JSON.parse(JSON.stringify(codecSpec(1, { idKey: k1 }))) as CodecSpec);
    const b = BlobCodec.fromSpec(codecSpec(1, { idKey: k2 }));
    for (const data of Object.values(inputs)) {
      const ids = [plain.chunkId(data), a.chunkId(data), b.chunkId(data)];
      expect(new Set(ids).size).toBe(3);
      expect(ids[1]).toMatch(/^[0-9a-f]{64}$/);
      // Deterministic, and the hasher is reset between calls.
      expect(a.chunkId(data)).toBe(ids[1]);
      expect(a2.chunkId(data)).toBe(ids[1]);
      expect(a.objectId(data)).toBe(ids[1]);
      expect(a.verify(data, ids[1]!)).toBe(true);
      expect(a.verify(data, ids[0]!)).toBe(false);
    }
  });

  it('refuses a key of the wrong length with an error instead of aborting the process', () => {
    expect(() => codecSpec(1, { idKey: Buffer.alloc(16) })).toThrow(RangeError);
    expect(() =>
      BlobCodec.fromSpec({
        compression: { chunk: 1, metadata: 3 },
        id: { fn: 'blake3-256-keyed', key: 'ab' },
      }),
    ).toThrow(/32 bytes/);
    expect(() =>
      BlobCodec.fromSpec({
        compression: { chunk: 1, metadata: 3 },
        id: { fn: 'blake3-256-keyed', key: 'zz'.repeat(32) },
      }),
    ).toThrow(/32 bytes/);
    expect(() => BlobCodec.fromSpec(codecSpec(25))).toThrow(/zstd level/);
  });

  it('a spec builds an identical codec in a worker thread', async () => {
    for (const spec of [codecSpec(1), codecSpec(-4, { idKey: randomBytes(32) }), codecSpec(0)]) {
      const here = BlobCodec.fromSpec(spec);
      const pool = new WorkerPool<
        { data: Uint8Array },
        { spec: CodecSpec; chunkId: string; objectId: string; chunkBlob: Uint8Array; indexBlob: Uint8Array }
      >(new URL('./fixtures/codec-worker.ts', import.meta.url), 1, { workerData: spec });
      try {
        for (const data of Object.values(inputs)) {
          const r = await pool.run({ data });
          expect(r.spec).toEqual(here.spec);
          expect(r.chunkId).toBe(here.chunkId(data));
          expect(r.objectId).toBe(here.objectId(data));
          expect(Buffer.from(r.chunkBlob).equals(here.encode('chunk', data))).toBe(true);
          expect(Buffer.from(r.indexBlob).equals(here.encode('index', data))).toBe(true);
        }
      } finally {
        await pool.close();
      }
    }
  });

  it("the chunk store's workers use the store's codec (keyed ids verify in the worker)", async () => {
    const codec = BlobCodec.fromSpec(codecSpec(1, { idKey: randomBytes(32) }));
    const backend = new LocalBackend(tmp.dir);
    await (await Repository.init(tmp.dir, {}, backend)).close();
    const store = new ChunkStore(backend, codec, 2);
    try {
      const data = Buffer.from(inputs.text);
      const r = await store.put(data);
      expect(r.id).toBe(codec.chunkId(inputs.text));
      expect(r.id).not.toBe(blake3(inputs.text).toString('hex'));
      expect(r.isNew).toBe(true);
      await store.flush();
      // Decoded and verified against the keyed id in a worker, from the file and into shared memory.
      expect((await store.get(r.id)).equals(inputs.text)).toBe(true);
      const dest = Buffer.from(new SharedArrayBuffer(1 << 20));
      expect(await store.getInto(r.id, dest)).toBe(inputs.text.length);
      expect(dest.equals(inputs.text)).toBe(true);
      // The unkeyed id of the same bytes is not what the worker accepts.
      const unkeyed = blake3(inputs.text).toString('hex') as ChunkId;
      await backend.put(format.Keys.data(unkeyed), await backend.get(format.Keys.data(r.id)));
      await expect(store.get(unkeyed)).rejects.toThrow(/does not match its id/);
    } finally {
      await store.close();
    }
  });
});
