import { afterEach, describe, expect, it } from 'vitest';
import { WorkerDiedError, WorkerPool, WorkerTaskError } from '../../src/util/index.js';
import type { PoolTestRequest, PoolTestResult } from './fixtures/pool-worker.js';

const script = new URL('./fixtures/pool-worker.ts', import.meta.url);
type Pool = WorkerPool<PoolTestRequest, PoolTestResult>;

const pools: Pool[] = [];
function pool(size: number, options: ConstructorParameters<typeof WorkerPool>[2] = {}): Pool {
  const p: Pool = new WorkerPool(script, size, options);
  pools.push(p);
  return p;
}
afterEach(async () => {
  await Promise.all(pools.splice(0).map((p) => p.close()));
});

/** Settles every promise; fails the test (instead of hanging) if one does not settle in time. */
async function settleAll<T>(promises: Promise<T>[], ms = 20_000): Promise<PromiseSettledResult<T>[]> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`a task did not settle within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([Promise.allSettled(promises), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function rejection(r: PromiseSettledResult<unknown> | undefined): unknown {
  expect(r?.status).toBe('rejected');
  return r?.status === 'rejected' ? r.reason : undefined;
}

describe('WorkerPool', () => {
  it('runs tasks and passes the script errors through', async () => {
    const p = pool(2);
    const r = await p.run({ op: 'echo', value: 7 });
    expect(r.value).toBe(7);
    const err = await p.run({ op: 'fail', code: 'ENOSPC' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkerTaskError);
    expect((err as WorkerTaskError).code).toBe('ENOSPC');
  });

  it('a worker that calls process.exit fails the tasks it held, and a replacement runs later tasks', async () => {
    const p = pool(1);
    const first = (await p.run({ op: 'echo', value: 1 })).threadId;
    // Queued on the one worker behind the exit: all of them must settle.
    const held = [
      p.run({ op: 'echo', value: 2, delayMs: 200 }),
      p.run({ op: 'exit', exitCode: 7 }),
      p.run({ op: 'echo', value: 3, delayMs: 200 }),
    ];
    const results = await settleAll(held);
    for (const r of results) {
      const err = rejection(r);
      expect(err).toBeInstanceOf(WorkerDiedError);
      expect((err as WorkerDiedError).code).toBe('WORKER_DIED');
      expect((err as WorkerDiedError).message).toMatch(/exited with code 7/);
      expect((err as WorkerDiedError).details.exitCode).toBe(7);
    }
    expect((rejection(results[0]) as Error).message).toMatch(/during a 'echo' task/);
    expect((rejection(results[1]) as Error).message).toMatch(/during a 'exit' task/);
    const after = await settleAll([p.run({ op: 'echo', value: 4 }), p.run({ op: 'echo', value: 5 })]);
    expect(after.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled']);
    const values = after.map((r) => (r.status === 'fulfilled' ? r.value : undefined));
    expect(values.map((v) => v?.value)).toEqual([4, 5]);
    expect(values[0]?.threadId).not.toBe(first);
    expect(p.replacements).toBe(1);
  });

  it('a replacement worker gets the same workerData as the first (e.g. the codec spec)', async () => {
    const p = pool(1, { workerData: { value: 42 } });
    const first = await p.run({ op: 'data' });
    expect(first.value).toBe(42);
    await settleAll([p.run({ op: 'exit', exitCode: 3 })]);
    const again = await p.run({ op: 'data' });
    expect(again.value).toBe(42);
    expect(again.threadId).not.toBe(first.threadId);
  });

  it('a worker with an uncaught exception fails its tasks with the error message', async () => {
    const p = pool(1);
    const results = await settleAll([
      p.run({ op: 'hang' }),
      p.run({ op: 'throw', message: 'boom in the worker' }),
    ]);
    for (const r of results) {
      const err = rejection(r) as WorkerDiedError;
      expect(err.code).toBe('WORKER_DIED');
      expect(err.message).toMatch(/uncaught error: boom in the worker/);
      expect(err.oneLine()).toMatch(/; run the command again/);
    }
    expect((await p.run({ op: 'echo', value: 1 })).value).toBe(1);
  });

  it('a worker terminated from outside fails its tasks; the other workers keep theirs', async () => {
    const p = pool(2);
    // The two workers' thread ids, and which one runs a task (least loaded first).
    const a = p.run({ op: 'echo', value: 1, delayMs: 300 });
    const b = p.run({ op: 'hang' });
    const slots = (
      p as unknown as { slots: ({ worker: import('node:worker_threads').Worker } | undefined)[] }
    ).slots;
    const hanging = slots[1]!.worker;
    await hanging.terminate();
    const results = await settleAll([a, b]);
    expect(results[0]).toMatchObject({ status: 'fulfilled', value: { value: 1 } });
    expect((rejection(results[1]) as WorkerDiedError).code).toBe('WORKER_DIED');
    const after = await settleAll([1, 2, 3, 4].map((value) => p.run({ op: 'echo', value })));
    expect(after.every((r) => r.status === 'fulfilled')).toBe(true);
    expect(p.replacements).toBe(1);
  });

  it('a worker out of memory fails its task as out of memory', async () => {
    const p = pool(1, { resourceLimits: { maxOldGenerationSizeMb: 16, maxYoungGenerationSizeMb: 4 } });
    const [r] = await settleAll([p.run({ op: 'oom' })], 40_000);
    const err = rejection(r) as WorkerDiedError;
    expect(err.code).toBe('WORKER_DIED');
    expect(err.message).toMatch(/during a 'oom' task \(out of memory/);
    expect((await p.run({ op: 'echo', value: 1 })).value).toBe(1);
  });

  it('stops replacing workers that keep dying, and fails later tasks with a clear error', async () => {
    const p = pool(2, { maxDeaths: 3, deathWindowMs: 60_000 });
    // One death at a time (each task fails when its worker's exit is seen).
    for (const exitCode of [1, 2, 3]) {
      const [r] = await settleAll([p.run({ op: 'exit', exitCode })]);
      expect((rejection(r) as WorkerDiedError).code).toBe('WORKER_DIED');
    }
    const later = await settleAll([p.run({ op: 'echo', value: 1 }), p.run({ op: 'echo', value: 2 })]);
    for (const r of later) {
      const err = rejection(r) as WorkerDiedError;
      expect(err.code).toBe('WORKER_POOL_BROKEN');
      expect(err.message).toMatch(
        /worker threads keep dying \(3 within 60 s, last exited with code 3\); no more/,
      );
    }
    expect(p.replacements).toBe(1); // the third exit ran on a new worker, then no more
  });

  it('close() fails the tasks still running and every later run', async () => {
    const p = pool(2);
    const settled = settleAll([p.run({ op: 'hang' }), p.run({ op: 'echo', value: 1, delayMs: 5_000 })]);
    await p.close();
    const results = await settled;
    for (const r of results) {
      const err = rejection(r) as WorkerDiedError;
      expect(err.code).toBe('WORKER_CLOSED');
      expect(err.message).toMatch(/worker pool closed before a '(hang|echo)' task finished/);
    }
    const late = await p.run({ op: 'echo', value: 2 }).catch((e: unknown) => e);
    expect((late as WorkerDiedError).code).toBe('WORKER_CLOSED');
    await p.close(); // twice is fine
  });
});
