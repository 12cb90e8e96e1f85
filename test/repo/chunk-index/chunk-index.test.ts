import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryBackend, openBackend, type Backend } from '../../../src/repo/index.js';
import {
  ChunkIndex,
  INDEX_PREFIX,
  compareEntries,
  sameEntry,
  type IndexEntry,
} from '../../../src/repo/chunk-index/index.js';
import { plainSealer } from '../../helpers/index-sealer.js';
import { makeTmpDir } from '../../helpers/tmp.js';
import { randomEntries, randomEntry } from './helpers.js';

const sealer = plainSealer;
const session = Buffer.alloc(16, 7);

async function keys(b: Backend, prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const i of b.list(prefix)) out.push(i.key);
  return out.sort();
}

async function all(index: ChunkIndex): Promise<IndexEntry[]> {
  const out: IndexEntry[] = [];
  for await (const e of index.entries()) out.push(e);
  return out;
}

/** Opens and rewrites section 0 of an index object with `edit` (re-sealed with the test sealer). */
function editPreamble(bytes: Buffer, edit: (pre: Buffer) => void): Buffer {
  const salt = bytes.subarray(8, 24);
  const len = bytes.readUInt32BE(24);
  const pre = sealer.open(Buffer.from(salt), 0, bytes.subarray(32, 32 + len), 1 << 20);
  const copy = Buffer.from(pre);
  edit(copy);
  const sealed = sealer.seal(Buffer.from(salt), 0, copy);
  const out = Buffer.from(bytes);
  sealed.copy(out, 32);
  return out;
}

let tmp: { dir: string; cleanup: () => Promise<void> };
beforeAll(async () => {
  tmp = await makeTmpDir('vmvault-chunk-index-');
});
afterAll(async () => {
  await tmp.cleanup();
});

const stacks: [string, () => () => Backend][] = [
  [
    'memory',
    () => {
      const m = new MemoryBackend();
      return () => m;
    },
  ],
  [
    'local',
    () => {
      const dir = `${tmp.dir}/${randomBytes(4).toString('hex')}`;
      mkdirSync(dir);
      return () => openBackend({ kind: 'local', location: dir, maxInFlight: 8 });
    },
  ],
];

describe.each(stacks)('chunk index on a %s backend', (_name, makeStack) => {
  it('pending entries are found at once; a written delta is found by a fresh load; misses are absent', async () => {
    const stack = makeStack();
    const b = stack();
    const index = await ChunkIndex.load(b, sealer);
    const es = randomEntries(300);
    index.add(es);
    expect(index.pendingEntries).toBe(300);
    for (const e of es.slice(0, 20)) expect(await index.lookup(e.id)).toEqual(e);
    expect(await keys(b, INDEX_PREFIX)).toEqual([]);
    const name = await index.writeDelta(session);
    expect(name).toMatch(/^[0-9a-f]{32}$/);
    expect(await index.writeDelta(session)).toBeUndefined();
    expect(index.pendingEntries).toBe(0);
    expect(await keys(b, INDEX_PREFIX)).toEqual([`index/${name}`]);
    const fresh = await ChunkIndex.load(stack(), sealer);
    expect(fresh.damaged).toEqual([]);
    for (const e of es) expect(await fresh.lookup(e.id)).toEqual(e);
    for (let i = 0; i < 200; i++) expect(await fresh.lookup(randomBytes(32))).toBeUndefined();
    expect((await all(fresh)).length).toBe(300);
    expect(fresh.stats()).toMatchObject({ objects: 1, entries: 300, pending: 0 });
    expect(fresh.liveObjects()[0]).toMatchObject({ name, kind: 'delta', generation: 1, entries: 300 });
  });

  it("a filter's false positive never returns a wrong entry", async () => {
    const stack = makeStack();
    const index = await ChunkIndex.load(stack(), sealer);
    const es = randomEntries(1000);
    index.add(es);
    await index.writeDelta(session);
    const fresh = await ChunkIndex.load(stack(), sealer);
    // Same bytes 0–27 (every filter probe) and same 8-byte page prefix: the filter says yes.
    for (const e of es.slice(0, 50)) {
      const twin = Buffer.from(e.id);
      twin[31] = twin[31]! ^ 0xff;
      expect(await fresh.lookup(twin)).toBeUndefined();
      expect(await fresh.lookupAll(twin)).toEqual([]);
    }
    for (let i = 0; i < 5000; i++) {
      const id = randomBytes(32);
      const e = await fresh.lookup(id);
      if (e) expect(e.id.equals(id)).toBe(true);
    }
  });

  it('lookupAll finds every copy of an id, across objects and pending', async () => {
    const stack = makeStack();
    const index = await ChunkIndex.load(stack(), sealer);
    const a = randomEntry();
    const b2 = randomEntry({ id: a.id });
    const c = randomEntry({ id: a.id });
    index.add([a]);
    await index.writeDelta(session);
    index.add([b2]);
    await index.writeDelta(session);
    index.add([c]);
    const got = await index.lookupAll(a.id);
    expect(got.length).toBe(3);
    expect(got[0]).toEqual(c); // pending first
    const fresh = await ChunkIndex.load(stack(), sealer);
    expect((await fresh.lookupAll(a.id)).sort(compareEntries)).toEqual([a, b2].sort(compareEntries));
    expect(
      fresh
        .liveObjects()
        .map((o) => o.generation)
        .sort(),
    ).toEqual([1, 2]);
  });

  it('merges deltas into one object that supersedes them; the old ones are deleted; entries() stays sorted and whole', async () => {
    const stack = makeStack();
    const b = stack();
    const index = await ChunkIndex.load(b, sealer, { mergeThreshold: 3 });
    const es: IndexEntry[] = [];
    for (let d = 0; d < 5; d++) {
      const batch = randomEntries(150);
      es.push(...batch);
      index.add(batch);
      await index.writeDelta(session);
    }
    // an exact duplicate in two deltas is dropped by the merge
    index.add([es[0]!]);
    await index.writeDelta(session);
    expect((await keys(b, INDEX_PREFIX)).length).toBe(6);
    const r = await index.compact();
    expect(r).toMatchObject({ kind: 'merge', entries: 750 });
    expect(r!.merged.length).toBe(6);
    expect(await keys(b, INDEX_PREFIX)).toEqual(r!.written.map((n) => `index/${n}`));
    expect(await index.compact()).toBeUndefined();
    const fresh = await ChunkIndex.load(stack(), sealer);
    expect(fresh.liveObjects().map((o) => o.kind)).toEqual(['merge']);
    const got = await all(fresh);
    expect(got).toEqual([...es].sort(compareEntries));
    for (const e of es.slice(0, 50)) expect(await fresh.lookup(e.id)).toEqual(e);
  });

  it('a superseded object that is still present is not live', async () => {
    const stack = makeStack();
    const b = stack();
    const index = await ChunkIndex.load(b, sealer, { mergeThreshold: 1 });
    for (let d = 0; d < 3; d++) {
      index.add(randomEntries(10));
      await index.writeDelta(session);
    }
    const before = new Map<string, Buffer>();
    for (const k of await keys(b, INDEX_PREFIX)) before.set(k, await b.get(k));
    const r = await index.compact();
    expect(r?.kind).toBe('merge');
    for (const [k, v] of before) await b.put(k, v); // a compactor killed before its deletes
    const fresh = await ChunkIndex.load(stack(), sealer);
    expect(fresh.liveObjects().map((o) => o.name)).toEqual(r!.written);
    expect(fresh.stats().entries).toBe(30);
  });

  it('writes a base of several shards, which supersedes only when every shard is present', async () => {
    const stack = makeStack();
    const b = stack();
    const index = await ChunkIndex.load(b, sealer, { shardEntries: 256 });
    const es = randomEntries(1000);
    for (let i = 0; i < 4; i++) {
      index.add(es.slice(i * 250, (i + 1) * 250));
      await index.writeDelta(session);
    }
    const deltas = new Map<string, Buffer>();
    for (const k of await keys(b, INDEX_PREFIX)) deltas.set(k, await b.get(k));
    const r = await index.compact({ force: 'base' });
    expect(r).toMatchObject({ kind: 'base', entries: 1000 });
    expect(r!.written.length).toBe(4);
    const fresh = await ChunkIndex.load(stack(), sealer);
    expect(fresh.liveObjects().map((o) => o.kind)).toEqual(['base', 'base', 'base', 'base']);
    for (const e of es) expect(await fresh.lookup(e.id)).toEqual(e);
    expect(await all(fresh)).toEqual([...es].sort(compareEntries));
    // shard 2 lost: the set is incomplete, so the deltas it superseded are live again
    for (const [k, v] of deltas) await b.put(k, v);
    await b.delete(`index/${r!.written[2]}`);
    const partial = await ChunkIndex.load(stack(), sealer);
    expect(partial.liveObjects().filter((o) => o.kind === 'delta').length).toBe(4);
    for (const e of es) expect(await partial.lookup(e.id)).toEqual(e);
  });

  it('a reader racing a compactor keeps working: a deleted object makes it reload and retry', async () => {
    const stack = makeStack();
    const writer = await ChunkIndex.load(stack(), sealer, { mergeThreshold: 2 });
    const es: IndexEntry[] = [];
    for (let d = 0; d < 6; d++) {
      const batch = randomEntries(200);
      es.push(...batch);
      writer.add(batch);
      await writer.writeDelta(session);
    }
    const reader = await ChunkIndex.load(stack(), sealer, { pageCacheBytes: 0 }); // every lookup reads
    expect(reader.stats().objects).toBe(6);
    let stop = false;
    let misses = 0;
    let lookups = 0;
    const loop = (async () => {
      while (!stop) {
        const e = es[Math.floor(Math.random() * es.length)]!;
        const got = await reader.lookup(e.id);
        lookups++;
        if (!got || !sameEntry(got, e)) misses++;
      }
    })();
    const compactor = await ChunkIndex.load(stack(), sealer, { mergeThreshold: 2 });
    const r = await compactor.compact();
    expect(r?.kind).toBe('merge');
    // every page not cached by the reader now lives only in the merged object
    for (const e of es) expect(await reader.lookup(e.id)).toEqual(e);
    stop = true;
    await loop;
    expect(misses).toBe(0);
    expect(lookups).toBeGreaterThan(0);
    expect(reader.stats().objects).toBe(1);
    expect(reader.damaged).toEqual([]);
    expect((await all(reader)).length).toBe(1200);
  });

  it('entries() resumes after an object vanished mid-iteration', async () => {
    const stack = makeStack();
    const writer = await ChunkIndex.load(stack(), sealer, { mergeThreshold: 1 });
    const es = randomEntries(64 * 40 * 3);
    for (let d = 0; d < 3; d++) {
      writer.add(es.slice(d * 2560, (d + 1) * 2560));
      await writer.writeDelta(session);
    }
    const reader = await ChunkIndex.load(stack(), sealer);
    const out: IndexEntry[] = [];
    let compacted = false;
    for await (const e of reader.entries()) {
      out.push(e);
      if (!compacted && out.length === 100) {
        await (await ChunkIndex.load(stack(), sealer, { mergeThreshold: 1 })).compact();
        compacted = true;
      }
    }
    expect(out).toEqual([...es].sort(compareEntries));
  });

  it('reports and skips damaged objects: a flipped byte, a truncated object, hostile counts', async () => {
    const stack = makeStack();
    const b = stack();
    const index = await ChunkIndex.load(b, sealer);
    const good = randomEntries(100);
    index.add(good);
    await index.writeDelta(session);
    const victims: { name: string; es: IndexEntry[]; bytes: Buffer }[] = [];
    for (let i = 0; i < 6; i++) {
      const es = randomEntries(200);
      index.add(es);
      const name = (await index.writeDelta(session))!;
      victims.push({ name, es, bytes: await b.get(`index/${name}`) });
    }
    const [flipPage, truncated, hugeCount, hugeSupersedes, wrongPages, flipPreamble] = victims;
    const flipped = Buffer.from(flipPage!.bytes);
    flipped[flipped.length - 100]! ^= 1; // inside the last page: found at lookup, not at load
    await b.put(`index/${flipPage!.name}`, flipped);
    await b.put(`index/${truncated!.name}`, truncated!.bytes.subarray(0, truncated!.bytes.length - 10));
    await b.put(
      `index/${hugeCount!.name}`,
      editPreamble(hugeCount!.bytes, (p) => p.writeUInt32BE(0xfffffff0, 40)),
    );
    await b.put(
      `index/${hugeSupersedes!.name}`,
      editPreamble(hugeSupersedes!.bytes, (p) => p.writeUInt16BE(65535, 146)),
    );
    await b.put(
      `index/${wrongPages!.name}`,
      editPreamble(wrongPages!.bytes, (p) => p.writeUInt32BE(99999, 44)),
    );
    const fp = Buffer.from(flipPreamble!.bytes);
    fp[40]! ^= 0x10;
    await b.put(`index/${flipPreamble!.name}`, fp);
    await b.put('index/not-an-index-name', Buffer.from('x'));

    const fresh = await ChunkIndex.load(stack(), sealer);
    const reasons = new Map(fresh.damaged.map((d) => [d.key, d.reason]));
    expect(reasons.get(`index/${truncated!.name}`)).toMatch(/bytes/);
    expect(reasons.get(`index/${hugeCount!.name}`)).toMatch(/entry count/);
    expect(reasons.get(`index/${hugeSupersedes!.name}`)).toMatch(/supersedes 65535/);
    expect(reasons.get(`index/${wrongPages!.name}`)).toMatch(/page count/);
    expect(reasons.get(`index/${flipPreamble!.name}`)).toMatch(/does not open/);
    expect(reasons.get('index/not-an-index-name')).toMatch(/not an index object name/);
    expect(reasons.has(`index/${flipPage!.name}`)).toBe(false);
    for (const e of good) expect(await fresh.lookup(e.id)).toEqual(e);
    // the flipped page is found at the first lookup that reads it
    const inFlipped = flipPage!.es.sort(compareEntries).slice(-8);
    for (const e of inFlipped) await fresh.lookup(e.id);
    expect(fresh.damaged.map((d) => d.key)).toContain(`index/${flipPage!.name}`);
    expect(await fresh.lookup(inFlipped[0]!.id)).toBeUndefined();
    expect(fresh.stats().objects).toBe(1);
  });

  it('void records make entries absent, survive a reload, and are dropped by compaction', async () => {
    const stack = makeStack();
    const b = stack();
    const index = await ChunkIndex.load(b, sealer, { mergeThreshold: 1 });
    const pack = randomBytes(16);
    const inPack = Array.from({ length: 5 }, (_, i) => randomEntry({ pack, offset: 48 + i * 1000 }));
    const other = randomEntries(50);
    const single = other[0]!;
    index.add([...inPack, ...other]);
    await index.writeDelta(session);
    index.add(randomEntries(5));
    await index.writeDelta(session);
    const voidKeys = await index.writeVoid([
      { pack, offset: '*', reason: 'pack trailer unreadable', timeMs: Date.now() },
      {
        pack: single.pack,
        offset: single.offset,
        id: single.id,
        reason: 'record does not open',
        timeMs: Date.now(),
      },
    ]);
    expect(voidKeys.length).toBe(1);
    expect(voidKeys[0]).toMatch(/^quarantine\/[0-9a-f]{32}$/);
    expect(await index.lookup(single.id)).toBeUndefined();
    for (const e of inPack) expect(await index.lookup(e.id)).toBeUndefined();
    expect(await index.lookup(other[1]!.id)).toEqual(other[1]);
    // a pending entry in a voided pack is absent too
    const late = randomEntry({ pack });
    index.add([late]);
    expect(await index.lookup(late.id)).toBeUndefined();
    await index.writeDelta(session);

    const fresh = await ChunkIndex.load(stack(), sealer, { mergeThreshold: 1 });
    expect(fresh.damaged).toEqual([]);
    expect(fresh.stats().voids).toBe(2);
    expect(await fresh.lookup(single.id)).toBeUndefined();
    expect(await fresh.lookup(inPack[2]!.id)).toBeUndefined();
    expect((await all(fresh)).length).toBe(49 + 5);
    const r = await fresh.compact();
    expect(r?.entries).toBe(54);
    // a damaged void record is reported and skipped
    const bad = Buffer.from(await b.get(voidKeys[0]!));
    bad[5]! ^= 1;
    await b.put('quarantine/00112233445566778899aabbccddeeff', bad);
    await b.put('quarantine/snapshot-abc', Buffer.from('a quarantined manifest'));
    const again = await ChunkIndex.load(stack(), sealer);
    expect(again.damaged.map((d) => d.key)).toEqual(['quarantine/00112233445566778899aabbccddeeff']);
    expect(await again.lookup(single.id)).toBeUndefined();
  });

  it('rebuild writes rebuilt objects that supersede and replace every existing one', async () => {
    const stack = makeStack();
    const b = stack();
    const index = await ChunkIndex.load(b, sealer);
    index.add(randomEntries(100));
    await index.writeDelta(session);
    await b.put('index/00000000000000000000000000000000', Buffer.from('damaged'));
    const es = randomEntries(700); // any order, as read from pack trailers
    const dup = es[3]!;
    const voided = es[5]!;
    await index.writeVoid([{ pack: voided.pack, offset: voided.offset, reason: 'damaged', timeMs: 1 }]);
    async function* source() {
      yield* es.slice(0, 10);
      yield dup; // an exact duplicate within a run of the rebuild is dropped
      yield* es.slice(10);
    }
    const r = await ChunkIndex.rebuild(b, sealer, source(), { shardEntries: 256 });
    expect(r.entries).toBe(699);
    expect(r.written.length).toBe(3);
    expect(r.superseded.length).toBe(2);
    expect(await keys(b, INDEX_PREFIX)).toEqual(r.written.map((n) => `index/${n}`).sort());
    const fresh = await ChunkIndex.load(stack(), sealer);
    expect(fresh.damaged).toEqual([]);
    expect(fresh.liveObjects().every((o) => o.kind === 'rebuilt' && o.generation === 2)).toBe(true);
    for (const e of es) {
      if (e === voided) expect(await fresh.lookup(e.id)).toBeUndefined();
      else expect(await fresh.lookup(e.id)).toEqual(e);
    }
    expect(await all(fresh)).toEqual(es.filter((e) => e !== voided).sort(compareEntries));
    // an empty repository's rebuild writes one empty object
    const empty = new MemoryBackend();
    const r2 = await ChunkIndex.rebuild(empty, sealer, []);
    expect(r2.written.length).toBe(1);
    expect((await ChunkIndex.load(empty, sealer)).stats()).toMatchObject({ objects: 1, entries: 0 });
  });
});

describe('chunk index bounds', () => {
  it('refuses more pending entries than its bound, and keeps entries pending when a delta fails', async () => {
    const b = new MemoryBackend();
    const index = await ChunkIndex.load(b, sealer, { maxPendingEntries: 100 });
    index.add(randomEntries(100));
    expect(() => index.add(randomEntries(1))).toThrow(/writeDelta/);
    const failing = Object.create(b) as MemoryBackend;
    failing.putIfAbsent = () => Promise.reject(new Error('disk full'));
    const index2 = await ChunkIndex.load(failing, sealer);
    const es = randomEntries(10);
    index2.add(es);
    await expect(index2.writeDelta(session)).rejects.toThrow('disk full');
    expect(index2.pendingEntries).toBe(10);
    expect(await index2.lookup(es[0]!.id)).toEqual(es[0]);
  });

  it('memory per entry is at most 2.6 bytes (filter + directory)', async () => {
    const b = new MemoryBackend();
    const index = await ChunkIndex.load(b, sealer);
    for (const n of [1000, 5000, 13107]) {
      index.add(randomEntries(n));
      await index.writeDelta(session);
    }
    const s = (await ChunkIndex.load(b, sealer)).stats();
    expect((s.filterBytes + s.directoryBytes) / s.entries).toBeLessThanOrEqual(2.6);
  });
});
