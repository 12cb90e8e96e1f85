import type { Backend } from './backend.js';
import type { BackendSpec } from './open.js';

const specs = new WeakMap<Backend, BackendSpec>();

/** Records the spec that builds `backend` again, in any thread (openBackend, and LocalBackend itself). */
export function describeBackend(backend: Backend, spec: BackendSpec): void {
  specs.set(backend, structuredClone(spec));
}

/**
 * The spec a stack was built from (a copy), to hand to worker threads so that each builds the same
 * stack; undefined for a backend nothing describes (a bare MemoryBackend, a test's own class).
 */
export function specOf(backend: Backend): BackendSpec | undefined {
  const s = specs.get(backend);
  return s === undefined ? undefined : structuredClone(s);
}

/**
 * The spec of `backend` when a stack built from it in another thread reaches the same objects:
 * not for memory backends (each stack has its own, empty, objects).
 */
export function sharedSpecOf(backend: Backend): BackendSpec | undefined {
  const s = specOf(backend);
  return s?.kind === 'memory' ? undefined : s;
}
