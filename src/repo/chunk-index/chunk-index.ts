import { randomBytes } from 'node:crypto';
import { mapLimit } from '../../util/index.js';
import type { Backend, ObjectInfo } from '../backend/backend.js';
import { BackendError, isNotFound } from '../errors.js';
import { filterHas } from './bloom.js';
import {
  ENTRY_BYTES,
  ENTRY_ID_BYTES,
  compareEncoded,
  decodeEntry,
  encodeEntryInto,
  type IndexEntry,
} from './entry.js';
import {
  FIRST_READ_BYTES,
  INDEX_PREFIX,
  IndexObjectDamage,
  MAX_OBJECT_ENTRIES,
  MAX_SUPERSEDES,
  ObjectBuilder,
  ObjectKind,
  OBJECT_HEADER_BYTES,
  PAGE_BYTES,
  PAGE_ENTRIES,
  SHARD_ENTRIES,
  objectNameOf,
  pageSpan,
  parseHeader,
  parseLookup,
  parsePage,
  parsePreamble,
  type BuiltObject,
  type Lookup,
  type ObjectHeader,
  type Preamble,
} from './object.js';
import { PageCache } from './page-cache.js';
import type { SectionSealer } from './sealer.js';
import {
  VOID_MAX_BYTES,
  VOID_PREFIX,
  VoidSet,
  decodeVoid,
  encodeVoids,
  voidNameOf,
  type VoidRecord,
} from './voids.js';

export interface ChunkIndexOptions {
  /** Bytes of opened pages kept (least recently used out). Default 16 MiB. */
  pageCacheBytes?: number;
  /** `compact` merges when more live non-base objects than this. Default 32. */
  mergeThreshold?: number;
  /** Entries per shard of merge, base and rebuilt objects. Default (and most) 2^18. */
  shardEntries?: number;
  /** Most entries `add` keeps before `writeDelta` must be called. Default 2^17. */
  maxPendingEntries?: number;
  /** Storage calls in flight while loading. Default: the backend's `parallelOps` (at most 16). */
  concurrency?: number;
}

/** An index object or void record that could not be used, and why. */
export interface DamagedIndexObject {
  key: string;
  reason: string;
}

/** A live index object, as `check` may list it. */
export interface IndexObjectInfo {
  name: string;
  key: string;
  kind: 'delta' | 'merge' | 'base' | 'rebuilt';
  generation: number;
  entries: number;
  sizeBytes: number;
  createdMs: number;
  sessionId: Buffer;
  supersedes: readonly string[];
}

export interface ChunkIndexStats {
  /** Live index objects. */
  objects: number;
  /** Entries in live objects (duplicates across objects counted each time). */
  entries: number;
  /** Entries added but not yet in a written delta. */
  pending: number;
  filterBytes: number;
  directoryBytes: number;
  cachedPages: number;
  cacheBytes: number;
  voids: number;
  /** filters + directories + cached pages. */
  bytesInMemory: number;
}

export interface CompactResult {
  kind: 'merge' | 'base';
  /** Names of the objects merged (now superseded and deleted). */
  merged: string[];
  /** Names of the objects written. */
  written: string[];
  entries: number;
}

export interface RebuildResult {
  written: string[];
  superseded: string[];
  entries: number;
}

interface ObjectState {
  name: string;
  key: string;
  size: number;
  header: ObjectHeader;
  pre: Preamble;
  /** Present while the object is live. */
  lookup?: Lookup | undefined;
}

type LiveObject = ObjectState & { lookup: Lookup };

const KIND_NAMES = { 1: 'delta', 2: 'merge', 3: 'base', 4: 'rebuilt' } as const;
const MAX_COMPACT_INPUTS = 1024;
const MAX_VOID_OBJECTS = 4096;
const MERGE_READ_BYTES = 8 * 1024 * 1024;
const ZERO_SESSION = Buffer.alloc(16);

function isBase(o: ObjectState): boolean {
  return o.pre.kind === ObjectKind.base || o.pre.kind === ObjectKind.rebuilt;
}

/** Where page p of `dir` (8-byte prefixes) starts relative to `key`'s first 8 bytes. */
function lowerBound(dir: Buffer, pages: number, key: Buffer, strict: boolean): number {
  let lo = 0;
  let hi = pages;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const c = dir.compare(key, 0, 8, mid * 8, mid * 8 + 8);
    if (c < 0 || (strict && c === 0)) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * The chunk index (design §2, docs/format-2-index.md): immutable, sorted index objects under
 * `index/`, of which only a Bloom filter and a page directory per live object are held in memory
 * (≤ 2.6 B per entry); pages are read on demand through an LRU. Entries added in this process are
 * pending (visible at once) until `writeDelta` writes them. Void records under `quarantine/` make
 * entries absent.
 */
export class ChunkIndex {
  private readonly known = new Map<string, ObjectState>();
  private readonly damage = new Map<string, DamagedIndexObject>();
  private live: LiveObject[] = [];
  private maxGeneration = 0;
  private readonly voids = new VoidSet();
  private readonly voidKeys = new Set<string>();
  /** Packs (32 hex) whose entries lookups skip: condemned by a garbage collection (docs/gc.md). */
  private readonly hidden = new Set<string>();
  private pending = new Map<string, IndexEntry[]>();
  private pendingCount = 0;
  private readonly writing = new Set<Map<string, IndexEntry[]>>();
  private readonly cache: PageCache;
  private reloading: Promise<void> | undefined;
  private readonly scratch: Buffer[] = [];
  private readonly mergeThreshold: number;
  private readonly shardEntries: number;
  private readonly maxPending: number;
  private readonly concurrency: number;

  private constructor(
    private readonly backend: Backend,
    private readonly sealer: SectionSealer,
    opts: ChunkIndexOptions,
  ) {
    this.cache = new PageCache(opts.pageCacheBytes ?? 16 * 1024 * 1024, PAGE_BYTES);
    this.mergeThreshold = opts.mergeThreshold ?? 32;
    this.shardEntries = Math.min(Math.max(opts.shardEntries ?? SHARD_ENTRIES, PAGE_ENTRIES), SHARD_ENTRIES);
    this.maxPending = Math.min(opts.maxPendingEntries ?? 2 ** 17, MAX_OBJECT_ENTRIES);
    this.concurrency = Math.max(1, opts.concurrency ?? Math.min(16, backend.capabilities.parallelOps));
  }

  /** Lists `index/` and `quarantine/`, reads preambles, drops superseded objects, reads lookup sections. */
  static async load(
    backend: Backend,
    sealer: SectionSealer,
    opts: ChunkIndexOptions = {},
  ): Promise<ChunkIndex> {
    const index = new ChunkIndex(backend, sealer, opts);
    await index.refresh();
    return index;
  }

  /** Index objects and void records that could not be used (damaged, hostile), with the reason. */
  get damaged(): DamagedIndexObject[] {
    return [...this.damage.values()];
  }

  /** The highest generation of every readable index object. */
  get generation(): number {
    return this.maxGeneration;
  }

  /** Re-lists storage (objects written or deleted by other processes since). */
  reload(): Promise<void> {
    this.reloading ??= this.refresh().finally(() => {
      this.reloading = undefined;
    });
    return this.reloading;
  }

  // ---- loading ----

  private async refresh(): Promise<void> {
    const listed = new Map<string, ObjectInfo>();
    for await (const info of this.backend.list(INDEX_PREFIX)) {
      const name = objectNameOf(info.key);
      if (name === undefined)
        this.damage.set(info.key, { key: info.key, reason: 'not an index object name' });
      else listed.set(name, info);
    }
    for (const name of [...this.known.keys()])
      if (!listed.has(name)) {
        this.known.delete(name);
        this.cache.dropPrefix(`${name}:`);
      }
    for (const key of [...this.damage.keys()])
      if (key.startsWith(INDEX_PREFIX) && !listed.has(key.slice(INDEX_PREFIX.length)) && objectNameOf(key))
        this.damage.delete(key);
    const fresh = [...listed.values()].filter((i) => {
      const name = objectNameOf(i.key)!;
      return !this.known.has(name) && !this.damage.has(i.key);
    });
    await mapLimit(fresh, this.concurrency, async (info) => {
      const state = await this.readPreamble(info);
      if (state) this.known.set(state.name, state);
    });
    await this.resolve();
    await this.loadVoids();
  }

  private markDamaged(key: string, reason: string): void {
    this.damage.set(key, { key, reason });
    const name = objectNameOf(key);
    if (name !== undefined && this.known.delete(name)) {
      this.cache.dropPrefix(`${name}:`);
      this.live = this.live.filter((o) => o.name !== name);
    }
  }

  private async readPreamble(info: ObjectInfo): Promise<ObjectState | undefined> {
    const name = objectNameOf(info.key)!;
    try {
      const size = info.sizeBytes;
      if (!Number.isSafeInteger(size) || size < OBJECT_HEADER_BYTES)
        throw new IndexObjectDamage(`${size} bytes is too short for an index object`);
      const first = Buffer.alloc(Math.min(FIRST_READ_BYTES, size));
      await this.backend.getRangeInto(info.key, 0, first);
      const header = parseHeader(first, size, this.sealer);
      const end = OBJECT_HEADER_BYTES + header.preambleBytes;
      let sealed: Buffer;
      if (end <= first.length) sealed = first.subarray(OBJECT_HEADER_BYTES, end);
      else {
        sealed = Buffer.alloc(header.preambleBytes);
        await this.backend.getRangeInto(info.key, OBJECT_HEADER_BYTES, sealed);
      }
      const pre = parsePreamble(this.sealer, header, sealed, size);
      return { name, key: info.key, size, header, pre };
    } catch (err) {
      if (isNotFound(err)) return undefined; // deleted by a compactor since the listing
      if (err instanceof IndexObjectDamage) {
        this.markDamaged(info.key, err.reason);
        return undefined;
      }
      throw err;
    }
  }

  /** Which readable objects are live (not superseded); reads their lookup sections. */
  private async resolve(): Promise<void> {
    for (;;) {
      const all = [...this.known.values()];
      const superseded = this.supersededBy(all);
      const live = all.filter((o) => !superseded.has(o.name));
      const missing = live.filter((o) => o.lookup === undefined);
      let changed = false;
      const scratch: Buffer[] = [];
      await mapLimit(missing, this.concurrency, async (o) => {
        // Sealed sections are read into reused buffers (one per load in flight): loading a
        // 10 M-entry index allocates little more than the filters and directories it keeps.
        let buf = scratch.pop();
        if (!buf || buf.length < o.pre.lookupBytes) buf = Buffer.allocUnsafeSlow(o.pre.lookupBytes);
        try {
          const sealed = buf.subarray(0, o.pre.lookupBytes);
          await this.backend.getRangeInto(o.key, o.pre.lookupOffset, sealed);
          o.lookup = parseLookup(this.sealer, o.header, o.pre, sealed);
        } catch (err) {
          if (isNotFound(err)) {
            this.known.delete(o.name);
            changed = true;
          } else if (err instanceof IndexObjectDamage) {
            this.markDamaged(o.key, err.reason);
            changed = true;
          } else throw err;
        } finally {
          scratch.push(buf);
        }
      });
      if (changed) continue; // a set may be incomplete now, so what it superseded is live again
      for (const o of all) if (superseded.has(o.name)) o.lookup = undefined;
      this.live = live as LiveObject[];
      this.maxGeneration = all.reduce((m, o) => Math.max(m, o.pre.generation), this.maxGeneration);
      return;
    }
  }

  /**
   * Names superseded by a complete set of `objects`: a set (every object is one, a delta a set of
   * one) counts once all its shards are present; it supersedes only objects of a lower generation,
   * so damaged or hostile objects cannot form a cycle.
   */
  private supersededBy(objects: ObjectState[]): Set<string> {
    const sets = new Map<
      string,
      { count: number; shards: Set<number>; members: ObjectState[]; bad: boolean }
    >();
    for (const o of objects) {
      const id = o.pre.setId.toString('hex');
      let s = sets.get(id);
      if (!s) sets.set(id, (s = { count: 0, shards: new Set(), members: [], bad: false }));
      if (o.pre.shardCount > 0) {
        if (s.count !== 0 && s.count !== o.pre.shardCount) s.bad = true;
        s.count = o.pre.shardCount;
      }
      if (s.shards.has(o.pre.shardNumber)) s.bad = true;
      s.shards.add(o.pre.shardNumber);
      s.members.push(o);
    }
    const out = new Set<string>();
    for (const s of sets.values()) {
      if (s.bad || s.count === 0 || s.shards.size !== s.count) continue;
      const gen = s.members[0]!.pre.generation;
      if (s.members.some((m) => m.pre.generation !== gen)) continue;
      for (const m of s.members)
        for (const n of m.pre.supersedes) {
          const target = this.known.get(n);
          if (target && target.pre.generation < gen) out.add(n);
        }
    }
    return out;
  }

  private async loadVoids(): Promise<void> {
    const fresh: ObjectInfo[] = [];
    for await (const info of this.backend.list(VOID_PREFIX)) {
      if (voidNameOf(info.key) === undefined) continue; // quarantined manifests and the like
      if (this.voidKeys.has(info.key) || this.damage.has(info.key)) continue;
      if (this.voidKeys.size + fresh.length >= MAX_VOID_OBJECTS) {
        this.damage.set(info.key, { key: info.key, reason: `more than ${MAX_VOID_OBJECTS} void records` });
        continue;
      }
      fresh.push(info);
    }
    await mapLimit(fresh, this.concurrency, async (info) => {
      try {
        if (info.sizeBytes > VOID_MAX_BYTES)
          throw new Error(`${info.sizeBytes} bytes is above the ${VOID_MAX_BYTES}-byte limit`);
        const bytes = Buffer.alloc(info.sizeBytes);
        await this.backend.getRangeInto(info.key, 0, bytes);
        for (const r of decodeVoid(this.sealer, info.key, bytes)) this.voids.add(r);
        this.voidKeys.add(info.key);
      } catch (err) {
        if (isNotFound(err)) return; // prune removed it
        if (err instanceof BackendError || !(err instanceof Error)) throw err;
        this.damage.set(info.key, { key: info.key, reason: err.message });
      }
    });
  }

  // ---- lookups ----

  /** An entry for `id` (pending ones first), or undefined when the repository holds none. */
  async lookup(id: Buffer): Promise<IndexEntry | undefined> {
    return (await this.find(id, true))[0];
  }

  /** Every entry for `id` (copies in several packs), pending ones first. */
  async lookupAll(id: Buffer): Promise<IndexEntry[]> {
    return this.find(id, false);
  }

  private pendingFor(id: Buffer): IndexEntry[] {
    const hex = id.toString('hex');
    const out: IndexEntry[] = [];
    for (const m of [this.pending, ...this.writing])
      for (const e of m.get(hex) ?? []) if (!this.voids.covers(e.pack, e.offset)) out.push(e);
    return out;
  }

  private async find(id: Buffer, firstOnly: boolean): Promise<IndexEntry[]> {
    if (id.length !== ENTRY_ID_BYTES) throw new RangeError(`an index id is 32 bytes, not ${id.length}`);
    const pending = this.pendingFor(id);
    if (firstOnly && pending.length > 0) return pending;
    for (let attempt = 0; ; attempt++) {
      try {
        return pending.concat(await this.findLoaded(id, firstOnly));
      } catch (err) {
        // An object deleted by a compactor since we listed: its entries are in the objects that
        // superseded it. Re-list and try once more.
        if (attempt === 0 && isNotFound(err)) {
          await this.reload();
          continue;
        }
        throw err;
      }
    }
  }

  private async findLoaded(id: Buffer, firstOnly: boolean): Promise<IndexEntry[]> {
    const out: IndexEntry[] = [];
    for (const o of this.live) {
      const { pre, lookup } = o;
      if (pre.entries === 0 || id.compare(pre.firstId) < 0 || id.compare(pre.lastId) > 0) continue;
      if (!filterHas(lookup.filter, pre.filterLog2, id)) continue;
      try {
        await this.findInObject(o, id, out);
      } catch (err) {
        if (err instanceof IndexObjectDamage) {
          this.markDamaged(o.key, err.reason);
          continue;
        }
        throw err;
      }
      if (firstOnly && out.length > 0) break;
    }
    return out;
  }

  private async findInObject(o: LiveObject, id: Buffer, out: IndexEntry[]): Promise<void> {
    const { pre, lookup } = o;
    const lo = lowerBound(lookup.directory, pre.pages, id, false);
    const hi = lowerBound(lookup.directory, pre.pages, id, true);
    for (let p = Math.max(0, lo - 1); p < Math.max(hi, lo); p++) {
      const more = await this.withPage(o, p, (page) => this.scanPage(page, id, out));
      if (!more) return;
    }
  }

  /** Appends the entries of `id` in `page` to `out`; false once past them. */
  private scanPage(page: Buffer, id: Buffer, out: IndexEntry[]): boolean {
    let a = 0; // first entry with id ≥ target
    let b = page.length / ENTRY_BYTES;
    while (a < b) {
      const mid = (a + b) >>> 1;
      if (page.compare(id, 0, 32, mid * ENTRY_BYTES, mid * ENTRY_BYTES + 32) < 0) a = mid + 1;
      else b = mid;
    }
    for (let i = a; i * ENTRY_BYTES < page.length; i++) {
      const at = i * ENTRY_BYTES;
      if (page.compare(id, 0, 32, at, at + 32) !== 0) return false;
      if (this.hidden.size > 0 && this.hidden.has(page.toString('hex', at + 32, at + 48))) continue;
      if (!this.voids.covers(page, page.readUInt32BE(at + 48), at + 32)) out.push(decodeEntry(page, at));
    }
    return true;
  }

  /** Runs `fn` on page p of `o` (through the LRU; `fn` must not keep the buffer). */
  private withPage<T>(o: LiveObject, p: number, fn: (page: Buffer) => T): Promise<T> {
    const fetch = async (store: (page: Buffer) => void) => {
      const span = pageSpan(this.sealer, o.pre, p);
      // Sealed pages are read into reused scratch buffers and the opened page is copied into
      // the cache's slab: no allocation per page fetched beyond what the sealer makes.
      const scratch = this.scratch.pop() ?? Buffer.alloc(this.sealer.sealedBytes(PAGE_BYTES));
      try {
        const sealed = scratch.subarray(0, span.length);
        await this.backend.getRangeInto(o.key, span.offset, sealed);
        store(parsePage(this.sealer, o.header.salt, o.pre, o.lookup.directory, p, sealed));
      } finally {
        if (this.scratch.length < 64) this.scratch.push(scratch);
      }
    };
    return this.cache.use(`${o.name}:${p}`, fetch, fn);
  }

  /**
   * Makes lookups skip every entry of these packs (32 hex names), as if the repository did not
   * hold them: a writer that started after a garbage collection condemned packs must not reuse
   * what they hold (docs/gc.md). `entries()` and compaction are not affected.
   */
  hidePacks(names: Iterable<string>): void {
    for (const n of names) this.hidden.add(n);
  }

  /** Shows every pack again (garbage collection itself must see condemned packs). */
  showAllPacks(): void {
    this.hidden.clear();
  }

  get hiddenPacks(): number {
    return this.hidden.size;
  }

  // ---- writing ----

  /** Entries of records this process stored: visible to lookups at once, written by `writeDelta`. */
  add(entries: Iterable<IndexEntry>): void {
    const scratch = Buffer.alloc(ENTRY_BYTES);
    const batch: IndexEntry[] = [];
    for (const e of entries) {
      encodeEntryInto(e, scratch, 0); // validates every field
      batch.push({ ...e, id: Buffer.from(e.id), pack: Buffer.from(e.pack) });
    }
    if (this.pendingCount + batch.length > this.maxPending)
      throw new RangeError(
        `the chunk index holds ${this.pendingCount} pending entries; write a delta (writeDelta) before adding ${batch.length} more`,
      );
    for (const e of batch) {
      const hex = e.id.toString('hex');
      const list = this.pending.get(hex);
      if (list) list.push(e);
      else this.pending.set(hex, [e]);
    }
    this.pendingCount += batch.length;
  }

  get pendingEntries(): number {
    return this.pendingCount;
  }

  /**
   * Writes the pending entries as a delta (create-if-absent, durable at the barrier it then
   * calls); they join the loaded objects. Undefined when nothing is pending. On failure the
   * entries stay pending.
   */
  async writeDelta(sessionId: Buffer = ZERO_SESSION): Promise<string | undefined> {
    if (sessionId.length !== 16) throw new RangeError(`a session id is 16 bytes, not ${sessionId.length}`);
    if (this.pendingCount === 0) return undefined;
    const batch = this.pending;
    const count = this.pendingCount;
    this.pending = new Map();
    this.pendingCount = 0;
    this.writing.add(batch);
    try {
      const buf = Buffer.alloc(count * ENTRY_BYTES);
      let n = 0;
      for (const list of batch.values()) for (const e of list) encodeEntryInto(e, buf, n++ * ENTRY_BYTES);
      const order = sortedOrder(buf, n);
      const builder = new ObjectBuilder(
        this.sealer,
        {
          kind: ObjectKind.delta,
          generation: this.maxGeneration + 1,
          sessionId,
          createdMs: Date.now(),
          setId: randomBytes(16),
          shardNumber: 0,
        },
        n,
      );
      let prev = -1;
      for (const i of order) {
        if (prev >= 0 && compareEncoded(buf, prev * ENTRY_BYTES, buf, i * ENTRY_BYTES) === 0) continue;
        builder.add(buf, i * ENTRY_BYTES);
        prev = i;
      }
      const built = builder.finish(1, []);
      await this.backend.putIfAbsent(built.key, built.bytes, { durable: 'at-barrier' });
      await this.backend.barrier([built.key]);
      this.adopt([built]);
      return built.name;
    } catch (err) {
      for (const [hex, list] of batch) {
        const cur = this.pending.get(hex);
        if (cur) cur.push(...list);
        else this.pending.set(hex, list);
      }
      this.pendingCount += count;
      throw err;
    } finally {
      this.writing.delete(batch);
    }
  }

  private adopt(built: BuiltObject[], superseded: readonly string[] = []): void {
    const gone = new Set(superseded);
    for (const name of gone) {
      this.known.delete(name);
      this.cache.dropPrefix(`${name}:`);
    }
    const states: LiveObject[] = built.map((b) => ({
      name: b.name,
      key: b.key,
      size: b.sizeBytes,
      header: b.header,
      pre: b.preamble,
      lookup: b.lookup,
    }));
    for (const s of states) {
      this.known.set(s.name, s);
      this.maxGeneration = Math.max(this.maxGeneration, s.pre.generation);
    }
    this.live = [...this.live.filter((o) => !gone.has(o.name)), ...states];
  }

  /** Writes void records (each object ≤ 64 KiB) and applies them at once; their keys. */
  async writeVoid(records: readonly VoidRecord[]): Promise<string[]> {
    const objects = encodeVoids(this.sealer, records);
    for (const o of objects) {
      await this.backend.putIfAbsent(o.key, o.bytes);
      this.voidKeys.add(o.key);
    }
    for (const r of records) this.voids.add(r);
    return objects.map((o) => o.key);
  }

  /** Does a void record cover this entry? */
  isVoided(e: Pick<IndexEntry, 'pack' | 'offset'>): boolean {
    return this.voids.covers(e.pack, e.offset);
  }

  // ---- streaming, compaction, rebuild ----

  /**
   * Every live entry once, sorted (k-way merge over the live objects, pages streamed; pending
   * entries are not included). Exact duplicates across objects are dropped, entries covered by
   * a void skipped; a damaged page ends that object's entries (it is reported in `damaged`). An
   * object deleted by a compactor meanwhile: the listing is reloaded and the merge resumes after
   * the last entry given.
   */
  async *entries(): AsyncGenerator<IndexEntry> {
    let after: Buffer | undefined;
    for (let reloads = 0; ; reloads++) {
      try {
        for await (const [b, at] of this.merge(this.live, after, false)) {
          after = Buffer.from(b.subarray(at, at + ENTRY_BYTES));
          yield decodeEntry(b, at);
        }
        return;
      } catch (err) {
        if (reloads < 3 && isNotFound(err)) {
          await this.reload();
          continue;
        }
        throw err;
      }
    }
  }

  /** The k-way merge: yields [buffer, offset] of each entry (valid until the next step). */
  private async *merge(
    objects: readonly LiveObject[],
    after: Buffer | undefined,
    damageThrows: boolean,
  ): AsyncGenerator<[Buffer, number]> {
    const pagesPerRead = Math.max(
      1,
      Math.min(32, Math.floor(MERGE_READ_BYTES / (Math.max(1, objects.length) * 4096))),
    );
    const cursors: Cursor[] = [];
    for (const o of objects) {
      if (o.pre.entries === 0) continue;
      const start = after ? Math.max(0, lowerBound(o.lookup.directory, o.pre.pages, after, false) - 1) : 0;
      const c = new Cursor(o, start, pagesPerRead);
      if (await this.advance(c, after, damageThrows)) cursors.push(c);
    }
    const heap = new CursorHeap(cursors);
    const last = Buffer.alloc(ENTRY_BYTES);
    let have = false;
    while (heap.size > 0) {
      const c = heap.top();
      const b = c.buf;
      const at = c.at;
      const dup = have && compareEncoded(last, 0, b, at) === 0;
      if (!dup && !this.voids.covers(b, b.readUInt32BE(at + 48), at + 32)) {
        b.copy(last, 0, at, at + ENTRY_BYTES);
        have = true;
        yield [b, at];
      }
      c.at += ENTRY_BYTES;
      if (c.at >= c.buf.length && !(await this.advance(c, undefined, damageThrows))) heap.pop();
      else heap.fix();
    }
  }

  /** Moves a cursor to its next entry (after `after` if given); false at the end of its object. */
  private async advance(c: Cursor, after: Buffer | undefined, damageThrows: boolean): Promise<boolean> {
    for (;;) {
      if (c.at >= c.buf.length) {
        const page = c.pages.shift();
        if (page) {
          c.buf = page;
          c.at = 0;
        } else {
          if (c.next >= c.o.pre.pages) return false;
          try {
            c.pages = await this.readPages(c.o, c.next, Math.min(c.batch, c.o.pre.pages - c.next));
          } catch (err) {
            if (err instanceof IndexObjectDamage) {
              this.markDamaged(c.o.key, err.reason);
              if (damageThrows) throw err;
              return false;
            }
            throw err;
          }
          c.next += c.pages.length;
          continue;
        }
      }
      if (after && compareEncoded(c.buf, c.at, after, 0) <= 0) {
        c.at += ENTRY_BYTES;
        continue;
      }
      return true;
    }
  }

  /** Pages [p, p+n) of an object in one ranged read, each opened and validated. */
  private async readPages(o: LiveObject, p: number, n: number): Promise<Buffer[]> {
    const first = pageSpan(this.sealer, o.pre, p);
    const lastSpan = pageSpan(this.sealer, o.pre, p + n - 1);
    const all = Buffer.alloc(lastSpan.offset + lastSpan.length - first.offset);
    await this.backend.getRangeInto(o.key, first.offset, all);
    const out: Buffer[] = [];
    for (let i = 0; i < n; i++) {
      const s = pageSpan(this.sealer, o.pre, p + i);
      const sealed = all.subarray(s.offset - first.offset, s.offset - first.offset + s.length);
      out.push(parsePage(this.sealer, o.header.salt, o.pre, o.lookup.directory, p + i, sealed));
    }
    return out;
  }

  /**
   * Merges live objects when worth it (design §2.4): a new base (shards of ≤ 2^18 entries) of
   * everything live when non-base entries exceed 1/8 of the base's (2^18 with no base), else a
   * merge of the non-base objects when more than `mergeThreshold` are live. The new objects
   * supersede what they read in full; those are deleted only once the new ones are durable.
   * Undefined when nothing was worth doing, or when an input vanished (another compactor).
   */
  async compact(
    opts: {
      sessionId?: Buffer;
      force?: 'merge' | 'base';
      /** Entries to leave out (garbage collection: the entries of packs it deletes). */
      drop?: (entry: Buffer, at: number) => boolean;
    } = {},
  ): Promise<CompactResult | undefined> {
    const live = this.live;
    const base = live.filter(isBase);
    const nonBase = live.filter((o) => !isBase(o));
    const baseEntries = base.reduce((s, o) => s + o.pre.entries, 0);
    const nonBaseEntries = nonBase.reduce((s, o) => s + o.pre.entries, 0);
    const wantBase =
      opts.force === 'base' ||
      (opts.force === undefined &&
        (baseEntries === 0 ? nonBaseEntries > this.shardEntries : nonBaseEntries > baseEntries / 8));
    let inputs: LiveObject[];
    let kind: ObjectKind;
    if (wantBase && live.length > 0 && live.length <= MAX_COMPACT_INPUTS) {
      inputs = live;
      kind = ObjectKind.base;
    } else if (opts.force === 'merge' ? nonBase.length > 1 : nonBase.length > this.mergeThreshold) {
      inputs = [...nonBase].sort((a, b) => a.pre.generation - b.pre.generation).slice(0, MAX_COMPACT_INPUTS);
      kind = ObjectKind.merge;
    } else return undefined;

    const generation = 1 + inputs.reduce((m, o) => Math.max(m, o.pre.generation), 0);
    const names = inputs.map((o) => o.name);
    const writer = new SetWriter(this.backend, this.sealer, {
      kind,
      generation,
      sessionId: opts.sessionId ?? ZERO_SESSION,
      shardEntries: this.shardEntries,
      supersedes: names,
    });
    let entries = 0;
    try {
      for await (const [b, at] of this.merge(inputs, undefined, true)) {
        if (opts.drop?.(b, at)) continue;
        await writer.add(b, at);
        entries++;
      }
    } catch (err) {
      // An input deleted (another compactor merged it) or damaged: supersede nothing.
      if (isNotFound(err) || err instanceof IndexObjectDamage) {
        await writer.abandon();
        return undefined;
      }
      throw err;
    }
    const built = await writer.finish();
    await this.backend.barrier(built.map((b) => b.key));
    this.adopt(built, names);
    for (const o of inputs) await this.backend.delete(o.key);
    return {
      kind: kind === ObjectKind.base ? 'base' : 'merge',
      merged: names,
      written: built.map((b) => b.name),
      entries,
    };
  }

  /**
   * Writes rebuilt objects (kind 4) holding `entries` (any order; from pack trailers) that
   * supersede every index object present, then deletes those (for `check --repair`). Entries
   * covered by void records are left out. Memory: one shard of entries (16 MiB) at a time.
   */
  static async rebuild(
    backend: Backend,
    sealer: SectionSealer,
    entries: AsyncIterable<IndexEntry> | Iterable<IndexEntry>,
    opts: ChunkIndexOptions & { sessionId?: Buffer } = {},
  ): Promise<RebuildResult> {
    const index = new ChunkIndex(backend, sealer, opts);
    const names: string[] = [];
    for await (const info of backend.list(INDEX_PREFIX)) {
      const name = objectNameOf(info.key);
      if (name !== undefined) {
        names.push(name);
        const s = await index.readPreamble(info);
        if (s) index.maxGeneration = Math.max(index.maxGeneration, s.pre.generation);
      }
    }
    await index.loadVoids();
    const writer = new SetWriter(backend, sealer, {
      kind: ObjectKind.rebuilt,
      generation: index.maxGeneration + 1,
      sessionId: opts.sessionId ?? ZERO_SESSION,
      shardEntries: index.shardEntries,
      supersedes: names,
    });
    const run = Buffer.alloc(index.shardEntries * ENTRY_BYTES);
    let n = 0;
    let total = 0;
    const flush = async () => {
      const order = sortedOrder(run, n);
      let prev = -1;
      for (const i of order) {
        if (prev >= 0 && compareEncoded(run, prev * ENTRY_BYTES, run, i * ENTRY_BYTES) === 0) continue;
        await writer.add(run, i * ENTRY_BYTES);
        total++;
        prev = i;
      }
      writer.endShard();
      n = 0;
    };
    for await (const e of entries) {
      if (index.voids.covers(e.pack, e.offset)) continue;
      encodeEntryInto(e, run, n * ENTRY_BYTES);
      if (++n === index.shardEntries) await flush();
    }
    if (n > 0) await flush();
    const built = await writer.finish();
    await backend.barrier(built.map((b) => b.key));
    const mine = new Set(built.map((b) => b.name));
    for (const name of names) if (!mine.has(name)) await backend.delete(INDEX_PREFIX + name);
    return { written: built.map((b) => b.name), superseded: names, entries: total };
  }

  // ---- introspection ----

  liveObjects(): IndexObjectInfo[] {
    return this.live.map((o) => ({
      name: o.name,
      key: o.key,
      kind: KIND_NAMES[o.pre.kind],
      generation: o.pre.generation,
      entries: o.pre.entries,
      sizeBytes: o.size,
      createdMs: o.pre.createdMs,
      sessionId: o.pre.sessionId,
      supersedes: o.pre.supersedes,
    }));
  }

  stats(): ChunkIndexStats {
    let entries = 0;
    let filterBytes = 0;
    let directoryBytes = 0;
    for (const o of this.live) {
      entries += o.pre.entries;
      filterBytes += o.lookup.filter.length;
      directoryBytes += o.lookup.directory.length;
    }
    return {
      objects: this.live.length,
      entries,
      pending: this.pendingCount,
      filterBytes,
      directoryBytes,
      cachedPages: this.cache.size,
      cacheBytes: this.cache.cachedBytes,
      voids: this.voids.size,
      bytesInMemory: filterBytes + directoryBytes + this.cache.cachedBytes,
    };
  }
}

/** Indices 0…n−1 of the encoded entries in `buf`, in sort order. */
function sortedOrder(buf: Buffer, n: number): Uint32Array {
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  order.sort((a, b) => compareEncoded(buf, a * ENTRY_BYTES, buf, b * ENTRY_BYTES));
  return order;
}

class Cursor {
  buf: Buffer = Buffer.alloc(0);
  at = 0;
  pages: Buffer[] = [];
  constructor(
    readonly o: LiveObject,
    public next: number,
    readonly batch: number,
  ) {}
}

/** A binary min-heap of cursors by their current entry. */
class CursorHeap {
  private readonly h: Cursor[];
  constructor(cursors: Cursor[]) {
    this.h = cursors;
    for (let i = (this.h.length >> 1) - 1; i >= 0; i--) this.down(i);
  }
  get size(): number {
    return this.h.length;
  }
  top(): Cursor {
    return this.h[0]!;
  }
  pop(): void {
    const last = this.h.pop()!;
    if (this.h.length > 0) {
      this.h[0] = last;
      this.down(0);
    }
  }
  /** The top's key grew: restore the heap. */
  fix(): void {
    this.down(0);
  }
  private less(a: Cursor, b: Cursor): boolean {
    return compareEncoded(a.buf, a.at, b.buf, b.at) < 0;
  }
  private down(i: number): void {
    const h = this.h;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < h.length && this.less(h[l]!, h[m]!)) m = l;
      if (r < h.length && this.less(h[r]!, h[m]!)) m = r;
      if (m === i) return;
      [h[i], h[m]] = [h[m]!, h[i]!];
      i = m;
    }
  }
}

/**
 * Writes a set of shards (merge, base or rebuilt): shards of ≤ `shardEntries` entries written as
 * they fill (create-if-absent, durable at the caller's barrier); the last shard holds the count.
 * The superseded names are spread over the shards (≤ 4096 each), with empty shards added when
 * there are more names than shards can hold.
 */
class SetWriter {
  private readonly setId = randomBytes(16);
  private builder: ObjectBuilder | undefined;
  private shard = 0;
  private readonly names: string[];
  private readonly written: BuiltObject[] = [];
  private cut = false;

  constructor(
    private readonly backend: Backend,
    private readonly sealer: SectionSealer,
    private readonly o: {
      kind: ObjectKind;
      generation: number;
      sessionId: Buffer;
      shardEntries: number;
      supersedes: readonly string[];
    },
  ) {
    this.names = [...o.supersedes];
  }

  private newBuilder(): ObjectBuilder {
    return new ObjectBuilder(
      this.sealer,
      {
        kind: this.o.kind,
        generation: this.o.generation,
        sessionId: this.o.sessionId,
        createdMs: Date.now(),
        setId: this.setId,
        shardNumber: this.shard,
      },
      this.o.shardEntries,
    );
  }

  async add(b: Buffer, at: number): Promise<void> {
    if (this.builder && (this.cut || this.builder.entries >= this.o.shardEntries))
      await this.writeShard(false);
    this.cut = false;
    this.builder ??= this.newBuilder();
    this.builder.add(b, at);
  }

  /** The next entry starts a new shard (runs of a rebuild are sorted each, not together). */
  endShard(): void {
    this.cut = true;
  }

  private async writeShard(last: boolean): Promise<void> {
    const builder = this.builder ?? this.newBuilder();
    this.builder = undefined;
    if (this.shard >= 0xffff) throw new RangeError('an index object set has at most 65535 shards');
    const built = builder.finish(last ? this.shard + 1 : 0, this.names.splice(0, MAX_SUPERSEDES));
    await this.backend.putIfAbsent(built.key, built.bytes, { durable: 'at-barrier' });
    built.bytes = Buffer.alloc(0);
    this.written.push(built);
    this.shard++;
  }

  async finish(): Promise<BuiltObject[]> {
    while (this.names.length > MAX_SUPERSEDES) await this.writeShard(false);
    await this.writeShard(true);
    return this.written;
  }

  /** Removes the shards written so far (an incomplete set supersedes nothing, but is dead weight). */
  async abandon(): Promise<void> {
    for (const b of this.written) await this.backend.delete(b.key);
  }
}
