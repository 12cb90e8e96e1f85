/**
 * `vmvault benchmark` (docs/cli.md): how fast this machine hashes, compresses and encrypts as the
 * repository's codec does, and how fast the repository's storage takes and gives back pack-sized
 * objects, so that a user can tell where a slow backup comes from. The CPU figures run in worker
 * threads (benchmark-worker.ts), once on one thread and once on as many as a backup uses; the
 * storage figures write objects under `tmp/bench-<16 hex>-<n>` (docs/format.md "Key layout") and
 * delete them whatever happens.
 */
import { randomBytes } from 'node:crypto';
import { availableParallelism, cpus } from 'node:os';
import { VmvaultError, WorkerPool } from '../util/index.js';
import type { Backend } from './backend/backend.js';
import type { BenchWorkerRequest, BenchWorkerResult, CpuOp } from './benchmark-worker.js';
import { codecSpec } from './codec.js';
import type { RepoConfig } from './config.js';
import { DEFAULT_CHUNK_SIZE, DEFAULT_PACK_SIZE, DEFAULT_ZSTD_LEVEL } from './format.js';

/** The prefix of every object a storage benchmark writes (a temporary object: docs/format.md). */
export const BENCHMARK_KEY_PREFIX = 'tmp/bench-';

export type BenchmarkStep = CpuOp | 'write' | 'read';

export interface BenchmarkFigure {
  step: BenchmarkStep;
  /** What was measured, in words ("BLAKE3-256 keyed", "zstd level 3", …). */
  label: string;
  /** Threads (CPU steps) or requests in flight (storage steps). */
  threads: number;
  bytes: number;
  seconds: number;
  /** Throughput in MB/s (10^6 bytes per second). */
  mbPerSec: number;
  /** compress only: sample bytes ÷ compressed bytes. */
  ratio?: number;
}

export interface BenchmarkOptions {
  /** The repository's config; absent: the defaults of a new repository (encrypted, as `init`). */
  config?: Pick<RepoConfig, 'chunkSizeBytes' | 'chunkId' | 'compression' | 'packSizeBytes' | 'encryption'>;
  /** A writable storage stack of the repository: adds the write and read steps. */
  backend?: Backend;
  /** Measuring time of each figure (default 0.3 s; a storage step ends once an object is done). */
  seconds?: number;
  /** Worker threads of the "all workers" CPU figures (default: as a backup, one per CPU). */
  workers?: number;
  /** Storage requests in flight (default: the workers, as a backup's workers each write one pack). */
  concurrency?: number;
  /** Which steps to run (default all; the storage steps need `backend`). */
  steps?: readonly BenchmarkStep[];
  /** Stops after the current figure; objects written are still deleted. */
  signal?: AbortSignal;
  /** Told of each figure as soon as it is measured. */
  onFigure?: (f: BenchmarkFigure) => void;
}

export interface BenchmarkResult {
  cpus: number;
  cpuModel: string;
  workers: number;
  chunkSizeBytes: number;
  idFunction: RepoConfig['chunkId'];
  /** zstd level of chunks (0: the repository stores chunks raw: no compression figures). */
  compressionLevel: number;
  encrypted: boolean;
  /** The storage steps' setup, when a backend was given. */
  storage?: { location: string; objectBytes: number; concurrency: number };
  figures: BenchmarkFigure[];
}

const CPU_STEPS: readonly CpuOp[] = ['hash', 'compress', 'decompress', 'encrypt', 'decrypt'];
const ALL_STEPS: readonly BenchmarkStep[] = [...CPU_STEPS, 'write', 'read'];

function workerScriptUrl(): URL {
  const ext = import.meta.url.endsWith('.ts') ? 'ts' : 'js';
  return new URL(`./benchmark-worker.${ext}`, import.meta.url);
}

function figure(
  step: BenchmarkStep,
  label: string,
  threads: number,
  bytes: number,
  seconds: number,
): BenchmarkFigure {
  return { step, label, threads, bytes, seconds, mbPerSec: seconds > 0 ? bytes / seconds / 1e6 : 0 };
}

export async function runBenchmark(opts: BenchmarkOptions = {}): Promise<BenchmarkResult> {
  const config = opts.config ?? {
    chunkSizeBytes: DEFAULT_CHUNK_SIZE,
    chunkId: 'blake3-256-keyed',
    compression: { codec: 'zstd', level: DEFAULT_ZSTD_LEVEL },
    packSizeBytes: DEFAULT_PACK_SIZE,
    encryption: 'aes-256-gcm',
  };
  const seconds = opts.seconds ?? 0.3;
  if (!(seconds > 0 && seconds <= 600)) throw new RangeError(`benchmark seconds ${seconds} out of range`);
  const workers = Math.max(1, opts.workers ?? availableParallelism());
  const steps = new Set(opts.steps ?? ALL_STEPS);
  const level = config.compression.codec === 'none' ? 0 : config.compression.level;
  const keyed = config.chunkId === 'blake3-256-keyed';
  const result: BenchmarkResult = {
    cpus: availableParallelism(),
    cpuModel: cpus()[0]?.model.trim() ?? 'unknown',
    workers,
    chunkSizeBytes: config.chunkSizeBytes,
    idFunction: config.chunkId,
    compressionLevel: level,
    encrypted: config.encryption !== 'none',
    figures: [],
  };
  const add = (f: BenchmarkFigure): void => {
    result.figures.push(f);
    opts.onFigure?.(f);
  };
  const stopped = (): boolean => opts.signal?.aborted === true;

  const cpuSteps = CPU_STEPS.filter((s) => steps.has(s) && (level !== 0 || !s.includes('compress')));
  if (cpuSteps.length > 0 && !stopped()) {
    const labels: Record<CpuOp, string> = {
      hash: keyed ? 'BLAKE3-256 keyed (chunk ids)' : 'BLAKE3-256 (chunk ids)',
      compress: `zstd level ${level}`,
      decompress: `zstd level ${level} decompress`,
      encrypt: 'AES-256-GCM seal',
      decrypt: 'AES-256-GCM open',
    };
    const pool = new WorkerPool<BenchWorkerRequest, BenchWorkerResult>(workerScriptUrl(), workers, {
      resourceLimits: { maxYoungGenerationSizeMb: 8, maxOldGenerationSizeMb: 64 },
    });
    try {
      const keys = { idKey: randomBytes(32), encKey: randomBytes(32) };
      const prepare: BenchWorkerRequest = {
        op: 'prepare',
        chunkBytes: config.chunkSizeBytes,
        idSpec: codecSpec(level, keyed ? { idKey: keys.idKey } : {}),
        encSpec: codecSpec(0, keys),
        level,
      };
      await Promise.all(Array.from({ length: workers }, (_, i) => pool.runOn(i, prepare)));
      for (const what of cpuSteps) {
        for (const threads of workers > 1 ? [1, workers] : [1]) {
          if (stopped()) break;
          const runs = await Promise.all(
            Array.from({ length: threads }, (_, i) => pool.runOn(i, { op: 'run', what, seconds })),
          );
          // Each thread timed itself; together they did the sum of their rates.
          const rate = runs.reduce((a, r) => a + (r.seconds > 0 ? r.bytes / r.seconds : 0), 0);
          const f = figure(what, labels[what], threads, Math.round(rate * seconds), seconds);
          const out = runs.reduce((a, r) => a + (r.outBytes ?? 0), 0);
          const inBytes = runs.reduce((a, r) => a + r.bytes, 0);
          if (what === 'compress' && out > 0) f.ratio = inBytes / out;
          add(f);
        }
      }
    } finally {
      await pool.close();
    }
  }

  const backend = opts.backend;
  if (backend && (steps.has('write') || steps.has('read')) && !stopped()) {
    const concurrency = Math.max(1, opts.concurrency ?? workers);
    await storageSteps(backend, {
      objectBytes: config.packSizeBytes,
      concurrency,
      seconds,
      read: steps.has('read'),
      stopped,
      add,
    });
    result.storage = { location: backend.location, objectBytes: config.packSizeBytes, concurrency };
  }
  return result;
}

/**
 * Writes objects of `objectBytes` (random: packs do not compress), `concurrency` at a time, for
 * `seconds` (at least one each), as packs are written (create-if-absent, durable at a barrier,
 * then the barrier); reads them back whole; then deletes every one it started, also after a
 * failure or a stop (a second Ctrl-C exits at once: the local backend removes day-old `tmp/`
 * files itself, an S3 bucket keeps them until deleted by hand).
 */
async function storageSteps(
  backend: Backend,
  o: {
    objectBytes: number;
    concurrency: number;
    seconds: number;
    read: boolean;
    stopped: () => boolean;
    add: (f: BenchmarkFigure) => void;
  },
): Promise<void> {
  const run = randomBytes(8).toString('hex');
  const keys: string[] = [];
  let failure: unknown;
  try {
    await measureStorage(backend, o, run, keys);
  } catch (err) {
    failure = err;
  }
  // Every request has settled here (measureStorage awaited them all): delete all that may exist.
  const left: string[] = [];
  for (let i = 0; i < keys.length; i += 1000) {
    const batch = keys.slice(i, i + 1000);
    try {
      if (!backend.deleteMany) throw new Error('no batch delete');
      await backend.deleteMany(batch);
    } catch {
      for (const k of batch) await backend.delete(k).catch(() => left.push(k));
    }
  }
  if (failure !== undefined) throw failure;
  if (left.length > 0)
    throw new VmvaultError(
      'BENCHMARK_CLEANUP',
      `${left.length} benchmark object${left.length === 1 ? '' : 's'} (${left[0]}${left.length > 1 ? ', …' : ''}) could not be deleted from ${backend.location}`,
      { hint: `delete the objects ${BENCHMARK_KEY_PREFIX}${run}-* by hand` },
    );
}

async function measureStorage(
  backend: Backend,
  o: Parameters<typeof storageSteps>[1],
  run: string,
  keys: string[],
): Promise<void> {
  const data = randomBytes(o.objectBytes);
  const label = `objects of ${Math.round(o.objectBytes / 1048576)} MiB`;
  let failure: unknown;
  const fail = (err: unknown): void => {
    failure ??= err;
  };

  let t0 = process.hrtime.bigint();
  const deadline = t0 + BigInt(Math.round(o.seconds * 1e9));
  let written = 0;
  const writer = async (): Promise<void> => {
    while (failure === undefined) {
      if (written > 0 && (process.hrtime.bigint() >= deadline || o.stopped())) return;
      const key = `${BENCHMARK_KEY_PREFIX}${run}-${keys.length}`;
      keys.push(key); // before the request: a write that fails half-way is deleted too
      await backend.putIfAbsent(key, data, { durable: 'at-barrier' });
      written++;
    }
  };
  await Promise.all(Array.from({ length: o.concurrency }, () => writer().catch(fail)));
  if (failure !== undefined) throw failure;
  await backend.barrier(keys);
  o.add(figure('write', label, o.concurrency, written * o.objectBytes, elapsed(t0)));
  if (!o.read || o.stopped()) return;

  const dests = Array.from({ length: o.concurrency }, () => Buffer.allocUnsafeSlow(o.objectBytes));
  t0 = process.hrtime.bigint();
  const readDeadline = t0 + BigInt(Math.round(o.seconds * 1e9));
  let next = 0;
  let read = 0;
  const reader = async (dest: Buffer): Promise<void> => {
    while (failure === undefined) {
      if (read > 0 && (process.hrtime.bigint() >= readDeadline || o.stopped())) return;
      await backend.getRangeInto(keys[next++ % keys.length]!, 0, dest);
      read++;
    }
  };
  await Promise.all(dests.map((d) => reader(d).catch(fail)));
  if (failure !== undefined) throw failure;
  o.add(figure('read', label, o.concurrency, read * o.objectBytes, elapsed(t0)));
}

function elapsed(t0: bigint): number {
  return Number(process.hrtime.bigint() - t0) / 1e9;
}
