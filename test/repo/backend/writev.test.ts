import { describe, expect, it, vi } from 'vitest';

// A writev that writes at most 7 bytes per call (a short write every time) into `sink`, and
// records how many buffers each call got.
const sink: Buffer[] = [];
const batchSizes: number[] = [];
vi.mock('node:fs', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:fs')>();
  return {
    ...real,
    writevSync: (_fd: number, bufs: readonly Uint8Array[]): number => {
      batchSizes.push(bufs.length);
      let left = 7;
      for (const b of bufs) {
        if (left === 0) break;
        const take = Math.min(left, b.length);
        sink.push(Buffer.from(b.subarray(0, take)));
        left -= take;
      }
      return 7 - left;
    },
  };
});

const { IOV_MAX, writeAllv } = await import('../../../src/repo/backend/local-files.js');

describe('writeAllv', () => {
  it('resumes short writes inside a part, skips empty parts, never passes more than IOV_MAX buffers', () => {
    sink.length = 0;
    batchSizes.length = 0;
    const parts = Array.from({ length: 3000 }, (_, i) =>
      Buffer.alloc(i % 3 === 0 ? 0 : (i % 5) + 1, i & 0xff),
    );
    const before = [...parts];
    writeAllv(3, parts);
    expect(Buffer.concat(sink).equals(Buffer.concat(parts))).toBe(true);
    expect(Math.max(...batchSizes)).toBe(IOV_MAX); // 2000 non-empty parts: the first calls are capped
    expect(batchSizes.every((n) => n > 0)).toBe(true);
    expect(parts).toEqual(before);
  });

  it('writes nothing for an empty list or only empty parts', () => {
    batchSizes.length = 0;
    writeAllv(3, []);
    writeAllv(3, [Buffer.alloc(0), Buffer.alloc(0)]);
    expect(batchSizes).toEqual([]);
  });
});
