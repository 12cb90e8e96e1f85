import { randomBytes } from 'node:crypto';
import { blake3 } from '@napi-rs/blake-hash';
import { describe, expect, it } from 'vitest';
import {
  DiskIndex,
  encodePage,
  format,
  readTree,
  RepoDamagedError,
  treePages,
  treeShape,
  writeTree,
  ZERO_ROOT,
  type PageKind,
  type PageStore,
} from '../../src/repo/index.js';

const KiB = 1024;
const CHUNK = 64 * KiB;

/** Pages in memory, by id (BLAKE3-256 of the plaintext), as the repository's store would keep them. */
class MemoryPageStore implements PageStore {
  readonly pages = new Map<string, { kind: PageKind; plain: Buffer }>();
  /** Ids of the pages each put stored, in order. */
  readonly written: string[] = [];
  gets = 0;
  inFlight = 0;
  maxInFlight = 0;
  constructor(private readonly delayMs = 0) {}

  put(kind: PageKind, plaintext: Buffer): Promise<{ id: Buffer; written: boolean; storedBytes: number }> {
    const id = blake3(plaintext);
    const key = id.toString('hex');
    if (this.pages.has(key)) return Promise.resolve({ id, written: false, storedBytes: 0 });
    this.pages.set(key, { kind, plain: Buffer.from(plaintext) });
    this.written.push(key);
    return Promise.resolve({ id, written: true, storedBytes: plaintext.length + 28 });
  }

  async get(kind: PageKind, id: Buffer): Promise<Buffer> {
    this.gets++;
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      if (this.delayMs) await new Promise((r) => setTimeout(r, this.delayMs));
      const key = id.toString('hex');
      const p = this.pages.get(key);
      // The kind is not checked: the tree code must tell a leaf from an inner page itself.
      void kind;
      if (!p) throw new RepoDamagedError(`page ${key.slice(0, 8)} is missing`);
      if (!blake3(p.plain).equals(id))
        throw new RepoDamagedError(`page ${key.slice(0, 8)} does not match its id`);
      return Buffer.from(p.plain);
    } finally {
      this.inFlight--;
    }
  }

  /** Stores a hand-made page (as a hostile writer could) and returns its id in hex. */
  plant(kind: PageKind, plain: Buffer): string {
    const key = blake3(plain).toString('hex');
    this.pages.set(key, { kind, plain });
    return key;
  }
}

/** An index of `slots` full slots with random ids (zero where `zero(slot)`). */
function randomIndex(slots: number, zero: (slot: number) => boolean = () => false): DiskIndex {
  const idx = DiskIndex.empty(slots * CHUNK, CHUNK);
  const ids = randomBytes(slots * 32);
  for (let s = 0; s < slots; s++) if (zero(s)) ids.fill(0, s * 32, s * 32 + 32);
  idx.setSlotBytes(0, ids);
  return idx;
}

function sameSlots(a: DiskIndex, b: DiskIndex): boolean {
  return (
    a.slotCount === b.slotCount &&
    a.diskSizeBytes === b.diskSizeBytes &&
    a.slotBytes(0, a.slotCount).equals(b.slotBytes(0, b.slotCount))
  );
}

describe('disk index tree shape', () => {
  it('derives the depth and each level from the slot count and page size', () => {
    expect(treeShape(0, 1024)).toEqual({ depth: 0, entries: [] });
    expect(treeShape(1, 1024)).toEqual({ depth: 1, entries: [1] });
    expect(treeShape(1024, 1024)).toEqual({ depth: 1, entries: [1024] });
    expect(treeShape(1025, 1024)).toEqual({ depth: 2, entries: [1025, 2] });
    expect(treeShape(2 ** 20, 1024)).toEqual({ depth: 2, entries: [2 ** 20, 1024] });
    expect(treeShape(2 ** 20 + 1, 1024)).toEqual({ depth: 3, entries: [2 ** 20 + 1, 1025, 2] });
    expect(treeShape(format.MAX_INDEX_SLOTS, 1024).depth).toBe(3);
    expect(treeShape(format.MAX_INDEX_SLOTS, 256).depth).toBe(4);
    expect(() => treeShape(10, 1000)).toThrow(RangeError);
    expect(() => treeShape(10, 8192)).toThrow(RangeError);
  });
});

describe('disk index tree', () => {
  it.each([
    // [slots, pageSlots, depth, pages]
    [1, 4, 1, 1],
    [4, 4, 1, 1],
    [5, 4, 2, 3],
    [16, 4, 2, 5],
    [17, 4, 3, 5 + 2 + 1],
    [64, 4, 3, 16 + 4 + 1],
    [65, 4, 4, 17 + 5 + 2 + 1],
    [300, 256, 2, 2 + 1],
    [65537, 256, 3, 257 + 2 + 1],
  ])('round-trips %i slots in pages of %i (depth %i)', async (slots, pageSlots, depth, pages) => {
    expect(treeShape(slots, pageSlots).depth).toBe(depth);
    const idx = randomIndex(slots);
    const store = new MemoryPageStore();
    const w = await writeTree(idx, pageSlots, store);
    expect(w.root).toMatch(/^[0-9a-f]{64}$/);
    expect(w.root).not.toBe(ZERO_ROOT);
    expect(w).toMatchObject({ pages, pagesWritten: pages });
    expect(store.pages.size).toBe(pages);
    const back = await readTree(w.root, idx.diskSizeBytes, CHUNK, pageSlots, store);
    expect(sameSlots(back, idx)).toBe(true);
    const listed = [];
    for await (const p of treePages(w.root, idx.diskSizeBytes, CHUNK, pageSlots, store)) listed.push(p);
    expect(listed.map((p) => p.id).sort()).toEqual([...store.pages.keys()].sort());
    expect(listed[0]).toEqual({ id: w.root, kind: depth === 1 ? 3 : 4, level: depth - 1 });
    for (const p of listed) expect(store.pages.get(p.id)!.kind).toBe(p.kind);
  });

  it('keeps a partial last slot and the chunk size in its leaves', async () => {
    const idx = DiskIndex.empty(10 * CHUNK + 123, CHUNK);
    idx.setSlotBytes(0, randomBytes(11 * 32));
    const store = new MemoryPageStore();
    const w = await writeTree(idx, 4, store);
    const back = await readTree(w.root, 10 * CHUNK + 123, CHUNK, 4, store);
    expect(sameSlots(back, idx)).toBe(true);
    expect(back.slotLength(10)).toBe(123);
    const leaf = [...store.pages.values()].find((p) => p.kind === 3)!.plain;
    expect(leaf.readUInt32BE(0)).toBe(format.LEAF_PAGE_MAGIC);
    expect(leaf.readUInt8(4)).toBe(2);
    expect(leaf.readUInt32BE(8)).toBe(CHUNK);
  });

  it('stores no page for zero regions: a sparse 1 TiB disk is its data leaves and a root', async () => {
    const MiB = 1024 * 1024;
    const idx = DiskIndex.empty(2 ** 40, MiB);
    const used = [0, 1, 500_000, 700_000, 2 ** 20 - 1];
    for (const s of used) idx.setSlotBytes(s, randomBytes(32));
    const store = new MemoryPageStore();
    const w = await writeTree(idx, 1024, store);
    // slots 0 and 1 share a leaf: 4 leaves and the root.
    expect(w).toMatchObject({ pages: 5, pagesWritten: 5 });
    const root = store.pages.get(w.root)!.plain;
    expect(root.readUInt32BE(12)).toBe(1024);
    const back = await readTree(w.root, 2 ** 40, MiB, 1024, store);
    expect(sameSlots(back, idx)).toBe(true);
    expect(store.gets).toBe(5);
  });

  it('gives an all-zero or empty disk the zero root and reads it back without a page', async () => {
    const store = new MemoryPageStore();
    const zero = DiskIndex.empty(100 * CHUNK, CHUNK);
    expect(await writeTree(zero, 4, store)).toEqual({
      root: ZERO_ROOT,
      pages: 0,
      pagesWritten: 0,
      bytesWritten: 0,
    });
    expect(await writeTree(DiskIndex.empty(0, CHUNK), 4, store)).toMatchObject({ root: ZERO_ROOT, pages: 0 });
    expect(store.pages.size).toBe(0);
    const back = await readTree(ZERO_ROOT, 100 * CHUNK, CHUNK, 4, store);
    expect(sameSlots(back, zero)).toBe(true);
    expect((await readTree(ZERO_ROOT, 0, CHUNK, 4, store)).slotCount).toBe(0);
    const listed = [];
    for await (const p of treePages(ZERO_ROOT, 100 * CHUNK, CHUNK, 4, store)) listed.push(p);
    expect(listed).toEqual([]);
    expect(store.gets).toBe(0);
  });

  it('marks an all-zero subtree with the zero marker in its parent', async () => {
    // 64 slots in pages of 4: slots 16..31 (leaves 4..7, inner page 1 of level 1) all zero.
    const idx = randomIndex(64, (s) => s >= 16 && s < 32);
    const store = new MemoryPageStore();
    const w = await writeTree(idx, 4, store);
    expect(w.pages).toBe(12 + 3 + 1);
    const root = store.pages.get(w.root)!.plain;
    expect(root.subarray(16 + 32, 16 + 64).equals(Buffer.alloc(32))).toBe(true);
    const back = await readTree(w.root, idx.diskSizeBytes, CHUNK, 4, store);
    expect(sameSlots(back, idx)).toBe(true);
  });

  it('an incremental writes only the changed leaves and the inner pages on their paths', async () => {
    // 768 slots in pages of 16: 48 leaves, 3 inner pages at level 1, a root at level 2.
    const parent = randomIndex(768);
    const store = new MemoryPageStore();
    const full = await writeTree(parent, 16, store);
    expect(full).toMatchObject({ pages: 48 + 3 + 1, pagesWritten: 52 });
    const pageBytes = 16 + 16 * 32 + 28; // stored: plaintext and the store's record overhead
    const rootBytes = 16 + 3 * 32 + 28;
    expect(full.bytesWritten).toBe(51 * pageBytes + rootBytes);

    const child = DiskIndex.cloneFrom(parent, parent.diskSizeBytes);
    child.setSlotBytes(3, randomBytes(32)); // leaf 0, level-1 page 0
    child.setSlotBytes(5, randomBytes(32)); // leaf 0 again
    child.setSlotBytes(700, randomBytes(32)); // leaf 43, level-1 page 2
    store.written.length = 0;
    const inc = await writeTree(child, 16, store);
    expect(inc).toMatchObject({ pages: 52, pagesWritten: 2 + 2 + 1 });
    expect(inc.bytesWritten).toBe(4 * pageBytes + rootBytes);
    expect(store.written).toHaveLength(5);
    expect(store.written.at(-1)).toBe(inc.root);
    // The new pages are exactly the leaves 0 and 43, the level-1 pages 0 and 2, and the root.
    const kinds = store.written.map((id) => store.pages.get(id)!.plain.readUInt8(5));
    expect(kinds).toEqual([0, 0, 1, 1, 2]);
    expect(sameSlots(await readTree(inc.root, child.diskSizeBytes, CHUNK, 16, store), child)).toBe(true);
    // The parent still reads as it was.
    expect(sameSlots(await readTree(full.root, parent.diskSizeBytes, CHUNK, 16, store), parent)).toBe(true);

    // Writing a slot with the id it had changes nothing.
    const same = DiskIndex.cloneFrom(child, child.diskSizeBytes);
    same.setSlotBytes(9, Buffer.from(child.slotBytes(9, 1)));
    expect(await writeTree(same, 16, store)).toMatchObject({
      root: inc.root,
      pagesWritten: 0,
      bytesWritten: 0,
    });
  });

  it('identical disks share every page', async () => {
    const a = randomIndex(200);
    const b = DiskIndex.empty(a.diskSizeBytes, CHUNK);
    b.setSlotBytes(0, Buffer.from(a.slotBytes(0, a.slotCount)));
    const store = new MemoryPageStore();
    const wa = await writeTree(a, 8, store);
    const wb = await writeTree(b, 8, store);
    expect(wb.root).toBe(wa.root);
    expect(wb).toMatchObject({ pages: wa.pages, pagesWritten: 0, bytesWritten: 0 });
  });

  it('stores a repeated leaf once and reads it once', async () => {
    // Four identical full leaves (the same 4 ids again and again), then a short one.
    const idx = DiskIndex.empty(18 * CHUNK, CHUNK);
    const four = randomBytes(4 * 32);
    for (let l = 0; l < 4; l++) idx.setSlotBytes(l * 4, four);
    idx.setSlotBytes(16, randomBytes(64));
    const store = new MemoryPageStore();
    const w = await writeTree(idx, 4, store);
    expect(w).toMatchObject({ pages: 5 + 2 + 1, pagesWritten: 2 + 2 + 1 });
    const back = await readTree(w.root, idx.diskSizeBytes, CHUNK, 4, store);
    expect(sameSlots(back, idx)).toBe(true);
    expect(store.gets).toBe(5);
    const listed = [];
    for await (const p of treePages(w.root, idx.diskSizeBytes, CHUNK, 4, store)) listed.push(p.id);
    expect(new Set(listed).size).toBe(listed.length);
    expect(listed).toHaveLength(5);
  });

  it('reads a few pages at once', async () => {
    const idx = randomIndex(256);
    const store = new MemoryPageStore(2);
    const w = await writeTree(idx, 4, store);
    expect(sameSlots(await readTree(w.root, idx.diskSizeBytes, CHUNK, 4, store), idx)).toBe(true);
    expect(store.maxInFlight).toBeGreaterThan(1);
    expect(store.maxInFlight).toBeLessThanOrEqual(4);
  });
});

describe('damaged and hostile disk index pages', () => {
  const damaged = (what: RegExp) =>
    expect.objectContaining({
      name: 'RepoDamagedError',
      code: 'REPO_DAMAGED',
      message: expect.stringMatching(what),
    });

  /** A leaf of `count` random ids, bytes changed by `edit`. */
  function leaf(count: number, edit: (p: Buffer) => Buffer = (p) => p, level = 0): Buffer {
    return edit(encodePage(level, CHUNK, randomBytes(count * 32)));
  }

  it.each<[string, () => Buffer, RegExp]>([
    [
      'an inner page where a leaf belongs',
      () => encodePage(1, CHUNK, randomBytes(3 * 32)),
      /is an inner page where the disk's shape has a leaf/,
    ],
    [
      'a leaf magic with level 1',
      () => leaf(3, (p) => (p.writeUInt8(1, 5), p)),
      /has level 1, the disk's shape puts it at level 0/,
    ],
    ['a bad magic', () => leaf(3, (p) => (p.writeUInt32BE(0x564d5649, 0), p)), /bad magic/],
    ['an unknown version', () => leaf(3, (p) => (p.writeUInt8(3, 4), p)), /has version 3, expected 2/],
    ['reserved bytes set', () => leaf(3, (p) => (p.writeUInt16BE(1, 6), p)), /reserved/],
    [
      'another chunk size',
      () => leaf(3, (p) => (p.writeUInt32BE(2 * CHUNK, 8), p)),
      /is for 131072-byte chunks, the disk has 65536-byte chunks/,
    ],
    ['too many entries', () => leaf(4), /has 4 entries, the disk's shape gives it 3/],
    ['too few entries', () => leaf(2), /has 2 entries, the disk's shape gives it 3/],
    [
      'a huge entry count',
      () => leaf(3, (p) => (p.writeUInt32BE(0xffffffff, 12), p)),
      /has 4294967295 entries/,
    ],
    ['a truncated page', () => leaf(3, (p) => p.subarray(0, p.length - 1)), /truncated/],
    ['a truncated header', () => leaf(3, (p) => p.subarray(0, 10)), /is truncated \(10 bytes\)/],
    ['trailing bytes', () => leaf(3, (p) => Buffer.concat([p, Buffer.alloc(32)])), /trailing bytes/],
  ])('refuses %s as the root leaf', async (_, make, why) => {
    const store = new MemoryPageStore();
    const root = store.plant(3, make());
    await expect(readTree(root, 3 * CHUNK, CHUNK, 4, store)).rejects.toEqual(
      damaged(new RegExp(`disk index page ${root.slice(0, 8)}… \\(leaf 0\\) .*${why.source}`)),
    );
  });

  it('checks leaves and inner pages against their place in a deeper tree', async () => {
    // 10 slots in pages of 4: leaves of 4, 4 and 2 entries under a root of 3 entries.
    const store = new MemoryPageStore();
    const good = await writeTree(randomIndex(10), 4, store);
    const rootPage = store.pages.get(good.root)!.plain;
    const withChild = (k: number, id: string): string => {
      const p = Buffer.from(rootPage);
      Buffer.from(id, 'hex').copy(p, 16 + k * 32);
      return store.plant(4, p);
    };
    // The short last leaf given a full leaf's 4 entries.
    const full = store.plant(3, leaf(4));
    await expect(readTree(withChild(2, full), 10 * CHUNK, CHUNK, 4, store)).rejects.toEqual(
      damaged(/\(leaf 2\) has 4 entries, the disk's shape gives it 2/),
    );
    // A full leaf's place given a short one.
    const short = store.plant(3, leaf(2));
    await expect(readTree(withChild(1, short), 10 * CHUNK, CHUNK, 4, store)).rejects.toEqual(
      damaged(/\(leaf 1\) has 2 entries, the disk's shape gives it 4/),
    );
    // A child that is the root itself (an inner page where a leaf belongs).
    await expect(readTree(withChild(0, good.root), 10 * CHUNK, CHUNK, 4, store)).rejects.toEqual(
      damaged(/\(leaf 0\) is an inner page/),
    );
    // The root read for a disk of another size: its entry count does not fit.
    await expect(readTree(good.root, 16 * CHUNK, CHUNK, 4, store)).rejects.toEqual(
      damaged(/\(inner page 0 of level 1\) has 3 entries, the disk's shape gives it 4/),
    );
    // A disk whose shape has a leaf root given the inner root.
    await expect(readTree(good.root, 3 * CHUNK, CHUNK, 4, store)).rejects.toEqual(
      damaged(/\(leaf 0\) is an inner page where the disk's shape has a leaf/),
    );
    // A root of the wrong level for a deeper disk.
    await expect(readTree(good.root, 40 * CHUNK, CHUNK, 4, store)).rejects.toEqual(
      damaged(/has level 1, the disk's shape puts it at level 2/),
    );
    // An inner page with a chunk size.
    const p = Buffer.from(rootPage);
    p.writeUInt32BE(CHUNK, 8);
    await expect(readTree(store.plant(4, p), 10 * CHUNK, CHUNK, 4, store)).rejects.toEqual(
      damaged(/has chunk size 65536, an inner page has 0/),
    );
    // treePages checks the inner pages it reads too.
    await expect(
      (async () => {
        for await (const _ of treePages(good.root, 16 * CHUNK, CHUNK, 4, store)) void _;
      })(),
    ).rejects.toEqual(damaged(/has 3 entries, the disk's shape gives it 4/));
  });

  it('passes on a missing page as the store reports it', async () => {
    const store = new MemoryPageStore();
    const idx = randomIndex(10);
    const w = await writeTree(idx, 4, store);
    const leafId = store.written[1]!;
    store.pages.delete(leafId);
    await expect(readTree(w.root, idx.diskSizeBytes, CHUNK, 4, store)).rejects.toEqual(
      damaged(new RegExp(`page ${leafId.slice(0, 8)} is missing`)),
    );
  });

  it('refuses roots and disk figures that cannot be', async () => {
    const store = new MemoryPageStore();
    await expect(readTree('xyz', CHUNK, CHUNK, 4, store)).rejects.toEqual(damaged(/is not a page id/));
    await expect(readTree('A'.repeat(64), CHUNK, CHUNK, 4, store)).rejects.toEqual(
      damaged(/is not a page id/),
    );
    await expect(readTree('1'.repeat(64), 0, CHUNK, 4, store)).rejects.toEqual(
      damaged(/names pages for an empty disk/),
    );
    await expect(readTree(ZERO_ROOT, 2 ** 50, CHUNK, 4, store)).rejects.toEqual(
      damaged(/more than a disk index maps/),
    );
    await expect(readTree(ZERO_ROOT, CHUNK, 1000, 4, store)).rejects.toEqual(damaged(/1000-byte chunks/));
    await expect(readTree(ZERO_ROOT, -1, CHUNK, 4, store)).rejects.toEqual(damaged(/-1-byte disk/));
    expect(store.gets).toBe(0);
  });
});
