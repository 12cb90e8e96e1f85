import { sleep } from '../../util/index.js';

/**
 * A byte-rate limit (`--limit-upload`, `--limit-download`): callers take bytes before (uploads) or
 * as (downloads) they move them, and wait when they run ahead of the rate. Bursts up to a quarter
 * second of the rate pass at once, so a limit costs no latency on small requests.
 */
export class RateLimiter {
  private nextFreeMs = 0;
  constructor(private readonly bytesPerSecond: number) {
    if (!(bytesPerSecond > 0)) throw new RangeError(`a rate limit must be positive, not ${bytesPerSecond}`);
  }

  async take(bytes: number, signal?: AbortSignal): Promise<void> {
    const wait = this.reserve(bytes);
    if (wait > 0) await sleep(wait, signal);
  }

  /** Counts `bytes` against the rate without waiting (later callers wait for them instead). */
  charge(bytes: number): void {
    this.reserve(bytes);
  }

  /** Reserves `bytes` and returns how long the caller should wait for them, in ms. */
  private reserve(bytes: number): number {
    if (bytes <= 0) return 0;
    const now = Date.now();
    const start = Math.max(now - 250, this.nextFreeMs);
    this.nextFreeMs = start + (bytes * 1000) / this.bytesPerSecond;
    return this.nextFreeMs - now;
  }
}
