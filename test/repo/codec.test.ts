import { createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { blake3, Blake3Hasher } from '@napi-rs/blake-hash';
import { afterAll, describe, expect, it } from 'vitest';
import {
  BlobCodec,
  BlobFormatError,
  ChunkIndex,
  PackStore,
  codecSectionSealer,
  LocalBackend,
  Repository,
  codecSpec,
  newConfig,
  PACK_HEADER_BYTES,
  RECORD_OVERHEAD,
  TRAILER_OVERHEAD,
  type ChunkId,
  type CodecSpec,
  type ObjectKindV2,
  type RecordKind,
  type RecordMeta,
} from '../../src/repo/index.js';
import { WorkerPool } from '../../src/util/index.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import type { CodecWorkerRequest, CodecWorkerResult } from './fixtures/codec-worker.js';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

const inputs = {
  random: seededBytes(1 << 20, 7),
  text: Buffer.from('vmvault golden '.repeat(70000).slice(0, 1 << 20)),
  small: Buffer.from('{"a":1}'),
};

/**
 * Golden unkeyed chunk ids (BLAKE3-256 of the plaintext, docs/format.md "Chunk ids and the zero
 * chunk") of `inputs`: an unencrypted repository's ids, whatever the compression level.
 */
const UNKEYED_IDS: Record<keyof typeof inputs, string> = {
  random: '873ad93b836eb7c4de4aaa827b81dfd523de3ca4e9745f5a95edff555cdff5f5',
  text: '96159b839d2c6595014e72a95768023f6eb8fc9dab40f8ce99dea3c9b8ef516b',
  small: 'd59b6562d7c9b121bc9760873d787890ef4d429aad33a70b405baa0fa08a1f53',
};

const tmp = await makeTmpDir('vmvault-codec-');
afterAll(() => tmp.cleanup());

describe('BlobCodec', () => {
  it('unkeyed ids are BLAKE3-256 of the plaintext at every level, for chunks and objects alike', () => {
    for (const level of [0, 1, 3, -4]) {
      const codec = BlobCodec.fromSpec(codecSpec(level));
      for (const [name, data] of Object.entries(inputs) as Array<[keyof typeof inputs, Buffer]>) {
        expect(codec.chunkId(data), `${name} at ${level}`).toBe(UNKEYED_IDS[name]);
        expect(codec.objectId(data)).toBe(UNKEYED_IDS[name]);
        expect(codec.chunkId(data)).toBe(blake3(data).toString('hex'));
        expect(codec.chunkIdBytes(data).toString('hex')).toBe(UNKEYED_IDS[name]);
        expect(codec.verify(data, UNKEYED_IDS[name])).toBe(true);
      }
    }
  });

  it('is built from the repository config (compression level; none)', () => {
    expect(BlobCodec.fromConfig(newConfig({ levelZstd: 5 })).spec).toEqual({
      compression: { chunk: 5, metadata: 3 },
      id: { fn: 'blake3-256' },
    });
    expect(BlobCodec.fromConfig(newConfig({ levelZstd: 0 })).spec.compression.chunk).toBe(0);
    // A keyed id function needs the id key, and an unkeyed one takes none.
    expect(() => BlobCodec.fromConfig({ ...newConfig({}), chunkId: 'blake3-256-keyed' })).toThrow(
      /does not match the keys/,
    );
    expect(() => BlobCodec.fromConfig(newConfig({}), { idKey: randomBytes(32) })).toThrow(
      /does not match the keys/,
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

  it('a spec builds an identical codec in a worker thread: it seals what this thread opens and the other way round', async () => {
    for (const spec of [
      codecSpec(1),
      codecSpec(-4, { idKey: randomBytes(32) }),
      codecSpec(0),
      codecSpec(1, { idKey: randomBytes(32), encKey: randomBytes(32) }),
    ]) {
      const here = BlobCodec.fromSpec(spec);
      const pool = new WorkerPool<CodecWorkerRequest, CodecWorkerResult>(
        new URL('./fixtures/codec-worker.ts', import.meta.url),
        1,
        { workerData: spec },
      );
      try {
        for (const [name, data] of Object.entries(inputs)) {
          const key = `snapshots/${name}`;
          const id = here.chunkIdBytes(data);
          const mine = here.sealRecord(1, id, data);
          const myObject = here.sealObject('manifest', data, id.subarray(0, 16), { name: key });
          const r = await pool.run({
            data,
            name: key,
            theirs: { meta: mine.meta, record: mine.record, object: myObject },
          });
          expect(r.spec).toEqual(here.spec);
          expect(r.chunkId).toBe(here.chunkId(data));
          expect(r.objectId).toBe(here.objectId(data));
          // What this thread sealed opens there.
          expect(Buffer.from(r.openedRecord).equals(data), name).toBe(true);
          expect(Buffer.from(r.openedObject).equals(data), name).toBe(true);
          // What the worker sealed opens here, under the same entry.
          const meta = { ...r.meta, id: Buffer.from(r.meta.id) };
          expect(meta).toEqual(mine.meta);
          expect(here.openRecord(meta, r.record, data.length).equals(data), name).toBe(true);
          expect(
            here.openObject('manifest', r.object, { name: key, maxPlaintextBytes: data.length }).equals(data),
            name,
          ).toBe(true);
          // Unencrypted units have a zero nonce: both threads seal the same bytes.
          if (!here.encrypted) {
            expect(Buffer.from(r.record).equals(mine.record), name).toBe(true);
            expect(Buffer.from(r.object).equals(myObject), name).toBe(true);
          }
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
    const index = await ChunkIndex.load(backend, codecSectionSealer(codec));
    const store = new PackStore(backend, codec, index, {
      packSizeBytes: 4 << 20,
      chunkSizeBytes: 1 << 20,
      workers: 2,
    });
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
      // The record opened under the unkeyed id of the same bytes (an index entry that names it so)
      // is refused in the worker: the keyed id is bound to the record.
      const unkeyed = blake3(inputs.text).toString('hex') as ChunkId;
      const e = (await index.lookup(Buffer.from(r.id, 'hex')))!;
      index.add([{ ...e, id: Buffer.from(unkeyed, 'hex') }]);
      await expect(store.get(unkeyed)).rejects.toThrow(/corrupt/);
    } finally {
      await store.close();
    }
  });
});

// ---- format 2: records, trailers, objects (design §1.3, §1.4, §6) ------------------------------

/** SHA-256 of format 2 units (unencrypted: deterministic), pinned when the layout was written. */
const V2_VECTORS = {
  textRecord: 'e018749d1d3cf32887e57af6b50945815296f7060fcf099bd218699869f198db',
  textPage: '697b472c4f34dc66bfce7fd6cf4210f1872619f8abd53831ef152cc38646b396',
  textManifest: 'a8e12a7ff89036ef80133d2226d9b66354787528ddfd83c4d5cd641cb96a5496',
  textSection: 'ad8ef7772985de7f2fc25c123860bee5d248383502bf8f8f4650b5dfd0ac7763',
};

const KINDS: RecordKind[] = [1, 2, 3, 4];
const OBJECT_KINDS: ObjectKindV2[] = ['manifest', 'index-section', 'void', 'session', 'gc'];
const v2inputs = { ...inputs, empty: Buffer.alloc(0) };
const keys = { idKey: Buffer.alloc(32, 0x11), encKey: Buffer.alloc(32, 0x22) };
const plainCodec = BlobCodec.fromSpec(codecSpec(1));
const encCodec = BlobCodec.fromSpec(codecSpec(1, keys));
const both: Array<[string, BlobCodec]> = [
  ['unencrypted', plainCodec],
  ['encrypted', encCodec],
];
const packHeader = (salt = 0x5a): Buffer => {
  const h = Buffer.alloc(PACK_HEADER_BYTES);
  h.write('VMVP', 0);
  h[4] = 2;
  h[5] = 1;
  h.fill(salt, 8, 24);
  h.fill(0x33, 24, 40);
  return h;
};
const flip = (b: Buffer, at: number): Buffer => {
  const c = Buffer.from(b);
  c[at]! ^= 0x01;
  return c;
};
/** Offsets worth flipping in a sealed unit: each end of the nonce, payload and tag. */
const flipPoints = (len: number, headerBytes: number, nonceAt: number): number[] =>
  [
    nonceAt,
    nonceAt + 11,
    headerBytes,
    headerBytes + ((len - headerBytes - 16) >> 1),
    len - 17,
    len - 16,
    len - 1,
  ].filter((x, i, a) => x >= 0 && x < len && a.indexOf(x) === i);

describe('BlobCodec format 2: records', () => {
  it('unencrypted record vector: zero nonce ‖ payload ‖ BLAKE3-128(AAD ‖ payload)', () => {
    const id = plainCodec.chunkIdBytes(inputs.small);
    const { record, meta } = plainCodec.sealRecord(2, id, inputs.small);
    expect(meta).toEqual({ kind: 2, codec: 0, plaintextBytes: 7, id });
    const aad = Buffer.concat([Buffer.from('VMVR'), Buffer.from([2, 2, 0, 0, 0, 0, 7]), id]);
    expect(aad.length).toBe(43);
    const expected = Buffer.concat([
      Buffer.alloc(12),
      inputs.small,
      blake3(Buffer.concat([aad, inputs.small])).subarray(0, 16),
    ]);
    expect(record.equals(expected)).toBe(true);
    expect(record.length).toBe(RECORD_OVERHEAD + 7);
    // Owns its ArrayBuffer (transferable).
    expect(record.byteOffset).toBe(0);
    expect(record.buffer.byteLength).toBe(record.length);
    // Pinned: a change of layout, AAD or compression choice shows here.
    expect(sha(plainCodec.sealRecord(1, plainCodec.chunkIdBytes(inputs.text), inputs.text).record)).toBe(
      V2_VECTORS.textRecord,
    );
    expect(sha(plainCodec.sealRecord(3, plainCodec.chunkIdBytes(inputs.text), inputs.text).record)).toBe(
      V2_VECTORS.textPage,
    );
  });

  it('round trips every kind and input, encrypted or not, with openRecord and openRecordInto', () => {
    for (const [what, codec] of both)
      for (const kind of KINDS)
        for (const [name, data] of Object.entries(v2inputs)) {
          const id = codec.chunkIdBytes(data);
          const { record, meta } = codec.sealRecord(kind, id, data);
          expect(meta.kind).toBe(kind);
          expect(meta.plaintextBytes).toBe(data.length);
          expect(meta.codec, `${what} ${kind} ${name}`).toBe(name === 'text' ? 1 : 0);
          expect(record.length).toBe(RECORD_OVERHEAD + (meta.codec === 0 ? data.length : record.length - 28));
          expect(codec.openRecord(meta, record, 1 << 20).equals(data), `${what} ${kind} ${name}`).toBe(true);
          const dest = Buffer.alloc(1 << 20, 0xee);
          expect(codec.openRecordInto(meta, record, dest)).toBe(data.length);
          expect(dest.subarray(0, data.length).equals(data)).toBe(true);
        }
  });

  it('compresses chunks at the chunk level and pages at the metadata level; raw when zstd saves < 1/64', () => {
    const raw = BlobCodec.fromSpec(codecSpec(0));
    const id = raw.chunkIdBytes(inputs.text);
    expect(raw.sealRecord(1, id, inputs.text).meta.codec).toBe(0);
    expect(raw.sealRecord(2, id, inputs.text).meta.codec).toBe(0);
    expect(raw.sealRecord(3, id, inputs.text).meta.codec).toBe(1);
    expect(raw.sealRecord(4, id, inputs.text).meta.codec).toBe(1);
    expect(plainCodec.sealRecord(1, id, inputs.random).meta.codec).toBe(0);
  });

  it('every damage and every wrong entry field fails with BlobFormatError', () => {
    for (const [what, codec] of both)
      for (const data of [inputs.text, inputs.random.subarray(0, 4096)]) {
        const id = codec.chunkIdBytes(data);
        const { record, meta } = codec.sealRecord(1, id, data);
        const open = (m: RecordMeta, r: Uint8Array): unknown => codec.openRecord(m, r, 1 << 20);
        const into = (m: RecordMeta, r: Uint8Array): unknown =>
          codec.openRecordInto(m, r, Buffer.alloc(1 << 20));
        for (const at of flipPoints(record.length, 12, 0)) {
          expect(() => open(meta, flip(record, at)), `${what} flip ${at}`).toThrow(BlobFormatError);
          expect(() => into(meta, flip(record, at)), `${what} flip ${at}`).toThrow(BlobFormatError);
        }
        const otherId = flip(id, 5);
        const bad: Array<[string, RecordMeta]> = [
          ['id', { ...meta, id: otherId }],
          ['kind', { ...meta, kind: 2 }],
          ['kind 3', { ...meta, kind: 3 }],
          ['codec', { ...meta, codec: meta.codec === 0 ? 1 : 0 }],
          ['length', { ...meta, plaintextBytes: meta.plaintextBytes - 1 }],
          ['length+', { ...meta, plaintextBytes: meta.plaintextBytes + 1 }],
          ['kind 9', { ...meta, kind: 9 as RecordKind }],
          ['codec 2', { ...meta, codec: 2 as 0 }],
          ['short id', { ...meta, id: id.subarray(0, 31) }],
        ];
        for (const [field, m] of bad) {
          expect(() => open(m, record), `${what} ${field}`).toThrow(BlobFormatError);
          expect(() => into(m, record), `${what} ${field}`).toThrow(BlobFormatError);
        }
        for (const len of [0, 27, 28, record.length - 1])
          expect(() => open(meta, record.subarray(0, len)), `${what} truncated to ${len}`).toThrow(
            BlobFormatError,
          );
        expect(() => open(meta, Buffer.concat([record, Buffer.alloc(1)]))).toThrow(BlobFormatError);
        // The bound is checked first, on the entry: nothing is allocated for what it claims.
        expect(() => codec.openRecord(meta, record, data.length - 1)).toThrow(
          /more than this kind of record holds/,
        );
        expect(() => codec.openRecordInto(meta, record, Buffer.alloc(data.length - 1))).toThrow(
          /more than this kind of record holds/,
        );
      }
  });

  it('a record claiming 4 GiB is refused before anything is allocated', () => {
    const { record, meta } = plainCodec.sealRecord(1, plainCodec.chunkIdBytes(inputs.text), inputs.text);
    const huge = { ...meta, plaintextBytes: 0xffff_ffff };
    expect(() => plainCodec.openRecord(huge, record, 1 << 20)).toThrow(/more than this kind of record holds/);
    // Even with a lax bound, zstd's largest expansion limits what the entry may claim.
    expect(() => plainCodec.openRecord(huge, record.subarray(0, 40), 0xffff_ffff)).toThrow(
      /more than 12 bytes of zstd can hold/,
    );
    expect(() => plainCodec.openRecord({ ...meta, plaintextBytes: -1 }, record, 1 << 20)).toThrow(
      /out of range/,
    );
  });

  it('a record sealed under a wrong id authenticates but fails the id check', () => {
    for (const [, codec] of both) {
      const wrong = codec.chunkIdBytes(inputs.small);
      const { record, meta } = codec.sealRecord(1, wrong, inputs.text);
      expect(() => codec.openRecord(meta, record, 1 << 20)).toThrow(/does not match its id/);
    }
  });
});

describe('BlobCodec format 2: trailers', () => {
  const body = Buffer.concat([Buffer.from([0, 0, 0, 1, 0, 0, 0, 0]), seededBytes(48, 3)]);
  it('round trips; the unencrypted vector is zero nonce ‖ plaintext ‖ BLAKE3-128("VMVT" ‖ header ‖ plaintext)', () => {
    const h = packHeader();
    const sealed = plainCodec.sealTrailer(h, body);
    expect(
      sealed.equals(
        Buffer.concat([
          Buffer.alloc(12),
          body,
          blake3(Buffer.concat([Buffer.from('VMVT'), h, body])).subarray(0, 16),
        ]),
      ),
    ).toBe(true);
    for (const [, codec] of both) {
      const s = codec.sealTrailer(h, body);
      expect(s.length).toBe(body.length + TRAILER_OVERHEAD);
      expect(codec.openTrailer(h, s, 1 << 16).equals(body)).toBe(true);
      expect(codec.openTrailer(h, codec.sealTrailer(h, Buffer.alloc(0)), 10).length).toBe(0);
    }
  });
  it('fails on damage, another pack header (salt or any byte), truncation and the bound', () => {
    for (const [what, codec] of both) {
      const h = packHeader();
      const s = codec.sealTrailer(h, body);
      for (const at of flipPoints(s.length, 12, 0))
        expect(() => codec.openTrailer(h, flip(s, at), 1 << 16), `${what} ${at}`).toThrow(BlobFormatError);
      expect(() => codec.openTrailer(packHeader(0x5b), s, 1 << 16)).toThrow(BlobFormatError);
      expect(() => codec.openTrailer(flip(h, 30), s, 1 << 16)).toThrow(BlobFormatError);
      expect(() => codec.openTrailer(flip(h, 5), s, 1 << 16)).toThrow(BlobFormatError);
      expect(() => codec.openTrailer(h.subarray(0, 47), s, 1 << 16)).toThrow(BlobFormatError);
      expect(() => codec.openTrailer(h, s.subarray(0, 27), 1 << 16)).toThrow(BlobFormatError);
      expect(() => codec.openTrailer(h, s.subarray(0, s.length - 1), 1 << 16)).toThrow(BlobFormatError);
      expect(() => codec.openTrailer(h, s, body.length - 1)).toThrow(/more than a pack's trailer/);
    }
  });
});

describe('BlobCodec format 2: objects (blob v2)', () => {
  const binder = Buffer.alloc(16, 0x42);
  const name = 'snapshots/' + 'ab'.repeat(32);
  it('unencrypted vector: the 44-byte header, payload, BLAKE3-128(bytes 0..31 ‖ section ‖ name ‖ payload)', () => {
    const blob = plainCodec.sealObject('void', inputs.small, binder, { name: 'quarantine/x', section: 0 });
    const head = Buffer.alloc(44);
    head.write('VMVB', 0);
    head.set([2, 0, 0, 3], 4);
    head.writeUInt32BE(7, 8);
    head.writeUInt32BE(7, 12);
    binder.copy(head, 16);
    const aad = Buffer.concat([head.subarray(0, 32), Buffer.alloc(4), Buffer.from('quarantine/x')]);
    const tag = blake3(Buffer.concat([aad, inputs.small])).subarray(0, 16);
    expect(blob.equals(Buffer.concat([head, inputs.small, tag]))).toBe(true);
    expect(blob.length).toBe(plainCodec.sealedObjectBytes(7));
    expect(sha(plainCodec.sealObject('manifest', inputs.text, binder, { name }))).toBe(
      V2_VECTORS.textManifest,
    );
    expect(sha(plainCodec.sealObject('index-section', inputs.text, binder, { section: 3 }))).toBe(
      V2_VECTORS.textSection,
    );
  });

  it('round trips every kind and input; index sections are stored raw at a computable size', () => {
    for (const [what, codec] of both)
      for (const kind of OBJECT_KINDS)
        for (const [iname, data] of Object.entries(v2inputs)) {
          const opts = { name: `${kind}/${iname}`, section: kind === 'index-section' ? 7 : 0 };
          const blob = codec.sealObject(kind, data, binder, opts);
          expect(blob.byteOffset).toBe(0);
          expect(blob.buffer.byteLength).toBe(blob.length);
          expect(blob[6]).toBe(codec.encrypted ? 1 : 0);
          if (kind === 'index-section') expect(blob.length).toBe(codec.sealedObjectBytes(data.length));
          else expect(blob[5], `${what} ${kind} ${iname}`).toBe(iname === 'text' ? 1 : 0);
          const out = codec.openObject(kind, blob, { ...opts, maxPlaintextBytes: 1 << 20 });
          expect(out.equals(data), `${what} ${kind} ${iname}`).toBe(true);
        }
  });

  it('every damage, a wrong name, section, binder, kind or bound fails with BlobFormatError', () => {
    for (const [what, codec] of both)
      for (const data of [inputs.text, inputs.random.subarray(0, 4096)]) {
        const blob = codec.sealObject('manifest', data, binder, { name });
        const open = (b: Uint8Array, o: { name?: string; section?: number } = { name }): unknown =>
          codec.openObject('manifest', b, { ...o, maxPlaintextBytes: 1 << 20 });
        expect((open(blob) as Buffer).equals(data)).toBe(true);
        for (const at of [...flipPoints(blob.length, 44, 32), 0, 4, 5, 6, 7, 8, 11, 12, 15, 16, 31])
          expect(() => open(flip(blob, at)), `${what} flip ${at}`).toThrow(BlobFormatError);
        expect(() => open(blob, { name: `${name.slice(0, -1)}c` })).toThrow(BlobFormatError);
        expect(() => open(blob, {})).toThrow(BlobFormatError);
        expect(() => open(blob, { name, section: 1 })).toThrow(BlobFormatError);
        // Another binder in the header: the tag (or the derived key) no longer matches.
        const rebound = Buffer.from(blob);
        rebound.fill(0x43, 16, 32);
        expect(() => open(rebound)).toThrow(BlobFormatError);
        expect(() => codec.openObject('void', blob, { name, maxPlaintextBytes: 1 << 20 })).toThrow(
          /is a manifest, not a void/,
        );
        for (const len of [0, 59, 60, blob.length - 1])
          expect(() => open(blob.subarray(0, len)), `${what} truncated ${len}`).toThrow(BlobFormatError);
        expect(() => open(Buffer.concat([blob, Buffer.alloc(1)]))).toThrow(BlobFormatError);
        expect(() =>
          codec.openObject('manifest', blob, { name, maxPlaintextBytes: data.length - 1 }),
        ).toThrow(/more than a manifest holds/);
      }
  });

  it('a header claiming 4 GiB of plaintext is refused before anything is allocated', () => {
    const blob = Buffer.from(plainCodec.sealObject('manifest', inputs.text, binder));
    blob.writeUInt32BE(0xffff_ffff, 8);
    expect(() => plainCodec.openObject('manifest', blob, { maxPlaintextBytes: 0xffff_ffff })).toThrow(
      /more than a manifest holds \(16777216\)/,
    );
    expect(() => plainCodec.sealObject('manifest', Buffer.alloc(16 * 1024 * 1024 + 1), binder)).toThrow(
      RangeError,
    );
  });

  it('an encrypted repository refuses unencrypted objects and the other way round', () => {
    const plain = plainCodec.sealObject('manifest', inputs.small, binder, { name });
    const enc = encCodec.sealObject('manifest', inputs.small, binder, { name });
    expect(() => encCodec.openObject('manifest', plain, { name, maxPlaintextBytes: 100 })).toThrow(
      /not encrypted in an encrypted repository/,
    );
    expect(() => plainCodec.openObject('manifest', enc, { name, maxPlaintextBytes: 100 })).toThrow(
      /encrypted in an unencrypted repository/,
    );
  });
});

describe('BlobCodec format 2: encryption (AES-256-GCM, design §6.1)', () => {
  const derived = (context: string, data: Uint8Array): Buffer =>
    Blake3Hasher.newKeyed(keys.encKey).update(Buffer.from(context)).update(data).digestBuffer();
  const gcmOpen = (key: Buffer, nonce: Buffer, aad: Buffer, ct: Buffer, tag: Buffer): Buffer => {
    const d = createDecipheriv('aes-256-gcm', key, nonce);
    d.setAAD(aad);
    d.setAuthTag(tag);
    return Buffer.concat([d.update(ct), d.final()]);
  };

  it('records, trailers and objects decrypt with the documented key derivation, nonce and AAD', () => {
    const raw = BlobCodec.fromSpec(codecSpec(0, keys));
    const data = inputs.random.subarray(0, 5000);
    const id = raw.chunkIdBytes(data);
    expect(id.equals(Blake3Hasher.newKeyed(keys.idKey).update(data).digestBuffer())).toBe(true);
    const { record, meta } = raw.sealRecord(2, id, data);
    expect(meta.codec).toBe(0);
    const aad = Buffer.concat([Buffer.from('VMVR'), Buffer.from([2, 2, 0]), u32(data.length), id]);
    const key = derived('vmvault-v2 record', id);
    expect(
      gcmOpen(key, record.subarray(0, 12), aad, record.subarray(12, -16), record.subarray(-16)).equals(data),
    ).toBe(true);

    const h = packHeader(0x77);
    const trailer = raw.sealTrailer(h, inputs.small);
    const tkey = derived('vmvault-v2 trailer', h.subarray(8, 24));
    const taad = Buffer.concat([Buffer.from('VMVT'), h]);
    expect(
      gcmOpen(tkey, trailer.subarray(0, 12), taad, trailer.subarray(12, -16), trailer.subarray(-16)),
    ).toEqual(inputs.small);

    const binder = Buffer.alloc(16, 9);
    const blob = raw.sealObject('session', inputs.small, binder, { name: 'sessions/x' });
    expect(blob[6]).toBe(1);
    const okey = derived('vmvault-v2 object', binder);
    const oaad = Buffer.concat([blob.subarray(0, 32), u32(0), Buffer.from('sessions/x')]);
    expect(gcmOpen(okey, blob.subarray(32, 44), oaad, blob.subarray(44, -16), blob.subarray(-16))).toEqual(
      inputs.small,
    );
  });

  it('nonces are random: two seals of one plaintext differ and both open', () => {
    const id = encCodec.chunkIdBytes(inputs.text);
    const a = encCodec.sealRecord(1, id, inputs.text);
    const b = encCodec.sealRecord(1, id, inputs.text);
    expect(a.record.subarray(0, 12).equals(b.record.subarray(0, 12))).toBe(false);
    expect(a.record.equals(b.record)).toBe(false);
    expect(encCodec.openRecord(b.meta, b.record, 1 << 20).equals(inputs.text)).toBe(true);
    expect(encCodec.openRecord(a.meta, a.record, 1 << 20).equals(inputs.text)).toBe(true);
  });

  it('two records of the same length with their entries swapped both fail', () => {
    const raw = BlobCodec.fromSpec(codecSpec(0, keys));
    const x = seededBytes(4096, 1);
    const y = seededBytes(4096, 2);
    const rx = raw.sealRecord(1, raw.chunkIdBytes(x), x);
    const ry = raw.sealRecord(1, raw.chunkIdBytes(y), y);
    expect(rx.record.length).toBe(ry.record.length);
    expect(() => raw.openRecord(ry.meta, rx.record, 1 << 20)).toThrow(/does not authenticate/);
    expect(() => raw.openRecord(rx.meta, ry.record, 1 << 20)).toThrow(/does not authenticate/);
    expect(() => raw.openRecordInto(rx.meta, ry.record, Buffer.alloc(4096))).toThrow(BlobFormatError);
  });

  it('an object moved to another name, section or kind fails to open', () => {
    const binder = Buffer.alloc(16, 1);
    const a = 'snapshots/' + '1'.repeat(64);
    const blob = encCodec.sealObject('manifest', inputs.text, binder, { name: a });
    expect(
      encCodec.openObject('manifest', blob, { name: a, maxPlaintextBytes: 1 << 20 }).equals(inputs.text),
    ).toBe(true);
    const b = 'snapshots/' + '2'.repeat(64);
    expect(() => encCodec.openObject('manifest', blob, { name: b, maxPlaintextBytes: 1 << 20 })).toThrow(
      /does not authenticate/,
    );
    const section = encCodec.sealObject('index-section', inputs.small, binder, { section: 1 });
    expect(() =>
      encCodec.openObject('index-section', section, { section: 2, maxPlaintextBytes: 100 }),
    ).toThrow(/does not authenticate/);
    // The kind byte rewritten to match: the AAD covers it.
    const relabelled = Buffer.from(blob);
    relabelled[7] = 3;
    expect(() => encCodec.openObject('void', relabelled, { name: a, maxPlaintextBytes: 1 << 20 })).toThrow(
      /does not authenticate/,
    );
  });

  it('another encryption key or id key cannot open anything', () => {
    const other = BlobCodec.fromSpec(codecSpec(1, { idKey: keys.idKey, encKey: Buffer.alloc(32, 0x23) }));
    const otherId = BlobCodec.fromSpec(codecSpec(1, { idKey: Buffer.alloc(32, 0x12), encKey: keys.encKey }));
    const id = encCodec.chunkIdBytes(inputs.text);
    const { record, meta } = encCodec.sealRecord(1, id, inputs.text);
    expect(() => other.openRecord(meta, record, 1 << 20)).toThrow(/does not authenticate/);
    // Same encryption key, another id key: decrypts, but the keyed id of the plaintext differs.
    expect(() => otherId.openRecord(meta, record, 1 << 20)).toThrow(/does not match its id/);
    const blob = encCodec.sealObject('gc', inputs.small, Buffer.alloc(16));
    expect(() => other.openObject('gc', blob, { maxPlaintextBytes: 100 })).toThrow(/does not authenticate/);
    const h = packHeader();
    expect(() => other.openTrailer(h, encCodec.sealTrailer(h, inputs.small), 100)).toThrow(
      /does not authenticate/,
    );
  });

  it('encrypted output holds no plaintext marker; unencrypted raw output does', () => {
    const marker = Buffer.from('VMVAULT-MARKER-7f3a9c');
    const data = Buffer.concat([seededBytes(3000, 4), marker, seededBytes(3000, 5)]);
    const raw = BlobCodec.fromSpec(codecSpec(0, keys));
    const h = packHeader();
    const sealedBy = (codec: BlobCodec): Buffer[] => [
      ...KINDS.map((k) => codec.sealRecord(k, codec.chunkIdBytes(data), data).record),
      ...OBJECT_KINDS.map((k) => codec.sealObject(k, data, Buffer.alloc(16), { name: `${k}/x` })),
      codec.sealTrailer(h, data),
    ];
    for (const out of [...sealedBy(raw), ...sealedBy(encCodec)]) expect(out.includes(marker)).toBe(false);
    expect(sealedBy(BlobCodec.fromSpec(codecSpec(0))).every((b) => b.includes(marker))).toBe(true);
  });

  it('refuses an encryption key without a keyed id function, and keys of the wrong length', () => {
    expect(() => codecSpec(1, { encKey: keys.encKey })).toThrow(/needs an id key/);
    expect(() => codecSpec(1, { idKey: keys.idKey, encKey: Buffer.alloc(31) })).toThrow(RangeError);
    expect(() =>
      BlobCodec.fromSpec({
        compression: { chunk: 1, metadata: 3 },
        id: { fn: 'blake3-256' },
        enc: { key: '00'.repeat(32) },
      }),
    ).toThrow(/keyed id function/);
    expect(() => BlobCodec.fromSpec({ ...codecSpec(1, keys), enc: { key: 'zz'.repeat(32) } })).toThrow(
      /32 bytes/,
    );
    const spec = JSON.parse(JSON.stringify(codecSpec(1, keys))) as CodecSpec;
    expect(BlobCodec.fromSpec(spec).encrypted).toBe(true);
    expect(BlobCodec.fromSpec(codecSpec(1, { idKey: keys.idKey })).encrypted).toBe(false);
  });
});

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}
