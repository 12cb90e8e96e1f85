import { BackendError } from '../errors.js';
import {
  assertRange,
  payloadConcat,
  validateKey,
  type Backend,
  type BackendCapabilities,
  type ObjectInfo,
  type Payload,
  type PutOptions,
} from './backend.js';

interface Entry {
  data: Buffer;
  modifiedMs: number;
}

/** In-memory backend for unit tests; passes the same conformance suite as the others. */
export class MemoryBackend implements Backend {
  private readonly objects = new Map<string, Entry>();
  readonly location = 'memory:';
  readonly capabilities: BackendCapabilities = {
    parallelOps: 16,
    atomicCreate: true,
    needsBarrier: false,
    modTimes: true,
    preferLargeReads: false,
  };

  private entry(key: string): Entry {
    validateKey(key);
    const v = this.objects.get(key);
    if (!v) throw new BackendError('not-found', `${key}: not found`);
    return v;
  }
  async get(key: string): Promise<Buffer> {
    return Buffer.from(this.entry(key).data);
  }
  async getRange(key: string, offset: number, length: number): Promise<Buffer> {
    const v = this.entry(key).data;
    assertRange(key, offset, length, v.length);
    return Buffer.from(v.subarray(offset, offset + length));
  }
  async getRangeInto(key: string, offset: number, dest: Uint8Array): Promise<number> {
    const v = this.entry(key).data;
    assertRange(key, offset, dest.length, v.length);
    dest.set(v.subarray(offset, offset + dest.length));
    return v.length;
  }
  async put(key: string, data: Payload, _opts?: PutOptions): Promise<void> {
    validateKey(key);
    this.objects.set(key, { data: payloadConcat(data), modifiedMs: Date.now() });
  }
  async putIfAbsent(key: string, data: Payload, _opts?: PutOptions): Promise<boolean> {
    validateKey(key);
    if (this.objects.has(key)) return false;
    this.objects.set(key, { data: payloadConcat(data), modifiedMs: Date.now() });
    return true;
  }
  async stat(key: string): Promise<ObjectInfo | undefined> {
    validateKey(key);
    const v = this.objects.get(key);
    return v ? { key, sizeBytes: v.data.length, modifiedMs: v.modifiedMs } : undefined;
  }
  async exists(key: string): Promise<boolean> {
    return (await this.stat(key)) !== undefined;
  }
  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const keys = [...this.objects.keys()].filter((k) => k.startsWith(prefix)).sort();
    for (const key of keys) {
      const v = this.objects.get(key);
      if (v) yield { key, sizeBytes: v.data.length, modifiedMs: v.modifiedMs };
    }
  }
  async delete(key: string): Promise<void> {
    validateKey(key);
    this.objects.delete(key);
  }
  async barrier(keys: Iterable<string>): Promise<void> {
    for (const k of keys) validateKey(k);
  }
  async close(): Promise<void> {}
}
