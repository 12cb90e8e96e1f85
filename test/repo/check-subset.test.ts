import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  checkRepository,
  DiskIndex,
  packPart,
  parseDataSubset,
  Repository,
  selectPacks,
  type ChunkId,
  type SnapshotManifest,
} from '../../src/repo/index.js';
import { parseTimeSpan, UsageError } from '../../src/util/index.js';
import { corruptRecord } from '../helpers/repo-files.js';
import { imageManifest } from '../helpers/manifests.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';

const KiB = 1024;
const CS = 64 * KiB;
const CHUNKS = 12;

const manifest = (root: string, sizeBytes: number): SnapshotManifest => imageManifest(root, sizeBytes, CS);

/** Pack names (32 hex) of the repository, from its files. */
async function packNames(loc: string): Promise<string[]> {
  const out: string[] = [];
  for (const kind of ['data', 'meta'])
    for (const hh of await readdir(join(loc, kind)))
      for (const f of await readdir(join(loc, kind, hh))) out.push(f);
  return out.sort();
}

describe('parseDataSubset and parseTimeSpan', () => {
  it('parses K/N and percentages; refuses the rest', () => {
    expect(parseDataSubset('2/5')).toEqual({ part: 2, of: 5 });
    expect(parseDataSubset('1/1')).toEqual({ part: 1, of: 1 });
    expect(parseDataSubset('10%')).toEqual({ percent: 10 });
    expect(parseDataSubset('2.5%')).toEqual({ percent: 2.5 });
    for (const bad of ['0/5', '6/5', '1/0', '0%', '101%', '-1/3', '10', 'a/b', '', '1/2/3', '50M'])
      expect(() => parseDataSubset(bad), bad).toThrow(UsageError);
  });
  it('parses d/h/m/s spans, largest unit first', () => {
    expect(parseTimeSpan('30m')).toBe(30 * 60_000);
    expect(parseTimeSpan('2h')).toBe(2 * 3_600_000);
    expect(parseTimeSpan('1h30m')).toBe(90 * 60_000);
    expect(parseTimeSpan('45s')).toBe(45_000);
    expect(parseTimeSpan('1d2h3m4s')).toBe(((24 + 2) * 3600 + 3 * 60 + 4) * 1000);
    for (const bad of ['', '0s', '5', '5x', '30m1h', '1h1h', '-5m', '400d', '1.5h'])
      expect(() => parseTimeSpan(bad), bad).toThrow(UsageError);
  });
});

describe('checkRepository --read-data-subset and --max-time (a pack per chunk)', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let loc: string;
  const ids: ChunkId[] = [];
  const open: Repository[] = [];
  const openRepo = async (): Promise<Repository> => {
    const r = await Repository.open(loc, { workers: 0 });
    open.push(r);
    return r;
  };

  beforeEach(async () => {
    ({ dir, cleanup } = await makeTmpDir('vmvault-check-subset-'));
    loc = join(dir, 'repo');
    await (await Repository.init(loc, { chunkSizeBytes: CS })).close();
    const repo = await openRepo();
    ids.length = 0;
    const idx = DiskIndex.empty(CHUNKS * CS, CS);
    for (let i = 0; i < CHUNKS; i++) {
      const id = (await repo.chunks.put(seededBytes(CS, 100 + i))).id;
      await repo.chunks.flush(); // one data pack per chunk
      ids.push(id);
      idx.set(i, id);
    }
    await repo.putSnapshot(manifest((await repo.putIndex(idx)).id, CHUNKS * CS));
  });
  afterEach(async () => {
    for (const r of open.splice(0)) await r.close();
    await cleanup();
  });

  it('K/N: N runs read every pack exactly once in all, each part by the first bytes of the pack name', async () => {
    const names = await packNames(loc);
    expect(names.length).toBeGreaterThanOrEqual(CHUNKS + 1);
    for (const n of [1, 3, 5, 16]) {
      let packs = 0;
      let bytes = 0;
      const seen = new Set<string>();
      for (let k = 1; k <= n; k++) {
        const r = await checkRepository(await openRepo(), { readData: true, subset: { part: k, of: n } });
        expect(r.problems).toEqual([]);
        const mine = names.filter((x) => packPart(x, n) === k - 1);
        expect(r.packsRead, `${k}/${n}`).toBe(mine.length);
        expect(r.packsSelected).toBe(mine.length);
        expect(r.rotating).toBe(false);
        expect(r.nextPack).toBeNull();
        for (const x of mine) {
          expect(seen.has(x)).toBe(false);
          seen.add(x);
        }
        packs += r.packsRead;
        bytes += r.packBytesRead;
        if (k === n) {
          expect(packs).toBe(r.packs);
          expect(bytes).toBe(r.packBytes);
        }
      }
      expect([...seen].sort()).toEqual(names);
    }
    // The parts do not depend on the order of the listing: the same selection from a reversed map.
    const sizes = new Map<string, number>();
    for (const x of names) sizes.set(`data/${x.slice(0, 2)}/${x}`, 1);
    const a = selectPacks(sizes, { subset: { part: 2, of: 3 }, rotate: false }).order.map((p) => p[2]);
    const b = selectPacks(new Map([...sizes].reverse()), {
      subset: { part: 2, of: 3 },
      rotate: false,
    }).order.map((p) => p[2]);
    expect(a).toEqual(b);
    expect(a.every((x) => packPart(x, 3) === 1)).toBe(true);
  });

  it('a damaged pack is found by the part that holds it, not by the others', async () => {
    const rec = await corruptRecord(loc, ids[5]!);
    const name = rec.key.split('/')[2]!;
    const n = 4;
    const holder = packPart(name, n) + 1;
    for (let k = 1; k <= n; k++) {
      const r = await checkRepository(await openRepo(), { readData: true, subset: { part: k, of: n } });
      if (k === holder) {
        expect(r.chunksCorrupt).toBe(1);
        expect(r.problems.some((p) => p.kind === 'pack-damaged' && p.pack === rec.key)).toBe(true);
        expect(r.problems.some((p) => p.kind === 'chunk-corrupt' && p.chunkId === ids[5])).toBe(true);
      } else {
        expect(r.problems, `part ${k}/${n}`).toEqual([]);
      }
    }
  });

  it('--max-time stops early; the next runs continue after the last pack read and cover everything', async () => {
    const names = await packNames(loc);
    // A clock that runs 1 s per look: with a 1.5 s budget, each run reads 2 packs.
    let t = 0;
    const clock = (): number => (t += 1000);
    let startAfter: string | undefined;
    const read: string[] = [];
    for (let i = 0; i < Math.ceil(names.length / 2); i++) {
      const r = await checkRepository(await openRepo(), {
        readData: true,
        maxTimeMs: 1500,
        clock,
        ...(startAfter !== undefined ? { startAfter } : {}),
      });
      expect(r.problems).toEqual([]);
      expect(r.rotating).toBe(true);
      expect(r.startAfter).toBe(startAfter ?? null);
      // The run read the packs after the cursor, in name order, up to lastPack.
      const from = startAfter === undefined ? 0 : names.findIndex((x) => x > startAfter!);
      // Round the end to the first pack when one was left (the rotation wraps within a run too).
      const expected = [...names, ...names].slice(from, from + 2);
      expect(r.packsRead).toBe(2);
      expect(r.lastPack).toBe(expected[1]);
      read.push(...expected);
      expect(r.stoppedEarly).toBe(true);
      expect(r.nextPack).toBe([...names, ...names][from + 2]);
      startAfter = r.lastPack!;
    }
    expect(new Set(read)).toEqual(new Set(names)); // ceil(n/2) runs: every pack
    expect(read.slice(0, names.length)).toEqual(names); // once each, in name order
    // After the last pack name, the next run starts at the first.
    const again = await checkRepository(await openRepo(), {
      readData: true,
      maxTimeMs: 1500,
      clock,
      startAfter: names.at(-1)!,
    });
    expect(again.lastPack).toBe(names[1]);
    // A budget that is not reached reads everything, from after the cursor round to it.
    const all = await checkRepository(await openRepo(), {
      readData: true,
      maxTimeMs: 3_600_000,
      startAfter: names[3]!,
    });
    expect(all.packsRead).toBe(names.length);
    expect(all.stoppedEarly).toBe(false);
    expect(all.lastPack).toBe(names[3]);
    expect(all.nextPack).toBe(names[4]);
    // A tiny budget on the real clock still reads one pack (the first is always read).
    const tiny = await checkRepository(await openRepo(), { readData: true, maxTimeMs: 1 });
    expect(tiny.packsRead).toBeGreaterThanOrEqual(1);
    expect(tiny.lastPack).toBe(names[tiny.packsRead - 1]);
  });

  it('a percentage reads the next ceil(P%) of the packs in rotation: ceil(100/P) runs cover everything', async () => {
    const names = await packNames(loc);
    const per = Math.ceil(names.length * 0.25);
    let startAfter: string | undefined;
    const read: string[] = [];
    for (let i = 0; i < 4; i++) {
      const r = await checkRepository(await openRepo(), {
        readData: true,
        subset: { percent: 25 },
        ...(startAfter !== undefined ? { startAfter } : {}),
      });
      expect(r.subset).toBe('25%');
      expect(r.packsRead).toBeLessThanOrEqual(per);
      const from = startAfter === undefined ? 0 : names.findIndex((x) => x > startAfter!);
      const got = [...names, ...names].slice(from, from + r.packsRead);
      read.push(...got);
      expect(r.lastPack).toBe(got.at(-1));
      startAfter = r.lastPack!;
    }
    expect(new Set(read)).toEqual(new Set(names));
  });

  it('K/N with --max-time rotates within the part', async () => {
    const names = (await packNames(loc)).filter((x) => packPart(x, 2) === 0);
    let t = 0;
    const clock = (): number => (t += 1000);
    const r = await checkRepository(await openRepo(), {
      readData: true,
      subset: { part: 1, of: 2 },
      maxTimeMs: 500,
      clock,
    });
    expect(r.packsRead).toBe(1);
    expect(r.lastPack).toBe(names[0]);
    expect(r.nextPack).toBe(names[1] ?? names[0]);
    expect(r.packsSelected).toBe(names.length);
  });

  it('--read-data-subset and --max-time need --read-data', async () => {
    const repo = await openRepo();
    await expect(checkRepository(repo, { subset: { part: 1, of: 2 } })).rejects.toThrow(/needs --read-data/);
    await expect(checkRepository(repo, { maxTimeMs: 1000 })).rejects.toThrow(/needs --read-data/);
  });
});
