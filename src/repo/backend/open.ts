import { isAbsolute, resolve } from 'node:path';
import { UsageError } from '../../util/index.js';
import type { Backend, ObjectLockPolicy, Payload } from './backend.js';
import { describeBackend, specOf } from './describe.js';
import { FaultBackend, type FaultRule } from './fault.js';
import { LimitBackend } from './limit.js';
import { LocalBackend } from './local.js';
import { MemoryBackend } from './memory.js';
import { ReadOnlyBackend } from './readonly.js';
import { RetryBackend, type RetryOptions, type RetryRuntime } from './retry.js';
import { S3Backend, shareS3Spec, type S3Spec } from './s3.js';
import { isS3Location, parseS3Location } from './s3-location.js';

/**
 * A backend and its wrapper stack, described in plain JSON: a worker thread given the same spec
 * builds the same stack (`openBackend(spec)`).
 */
export interface BackendSpec {
  /** 'memory' is for tests: every stack built from it has its own, empty, objects. */
  kind: 'local' | 'memory' | 's3';
  /** local: the repository directory (absolute); memory: 'memory:'; s3: the location as given. */
  location: string;
  /** kind 's3': bucket, prefix, endpoint, connections (s3.ts). */
  s3?: S3Spec;
  /** Every mutating call fails ("the repository is opened read-only"). */
  readOnly?: boolean;
  /** Retry of transient errors; false: none. Default: RETRY_DEFAULTS (retry.ts). */
  retry?: RetryOptions | false;
  /** At most this many operations in flight at once. Default: no limit. */
  maxInFlight?: number;
  /** Test-only fault injection (fault.ts). */
  faults?: FaultRule[];
}

/** What a stack takes that cannot cross to another thread. */
export interface OpenRuntime {
  retry?: RetryRuntime;
  /**
   * This thread may block on storage calls (a worker thread): the local backend then reads and
   * stats with synchronous fs calls, cheaper than a thread-pool round trip each.
   */
  blocking?: boolean;
}

/**
 * The spec of a location as users give it: 'memory:', an S3 location (s3-location.ts) or a local
 * directory path. `s3` adds options of an S3 stack (connections from `--s3-connections`).
 */
export function backendSpecFor(
  location: string,
  s3: Partial<Pick<S3Spec, 'connections' | 'limitUploadBytesPerSec' | 'limitDownloadBytesPerSec'>> = {},
): BackendSpec {
  if (location === 'memory:') return { kind: 'memory', location };
  if (isS3Location(location)) return { kind: 's3', location, s3: { ...parseS3Location(location), ...s3 } };
  if (/^[a-z][a-z0-9+]*:\/\//i.test(location)) {
    throw new UsageError(
      `unsupported repository location '${location}'`,
      'use a local directory path, s3:https://HOST/BUCKET[/PREFIX] or s3://BUCKET[/PREFIX]',
    );
  }
  return { kind: 'local', location: resolve(location) };
}

/** The backend of a spec, and how the fault injector leaves a half-written write in it. */
function baseBackend(
  spec: BackendSpec,
  runtime: OpenRuntime,
): { backend: Backend; halfWrite?: (data: Payload) => Promise<void> } {
  switch (spec.kind) {
    case 'memory':
      return { backend: new MemoryBackend() }; // a write that fails half-way leaves nothing
    case 'local': {
      if (typeof spec.location !== 'string' || !isAbsolute(spec.location))
        throw new RangeError(
          `a local backend spec needs an absolute path, not ${JSON.stringify(spec.location)}`,
        );
      const local = new LocalBackend(spec.location, { blocking: runtime.blocking ?? false });
      return { backend: local, halfWrite: (data) => local.leaveTempFile(data) };
    }
    case 's3':
      if (spec.s3 === undefined) throw new RangeError('an s3 backend spec needs its s3 part');
      return { backend: new S3Backend(spec.s3) };
    default:
      throw new RangeError(`unknown backend kind ${JSON.stringify((spec as { kind: unknown }).kind)}`);
  }
}

/**
 * The one composition point. From the inside out: the backend, the fault injector (tests), the
 * concurrency limit, retry (outside the limit, so that a backoff holds no slot), read-only
 * (outermost: a refused write is neither limited nor retried). A location string gives the default
 * stack: its backend with retry.
 */
export function openBackend(spec: BackendSpec | string, runtime: OpenRuntime = {}): Backend {
  const s: BackendSpec = structuredClone(typeof spec === 'string' ? backendSpecFor(spec) : spec);
  const base = baseBackend(s, runtime);
  let b = base.backend;
  if (s.faults !== undefined && s.faults.length > 0) b = new FaultBackend(b, s.faults, base.halfWrite);
  if (s.maxInFlight !== undefined) b = new LimitBackend(b, s.maxInFlight);
  if (s.retry !== false) b = new RetryBackend(b, s.retry ?? {}, runtime.retry);
  if (s.readOnly === true) b = new ReadOnlyBackend(b);
  describeBackend(b, s);
  return b;
}

export { sharedSpecOf, specOf } from './describe.js';

/**
 * Puts an Object Lock policy on a stack (objects it writes from now on carry the retention), and
 * into the spec it describes, so worker threads' stacks built from it do the same. False when the
 * stack's storage cannot lock objects.
 */
export function applyObjectLock(backend: Backend, policy: ObjectLockPolicy): boolean {
  if (!backend.useObjectLock) return false;
  backend.useObjectLock(policy);
  const spec = specOf(backend);
  if (spec?.s3 !== undefined) describeBackend(backend, { ...spec, s3: { ...spec.s3, objectLock: policy } });
  return true;
}

/**
 * The spec for a stack in each of `parts` worker threads: per-process budgets (S3 connections and
 * bandwidth) divided among them; other kinds unchanged.
 */
export function shareSpec(spec: BackendSpec, parts: number): BackendSpec {
  return spec.s3 === undefined ? spec : { ...spec, s3: shareS3Spec(spec.s3, parts) };
}
