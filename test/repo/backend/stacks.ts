import type { BackendSpec } from '../../../src/repo/index.js';

/**
 * The whole wrapper stack as the conformance suite runs it: retry over a concurrency limit over a
 * fault injector whose transient failures and delays retry must hide.
 */
export function wrappedSpec(kind: 'local' | 'memory', location: string): BackendSpec;
export function wrappedSpec(base: BackendSpec): BackendSpec;
export function wrappedSpec(kindOrBase: 'local' | 'memory' | BackendSpec, location = ''): BackendSpec {
  const base: BackendSpec = typeof kindOrBase === 'string' ? { kind: kindOrBase, location } : kindOrBase;
  return {
    ...base,
    retry: { attempts: 4, baseDelayMs: 1, maxDelayMs: 5 },
    maxInFlight: 8,
    faults: [
      { op: 'any', nth: 1, fail: 'transient' },
      { op: 'write', nth: 3, times: 2, fail: 'transient' },
      { op: 'read', nth: 2, delayMs: 2 },
      { op: 'list', nth: 1, fail: 'transient' },
    ],
  };
}
