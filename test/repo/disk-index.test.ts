import { describe, expect, it } from 'vitest';
import { DiskIndex, chunkIdOf, hashBytes, RepoDamagedError, RepoFormatError } from '../../src/repo/index.js';

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

  it('reads and writes raw slot ranges within the disk only', () => {
    const idx = DiskIndex.empty(4 * 65536, 65536);
    const a = chunkIdOf(Buffer.from('a'));
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

  it('rejects a damaged index', () => {
    const enc = DiskIndex.empty(65536 * 3, 65536).encode();
    const bad = Buffer.from(enc);
    bad[40] = 1;
    expect(() => DiskIndex.decode(bad)).toThrow(RepoFormatError);
    expect(() => DiskIndex.decode(enc.subarray(0, 40))).toThrow(RepoFormatError);
  });

  it('checks every header field before it allocates: hostile slot counts, chunk and disk sizes are damage', () => {
    const craft = (chunkSize: number, diskSize: bigint, slots: bigint, bodySlots: number): Buffer => {
      const head = Buffer.alloc(32);
      head.writeUInt32BE(0x564d5649, 0);
      head.writeUInt8(1, 4);
      head.writeUInt32BE(chunkSize, 8);
      head.writeBigUInt64BE(diskSize, 16);
      head.writeBigUInt64BE(slots, 24);
      const body = Buffer.concat([head, Buffer.alloc(bodySlots * 32)]);
      return Buffer.concat([body, hashBytes(body)]);
    };
    const K = 65536;
    const cases: Array<[string, Buffer, RegExp]> = [
      ['2^53 slots', craft(K, 3n * BigInt(K), 2n ** 53n, 3), /more than an index holds/],
      ['2^64-1 slots', craft(K, 3n * BigInt(K), 2n ** 64n - 1n, 3), /more than an index holds/],
      ['one slot too many', craft(K, 3n * BigInt(K), 4n, 4), /4 slots for a disk/],
      ['chunk size 0', craft(0, 3n * BigInt(K), 3n, 3), /impossible chunk size/],
      ['chunk size not a power of two', craft(3 * K, 3n * BigInt(K), 1n, 1), /impossible chunk size/],
      ['chunk size beyond 16 MiB', craft(32 * 1024 * 1024, 3n * BigInt(K), 1n, 1), /impossible chunk size/],
      ['disk size 2^60', craft(K, 2n ** 60n, 2n ** 44n, 3), /more than an index holds/],
      ['disk size 2^64-1 with few slots', craft(K, 2n ** 64n - 1n, 3n, 3), /more than an index maps/],
    ];
    for (const [name, buf, msg] of cases) {
      expect(() => DiskIndex.decode(buf), name).toThrow(RepoDamagedError);
      expect(() => DiskIndex.decode(buf), name).toThrow(msg);
    }
    const future = craft(K, BigInt(K), 1n, 1);
    future.writeUInt8(2, 4);
    expect(() => DiskIndex.decode(future)).toThrow(RepoFormatError);
    expect(() => DiskIndex.decode(future)).not.toThrow(RepoDamagedError);
  });
});
