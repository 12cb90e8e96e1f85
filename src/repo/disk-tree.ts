import { mapLimit } from '../util/index.js';
import { DiskIndex, slotCountFor } from './disk-index.js';
import { RepoDamagedError } from './errors.js';
import {
  CHUNK_ID_BYTES,
  INNER_PAGE_MAGIC,
  LEAF_PAGE_MAGIC,
  MAX_CHUNK_SIZE,
  MAX_INDEX_SLOTS,
  MAX_PAGE_SLOTS,
  MIN_CHUNK_SIZE,
  PAGE_HEADER_BYTES,
  PAGE_VERSION,
} from './format.js';

/**
 * A disk index stored as a tree of content-addressed pages (docs/format.md "Disk index pages";
 * design record §3). Leaves hold `pageSlots` slot ids of the disk, inner pages `pageSlots` child
 * page ids; an all-zero child (a leaf whose slots are all zero markers, an inner page whose
 * children all are) is the zero marker and is not stored. The depth and every page's entry count
 * follow from the disk's slot count, so a reader checks each page against the shape the manifest's
 * disk size implies.
 *
 * Pages are stored through a `PageStore` (the repository binds it to meta packs and the chunk
 * index). A page the repository holds is not written again: an incremental writes only the leaves
 * that changed and the inner pages on their paths; identical disks share every page.
 */

/** Record kinds of pages (F2 contract): 3 leaf, 4 inner. */
export type PageKind = 3 | 4;
export const LEAF_PAGE_KIND = 3;
export const INNER_PAGE_KIND = 4;

export interface PageStore {
  /** Stores a page unless the repository has it; returns its id (the codec's chunk id of the plaintext) and whether it wrote it. */
  put(kind: PageKind, plaintext: Buffer): Promise<{ id: Buffer; written: boolean; storedBytes: number }>;
  /** The verified plaintext of page `id` (the store checks the id); missing/damaged → throws RepoDamagedError. */
  get(kind: PageKind, id: Buffer): Promise<Buffer>;
}

export interface WriteTreeResult {
  /** The root page id (64 hex), or 64 zeros when the disk is all zero (or empty). */
  root: string;
  /** Pages of the tree (not zero markers); a page used twice counts twice. */
  pages: number;
  /** Pages this call stored (the rest the repository had). */
  pagesWritten: number;
  /** Bytes the store reported for the pages it stored. */
  bytesWritten: number;
}

export interface TreePage {
  id: string;
  kind: PageKind;
  level: number;
}

/** The root of an all-zero or empty disk. */
export const ZERO_ROOT = '0'.repeat(2 * CHUNK_ID_BYTES);

/** Pages a reader fetches at once. */
const READ_CONCURRENCY = 4;

const HEX64 = /^[0-9a-f]{64}$/;

/**
 * The shape of a tree of `slotCount` slots in pages of `pageSlots` entries: `entries[L]` is the
 * number of entries at level L (level 0: slots; level L > 0: pages of level L − 1), and level L
 * has ceil(entries[L] / pageSlots) pages, each full but the last. The top level has one page; the
 * depth is the number of levels (0 for an empty disk, 1 when the root is a leaf).
 */
export interface TreeShape {
  depth: number;
  entries: number[];
}

export function treeShape(slotCount: number, pageSlots: number): TreeShape {
  checkPageSlots(pageSlots);
  if (!Number.isSafeInteger(slotCount) || slotCount < 0 || slotCount > MAX_INDEX_SLOTS)
    throw new RangeError(`no tree of ${slotCount} slots`);
  const entries: number[] = [];
  let n = slotCount;
  while (n > 0) {
    entries.push(n);
    if (n <= pageSlots) break;
    n = Math.ceil(n / pageSlots);
  }
  return { depth: entries.length, entries };
}

/** Entries of page `i` of a level with `levelEntries` entries. */
function entriesOfPage(levelEntries: number, pageSlots: number, i: number): number {
  return Math.min(pageSlots, levelEntries - i * pageSlots);
}

/** A page size the tree code handles: a power of two up to MAX_PAGE_SLOTS (the config allows 256 and up; tests use smaller ones). */
function checkPageSlots(pageSlots: number): void {
  if (
    !Number.isInteger(pageSlots) ||
    pageSlots < 2 ||
    pageSlots > MAX_PAGE_SLOTS ||
    (pageSlots & (pageSlots - 1)) !== 0
  )
    throw new RangeError(`page slots ${pageSlots} is not a power of two from 2 to ${MAX_PAGE_SLOTS}`);
}

function isChunkSize(n: number): boolean {
  return Number.isInteger(n) && n >= MIN_CHUNK_SIZE && n <= MAX_CHUNK_SIZE && (n & (n - 1)) === 0;
}

function isZeroId(b: Uint8Array): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

/** The plaintext of a page: header and `ids` (32 bytes per entry). */
export function encodePage(level: number, chunkSizeBytes: number, ids: Uint8Array): Buffer {
  const count = ids.length / CHUNK_ID_BYTES;
  const page = Buffer.allocUnsafe(PAGE_HEADER_BYTES + ids.length);
  page.writeUInt32BE(level === 0 ? LEAF_PAGE_MAGIC : INNER_PAGE_MAGIC, 0);
  page.writeUInt8(PAGE_VERSION, 4);
  page.writeUInt8(level, 5);
  page.writeUInt16BE(0, 6);
  page.writeUInt32BE(level === 0 ? chunkSizeBytes : 0, 8);
  page.writeUInt32BE(count, 12);
  page.set(ids, PAGE_HEADER_BYTES);
  return page;
}

/**
 * Stores `index` as a tree of pages of `pageSlots` entries, bottom-up and in slot order (one page
 * at a time: the store owns one meta pack). Every page is offered to the store, which writes only
 * those the repository lacks; all-zero pages are zero markers and are not offered.
 */
export async function writeTree(
  index: DiskIndex,
  pageSlots: number,
  store: PageStore,
): Promise<WriteTreeResult> {
  const shape = treeShape(index.slotCount, pageSlots);
  const result: WriteTreeResult = { root: ZERO_ROOT, pages: 0, pagesWritten: 0, bytesWritten: 0 };
  if (shape.depth === 0) return result;
  let entries = index.slotBytes(0, index.slotCount);
  for (let level = 0; level < shape.depth; level++) {
    const count = entries.length / CHUNK_ID_BYTES;
    const pageCount = Math.ceil(count / pageSlots);
    const next = Buffer.alloc(pageCount * CHUNK_ID_BYTES);
    for (let i = 0; i < pageCount; i++) {
      const ids = entries.subarray(
        i * pageSlots * CHUNK_ID_BYTES,
        (i * pageSlots + entriesOfPage(count, pageSlots, i)) * CHUNK_ID_BYTES,
      );
      if (isZeroId(ids)) continue;
      const r = await store.put(
        level === 0 ? LEAF_PAGE_KIND : INNER_PAGE_KIND,
        encodePage(level, index.chunkSizeBytes, ids),
      );
      if (r.id.length !== CHUNK_ID_BYTES || isZeroId(r.id))
        throw new Error(`page store returned an impossible page id (${r.id.toString('hex')})`);
      r.id.copy(next, i * CHUNK_ID_BYTES);
      result.pages++;
      if (r.written) {
        result.pagesWritten++;
        result.bytesWritten += r.storedBytes;
      }
    }
    entries = next;
  }
  result.root = entries.toString('hex');
  return result;
}

/** What a page at one place of the tree must be. */
interface Expected {
  level: number;
  /** Position of the page in its level (0 = leftmost). */
  position: number;
  entries: number;
}

function describePage(id: string, e: Expected): string {
  const where = e.level === 0 ? `leaf ${e.position}` : `inner page ${e.position} of level ${e.level}`;
  return `disk index page ${id.slice(0, 8)}… (${where})`;
}

/**
 * Checks a page's plaintext against the place it was found at and returns its ids (a view).
 * Anything that does not match the shape is damage, named by the page's id and place.
 */
function decodePage(id: string, plain: Buffer, e: Expected, chunkSizeBytes: number): Buffer {
  const bad = (why: string): RepoDamagedError => new RepoDamagedError(`${describePage(id, e)} ${why}`);
  if (plain.length < PAGE_HEADER_BYTES) throw bad(`is truncated (${plain.length} bytes)`);
  const magic = plain.readUInt32BE(0);
  const wantMagic = e.level === 0 ? LEAF_PAGE_MAGIC : INNER_PAGE_MAGIC;
  if (magic !== wantMagic)
    throw bad(
      magic === LEAF_PAGE_MAGIC || magic === INNER_PAGE_MAGIC
        ? `is ${magic === LEAF_PAGE_MAGIC ? 'a leaf' : 'an inner page'} where the disk's shape has ${e.level === 0 ? 'a leaf' : 'an inner page'}`
        : 'has a bad magic (not a disk index page)',
    );
  const version = plain.readUInt8(4);
  if (version !== PAGE_VERSION) throw bad(`has version ${version}, expected ${PAGE_VERSION}`);
  const level = plain.readUInt8(5);
  if (level !== e.level) throw bad(`has level ${level}, the disk's shape puts it at level ${e.level}`);
  if (plain.readUInt16BE(6) !== 0) throw bad('has non-zero reserved bytes');
  const cs = plain.readUInt32BE(8);
  const wantCs = e.level === 0 ? chunkSizeBytes : 0;
  if (cs !== wantCs)
    throw bad(
      e.level === 0
        ? `is for ${cs}-byte chunks, the disk has ${chunkSizeBytes}-byte chunks`
        : `has chunk size ${cs}, an inner page has 0`,
    );
  const count = plain.readUInt32BE(12);
  if (count !== e.entries) throw bad(`has ${count} entries, the disk's shape gives it ${e.entries}`);
  const want = PAGE_HEADER_BYTES + count * CHUNK_ID_BYTES;
  if (plain.length !== want)
    throw bad(
      `is ${plain.length} bytes, ${count} entries take ${want} (${plain.length < want ? 'truncated' : 'trailing bytes'})`,
    );
  return plain.subarray(PAGE_HEADER_BYTES);
}

/** Arguments of a reader, checked; the tree's shape. Bad values from a manifest are damage. */
function readShape(
  root: string,
  diskSizeBytes: number,
  chunkSizeBytes: number,
  pageSlots: number,
): { slots: number; shape: TreeShape } {
  checkPageSlots(pageSlots);
  if (!HEX64.test(root))
    throw new RepoDamagedError(`disk index root '${root.slice(0, 70)}' is not a page id`);
  if (!Number.isSafeInteger(diskSizeBytes) || diskSizeBytes < 0 || !isChunkSize(chunkSizeBytes))
    throw new RepoDamagedError(
      `no disk index for a ${diskSizeBytes}-byte disk in ${chunkSizeBytes}-byte chunks`,
    );
  const slots = slotCountFor(diskSizeBytes, chunkSizeBytes);
  if (slots > MAX_INDEX_SLOTS)
    throw new RepoDamagedError(
      `a disk of ${diskSizeBytes} bytes has ${slots} slots of ${chunkSizeBytes} bytes, more than a disk index maps (${MAX_INDEX_SLOTS})`,
    );
  if (slots === 0 && root !== ZERO_ROOT)
    throw new RepoDamagedError(`disk index root ${root.slice(0, 8)}… names pages for an empty disk`);
  return { slots, shape: treeShape(slots, pageSlots) };
}

/** The position of a level's short last page, or -1 when every page of the level is full. */
function shortPosition(levelEntries: number, pageSlots: number): number {
  return levelEntries % pageSlots === 0 ? -1 : Math.floor(levelEntries / pageSlots);
}

/**
 * One level's distinct pages: each id with the positions it has in the level. A page's expected
 * entry count depends on its position only for a short last page of a level, which is grouped on
 * its own.
 */
function groupLevel(
  ids: Buffer,
  positions: number[],
  shortAt: number,
): Array<{ id: string; positions: number[] }> {
  const groups = new Map<string, number[]>();
  const last: Array<{ id: string; positions: number[] }> = [];
  for (let k = 0; k < positions.length; k++) {
    const id = ids.toString('hex', k * CHUNK_ID_BYTES, (k + 1) * CHUNK_ID_BYTES);
    const pos = positions[k]!;
    if (pos === shortAt) {
      last.push({ id, positions: [pos] });
      continue;
    }
    const g = groups.get(id);
    if (g) g.push(pos);
    else groups.set(id, [pos]);
  }
  return [...[...groups].map(([id, p]) => ({ id, positions: p })), ...last];
}

/** The pages of one level: their ids (32 bytes each) and positions in the level. */
interface Level {
  ids: Buffer;
  positions: number[];
}

/**
 * Reads and checks the distinct pages of inner level `level` (with `levelEntries` entries) and
 * returns their ids and the next level down, whose pages are not read. Memory: the ids of one
 * level (32 bytes per page).
 */
async function readInnerLevel(
  at: Level,
  level: number,
  levelEntries: number,
  chunkSizeBytes: number,
  pageSlots: number,
  store: PageStore,
): Promise<{ pages: string[]; next: Level }> {
  const groups = groupLevel(at.ids, at.positions, shortPosition(levelEntries, pageSlots));
  const children = await mapLimit(groups, READ_CONCURRENCY, async (g) => {
    const plain = await store.get(INNER_PAGE_KIND, Buffer.from(g.id, 'hex'));
    const position = g.positions[0]!;
    const e: Expected = { level, position, entries: entriesOfPage(levelEntries, pageSlots, position) };
    return Buffer.from(decodePage(g.id, plain, e, chunkSizeBytes));
  });
  let total = 0;
  groups.forEach((g, k) => {
    const childIds = children[k]!;
    for (let j = 0; j < childIds.length; j += CHUNK_ID_BYTES)
      if (!isZeroId(childIds.subarray(j, j + CHUNK_ID_BYTES))) total += g.positions.length;
  });
  const ids = Buffer.alloc(total * CHUNK_ID_BYTES);
  const positions: number[] = [];
  groups.forEach((g, k) => {
    const childIds = children[k]!;
    for (let j = 0; j < childIds.length / CHUNK_ID_BYTES; j++) {
      const child = childIds.subarray(j * CHUNK_ID_BYTES, (j + 1) * CHUNK_ID_BYTES);
      if (isZeroId(child)) continue;
      for (const pos of g.positions) {
        child.copy(ids, positions.length * CHUNK_ID_BYTES);
        positions.push(pos * pageSlots + j);
      }
    }
  });
  return { pages: groups.map((g) => g.id), next: { ids, positions } };
}

/**
 * Reads the tree of `root` back into a DiskIndex of a disk of `diskSizeBytes` in chunks of
 * `chunkSizeBytes` (the manifest's figures). Every page is checked against the shape those imply
 * (magic, version, level, chunk size, entry count, length); a page that does not fit, or that the
 * store cannot deliver, is a RepoDamagedError naming it. A few pages are read at once; each
 * distinct page once.
 */
export async function readTree(
  root: string,
  diskSizeBytes: number,
  chunkSizeBytes: number,
  pageSlots: number,
  store: PageStore,
): Promise<DiskIndex> {
  const { slots, shape } = readShape(root, diskSizeBytes, chunkSizeBytes, pageSlots);
  const index = DiskIndex.empty(diskSizeBytes, chunkSizeBytes);
  if (root === ZERO_ROOT) return index;
  let leaves: Level = { ids: Buffer.from(root, 'hex'), positions: [0] };
  for (let level = shape.depth - 1; level > 0; level--)
    leaves = (await readInnerLevel(leaves, level, shape.entries[level]!, chunkSizeBytes, pageSlots, store))
      .next;
  const groups = groupLevel(leaves.ids, leaves.positions, shortPosition(slots, pageSlots));
  await mapLimit(groups, READ_CONCURRENCY, async (g) => {
    const plain = await store.get(LEAF_PAGE_KIND, Buffer.from(g.id, 'hex'));
    const first = g.positions[0]!;
    const ids = decodePage(
      g.id,
      plain,
      { level: 0, position: first, entries: entriesOfPage(slots, pageSlots, first) },
      chunkSizeBytes,
    );
    for (const pos of g.positions) index.setSlotBytes(pos * pageSlots, ids);
  });
  return index;
}

/**
 * Every distinct page of the tree of `root`, once, root first, level by level (for check and
 * GC's marking). Inner pages are read and checked as `readTree` checks them; leaves are named
 * without being read (their ids are in their parents; `readTree` reads and checks them).
 */
export async function* treePages(
  root: string,
  diskSizeBytes: number,
  chunkSizeBytes: number,
  pageSlots: number,
  store: PageStore,
): AsyncIterable<TreePage> {
  const { shape } = readShape(root, diskSizeBytes, chunkSizeBytes, pageSlots);
  if (root === ZERO_ROOT) return;
  const seen = new Set<string>();
  let at: Level = { ids: Buffer.from(root, 'hex'), positions: [0] };
  for (let level = shape.depth - 1; level > 0; level--) {
    const r = await readInnerLevel(at, level, shape.entries[level]!, chunkSizeBytes, pageSlots, store);
    for (const id of r.pages)
      if (!seen.has(id)) {
        seen.add(id);
        yield { id, kind: INNER_PAGE_KIND, level };
      }
    at = r.next;
  }
  for (let k = 0; k < at.positions.length; k++) {
    const id = at.ids.toString('hex', k * CHUNK_ID_BYTES, (k + 1) * CHUNK_ID_BYTES);
    if (seen.has(id)) continue;
    seen.add(id);
    yield { id, kind: LEAF_PAGE_KIND, level: 0 };
  }
}
