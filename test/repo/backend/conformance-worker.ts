// Runs the conformance cases inside a worker thread, on a stack the worker builds itself from the
// spec it was given (as the chunk store's workers will). Posts back one result per case.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import {
  BackendWrapper,
  FaultBackend,
  openBackend,
  type Backend,
  type BackendSpec,
} from '../../../src/repo/index.js';
import { conformanceCases } from './conformance-cases.js';

export interface WorkerCaseResult {
  name: string;
  ok: boolean;
  error?: string;
}
export interface WorkerReport {
  inWorker: boolean;
  results: WorkerCaseResult[];
  /** Calls the worker's own fault injectors failed (the spec's faults reached the worker). */
  injected: number;
}

function faultOf(b: Backend): FaultBackend | undefined {
  for (let x: Backend = b; x instanceof BackendWrapper; x = x.inner) if (x instanceof FaultBackend) return x;
  return undefined;
}

const { spec } = workerData as { spec: BackendSpec };
const report: WorkerReport = { inWorker: !isMainThread, results: [], injected: 0 };
for (const [i, c] of conformanceCases.entries()) {
  const s: BackendSpec =
    spec.kind === 'local'
      ? { ...spec, location: join(spec.location, `case-${i}`) }
      : spec.s3 !== undefined
        ? { ...spec, s3: { ...spec.s3, prefix: `${spec.s3.prefix}/case-${i}`.replace(/^\//, '') } }
        : spec;
  if (s.kind === 'local') await mkdir(s.location);
  const b = openBackend(s);
  try {
    await c.run(b);
    report.results.push({ name: c.name, ok: true });
  } catch (err) {
    report.results.push({
      name: c.name,
      ok: false,
      error: err instanceof Error ? (err.stack ?? err.message) : String(err),
    });
  } finally {
    report.injected += faultOf(b)?.failed ?? 0;
    await b.close();
  }
}
parentPort!.postMessage(report);
