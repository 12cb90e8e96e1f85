import { BackendError } from '../errors.js';

/**
 * The storage backend interface: a flat key space of immutable-ish objects. Keys use '/' as a
 * separator and never start with '/'. Every backend, and every wrapper (retry.ts, limit.ts,
 * readonly.ts, fault.ts), must pass test/repo/backend/conformance.ts. Stacks are built in one
 * place only: open.ts, from a serializable `BackendSpec`.
 *
 * Guarantees every backend gives:
 * - `put` and `putIfAbsent` are atomic: a reader sees the whole object or nothing, never a prefix.
 * - `putIfAbsent` raced by many writers: exactly one reports `true`; all see the same bytes
 *   (content-addressed keys make the bytes equal anyway). Across processes and hosts only when
 *   `capabilities.atomicCreate`.
 * - `delete` is idempotent.
 * - `list(prefix)` returns every key that starts with `prefix` (any number of keys), each once.
 * - An object written is durable once `barrier` has returned for its key (at once when
 *   `capabilities.needsBarrier` is false).
 * - Failures are `BackendError`s; only those with `retryable` (kind 'transient') are worth retrying.
 */
export interface ObjectInfo {
  key: string;
  sizeBytes: number;
  /** Last modification, in ms since the epoch; present when `capabilities.modTimes`. */
  modifiedMs?: number;
}

/** What a caller may ask a backend about itself (the answers never change for one backend). */
export interface BackendCapabilities {
  /** Operations worth having in flight at once (a local disk: a few; an object store: dozens). */
  readonly parallelOps: number;
  /** `putIfAbsent` is atomic against writers in other processes and on other hosts too. */
  readonly atomicCreate: boolean;
  /** New objects (their names) become durable only at `barrier`; false: at once. */
  readonly needsBarrier: boolean;
  /** `list` and `stat` report `modifiedMs`. */
  readonly modTimes: boolean;
  /**
   * Each request costs a round trip and money (an object store): readers coalesce adjacent
   * ranges into one request and read further ahead. False: small reads are cheap (a local file).
   */
  readonly preferLargeReads: boolean;
}

export interface PutOptions {
  /**
   * 'on-return' (default): the object is durable when the call returns. 'at-barrier': only once
   * `barrier` has returned for its key, which lets a backend that needs a barrier batch the work
   * (local: one directory fsync per directory and barrier instead of one per object). The object is
   * atomic either way.
   */
  durable?: 'on-return' | 'at-barrier';
  /**
   * putIfAbsent only: the caller needs the create to be atomic against other processes and hosts
   * (the config at init; locks), not just content-named bytes that are equal anyway. An object
   * store then learns, once per stack, whether it can do that (S3: a conditional-PUT probe).
   */
  exclusive?: boolean;
}

/**
 * The bytes of a `put` or `putIfAbsent`: one buffer, or a gather list whose concatenation is the
 * object (docs/format-2-design.md §1.5: a pack is written from its record buffers without first
 * being copied into one). Parts may be empty; the list may be empty (an empty object). The caller
 * must not change the parts' bytes until the call has settled; the list itself is read at once.
 */
export type Payload = Buffer | readonly Buffer[];

/** The parts of a payload (a single buffer: a list of one). */
export function payloadParts(data: Payload): readonly Buffer[] {
  return data instanceof Uint8Array ? [data] : data;
}

/** A payload's size in bytes: the sum of its parts. */
export function payloadLength(data: Payload): number {
  if (data instanceof Uint8Array) return data.length;
  let n = 0;
  for (const p of data) n += p.length;
  return n;
}

/** A payload as one new buffer (a copy, also of a single buffer). */
export function payloadConcat(data: Payload): Buffer {
  return data instanceof Uint8Array ? Buffer.from(data) : Buffer.concat(data);
}

/**
 * The first `n` bytes of a payload's concatenation, as views of its parts (no copy). `n` beyond
 * the payload's length gives all of it.
 */
export function payloadPrefix(data: Payload, n: number): Buffer[] {
  const out: Buffer[] = [];
  let left = Math.max(0, n);
  for (const p of payloadParts(data)) {
    if (left <= 0) break;
    const take = Math.min(left, p.length);
    if (take > 0) out.push(take === p.length ? p : p.subarray(0, take));
    left -= take;
  }
  return out;
}

/**
 * A payload whose list a later change by the caller cannot alter (a copy of the list, not of the
 * bytes): what a wrapper that may call the inner backend more than once (retry) passes on.
 */
export function snapshotPayload(data: Payload): Payload {
  return data instanceof Uint8Array ? data : Object.freeze([...data]);
}

/** S3 Object Lock retention put on objects a stack writes (docs/s3.md "Object Lock"). */
export interface ObjectLockPolicy {
  mode: 'GOVERNANCE' | 'COMPLIANCE';
  /** Each object written is retained until its write time plus this. */
  periodMs: number;
  /** Keys under these prefixes are written without retention (their writers delete them). */
  exemptPrefixes: readonly string[];
}

/** Whether a bucket has Object Lock, and a default retention rule if it has one ("GOVERNANCE 30d"). */
export interface BucketLockStatus {
  enabled: boolean;
  defaultRetention?: string;
}

/** One version of an object in a versioned bucket (a delete marker is a version without bytes). */
export interface ObjectVersion {
  key: string;
  versionId: string;
  /** The current version of its key (a delete marker that is latest hides the key). */
  latest: boolean;
  deleteMarker: boolean;
  sizeBytes: number;
  modifiedMs: number;
}

export interface VersionRef {
  key: string;
  versionId: string;
}

export interface CreateOptions {
  /** S3: create a missing bucket with Object Lock enabled (which also turns versioning on). */
  objectLock?: boolean;
}

export interface Backend {
  /** Human-readable location (a path or s3:// URL), used in messages. */
  readonly location: string;
  readonly capabilities: BackendCapabilities;
  get(key: string): Promise<Buffer>;
  /** Bytes [offset, offset+length) of an object; a range past the end is a `range` error. */
  getRange(key: string, offset: number, length: number): Promise<Buffer>;
  /**
   * Reads bytes [offset, offset+dest.length) of an object into `dest` (no allocation per call);
   * resolves to the object's whole size (local: fstat; S3: Content-Range), so a reader that reads
   * a header first learns the size without another call. A range past the end is a `range`
   * error; `dest` may then hold part.
   */
  getRangeInto(key: string, offset: number, dest: Uint8Array): Promise<number>;
  /** Creates or replaces an object atomically; a gather list is written as its concatenation. */
  put(key: string, data: Payload, opts?: PutOptions): Promise<void>;
  /**
   * Creates an object only when the key is free (a gather list: its concatenation, with one
   * create-if-absent). Returns false when it already existed; the old bytes stay.
   */
  putIfAbsent(key: string, data: Payload, opts?: PutOptions): Promise<boolean>;
  /** Size (and modification time, see capabilities) of an object, or undefined when absent. */
  stat(key: string): Promise<ObjectInfo | undefined>;
  exists(key: string): Promise<boolean>;
  list(prefix: string): AsyncIterable<ObjectInfo>;
  delete(key: string): Promise<void>;
  /**
   * The durability barrier: once it returns, the objects named by `keys` (written by this stack,
   * another thread's stack of the same spec, or another process) survive a crash. A no-op
   * where `capabilities.needsBarrier` is false. Call it before writing anything that refers to them.
   */
  barrier(keys: Iterable<string>): Promise<void>;
  close(): Promise<void>;
  /**
   * Optional: makes the location of a new repository (a local directory, owner-only) or says in
   * one line why it cannot. `Repository.init` calls it once it found the location free.
   */
  create?(opts?: CreateOptions): Promise<void>;
  /**
   * Optional: why nothing is at this location when the reason is the location itself (S3: "bucket
   * 'b' does not exist"), for the "no repository" error; undefined when it is there.
   */
  describeAbsence?(): Promise<string | undefined>;
  /**
   * Optional: the storage's current time in ms since the epoch (S3: from the server's Date header),
   * against which object modification times are compared (session ages); absent: this host's clock.
   */
  serverTimeMs?(): Promise<number>;
  /**
   * Optional: deletes up to 1000 keys in one request (S3 DeleteObjects); keys already absent are
   * fine. Absent: callers delete one by one.
   */
  deleteMany?(keys: readonly string[]): Promise<void>;
  /**
   * Optional, S3 Object Lock (docs/s3.md): whether the bucket has it. Absent: the storage cannot
   * lock objects (a local directory).
   */
  objectLockStatus?(): Promise<BucketLockStatus>;
  /**
   * Optional, with objectLockStatus: from now on, objects this stack writes (outside the policy's
   * exempt prefixes) carry its retention. Stacks built from the spec `specOf` gives afterwards do too.
   */
  useObjectLock?(policy: ObjectLockPolicy): void;
  /**
   * Optional: sets the retention of a key's current version to `untilMs` (never shortens it: the
   * caller only extends). 'absent' when the key has no current version (deleted meanwhile).
   */
  extendRetention?(key: string, untilMs: number): Promise<'extended' | 'absent'>;
  /** Optional: every version and delete marker under `prefix` (a versioned bucket). */
  listVersions?(prefix: string): AsyncIterable<ObjectVersion>;
  /**
   * Optional: deletes up to 1000 versions for good (DeleteObjects with version ids); those the
   * storage refuses because their retention has not ended come back in `locked`.
   */
  deleteVersions?(refs: readonly VersionRef[]): Promise<{ locked: VersionRef[] }>;
  /** Optional: removes temp files left by killed writers, older than `olderThanMs`; how many. */
  removeStaleTemp?(olderThanMs: number): Promise<number>;
}

export function validateKey(key: string): void {
  if (key === '' || key.startsWith('/') || key.includes('..') || key.includes('\0') || key.endsWith('/')) {
    throw new RangeError(`invalid object key '${key}'`);
  }
}

/** The `range` error every backend gives for a read past the end (or a negative range). */
export function assertRange(key: string, offset: number, length: number, size: number): void {
  const ok = Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length >= 0;
  if (!ok || offset + length > size)
    throw new BackendError('range', `range ${offset}+${length} is past the end of ${key} (${size} bytes)`);
}
