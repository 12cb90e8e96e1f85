import type { LocalFileSpec } from './local-files.js';

/**
 * The storage backend interface: a flat key space of immutable-ish objects. Keys use '/' as a
 * separator and never start with '/'. Every backend must pass test/repo/backend/conformance.ts.
 *
 * Guarantees every backend gives:
 * - `put` and `putIfAbsent` are atomic: a reader sees the whole object or nothing, never a prefix.
 * - `putIfAbsent` raced by many writers: exactly one reports `true`; all see the same bytes
 *   (content-addressed keys make the bytes equal anyway).
 * - `delete` is idempotent.
 * - `list(prefix)` returns every key that starts with `prefix` (any number of keys).
 */
export interface ObjectInfo {
  key: string;
  sizeBytes: number;
}

export interface Backend {
  /** Human-readable location (a path or s3:// URL), used in messages. */
  readonly location: string;
  get(key: string): Promise<Buffer>;
  /** Bytes [offset, offset+length) of an object; a range past the end is a `range` error. */
  getRange(key: string, offset: number, length: number): Promise<Buffer>;
  /** Creates or replaces an object atomically. */
  put(key: string, data: Buffer): Promise<void>;
  /** Creates an object only when the key is free. Returns false when it already existed. */
  putIfAbsent(key: string, data: Buffer): Promise<boolean>;
  /** Size of an object, or undefined when absent. */
  stat(key: string): Promise<ObjectInfo | undefined>;
  exists(key: string): Promise<boolean>;
  list(prefix: string): AsyncIterable<ObjectInfo>;
  delete(key: string): Promise<void>;
  close(): Promise<void>;
  /**
   * Optional, for backends that keep each object in a plain file: the file's path. Worker threads
   * may read it directly instead of calling `get` (same bytes); whatever goes wrong there, the
   * reader falls back to `get`, which reports the error.
   */
  filePath?(key: string): string;
  /**
   * Optional, with `syncNames`, for backends that keep each object in a plain file: where other
   * threads may create objects themselves with `createObjectFile` (local-files.ts). Such objects
   * are as atomic as `putIfAbsent`'s and their bytes are durable before their name appears; the
   * names become durable at `syncNames`.
   */
  fileStore?(): LocalFileSpec;
  /** Makes the names of objects created through `fileStore` (or seen there) durable. */
  syncNames?(keys: Iterable<string>): Promise<void>;
  /**
   * Optional: makes the location of a new repository (a local directory, owner-only) or says in
   * one line why it cannot. `Repository.init` calls it once it found the location free.
   */
  create?(): Promise<void>;
}

export function validateKey(key: string): void {
  if (key === '' || key.startsWith('/') || key.includes('..') || key.includes('\0') || key.endsWith('/')) {
    throw new RangeError(`invalid object key '${key}'`);
  }
}
