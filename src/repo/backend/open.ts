import { isAbsolute, resolve } from 'node:path';
import { UsageError } from '../../util/index.js';
import type { Backend } from './backend.js';
import { FaultBackend, type FaultRule } from './fault.js';
import { LimitBackend } from './limit.js';
import { LocalBackend } from './local.js';
import { MemoryBackend } from './memory.js';
import { ReadOnlyBackend } from './readonly.js';
import { RetryBackend, type RetryOptions, type RetryRuntime } from './retry.js';

/**
 * A backend and its wrapper stack, described in plain JSON: a worker thread given the same spec
 * builds the same stack (`openBackend(spec)`). S3 specs arrive with the S3 backend.
 */
export interface BackendSpec {
  /** 'memory' is for tests: every stack built from it has its own, empty, objects. */
  kind: 'local' | 'memory';
  /** local: the repository directory (absolute); memory: 'memory:'. */
  location: string;
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
}

/** The spec of a location as users give it: 'memory:' or a local directory path. */
export function backendSpecFor(location: string): BackendSpec {
  if (location === 'memory:') return { kind: 'memory', location };
  if (/^[a-z][a-z0-9+]*:\/\//i.test(location) || location.startsWith('s3:')) {
    throw new UsageError(`unsupported repository location '${location}'`, 'use a local directory path');
  }
  return { kind: 'local', location: resolve(location) };
}

function baseBackend(spec: BackendSpec): Backend {
  switch (spec.kind) {
    case 'memory':
      return new MemoryBackend();
    case 'local':
      if (typeof spec.location !== 'string' || !isAbsolute(spec.location))
        throw new RangeError(
          `a local backend spec needs an absolute path, not ${JSON.stringify(spec.location)}`,
        );
      return new LocalBackend(spec.location);
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
  let b = baseBackend(s);
  if (s.faults !== undefined && s.faults.length > 0) b = new FaultBackend(b, s.faults);
  if (s.maxInFlight !== undefined) b = new LimitBackend(b, s.maxInFlight);
  if (s.retry !== false) b = new RetryBackend(b, s.retry ?? {}, runtime.retry);
  if (s.readOnly === true) b = new ReadOnlyBackend(b);
  specs.set(b, s);
  return b;
}

const specs = new WeakMap<Backend, BackendSpec>();

/**
 * The spec a stack was built from (a copy), to hand to worker threads so that each builds the same
 * stack; undefined for a backend not built by `openBackend`.
 */
export function specOf(backend: Backend): BackendSpec | undefined {
  const s = specs.get(backend);
  return s === undefined ? undefined : structuredClone(s);
}
