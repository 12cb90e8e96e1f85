import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Backend } from '../../../src/repo/index.js';
import { conformanceCases } from './conformance-cases.js';

export interface BackendFactory {
  make(): Promise<{ backend: Backend; cleanup: () => Promise<void> }>;
  /** Writers for the create-if-absent race may run in other processes (local). */
  raceInProcesses?: (key: string, writers: number) => Promise<boolean[]>;
  /**
   * Cases a test server cannot pass, by name, with the reason (s3rver writes objects in place, so
   * a HEAD during a PUT sees part of it: real S3 and Swift do not). Never for a missing tool.
   */
  knownGaps?: Record<string, string>;
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

    for (const c of conformanceCases) {
      const gap = factory.knownGaps?.[c.name];
      if (gap === undefined) it(c.name, () => c.run(backend));
      else it.skip(`${c.name} (server gap: ${gap})`, () => undefined);
    }

    if (factory.raceInProcesses) {
      const race = factory.raceInProcesses;
      it('putIfAbsent raced by writers in other processes: exactly one wins', async () => {
        const r = await race('data/cd/race2', 6);
        expect(r.filter(Boolean)).toHaveLength(1);
      });
    }
  });
}
