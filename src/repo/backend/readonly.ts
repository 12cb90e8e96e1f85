import { BackendError } from '../errors.js';
import type { Backend } from './backend.js';
import { BackendWrapper, MUTATING_OPS, type BackendOp } from './wrapper.js';

const VERBS: Partial<Record<BackendOp, string>> = { put: 'write', putIfAbsent: 'write', delete: 'delete' };

/** The error of every mutating call through a read-only stack. */
export function readOnlyError(op: BackendOp, key: string): BackendError {
  return new BackendError(
    'permission',
    `cannot ${VERBS[op] ?? op} ${key}: the repository is opened read-only`,
    {
      hint: 'run a command that writes to the repository to change it',
    },
  );
}

/**
 * Read-only: every mutating call (put, putIfAbsent, delete) fails at once with a one-line
 * 'permission' BackendError, before the inner backend sees it; reads pass. Nothing that writes
 * around the interface is passed on (`create`, `removeStaleTemp`), and the barrier is a no-op
 * (nothing was written through this stack).
 */
export class ReadOnlyBackend extends BackendWrapper {
  constructor(inner: Backend) {
    super(inner, false);
  }
  protected call<T>(op: BackendOp, key: string, fn: () => Promise<T>): Promise<T> {
    if (MUTATING_OPS.has(op)) return Promise.reject(readOnlyError(op, key));
    return fn();
  }
  override async barrier(): Promise<void> {}
}
