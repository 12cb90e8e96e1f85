/**
 * Paged disk indexes (design record §3.2, docs/format-2-pages.md): the metadata an incremental of a
 * 1 TiB disk writes for each page size, and how many pages a full backup makes. Synthetic, no
 * I/O: random chunk ids, pages hashed with BLAKE3 into an in-memory store, through the real
 * src/repo/disk-tree.ts.
 *   npx tsx bench/index-pages.ts
 */
import { randomBytes } from 'node:crypto';
import { blake3 } from '@napi-rs/blake-hash';
import { DiskIndex, writeTree, type PageKind, type PageStore } from '../src/repo/index.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;
/** A record's overhead in a meta pack (nonce and tag), its trailer entry and its chunk index entry. */
const RECORD_OVERHEAD = 28;
const TRAILER_ENTRY = 48;
const INDEX_ENTRY = 64;
const SEEDS = 3;

/** Pages in memory: those of the parent (shared) and those this run added. */
class Store implements PageStore {
  readonly added = new Set<string>();
  constructor(readonly base: Set<string> = new Set()) {}
  put(_kind: PageKind, plain: Buffer): Promise<{ id: Buffer; written: boolean; storedBytes: number }> {
    const id = blake3(plain);
    const key = id.toString('hex');
    if (this.base.has(key) || this.added.has(key))
      return Promise.resolve({ id, written: false, storedBytes: 0 });
    this.added.add(key);
    return Promise.resolve({ id, written: true, storedBytes: plain.length + RECORD_OVERHEAD });
  }
  get(): Promise<Buffer> {
    return Promise.reject(new Error('not used'));
  }
}

/** A small deterministic PRNG (mulberry32), so every page size sees the same change positions. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

type Pattern = {
  name: string;
  disk: number;
  runs: (r: () => number, slots: number) => Array<[number, number]>;
};

/** `count` runs of `len` slots at random slot-aligned offsets. */
const clusters =
  (count: number, len: number) =>
  (r: () => number, slots: number): Array<[number, number]> =>
    Array.from({ length: count }, () => [Math.floor(r() * (slots - len + 1)), len] as [number, number]);

const patterns: Pattern[] = [
  { name: '1 TiB: 1 GiB as 1 cluster', disk: TiB, runs: clusters(1, 1024) },
  { name: '1 TiB: 64 × 16 MiB clusters', disk: TiB, runs: clusters(64, 16) },
  { name: '1 TiB: 1024 × 1 MiB scattered', disk: TiB, runs: clusters(1024, 1) },
  { name: 'bench VM: 4 GiB, 32 × 2 MiB', disk: 4 * GiB, runs: clusters(32, 2) },
];

const PAGE_SLOTS = [256, 512, 1024, 2048, 4096];

function fullIndex(disk: number): DiskIndex {
  const idx = DiskIndex.empty(disk, MiB);
  const step = 1 << 16;
  for (let s = 0; s < idx.slotCount; s += step)
    idx.setSlotBytes(s, randomBytes(Math.min(step, idx.slotCount - s) * 32));
  return idx;
}

const fmt = (bytes: number): string => (bytes / MiB).toFixed(2);

const parents = new Map<number, DiskIndex>();
for (const p of patterns) if (!parents.has(p.disk)) parents.set(p.disk, fullIndex(p.disk));

console.log(
  'Incremental: metadata written (MiB; pages as records + their trailer and index entries), mean of 3 seeds',
);
console.log(`| change | ${PAGE_SLOTS.map((n) => `${n} slots`).join(' | ')} |`);
console.log(`|---|${PAGE_SLOTS.map(() => '---:').join('|')}|`);
const full: string[] = [];
for (const p of patterns) {
  const cells: string[] = [];
  for (const pageSlots of PAGE_SLOTS) {
    const parent = parents.get(p.disk)!;
    const base = new Store();
    await writeTree(parent, pageSlots, base);
    let bytes = 0;
    let pages = 0;
    for (let seed = 1; seed <= SEEDS; seed++) {
      const child = DiskIndex.cloneFrom(parent, parent.diskSizeBytes);
      for (const [at, len] of p.runs(rng(seed), child.slotCount))
        child.setSlotBytes(at, randomBytes(len * 32));
      const w = await writeTree(child, pageSlots, new Store(base.added));
      bytes += w.bytesWritten + w.pagesWritten * (TRAILER_ENTRY + INDEX_ENTRY);
      pages += w.pagesWritten;
    }
    cells.push(`${fmt(bytes / SEEDS)} (${Math.round(pages / SEEDS)} p)`);
  }
  console.log(`| ${p.name} | ${cells.join(' | ')} |`);
}
console.log(`| flat index (format 1) | ${PAGE_SLOTS.map(() => fmt((TiB / MiB) * 32)).join(' | ')} |`);

console.log('\nFull backup: pages of the tree (and MiB of page records)');
console.log(`| disk | ${PAGE_SLOTS.map((n) => `${n} slots`).join(' | ')} |`);
console.log(`|---|${PAGE_SLOTS.map(() => '---:').join('|')}|`);
const sparse = DiskIndex.empty(TiB, MiB);
const r = rng(7);
for (let i = 0; i < 5; i++) sparse.setSlotBytes(Math.floor(r() * sparse.slotCount), randomBytes(32));
for (const [name, idx] of [
  ['1 TiB, every chunk data', parents.get(TiB)!],
  ['1 TiB sparse, 5 MiB of data', sparse],
  ['4 GiB, every chunk data', parents.get(4 * GiB)!],
] as const) {
  const cells: string[] = [];
  for (const pageSlots of PAGE_SLOTS) {
    const w = await writeTree(idx, pageSlots, new Store());
    cells.push(`${w.pages} (${fmt(w.bytesWritten)})`);
  }
  full.push(`| ${name} | ${cells.join(' | ')} |`);
}
console.log(full.join('\n'));
