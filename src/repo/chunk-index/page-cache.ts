/**
 * A least-recently-used cache of opened index pages in one fixed slab of `maxBytes` (slots of
 * `slotBytes`), so that cached pages cost no allocation each and evicted ones leave no garbage;
 * concurrent fetches of one page are shared. A page is handed to a synchronous callback only:
 * its slot may be reused by the next fetch.
 */
export class PageCache {
  private readonly slots: number;
  private slab: Buffer | undefined;
  private readonly pages = new Map<string, { slot: number; length: number }>();
  private readonly free: number[] = [];
  private used = 0;
  private readonly inflight = new Map<string, Promise<void>>();

  constructor(
    readonly maxBytes: number,
    readonly slotBytes: number,
  ) {
    this.slots = Math.max(0, Math.floor(maxBytes / slotBytes));
  }

  get size(): number {
    return this.pages.size;
  }
  get cachedBytes(): number {
    return this.pages.size * this.slotBytes;
  }

  /**
   * Runs `fn` on the page of `key`. `fetch` reads and opens it and hands it to `store`
   * synchronously (it may be a view of a reused buffer: the cache copies it into its slot).
   */
  async use<T>(
    key: string,
    fetch: (store: (page: Buffer) => void) => Promise<void>,
    fn: (page: Buffer) => T,
  ): Promise<T> {
    for (let tries = 0; this.slots > 0 && tries < 3; tries++) {
      const hit = this.pages.get(key);
      if (hit) {
        this.pages.delete(key);
        this.pages.set(key, hit);
        const at = hit.slot * this.slotBytes;
        return fn(this.slab!.subarray(at, at + hit.length));
      }
      let running = this.inflight.get(key);
      if (!running) {
        running = fetch((page) => this.put(key, page)).finally(() => this.inflight.delete(key));
        this.inflight.set(key, running);
      }
      await running;
    }
    // No cache, or the page was evicted again before we could read it: read it for ourselves.
    let own: Buffer | undefined;
    await fetch((page) => {
      own = Buffer.from(page);
    });
    return fn(own!);
  }

  private put(key: string, page: Buffer): void {
    if (this.slots === 0 || page.length > this.slotBytes || this.pages.has(key)) return;
    let slot = this.free.pop();
    if (slot === undefined) {
      if (this.used < this.slots) slot = this.used++;
      else {
        const [oldest, v] = this.pages.entries().next().value as [string, { slot: number }];
        this.pages.delete(oldest);
        slot = v.slot;
      }
    }
    this.slab ??= Buffer.allocUnsafeSlow(this.slots * this.slotBytes);
    page.copy(this.slab, slot * this.slotBytes);
    this.pages.set(key, { slot, length: page.length });
  }

  /** Drops every page whose key starts with `prefix` (an object that is gone or damaged). */
  dropPrefix(prefix: string): void {
    for (const [k, v] of this.pages)
      if (k.startsWith(prefix)) {
        this.pages.delete(k);
        this.free.push(v.slot);
      }
  }
}
