import { describe, expect, it } from 'vitest';
import { DiskIndex, chunkIdOf, RepoFormatError } from '../../src/repo/index.js';

describe('disk index', () => {
  it('maps every slot and round-trips through its binary form', () => {
    const idx = DiskIndex.empty(10 * 1024 * 1024 + 123, 1024 * 1024);
    expect(idx.slotCount).toBe(11);
    expect(idx.slotLength(10)).toBe(123);
    const a = chunkIdOf(Buffer.from('a'));
    idx.set(3, a);
    const back = DiskIndex.decode(idx.encode());
    expect(back.get(3)).toBe(a);
    expect(back.get(0)).toBeNull();
    expect(back.diskSizeBytes).toBe(idx.diskSizeBytes);
    expect([...back.chunkIds()]).toEqual([a]);
  });

  it('cloneFrom keeps the parent slots, also when the disk grows or shrinks', () => {
    const p = DiskIndex.empty(4 * 65536, 65536);
    const ids = [0, 1, 2, 3].map((i) => chunkIdOf(Buffer.from([i])));
    ids.forEach((id, i) => p.set(i, id));
    const grown = DiskIndex.cloneFrom(p, 6 * 65536);
    expect(grown.get(3)).toBe(ids[3]);
    expect(grown.get(5)).toBeNull();
    const shrunk = DiskIndex.cloneFrom(p, 2 * 65536);
    expect(shrunk.slotCount).toBe(2);
    expect(shrunk.get(1)).toBe(ids[1]);
  });

  it('rejects a damaged index', () => {
    const enc = DiskIndex.empty(65536 * 3, 65536).encode();
    const bad = Buffer.from(enc);
    bad[40] = 1;
    expect(() => DiskIndex.decode(bad)).toThrow(RepoFormatError);
    expect(() => DiskIndex.decode(enc.subarray(0, 40))).toThrow(RepoFormatError);
  });
});
