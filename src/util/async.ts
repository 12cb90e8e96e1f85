import { CancelledError } from './errors.js';

/** Counting semaphore: at most `limit` holders at once; waiters are served in FIFO order. */
export class Semaphore {
  private waiters: Array<() => void> = [];
  private held = 0;
  constructor(private readonly limit: number) {
    if (limit < 1) throw new RangeError('semaphore limit must be >= 1');
  }
  async acquire(): Promise<void> {
    if (this.held < this.limit) {
      this.held++;
      return;
    }
    await new Promise<void>((resolve) => this.waiters.push(resolve));
  }
  release(): void {
    const next = this.waiters.shift();
    if (next) next();
    else this.held--;
  }
  async run<T>(fn: () => Promise<T>): Promise<T> {
    await this.acquire();
    try {
      return await fn();
    } finally {
      this.release();
    }
  }
}

/**
 * A budget of bytes in flight. `acquire(n)` waits until n bytes fit (a single request larger than
 * the whole budget is admitted alone), `release(n)` gives them back. Waiters are served in order.
 * This is how memory stays bounded regardless of disk size (backup's chunk pipeline, the NBD
 * server's READ data).
 */
export class ByteBudget {
  private used = 0;
  private peak = 0;
  private readonly waiters: Array<{ n: number; resolve: () => void }> = [];
  constructor(readonly capacity: number) {}
  get inUse(): number {
    return this.used;
  }
  /** Highest `inUse` seen (tests and diagnostics). */
  get peakInUse(): number {
    return this.peak;
  }
  /** How many `acquire` calls are blocked. */
  get waiting(): number {
    return this.waiters.length;
  }
  private take(n: number): void {
    this.used += n;
    if (this.used > this.peak) this.peak = this.used;
  }
  acquire(n: number): Promise<void> {
    if (this.waiters.length === 0 && (this.used + n <= this.capacity || this.used === 0)) {
      this.take(n);
      return Promise.resolve();
    }
    return new Promise<void>((resolve) => this.waiters.push({ n, resolve }));
  }
  release(n: number): void {
    this.used -= n;
    while (this.waiters.length > 0) {
      const w = this.waiters[0]!;
      if (this.used + w.n > this.capacity && this.used !== 0) break;
      this.waiters.shift();
      this.take(w.n);
      w.resolve();
    }
  }
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new CancelledError());
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(new CancelledError());
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Rejects with `makeError()` if `p` does not settle within `ms`. */
export async function withTimeout<T>(p: Promise<T>, ms: number, makeError: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(makeError()), ms);
      }),
    ]);
  } finally {
    if (timer) clearTimeout(timer);
  }
}

/** Runs `fn` over items with at most `limit` in flight; rejects on the first failure. */
export async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T, i: number) => Promise<R>,
): Promise<R[]> {
  const results: R[] = new Array<R>(items.length);
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i]!, i);
    }
  });
  await Promise.all(workers);
  return results;
}
