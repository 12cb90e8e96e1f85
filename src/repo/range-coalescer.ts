/**
 * Coalesces reads of nearby ranges of the same object into one request (docs/s3.md, "Requests"):
 * the ranges asked for in one turn of the event loop are grouped by object, sorted, and merged
 * where the gap between them is at most `maxGapBytes` and the merged range stays within
 * `maxRangeBytes`. Each merged range is read once into a SharedArrayBuffer, which worker threads
 * open records from directly. A merged read that fails is retried range by range, so one bad
 * range (an index entry past a pack's end) fails only its own caller.
 */
export interface CoalescedRange {
  /** The merged range's bytes; this caller's range starts at `at`. */
  src: SharedArrayBuffer;
  at: number;
  /** Call once done with `src` (the buffer goes back to the pool when every caller released it). */
  release(): void;
}

interface Waiter {
  offset: number;
  length: number;
  resolve(r: CoalescedRange): void;
  reject(e: unknown): void;
}

export interface RangeCoalescerOptions {
  maxGapBytes?: number;
  maxRangeBytes?: number;
  /** Bytes of merged ranges held at once (default 4 × maxRangeBytes); later runs wait. */
  budgetBytes?: number;
}

export class RangeCoalescer {
  private queue = new Map<string, Waiter[]>();
  private scheduled = false;
  private readonly maxGap: number;
  private readonly maxRange: number;
  /** Reusable buffers of `maxRange` bytes, and the bytes of runs read or being read. */
  private readonly free: SharedArrayBuffer[] = [];
  private inUseBytes = 0;
  private readonly budgetBytes: number;
  private readonly waiting: Array<() => void> = [];
  /** Requests made and ranges asked for (tests, debug output). */
  requests = 0;
  ranges = 0;

  constructor(
    private readonly read: (key: string, offset: number, dest: Uint8Array) => Promise<void>,
    opts: RangeCoalescerOptions = {},
  ) {
    this.maxGap = opts.maxGapBytes ?? 256 * 1024;
    this.maxRange = opts.maxRangeBytes ?? 16 * 1024 * 1024;
    this.budgetBytes = Math.max(this.maxRange, opts.budgetBytes ?? 2 * this.maxRange);
  }

  /**
   * A buffer for a run of `bytes`, within the budget (waits while runs hold it all): buffers of
   * the full run size are pooled, so memory stays at the budget instead of growing with garbage
   * the collector has not reached yet.
   */
  private async take(bytes: number): Promise<SharedArrayBuffer> {
    // Large runs share pooled buffers of the full run size; small ones get their own (cheap).
    const size = bytes > this.maxRange / 2 && bytes <= this.maxRange ? this.maxRange : bytes;
    while (this.inUseBytes > 0 && this.inUseBytes + size > this.budgetBytes)
      await new Promise<void>((r) => this.waiting.push(r));
    this.inUseBytes += size;
    return (size === this.maxRange ? this.free.pop() : undefined) ?? new SharedArrayBuffer(size);
  }

  private give(buf: SharedArrayBuffer): void {
    this.inUseBytes -= buf.byteLength;
    if (buf.byteLength === this.maxRange && this.free.length < this.budgetBytes / this.maxRange)
      this.free.push(buf);
    // Wake every waiter: each re-checks the budget (a small run may fit where a large one does not).
    for (const w of this.waiting.splice(0)) w();
  }

  fetch(key: string, offset: number, length: number): Promise<CoalescedRange> {
    this.ranges++;
    return new Promise((resolve, reject) => {
      let q = this.queue.get(key);
      if (!q) this.queue.set(key, (q = []));
      q.push({ offset, length, resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.scheduled = false;
    const queue = this.queue;
    this.queue = new Map();
    for (const [key, waiters] of queue) {
      waiters.sort((a, b) => a.offset - b.offset);
      let run: Waiter[] = [];
      let start = 0;
      let end = 0;
      for (const w of waiters) {
        const wEnd = w.offset + w.length;
        if (run.length > 0 && w.offset - end <= this.maxGap && Math.max(end, wEnd) - start <= this.maxRange) {
          run.push(w);
          end = Math.max(end, wEnd);
          continue;
        }
        if (run.length > 0) void this.readRun(key, run, start, end);
        run = [w];
        start = w.offset;
        end = wEnd;
      }
      if (run.length > 0) void this.readRun(key, run, start, end);
    }
  }

  private async readRun(key: string, run: Waiter[], start: number, end: number): Promise<void> {
    const src = await this.take(Math.max(1, end - start));
    this.requests++;
    try {
      await this.read(key, start, new Uint8Array(src, 0, end - start));
    } catch (err) {
      this.give(src);
      if (run.length === 1) run[0]!.reject(err);
      else for (const w of run) void this.readRun(key, [w], w.offset, w.offset + w.length);
      return;
    }
    let holders = run.length;
    for (const w of run) {
      let done = false;
      w.resolve({
        src,
        at: w.offset - start,
        release: () => {
          if (done) return;
          done = true;
          if (--holders === 0) this.give(src);
        },
      });
    }
  }
}
