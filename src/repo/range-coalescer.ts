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
}

export class RangeCoalescer {
  private queue = new Map<string, Waiter[]>();
  private scheduled = false;
  private readonly maxGap: number;
  private readonly maxRange: number;
  /** Requests made and ranges asked for (tests, debug output). */
  requests = 0;
  ranges = 0;

  constructor(
    private readonly read: (key: string, offset: number, dest: Uint8Array) => Promise<void>,
    opts: RangeCoalescerOptions = {},
  ) {
    this.maxGap = opts.maxGapBytes ?? 256 * 1024;
    this.maxRange = opts.maxRangeBytes ?? 16 * 1024 * 1024;
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
    const src = new SharedArrayBuffer(Math.max(1, end - start));
    this.requests++;
    try {
      await this.read(key, start, new Uint8Array(src, 0, end - start));
    } catch (err) {
      if (run.length === 1) run[0]!.reject(err);
      else for (const w of run) void this.readRun(key, [w], w.offset, w.offset + w.length);
      return;
    }
    for (const w of run) w.resolve({ src, at: w.offset - start });
  }
}
