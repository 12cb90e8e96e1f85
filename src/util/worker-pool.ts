import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { VmvaultError } from './errors.js';

/** What a worker script posts back for each task. Errors cross as {code, message} and are rebuilt. */
export type WorkerReply<Res> =
  { id: number; ok: true; result: Res } | { id: number; ok: false; code: string; message: string };

export class WorkerTaskError extends VmvaultError {}

interface Pending<Res> {
  resolve(v: Res): void;
  reject(e: Error): void;
}

interface Slot<Res> {
  worker: Worker;
  inFlight: Map<number, Pending<Res>>;
}

/**
 * A fixed pool of worker threads running one script. Tasks go to the least-loaded worker; each
 * worker takes up to `depth` tasks at once so it never idles between messages. When the script
 * is a .ts file (tests run from sources), the worker loads it through tsx.
 */
export class WorkerPool<Req, Res> {
  private readonly slots: Slot<Res>[] = [];
  private nextId = 1;
  private closed = false;

  /** `opts.workerData` reaches each worker once, at start (`worker_threads.workerData`). */
  constructor(scriptUrl: URL, size: number, opts: { workerData?: unknown } = {}) {
    const path = fileURLToPath(scriptUrl);
    // A worker thread ignores `--import` in execArgv, so a .ts script (tests and benchmarks run
    // from sources) is started by a small bootstrap that registers tsx's loader first.
    const source = path.endsWith('.ts')
      ? `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))})` +
        `.then((m) => { m.register(); return import(${JSON.stringify(scriptUrl.href)}); })`
      : path;
    for (let i = 0; i < size; i++) {
      const worker = new Worker(source, {
        eval: source !== path,
        workerData: opts.workerData,
        resourceLimits: { maxYoungGenerationSizeMb: 8, maxOldGenerationSizeMb: 64 },
      });
      const slot: Slot<Res> = { worker, inFlight: new Map() };
      worker.on('message', (msg: WorkerReply<Res>) => {
        const p = slot.inFlight.get(msg.id);
        if (!p) return;
        slot.inFlight.delete(msg.id);
        if (slot.inFlight.size === 0) worker.unref();
        if (msg.ok) p.resolve(msg.result);
        else p.reject(new WorkerTaskError(msg.code, msg.message));
      });
      const failAll = (err: Error): void => {
        for (const p of slot.inFlight.values()) p.reject(err);
        slot.inFlight.clear();
      };
      worker.on('error', (err) => failAll(err));
      worker.on('exit', (code) => {
        if (!this.closed) failAll(new VmvaultError('WORKER_EXIT', `worker thread exited with code ${code}`));
      });
      worker.unref();
      this.slots.push(slot);
    }
  }

  get size(): number {
    return this.slots.length;
  }

  run(req: Req, transfer: ArrayBuffer[] = []): Promise<Res> {
    if (this.closed) return Promise.reject(new VmvaultError('WORKER_CLOSED', 'worker pool is closed'));
    let best = this.slots[0]!;
    for (const s of this.slots) if (s.inFlight.size < best.inFlight.size) best = s;
    const id = this.nextId++;
    return new Promise<Res>((resolve, reject) => {
      // Keep the process alive only while a worker has work (idle workers never hold it open).
      if (best.inFlight.size === 0) best.worker.ref();
      best.inFlight.set(id, { resolve, reject });
      best.worker.postMessage({ id, req }, transfer);
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
  }
}
