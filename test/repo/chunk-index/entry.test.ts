import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  ENTRY_BYTES,
  compareEntries,
  decodeEntry,
  encodeEntry,
  packKey,
  type IndexEntry,
} from '../../../src/repo/chunk-index/index.js';
import { randomEntries } from './helpers.js';

describe('index entries', () => {
  it('round-trip through the 64-byte encoding (design §2.1 layout)', () => {
    const e: IndexEntry = {
      id: Buffer.alloc(32, 0xab),
      pack: Buffer.alloc(16, 0xcd),
      offset: 0x01020304,
      length: 0x05060708,
      plaintextBytes: 0x090a0b0c,
      kind: 3,
      codec: 1,
    };
    const b = encodeEntry(e);
    expect(b.length).toBe(ENTRY_BYTES);
    expect(b.subarray(0, 32).equals(e.id)).toBe(true);
    expect(b.subarray(32, 48).equals(e.pack)).toBe(true);
    expect(b.toString('hex', 48, 64)).toBe('0102030405060708090a0b0c03010000');
    expect(decodeEntry(b)).toEqual(e);
  });

  it('sort by id, pack, offset, which is the byte order of the encoding', () => {
    const es = randomEntries(200);
    const id = randomBytes(32);
    const pack = randomBytes(16);
    es.push(
      { ...es[0]!, id, pack, offset: 9 },
      { ...es[0]!, id, pack, offset: 10 },
      { ...es[0]!, id, offset: 1 },
    );
    const byFields = [...es].sort(compareEntries);
    const byBytes = [...es].sort((a, b) => encodeEntry(a).compare(encodeEntry(b)));
    expect(byBytes).toEqual(byFields);
  });

  it('refuse fields out of range', () => {
    const [e] = randomEntries(1);
    expect(() => encodeEntry({ ...e!, offset: 2 ** 32 })).toThrow(RangeError);
    expect(() => encodeEntry({ ...e!, id: randomBytes(31) })).toThrow(RangeError);
    expect(() => encodeEntry({ ...e!, kind: 5 as never })).toThrow(RangeError);
  });

  it('packKey follows the record kind', () => {
    const pack = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
    expect(packKey({ pack, kind: 1 })).toBe('data/00/00112233445566778899aabbccddeeff');
    expect(packKey({ pack, kind: 2 })).toBe('data/00/00112233445566778899aabbccddeeff');
    expect(packKey({ pack, kind: 3 })).toBe('meta/00/00112233445566778899aabbccddeeff');
    expect(packKey({ pack, kind: 4 })).toBe('meta/00/00112233445566778899aabbccddeeff');
  });
});
