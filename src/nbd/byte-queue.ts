import { NbdClosedError } from './errors.js';

/**
 * Bytes arriving from a socket, consumed by exact-length reads. `read(n)` and `readInto` resolve
 * once n bytes are there; `fail(err)` rejects every current and future read.
 */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0; // offset into chunks[0]
  private available = 0;
  private waiter: { n: number; resolve: () => void; reject: (e: Error) => void } | undefined;
  private error: Error | undefined;

  push(chunk: Buffer): void {
    if (this.error || chunk.length === 0) return;
    this.chunks.push(chunk);
    this.available += chunk.length;
    if (this.waiter && this.available >= this.waiter.n) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve();
    }
  }

  fail(err: Error): void {
    if (this.error) return;
    this.error = err;
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(err);
  }

  get buffered(): number {
    return this.available;
  }

  /** Hands over every buffered byte (the handshake is over; the rest belongs to the next parser). */
  takeAll(): Buffer[] {
    const first = this.chunks[0];
    const out = first ? [first.subarray(this.head), ...this.chunks.slice(1)] : [];
    this.chunks = [];
    this.head = 0;
    this.available = 0;
    return out;
  }

  private async need(n: number): Promise<void> {
    if (this.available >= n) return;
    if (this.error) throw this.error;
    if (this.waiter) throw new Error('ByteQueue: concurrent reads');
    await new Promise<void>((resolve, reject) => {
      this.waiter = { n, resolve, reject };
    });
  }

  /** Copies the next n bytes into dest at destOffset (dest may be undefined: discard). */
  private take(n: number, dest: Buffer | undefined, destOffset: number): void {
    let left = n;
    let at = destOffset;
    while (left > 0) {
      const c = this.chunks[0]!;
      const avail = c.length - this.head;
      const k = Math.min(avail, left);
      if (dest) c.copy(dest, at, this.head, this.head + k);
      at += k;
      left -= k;
      this.head += k;
      if (this.head === c.length) {
        this.chunks.shift();
        this.head = 0;
      }
    }
    this.available -= n;
  }

  async read(n: number): Promise<Buffer> {
    await this.need(n);
    const first = this.chunks[0];
    // Fast path: the bytes lie in one chunk: return a view, no copy.
    if (first && first.length - this.head >= n) {
      const v = first.subarray(this.head, this.head + n);
      this.head += n;
      this.available -= n;
      if (this.head === first.length) {
        this.chunks.shift();
        this.head = 0;
      }
      return v;
    }
    const out = Buffer.allocUnsafe(n);
    this.take(n, out, 0);
    return out;
  }

  /** Reads n bytes straight into dest (one copy), or discards them when dest is undefined. */
  async readInto(dest: Buffer | undefined, destOffset: number, n: number): Promise<void> {
    // Large payloads: copy what is there, wait for the rest in pieces (no n-sized staging buffer).
    let left = n;
    let at = destOffset;
    while (left > 0) {
      if (this.available === 0) await this.need(1);
      const k = Math.min(left, this.available);
      this.take(k, dest, at);
      at += k;
      left -= k;
    }
  }
}

export function closedError(): NbdClosedError {
  return new NbdClosedError();
}
