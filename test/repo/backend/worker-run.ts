import { Worker } from 'node:worker_threads';
import type { BackendSpec } from '../../../src/repo/index.js';
import type { WorkerReport } from './conformance-worker.js';

/** Starts the conformance worker from sources, as WorkerPool starts .ts workers (a tsx bootstrap). */
export function runConformanceInWorker(spec: BackendSpec): Promise<WorkerReport> {
  const url = new URL('./conformance-worker.ts', import.meta.url);
  const source =
    `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))})` +
    `.then((m) => { m.register(); return import(${JSON.stringify(url.href)}); })`;
  return new Promise((resolve, reject) => {
    const w = new Worker(source, { eval: true, workerData: { spec } });
    w.once('message', (r: WorkerReport) => resolve(r));
    w.once('error', reject);
    w.once('exit', (code) => reject(new Error(`conformance worker exited with code ${code}`)));
  });
}
