import { describe, expect, it } from 'vitest';
import { RangeCoalescer } from '../../src/repo/range-coalescer.js';

/** An object of bytes i & 0xff, read through a coalescer that records its requests. */
function setup(opts: ConstructorParameters<typeof RangeCoalescer>[1] = {}, failAt?: number) {
  const reads: Array<[string, number, number]> = [];
  const c = new RangeCoalescer(async (key, offset, dest) => {
    reads.push([key, offset, dest.length]);
    if (failAt !== undefined && offset <= failAt && failAt < offset + dest.length)
      throw new Error(`bad range at ${failAt}`);
    for (let i = 0; i < dest.length; i++) dest[i] = (offset + i) & 0xff;
  }, opts);
  return { c, reads };
}
const bytesOf = (r: { src: SharedArrayBuffer; at: number }, n: number): Uint8Array =>
  new Uint8Array(r.src, r.at, n);

describe('range coalescer', () => {
  it('merges ranges of one object asked for in one turn, within the gap and size bounds', async () => {
    const { c, reads } = setup({ maxGapBytes: 10, maxRangeBytes: 1000 });
    const asks = [
      c.fetch('a', 100, 50),
      c.fetch('a', 0, 100), // adjacent, asked out of order
      c.fetch('a', 155, 20), // gap 5: merged
      c.fetch('a', 400, 10), // gap 225: a new run
      c.fetch('b', 0, 10), // another object
    ];
    const got = await Promise.all(asks);
    expect(reads.sort()).toEqual(
      [
        ['a', 0, 175],
        ['a', 400, 10],
        ['b', 0, 10],
      ].sort(),
    );
    expect([...bytesOf(got[0]!, 3)]).toEqual([100, 101, 102]);
    expect([...bytesOf(got[2]!, 2)]).toEqual([155, 156]);
    expect([...bytesOf(got[3]!, 2)]).toEqual([400 & 0xff, 401 & 0xff]);
    for (const g of got) g.release();
    expect(c.requests).toBe(3);
  });

  it('splits at the size bound', async () => {
    const { c, reads } = setup({ maxGapBytes: 10, maxRangeBytes: 100 });
    const got = await Promise.all([0, 50, 100, 150].map((o) => c.fetch('a', o, 40)));
    expect(reads.map((r) => [r[1], r[2]])).toEqual([
      [0, 90],
      [100, 90],
    ]);
    got.forEach((g) => g.release());
  });

  it('a failed merged read is retried range by range: only the bad range fails', async () => {
    const { c } = setup({ maxGapBytes: 10, maxRangeBytes: 1000 }, 130);
    const [a, b, d] = await Promise.allSettled([
      c.fetch('a', 0, 100),
      c.fetch('a', 100, 50),
      c.fetch('a', 150, 50),
    ]);
    expect(a.status).toBe('fulfilled');
    expect(b.status).toBe('rejected');
    expect(d.status).toBe('fulfilled');
  });

  it('holds at most its budget of run buffers: a run waits until one is released', async () => {
    const { c, reads } = setup({ maxGapBytes: 0, maxRangeBytes: 100, smallBuffers: 2 });
    const first = await Promise.all([c.fetch('a', 0, 100), c.fetch('b', 0, 100)]);
    let third = false;
    const p = c.fetch('c', 0, 100).then((r) => ((third = true), r));
    await new Promise((r) => setTimeout(r, 20));
    expect(third).toBe(false);
    first[0]!.release();
    (await p).release();
    first[1]!.release();
    expect(reads).toHaveLength(3);
  });
});
