import { blake3 } from '@napi-rs/blake-hash';
import { describe, expect, it } from 'vitest';
import { DiskIndex, format, type ChunkId } from '../../src/repo/index.js';

const idOf = (data: Uint8Array): ChunkId => blake3(data).toString('hex') as ChunkId;

describe('disk index (in memory)', () => {
  it('maps every slot: the last one partial, zero markers as null', () => {
    const idx = DiskIndex.empty(10 * 1024 * 1024 + 123, 1024 * 1024);
    expect(idx.slotCount).toBe(11);
    expect(idx.slotLength(0)).toBe(1024 * 1024);
    expect(idx.slotLength(10)).toBe(123);
    const a = idOf(Buffer.from('a'));
    idx.set(3, a);
    idx.set(4, a);
    expect(idx.get(3)).toBe(a);
    expect(idx.get(0)).toBeNull();
    expect(idx.isZero(0)).toBe(true);
    expect(idx.isZero(3)).toBe(false);
    expect([...idx.chunkIds()]).toEqual([a]);
    idx.set(3, null);
    expect(idx.get(3)).toBeNull();
    expect(() => idx.set(11, a)).toThrow(RangeError);
    expect(() => idx.set(-1, a)).toThrow(RangeError);
  });

  it('cloneFrom keeps the parent slots, also when the disk grows or shrinks', () => {
    const p = DiskIndex.empty(4 * 65536, 65536);
    const ids = [0, 1, 2, 3].map((i) => idOf(Buffer.from([i])));
    ids.forEach((id, i) => p.set(i, id));
    const grown = DiskIndex.cloneFrom(p, 6 * 65536);
    expect(grown.get(3)).toBe(ids[3]);
    expect(grown.get(5)).toBeNull();
    const shrunk = DiskIndex.cloneFrom(p, 2 * 65536);
    expect(shrunk.slotCount).toBe(2);
    expect(shrunk.get(1)).toBe(ids[1]);
    // The clone is a copy: the parent does not change with it.
    grown.set(0, null);
    expect(p.get(0)).toBe(ids[0]);
  });

  it('reads and writes raw slot ranges within the disk only', () => {
    const idx = DiskIndex.empty(4 * 65536, 65536);
    const a = idOf(Buffer.from('a'));
    idx.setSlotBytes(1, Buffer.concat([Buffer.from(a, 'hex'), Buffer.alloc(32)]));
    expect(idx.get(1)).toBe(a);
    expect(idx.isZero(2)).toBe(true);
    expect(idx.slotBytes(1, 1).toString('hex')).toBe(a);
    expect(idx.slotBytes(0, 4)).toHaveLength(128);
    expect(() => idx.slotBytes(3, 2)).toThrow(RangeError);
    expect(() => idx.slotBytes(-1, 1)).toThrow(RangeError);
    expect(() => idx.setSlotBytes(3, Buffer.alloc(64))).toThrow(RangeError);
    expect(() => idx.setSlotBytes(0, Buffer.alloc(31))).toThrow(RangeError);
  });

  it('refuses impossible chunk and disk sizes, and a disk of more slots than an index maps, before it allocates', () => {
    for (const chunk of [0, 3 * 65536, 32 * 1024 * 1024, 1000.5])
      expect(() => DiskIndex.empty(4 * 65536, chunk), `chunk ${chunk}`).toThrow(RangeError);
    for (const disk of [-1, 1.5, 2 ** 60])
      expect(() => DiskIndex.empty(disk, 65536), `disk ${disk}`).toThrow();
    const max = format.MAX_INDEX_SLOTS;
    expect(() => DiskIndex.empty((max + 1) * 65536, 65536)).toThrow(
      expect.objectContaining({ code: 'DISK_TOO_LARGE' }),
    );
    expect(() => DiskIndex.empty(max * 65536 + 1, 65536)).toThrow(/more than an index holds/);
    expect(DiskIndex.empty(0, 65536).slotCount).toBe(0);
  });
});
