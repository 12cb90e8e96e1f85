import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Backend } from '../../../src/repo/index.js';
import { conformanceCases } from './conformance-cases.js';

export interface BackendFactory {
  make(): Promise<{ backend: Backend; cleanup: () => Promise<void> }>;
  /** Writers for the create-if-absent race may run in other processes (local). */
  raceInProcesses?: (key: string, writers: number) => Promise<boolean[]>;
}

/**
 * The storage backend conformance suite (restic's internal/backend/test): every backend, bare and
 * through the wrapper stack, runs it (the cases are in conformance-cases.ts, which a worker thread
 * runs too: conformance-worker.ts).
 */
export function defineBackendConformance(name: string, factory: BackendFactory): void {
  describe(`backend conformance: ${name}`, () => {
    let backend: Backend;
    let cleanup: () => Promise<void>;
    beforeEach(async () => {
      ({ backend, cleanup } = await factory.make());
    });
    afterEach(async () => {
      await backend.close();
      await cleanup();
    });

    for (const c of conformanceCases) it(c.name, () => c.run(backend));

    if (factory.raceInProcesses) {
      const race = factory.raceInProcesses;
      it('putIfAbsent raced by writers in other processes: exactly one wins', async () => {
        const r = await race('data/cd/race2', 6);
        expect(r.filter(Boolean)).toHaveLength(1);
      });
    }
  });
}
