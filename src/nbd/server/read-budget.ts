/**
 * Bytes of READ data the whole server holds at once: acquired before a READ runs and released
 * only once the socket has taken the reply (its write callback) or the connection is gone, so data
 * waiting in a user-space send buffer for a client that does not read is counted too. Waiters are
 * served in order; a request larger than the capacity runs alone. `waiting` tells the server that
 * connections are blocked on the budget (stalled connections are then dropped, see server.ts).
 */
export class ReadBudget {
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
