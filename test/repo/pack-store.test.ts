import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openBackend } from '../../src/repo/backend/open.js';
import { ChunkIndex, codecSectionSealer } from '../../src/repo/chunk-index/index.js';
import { BlobCodec, codecSpec } from '../../src/repo/codec.js';
import { ChunkMissingError } from '../../src/repo/errors.js';
import { PackStore } from '../../src/repo/pack-store.js';
import type { ChunkId } from '../../src/repo/chunk-id.js';

const codec = BlobCodec.fromSpec(codecSpec(1));
const sealer = codecSectionSealer(codec);

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmvault-packstore-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function files(prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const o of openBackend(dir).list(`${prefix}/`)) out.push(o.key);
  return out;
}

async function open(workers: number, packSizeBytes = 256 * 1024, extra = {}): Promise<PackStore> {
  const backend = openBackend(dir);
  const index = await ChunkIndex.load(backend, sealer);
  return new PackStore(backend, codec, index, { packSizeBytes, chunkSizeBytes: 65536, workers, ...extra });
}

for (const workers of [0, 2]) {
  describe(`pack store (${workers === 0 ? 'inline' : `${workers} workers`})`, () => {
    it('stores chunks in packs, finds them through the index after a flush and after reopening', async () => {
      const chunks = Array.from({ length: 40 }, () => randomBytes(65536));
      const s = await open(workers);
      try {
        const first = await Promise.all(chunks.map((c) => s.put(c)));
        expect(first.every((r) => r.isNew)).toBe(true);
        // The same chunks again in this run: not stored twice.
        const again = await Promise.all(chunks.map((c) => s.put(c)));
        expect(again.some((r) => r.isNew)).toBe(false);
        // Read back before the commit (packs still open): sealed on demand.
        expect((await s.get(first[3]!.id)).equals(chunks[3]!)).toBe(true);
        await s.flush();
      } finally {
        await s.close();
      }
      // 40 chunks of 64 KiB in packs of ≥ 256 KiB: a few packs, not one object per chunk.
      const packs = await files('data');
      expect(packs.length).toBeGreaterThanOrEqual(4);
      expect(packs.length).toBeLessThan(20);
      expect((await files('index')).length).toBeGreaterThanOrEqual(1);

      const t = await open(workers);
      try {
        for (const [i, c] of chunks.entries()) {
          const id = codec.chunkId(c);
          expect(await t.has(id)).toBe(true);
          const dest = Buffer.from(new SharedArrayBuffer(65536));
          expect(await t.getInto(id, dest)).toBe(65536);
          expect(dest.equals(chunks[i]!)).toBe(true);
        }
        const r = await t.put(chunks[0]!);
        expect(r.isNew).toBe(false);
        await expect(t.get('ab'.repeat(32) as ChunkId)).rejects.toBeInstanceOf(ChunkMissingError);
      } finally {
        await t.close();
      }
    });

    it('writes a delta index object every N packs, before the commit', async () => {
      const s = await open(workers, 128 * 1024, { deltaEveryPacks: 2 });
      try {
        for (let i = 0; i < 24; i++) await s.put(randomBytes(65536));
        // 24 chunks → about 12 packs: several deltas already, without a flush.
        expect((await files('index')).length).toBeGreaterThanOrEqual(2);
        await s.flush();
      } finally {
        await s.close();
      }
    });

    it('pages: stored once, read back before and after the commit', async () => {
      const s = await open(workers);
      const page = Buffer.concat([Buffer.from('page'), randomBytes(2000)]);
      try {
        const a = await s.putPage(3, page);
        expect(a.written).toBe(true);
        expect((await s.putPage(3, page)).written).toBe(false);
        expect((await s.getPage(3, a.id)).equals(page)).toBe(true);
        await s.flush();
        expect((await files('meta')).length).toBe(1);
      } finally {
        await s.close();
      }
      const t = await open(workers);
      try {
        const id = codec.chunkIdBytes(page);
        expect((await t.getPage(3, id)).equals(page)).toBe(true);
        expect((await t.putPage(3, page)).written).toBe(false);
        await expect(t.getPage(4, id)).rejects.toThrow(/kind/);
      } finally {
        await t.close();
      }
    });

    it('a voided record is absent: the next put stores the chunk again', async () => {
      const c = randomBytes(65536);
      const s = await open(workers);
      try {
        await s.put(c);
        await s.flush();
      } finally {
        await s.close();
      }
      const t = await open(workers);
      try {
        const id = codec.chunkId(c);
        const e = await t.index.lookup(Buffer.from(id, 'hex'));
        expect(e).toBeDefined();
        await t.index.writeVoid([{ pack: e!.pack, offset: e!.offset, id: e!.id, reason: 'test', timeMs: 1 }]);
        expect(await t.has(id)).toBe(false);
        expect((await t.put(c)).isNew).toBe(true);
        await t.flush();
        expect((await t.get(id)).equals(c)).toBe(true);
      } finally {
        await t.close();
      }
    });
  });
}

describe('pack store: a pack that could not be written', () => {
  it('inline: the failed flush forgets its chunks, so the next put stores them again', async () => {
    const { FaultBackend } = await import('../../src/repo/backend/fault.js');
    const { MemoryBackend } = await import('../../src/repo/backend/memory.js');
    const b = new FaultBackend(new MemoryBackend(), [
      { op: 'putIfAbsent', keyPrefix: 'data/', times: 1, fail: 'no-space' },
    ]);
    const index = await ChunkIndex.load(b, sealer);
    const s = new PackStore(b, codec, index, { packSizeBytes: 4 << 20, chunkSizeBytes: 65536, workers: 0 });
    const c = randomBytes(65536);
    expect((await s.put(c)).isNew).toBe(true);
    await expect(s.flush()).rejects.toMatchObject({ kind: 'no-space' });
    const again = await s.put(c);
    expect(again.isNew).toBe(true);
    await s.flush();
    expect((await s.get(again.id)).equals(c)).toBe(true);
    await s.close();
  });
});
