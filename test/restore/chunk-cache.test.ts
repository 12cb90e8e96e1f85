import { describe, expect, it } from 'vitest';
import { ChunkCache } from '../../src/restore/chunk-cache.js';

/** A cache whose loads fill the buffer with the slot number; `gate` holds loads until released. */
function cacheOf(capacity: number, maxBuffers?: number, failSlots = new Set<number>()) {
  const loads: number[] = [];
  let gate: Promise<void> = Promise.resolve();
  let open = (): void => {};
  const cache = new ChunkCache(
    async (slot, dest) => {
      loads.push(slot);
      await gate;
      if (failSlots.has(slot)) throw new Error(`slot ${slot} is damaged`);
      dest.fill(slot & 0xff, 0, 100);
      return 100;
    },
    4096,
    capacity,
    maxBuffers,
  );
  return {
    cache,
    loads,
    hold: () => (gate = new Promise<void>((r) => (open = r))),
    open: () => open(),
  };
}

describe('ChunkCache', () => {
  it('loads a slot once while it is resident, and evicts the least recently used', async () => {
    const { cache, loads } = cacheOf(2);
    for (const s of [1, 2, 1, 1]) (await cache.pin(s)).release();
    expect(loads).toEqual([1, 2]);
    (await cache.pin(3)).release(); // evicts 2 (1 was used more recently)
    (await cache.pin(1)).release();
    (await cache.pin(2)).release();
    expect(loads).toEqual([1, 2, 3, 2]);
    expect(cache.stats).toMatchObject({ hits: 3, loads: 4, overflows: 0 });
    expect(cache.bufferCount).toBe(2);
  });

  it('gives each reader the chunk bytes as a view, shares a load between concurrent pins', async () => {
    const { cache, loads, hold, open } = cacheOf(4);
    hold();
    const a = cache.pin(7);
    const b = cache.pin(7);
    open();
    const [x, y] = await Promise.all([a, b]);
    expect(loads).toEqual([7]);
    expect(x.data.length).toBe(100);
    expect(x.data[99]).toBe(7);
    expect(x.data.buffer).toBe(y.data.buffer);
    expect(x.data.buffer).toBeInstanceOf(SharedArrayBuffer);
    x.release();
    y.release();
  });

  it('never evicts a pinned chunk: it grows to maxBuffers, then uses one-off buffers, then shrinks back', async () => {
    const { cache, loads } = cacheOf(2, 3);
    const pins = [];
    for (let s = 0; s < 5; s++) pins.push(await cache.pin(s));
    expect(loads).toEqual([0, 1, 2, 3, 4]);
    expect(cache.stats.overflows).toBe(2);
    expect(cache.bufferCount).toBe(3);
    for (let s = 0; s < 5; s++) expect(pins[s]!.data[0]).toBe(s); // nothing was overwritten
    for (const p of pins) p.release();
    expect(cache.bufferCount).toBe(2);
    // Overflowed slots were not kept; the most recently released resident ones were.
    (await cache.pin(3)).release();
    expect(loads.length).toBe(6);
  });

  it('a failed load rejects every pin and is tried again next time; release is idempotent', async () => {
    const fail = new Set([5]);
    const { cache, loads } = cacheOf(2, 2, fail);
    await expect(cache.pin(5)).rejects.toThrow(/damaged/);
    await expect(Promise.all([cache.pin(5), cache.pin(5)])).rejects.toThrow(/damaged/);
    fail.clear();
    const p = await cache.pin(5);
    expect(p.data[0]).toBe(5);
    p.release();
    p.release();
    expect(loads).toEqual([5, 5, 5]);
    expect(cache.bufferCount).toBeLessThanOrEqual(2);
    const q = await cache.pin(6);
    const r = await cache.pin(7); // needs the buffer the failed loads gave back
    expect(cache.stats.overflows).toBe(0);
    q.release();
    r.release();
  });
});
