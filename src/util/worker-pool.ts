import { Worker, type ResourceLimits } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { VmvaultError } from './errors.js';

/**
 * What a worker script posts back for each task. Errors cross as {code, message} (with the hint
 * and plain-JSON details of a VmvaultError, when it was one) and are rebuilt as WorkerTaskError.
 */
export type WorkerReply<Res> =
  | { id: number; ok: true; result: Res }
  | {
      id: number;
      ok: false;
      code: string;
      message: string;
      hint?: string;
      details?: Record<string, unknown>;
    };

/** A task the worker script ran and reported as failed (the script's own error code). */
export class WorkerTaskError extends VmvaultError {}

/**
 * The worker thread running a task died (process.exit in the script, an uncaught exception, out of
 * memory, terminated) before it replied. Code WORKER_DIED; `details` name the task kind, the exit
 * code and the worker's error. Code WORKER_POOL_BROKEN: workers kept dying, the pool stopped
 * replacing them. Code WORKER_CLOSED: the pool was closed before the task finished.
 */
export class WorkerDiedError extends VmvaultError {}

export interface WorkerPoolOptions<Req> {
  /** Names a task in errors; default: the request's string `op` field, else "task". */
  taskKind?: (req: Req) => string;
  /**
   * Replacement budget: after `maxDeaths` workers died within `deathWindowMs`, no worker is
   * started again and every later task fails (WORKER_POOL_BROKEN). Default 5 in 60 s.
   */
  maxDeaths?: number;
  deathWindowMs?: number;
  /** Heap limits of each worker; default 8 MiB young, 64 MiB old generation. */
  resourceLimits?: ResourceLimits;
  /** Given to each worker once, at start (`worker_threads.workerData`), replacements too. */
  workerData?: unknown;
  /**
   * Told of the `report` a worker attached to a reply (usage counters such as S3 requests), before
   * the task settles; untrusted shape: validate it.
   */
  onReport?: (report: unknown) => void;
}

interface Pending<Res> {
  kind: string;
  resolve(v: Res): void;
  reject(e: Error): void;
}

/** One running worker and the tasks it holds. A slot without one starts a replacement on demand. */
interface Live<Res> {
  worker: Worker;
  inFlight: Map<number, Pending<Res>>;
  /** Set once the worker reported an error or exited: it takes no more tasks. */
  gone: boolean;
  /** Why the worker stopped, when it said (reported with its exit): its error and what it was. */
  error?: Error;
  errorKind?: string;
}

const DEFAULT_LIMITS: ResourceLimits = { maxYoungGenerationSizeMb: 8, maxOldGenerationSizeMb: 64 };
const HINT = 'run the command again; if it keeps happening, report it with the output of --debug';

function defaultKind(req: unknown): string {
  if (typeof req === 'object' && req !== null && 'op' in req) {
    const op = (req as { op: unknown }).op;
    if (typeof op === 'string') return op;
  }
  return 'task';
}

/**
 * A fixed pool of worker threads running one script. Tasks go to the least-loaded worker; each
 * worker takes up to `depth` tasks at once so it never idles between messages. When the script
 * is a .ts file (tests run from sources), the worker loads it through tsx.
 *
 * Every task settles: a worker that dies fails the tasks it held (WorkerDiedError) and its slot
 * gets a new worker at the next task, up to the replacement budget; `close()` fails the tasks
 * still running.
 */
export class WorkerPool<Req, Res> {
  private readonly slots: (Live<Res> | undefined)[] = [];
  private readonly source: string;
  private readonly isEval: boolean;
  private readonly taskKind: (req: Req) => string;
  private readonly maxDeaths: number;
  private readonly deathWindowMs: number;
  private readonly resourceLimits: ResourceLimits;
  /** Reaches every worker, replacements too, once at start (`worker_threads.workerData`). */
  private readonly workerData: unknown;
  private readonly onReport: ((report: unknown) => void) | undefined;
  /** Times (ms) of the deaths within the window. */
  private deaths: number[] = [];
  /** Set when the replacement budget is spent: why later tasks fail. */
  private broken: WorkerDiedError | undefined;
  private nextId = 1;
  private closed = false;
  /** Workers started after deaths so far (for tests and diagnostics). */
  replacements = 0;

  constructor(scriptUrl: URL, size: number, options: WorkerPoolOptions<Req> = {}) {
    const path = fileURLToPath(scriptUrl);
    // A worker thread ignores `--import` in execArgv, so a .ts script (tests and benchmarks run
    // from sources) is started by a small bootstrap that registers tsx's loader first.
    this.source = path.endsWith('.ts')
      ? `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))})` +
        `.then((m) => { m.register(); return import(${JSON.stringify(scriptUrl.href)}); })`
      : path;
    this.isEval = this.source !== path;
    this.taskKind = options.taskKind ?? defaultKind;
    this.maxDeaths = Math.max(1, options.maxDeaths ?? 5);
    this.deathWindowMs = options.deathWindowMs ?? 60_000;
    this.resourceLimits = options.resourceLimits ?? DEFAULT_LIMITS;
    this.workerData = options.workerData;
    this.onReport = options.onReport;
    for (let i = 0; i < Math.max(1, size); i++) this.slots.push(this.start());
  }

  get size(): number {
    return this.slots.length;
  }

  private start(): Live<Res> {
    const worker = new Worker(this.source, {
      eval: this.isEval,
      workerData: this.workerData,
      resourceLimits: this.resourceLimits,
    });
    const live: Live<Res> = { worker, inFlight: new Map(), gone: false };
    worker.on('message', (msg: WorkerReply<Res> & { report?: unknown }) => {
      if (msg.report !== undefined) this.onReport?.(msg.report);
      const p = live.inFlight.get(msg.id);
      if (!p) return;
      live.inFlight.delete(msg.id);
      if (live.inFlight.size === 0) worker.unref();
      if (msg.ok) p.resolve(msg.result);
      else
        p.reject(
          new WorkerTaskError(msg.code, msg.message, {
            ...(msg.hint === undefined ? {} : { hint: msg.hint }),
            ...(msg.details === undefined ? {} : { details: msg.details }),
          }),
        );
    });
    worker.on('error', (err) => {
      // An uncaught exception or out of memory: the worker is terminated and 'exit' follows.
      // Take it out of service now, so no task is sent to it in between.
      if (!live.error) {
        live.error = err;
        live.errorKind =
          (err as { code?: unknown }).code === 'ERR_WORKER_OUT_OF_MEMORY'
            ? 'out of memory'
            : 'uncaught error';
      }
      live.gone = true;
    });
    worker.on('messageerror', (err) => {
      // A reply that cannot be deserialized names no task: stop the worker, so the tasks it
      // held fail (at 'exit') instead of waiting forever.
      if (!live.error) {
        live.error = err;
        live.errorKind = 'a reply could not be read';
      }
      live.gone = true;
      void worker.terminate();
    });
    worker.on('exit', (exitCode) => this.died(live, exitCode));
    worker.unref();
    return live;
  }

  /** A worker stopped: fail what it held, count the death, free its slot for a replacement. */
  private died(live: Live<Res>, exitCode: number): void {
    live.gone = true;
    const index = this.slots.indexOf(live);
    if (index >= 0) this.slots[index] = undefined;
    if (this.closed) {
      this.failAll(live, (kind) => closedError(kind));
      return;
    }
    const cause = live.error;
    const why = cause ? `${live.errorKind ?? 'error'}: ${cause.message}` : `exited with code ${exitCode}`;
    this.failAll(
      live,
      (kind) =>
        new WorkerDiedError('WORKER_DIED', `worker thread died during a '${kind}' task (${why})`, {
          hint: HINT,
          cause,
          details: { taskKind: kind, exitCode, ...(cause ? { error: cause.message } : {}) },
        }),
    );
    const now = Date.now();
    this.deaths = this.deaths.filter((t) => now - t < this.deathWindowMs);
    this.deaths.push(now);
    if (this.deaths.length >= this.maxDeaths && !this.broken)
      this.broken = new WorkerDiedError(
        'WORKER_POOL_BROKEN',
        `worker threads keep dying (${this.deaths.length} within ${Math.round(this.deathWindowMs / 1000)} s, ` +
          `last ${why}); no more are started`,
        { hint: HINT, cause, details: { deaths: this.deaths.length, exitCode } },
      );
  }

  private failAll(live: Live<Res>, error: (kind: string) => Error): void {
    const pending = [...live.inFlight.values()];
    live.inFlight.clear();
    for (const p of pending) p.reject(error(p.kind));
  }

  run(req: Req, transfer: ArrayBuffer[] = []): Promise<Res> {
    if (this.closed) return Promise.reject(new WorkerDiedError('WORKER_CLOSED', 'worker pool is closed'));
    if (this.broken) return Promise.reject(this.broken);
    // The least-loaded running worker. A slot whose worker died (or is dying: errored, 'exit'
    // not yet seen) comes after idle workers and gets a new one.
    let best = 0;
    let bestLoad = Infinity;
    for (let i = 0; i < this.slots.length; i++) {
      const s = this.slots[i];
      const load = s && !s.gone ? s.inFlight.size : 0.5;
      if (load < bestLoad) [best, bestLoad] = [i, load];
    }
    return this.runOn(best, req, transfer);
  }

  /**
   * Runs a task on the worker of slot `slot` (0 ≤ slot < size): for scripts that keep state per
   * worker (the pack store's open packs). A dead worker's slot gets a new worker, whose state
   * starts empty: the caller must notice (e.g. by `generation`).
   */
  runOn(slot: number, req: Req, transfer: ArrayBuffer[] = []): Promise<Res> {
    if (this.closed) return Promise.reject(new WorkerDiedError('WORKER_CLOSED', 'worker pool is closed'));
    if (this.broken) return Promise.reject(this.broken);
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.slots.length)
      return Promise.reject(new RangeError(`no worker slot ${slot} (pool of ${this.slots.length})`));
    const best = slot;
    let live = this.slots[best];
    if (!live || live.gone) {
      live = this.start();
      this.slots[best] = live;
      this.replacements++;
    }
    const id = this.nextId++;
    const kind = this.taskKind(req);
    const target = live;
    return new Promise<Res>((resolve, reject) => {
      // Keep the process alive only while a worker has work (idle workers never hold it open).
      if (target.inFlight.size === 0) target.worker.ref();
      target.inFlight.set(id, { kind, resolve, reject });
      try {
        target.worker.postMessage({ id, req }, transfer);
      } catch (err) {
        // e.g. a value that cannot be cloned: this task fails, the worker is fine.
        target.inFlight.delete(id);
        if (target.inFlight.size === 0) target.worker.unref();
        reject(err instanceof Error ? err : new Error(String(err)));
      }
    });
  }

  /** Stops every worker. Tasks still running fail (WORKER_CLOSED); later `run` calls fail too. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const running = this.slots.filter((s): s is Live<Res> => s !== undefined);
    // Fail pending tasks now: 'exit' may come late (a worker busy in native code).
    for (const s of running) this.failAll(s, (kind) => closedError(kind));
    await Promise.all(running.map((s) => s.worker.terminate()));
  }
}

function closedError(kind: string): WorkerDiedError {
  return new WorkerDiedError('WORKER_CLOSED', `worker pool closed before a '${kind}' task finished`, {
    details: { taskKind: kind },
  });
}
