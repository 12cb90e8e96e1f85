/**
 * Reusable READ reply buffers, by exact size: the server fills one through `NbdExport.readInto`,
 * hands it to the socket, and takes it back once the kernel has it (the write callback). Saves an
 * allocation and its garbage collection per request; at most `capacityBytes` sit idle in the pool.
 */
export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private idleBytes = 0;

  constructor(private readonly capacityBytes = 64 * 1024 * 1024) {}

  get(length: number): Buffer {
    const list = this.free.get(length);
    const b = list?.pop();
    if (b) {
      this.idleBytes -= length;
      return b;
    }
    return Buffer.allocUnsafeSlow(length);
  }

  put(b: Buffer): void {
    if (this.idleBytes + b.length > this.capacityBytes) return;
    let list = this.free.get(b.length);
    if (!list) this.free.set(b.length, (list = []));
    list.push(b);
    this.idleBytes += b.length;
  }
}
