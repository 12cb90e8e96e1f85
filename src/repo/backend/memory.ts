import { BackendError } from '../errors.js';
import { validateKey, type Backend, type ObjectInfo } from './backend.js';

/** In-memory backend for unit tests; passes the same conformance suite as the others. */
export class MemoryBackend implements Backend {
  private readonly objects = new Map<string, Buffer>();
  readonly location = 'memory:';

  async get(key: string): Promise<Buffer> {
    validateKey(key);
    const v = this.objects.get(key);
    if (!v) throw new BackendError('not-found', `${key}: not found`);
    return Buffer.from(v);
  }
  async getRange(key: string, offset: number, length: number): Promise<Buffer> {
    const v = await this.get(key);
    if (offset < 0 || length < 0 || offset + length > v.length) {
      throw new BackendError(
        'range',
        `range ${offset}+${length} is past the end of ${key} (${v.length} bytes)`,
      );
    }
    return v.subarray(offset, offset + length);
  }
  async put(key: string, data: Buffer): Promise<void> {
    validateKey(key);
    this.objects.set(key, Buffer.from(data));
  }
  async putIfAbsent(key: string, data: Buffer): Promise<boolean> {
    validateKey(key);
    if (this.objects.has(key)) return false;
    this.objects.set(key, Buffer.from(data));
    return true;
  }
  async stat(key: string): Promise<ObjectInfo | undefined> {
    validateKey(key);
    const v = this.objects.get(key);
    return v ? { key, sizeBytes: v.length } : undefined;
  }
  async exists(key: string): Promise<boolean> {
    return (await this.stat(key)) !== undefined;
  }
  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const keys = [...this.objects.keys()].filter((k) => k.startsWith(prefix)).sort();
    for (const key of keys) {
      const v = this.objects.get(key);
      if (v) yield { key, sizeBytes: v.length };
    }
  }
  async delete(key: string): Promise<void> {
    validateKey(key);
    this.objects.delete(key);
  }
  async close(): Promise<void> {}
}
