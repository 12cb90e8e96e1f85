import {
  snapshotPayload,
  type Backend,
  type BucketLockStatus,
  type CreateOptions,
  type ObjectLockPolicy,
  type ObjectVersion,
  type VersionRef,
  type BackendCapabilities,
  type ObjectInfo,
  type Payload,
  type PutOptions,
} from './backend.js';

/** The operations of the Backend interface a wrapper sees. */
export type BackendOp =
  | 'get'
  | 'getRange'
  | 'getRangeInto'
  | 'put'
  | 'putIfAbsent'
  | 'stat'
  | 'exists'
  | 'list'
  | 'delete'
  | 'barrier';

export const MUTATING_OPS: ReadonlySet<BackendOp> = new Set(['put', 'putIfAbsent', 'delete']);

/**
 * The base of every wrapper (retry.ts, limit.ts, readonly.ts, fault.ts): each operation goes through
 * `call(op, key, fn)`, where `fn` performs it on the inner backend. A listing calls it once per item
 * fetched (`next()`), so a wrapper never holds anything while the caller works on an item.
 * A write's gather list is copied (the list, not the bytes) before `call`, so every try of it
 * (retry) sends the same parts even if the caller reuses its array.
 */
export abstract class BackendWrapper implements Backend {
  create?: (opts?: CreateOptions) => Promise<void>;
  objectLockStatus?: () => Promise<BucketLockStatus>;
  useObjectLock?: (policy: ObjectLockPolicy) => void;
  extendRetention?: (key: string, untilMs: number) => Promise<'extended' | 'absent'>;
  listVersions?: (prefix: string) => AsyncIterable<ObjectVersion>;
  deleteVersions?: (refs: readonly VersionRef[]) => Promise<{ locked: VersionRef[] }>;
  removeStaleTemp?: (olderThanMs: number) => Promise<number>;
  describeAbsence?: () => Promise<string | undefined>;
  serverTimeMs?: () => Promise<number>;
  deleteMany?: (keys: readonly string[]) => Promise<void>;

  constructor(
    readonly inner: Backend,
    /** Pass on the inner backend's optional `create` and `removeStaleTemp` (both write). */
    passMaintenance = true,
  ) {
    if (inner.describeAbsence) this.describeAbsence = () => inner.describeAbsence!();
    if (inner.serverTimeMs) this.serverTimeMs = () => inner.serverTimeMs!();
    // A batch delete is a delete to every wrapper (read-only refuses it, retry retries it whole:
    // deleting an absent key is fine), named by its first key.
    if (inner.deleteMany) {
      this.deleteMany = (keys) => {
        const list = Object.freeze([...keys]);
        return list.length === 0
          ? Promise.resolve()
          : this.call('delete', list[0]!, () => inner.deleteMany!(list));
      };
    }
    // Object Lock: reading the bucket's status and the versions is a read; setting a retention
    // is a write (read-only refuses it); deleting versions is a delete. Named by their first key.
    if (inner.objectLockStatus)
      this.objectLockStatus = () => this.call('stat', '', () => inner.objectLockStatus!());
    if (inner.useObjectLock) this.useObjectLock = (policy) => inner.useObjectLock!(policy);
    if (inner.extendRetention)
      this.extendRetention = (key, untilMs) =>
        this.call('put', key, () => inner.extendRetention!(key, untilMs));
    if (inner.listVersions) {
      const listVersions = inner.listVersions.bind(inner);
      this.listVersions = (prefix) => this.iterate(prefix, () => listVersions(prefix));
    }
    if (inner.deleteVersions) {
      this.deleteVersions = (refs) => {
        const list = Object.freeze(refs.map((r) => ({ key: r.key, versionId: r.versionId })));
        return list.length === 0
          ? Promise.resolve({ locked: [] })
          : this.call('delete', list[0]!.key, () => inner.deleteVersions!(list));
      };
    }
    if (passMaintenance) {
      if (inner.create) this.create = (opts) => inner.create!(opts);
      if (inner.removeStaleTemp) this.removeStaleTemp = (ms) => inner.removeStaleTemp!(ms);
    }
  }

  get location(): string {
    return this.inner.location;
  }
  get capabilities(): BackendCapabilities {
    return this.inner.capabilities;
  }

  protected abstract call<T>(op: BackendOp, key: string, fn: () => Promise<T>): Promise<T>;

  get(key: string): Promise<Buffer> {
    return this.call('get', key, () => this.inner.get(key));
  }
  getRange(key: string, offset: number, length: number): Promise<Buffer> {
    return this.call('getRange', key, () => this.inner.getRange(key, offset, length));
  }
  getRangeInto(key: string, offset: number, dest: Uint8Array): Promise<number> {
    return this.call('getRangeInto', key, () => this.inner.getRangeInto(key, offset, dest));
  }
  put(key: string, data: Payload, opts?: PutOptions): Promise<void> {
    const parts = snapshotPayload(data);
    return this.call('put', key, () => this.inner.put(key, parts, opts));
  }
  putIfAbsent(key: string, data: Payload, opts?: PutOptions): Promise<boolean> {
    const parts = snapshotPayload(data);
    return this.call('putIfAbsent', key, () => this.inner.putIfAbsent(key, parts, opts));
  }
  stat(key: string): Promise<ObjectInfo | undefined> {
    return this.call('stat', key, () => this.inner.stat(key));
  }
  exists(key: string): Promise<boolean> {
    return this.call('exists', key, () => this.inner.exists(key));
  }
  delete(key: string): Promise<void> {
    return this.call('delete', key, () => this.inner.delete(key));
  }
  barrier(keys: Iterable<string>): Promise<void> {
    const list = [...keys];
    return this.call('barrier', list[0] ?? '', () => this.inner.barrier(list));
  }
  list(prefix: string): AsyncIterable<ObjectInfo> {
    return this.iterate(prefix, () => this.inner.list(prefix));
  }
  /** A listing of the inner backend, each item fetched through `call('list')`. */
  protected async *iterate<T>(prefix: string, open: () => AsyncIterable<T>): AsyncIterable<T> {
    const it = open()[Symbol.asyncIterator]();
    let done = false;
    try {
      for (;;) {
        const r = await this.call('list', prefix, () => it.next());
        if (r.done) {
          done = true;
          return;
        }
        yield r.value;
      }
    } finally {
      if (!done) await it.return?.();
    }
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
