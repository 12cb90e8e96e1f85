/** A least-recently-used cache of opened index pages, bounded in bytes; concurrent fetches of one page are shared. */
export class PageCache {
  private readonly pages = new Map<string, Buffer>();
  private readonly inflight = new Map<string, Promise<Buffer>>();
  private bytes = 0;

  constructor(readonly maxBytes: number) {}

  get size(): number {
    return this.pages.size;
  }
  get cachedBytes(): number {
    return this.bytes;
  }

  async get(key: string, fetch: () => Promise<Buffer>): Promise<Buffer> {
    const hit = this.pages.get(key);
    if (hit) {
      this.pages.delete(key);
      this.pages.set(key, hit);
      return hit;
    }
    const running = this.inflight.get(key);
    if (running) return running;
    const p = fetch().then(
      (page) => {
        this.inflight.delete(key);
        this.put(key, page);
        return page;
      },
      (err: unknown) => {
        this.inflight.delete(key);
        throw err;
      },
    );
    this.inflight.set(key, p);
    return p;
  }

  private put(key: string, page: Buffer): void {
    if (page.length > this.maxBytes) return;
    const old = this.pages.get(key);
    if (old) this.bytes -= old.length;
    this.pages.set(key, page);
    this.bytes += page.length;
    for (const [k, v] of this.pages) {
      if (this.bytes <= this.maxBytes) break;
      this.pages.delete(k);
      this.bytes -= v.length;
    }
  }

  /** Drops every page whose key starts with `prefix` (an object that is gone or damaged). */
  dropPrefix(prefix: string): void {
    for (const [k, v] of this.pages)
      if (k.startsWith(prefix)) {
        this.pages.delete(k);
        this.bytes -= v.length;
      }
  }
}
