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
  /**
   * Buffers for runs of at most 2 MiB (default 8) and for longer runs (default 2, each of
   * maxRangeBytes): memory stays at 8 × 2 MiB + 2 × 16 MiB; a run waits for a free buffer.
   */
  smallBuffers?: number;
  largeBuffers?: number;
}

/** A run of at most this many bytes (a few records) takes a small buffer. */
const SMALL_RUN_BYTES = 2 * 1024 * 1024;

interface BufferClass {
  size: number;
  limit: number;
  made: number;
  free: SharedArrayBuffer[];
  waiting: Array<() => void>;
}

export class RangeCoalescer {
  private queue = new Map<string, Waiter[]>();
  private scheduled = false;
  private readonly maxGap: number;
  private readonly maxRange: number;
  private readonly small: BufferClass;
  private readonly large: BufferClass;
  /** Requests made and ranges asked for (tests, debug output). */
  requests = 0;
  ranges = 0;

  constructor(
    private readonly read: (key: string, offset: number, dest: Uint8Array) => Promise<void>,
    opts: RangeCoalescerOptions = {},
  ) {
    this.maxGap = opts.maxGapBytes ?? 256 * 1024;
    this.maxRange = opts.maxRangeBytes ?? 16 * 1024 * 1024;
    const smallSize = Math.min(SMALL_RUN_BYTES, this.maxRange);
    this.small = { size: smallSize, limit: opts.smallBuffers ?? 8, made: 0, free: [], waiting: [] };
    this.large = { size: this.maxRange, limit: opts.largeBuffers ?? 2, made: 0, free: [], waiting: [] };
  }

  /**
   * A buffer for a run of `bytes`, within the budget (waits while runs hold it all): buffers of
   * the full run size are pooled, so memory stays at the budget instead of growing with garbage
   * the collector has not reached yet.
   */
  private async take(bytes: number): Promise<SharedArrayBuffer> {
    // Two classes of buffers, allocated once and reused: runs of a few records (scattered reads)
    // and long runs. Fresh buffers per run would leave garbage that the allocator keeps resident.
    const cls = bytes <= SMALL_RUN_BYTES ? this.small : bytes <= this.maxRange ? this.large : undefined;
    if (cls === undefined) return new SharedArrayBuffer(bytes); // larger than any run: one-off
    while (cls.free.length === 0 && cls.made >= cls.limit)
      await new Promise<void>((r) => cls.waiting.push(r));
    const buf = cls.free.pop();
    if (buf) return buf;
    cls.made++;
    return new SharedArrayBuffer(cls.size);
  }

  private give(buf: SharedArrayBuffer): void {
    const cls =
      buf.byteLength === this.small.size
        ? this.small
        : buf.byteLength === this.large.size
          ? this.large
          : undefined;
    if (!cls) return;
    cls.free.push(buf);
    cls.waiting.shift()?.();
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
