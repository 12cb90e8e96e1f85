import { describe, expect, it } from 'vitest';
import {
  PROCEDURES,
  remoteError,
  remoteNonnullDomain,
  remoteTypedParam,
  uuidFromText,
  uuidToText,
  type TypedParam,
} from '../../src/libvirt/protocol/remote.js';
import {
  XdrError,
  xdrArray,
  xdrBool,
  xdrDecode,
  xdrDouble,
  xdrEncode,
  xdrFixedOpaque,
  xdrHyper,
  xdrInt,
  xdrOpaque,
  xdrOptional,
  xdrString,
  xdrStruct,
  xdrUhyper,
  xdrUint,
  type Codec,
} from '../../src/libvirt/xdr.js';

function roundTrip<T>(codec: Codec<T>, value: T): Buffer {
  const buf = xdrEncode(codec, value);
  expect(buf.length % 4).toBe(0);
  expect(xdrDecode(codec, buf)).toEqual(value);
  return buf;
}

describe('XDR primitives', () => {
  it('encodes ints, unsigned ints, hypers, bools and doubles big-endian', () => {
    expect(roundTrip(xdrInt, -2).toString('hex')).toBe('fffffffe');
    expect(roundTrip(xdrUint, 0xfffffffe).toString('hex')).toBe('fffffffe');
    expect(roundTrip(xdrHyper, -1).toString('hex')).toBe('ffffffffffffffff');
    expect(roundTrip(xdrUhyper, 2 ** 40 + 5).toString('hex')).toBe('0000010000000005');
    expect(roundTrip(xdrBool, true).toString('hex')).toBe('00000001');
    roundTrip(xdrDouble, 3.25);
    expect(() => xdrEncode(xdrInt, 2 ** 31)).toThrow(XdrError);
    expect(() => xdrEncode(xdrUint, -1)).toThrow(XdrError);
    expect(() => xdrDecode(xdrBool, Buffer.from('00000002', 'hex'))).toThrow(XdrError);
  });

  it('rejects unsigned hypers beyond the safe integer range instead of rounding', () => {
    expect(() => xdrDecode(xdrUhyper, Buffer.from('0020000000000000', 'hex'))).toThrow(XdrError);
  });

  it('pads strings and opaques to 4 bytes', () => {
    expect(roundTrip(xdrString(), '').toString('hex')).toBe('00000000');
    expect(roundTrip(xdrString(), 'abc').toString('hex')).toBe('0000000361626300');
    expect(roundTrip(xdrString(), 'abcd').toString('hex')).toBe('0000000461626364');
    expect(roundTrip(xdrString(), 'abcde').toString('hex')).toBe('000000056162636465000000');
    expect(roundTrip(xdrString(), 'ü').toString('hex')).toBe('00000002c3bc0000');
    expect(roundTrip(xdrFixedOpaque(3), Buffer.from([1, 2, 3])).toString('hex')).toBe('01020300');
    expect(roundTrip(xdrOpaque(), Buffer.from([9])).toString('hex')).toBe('0000000109000000');
  });

  it('enforces string, opaque and array limits on both sides', () => {
    expect(() => xdrEncode(xdrString(2), 'abc')).toThrow(/exceeds the limit 2/);
    expect(() => xdrDecode(xdrString(2), Buffer.from('0000000361626300', 'hex'))).toThrow(
      /exceeds the limit 2/,
    );
    expect(() => xdrEncode(xdrArray(xdrInt, 1), [1, 2])).toThrow(XdrError);
    // A huge count with no data behind it is refused before allocating.
    expect(() => xdrDecode(xdrArray(xdrInt), Buffer.from('7fffffff', 'hex'))).toThrow(/does not fit/);
  });

  it('encodes optional data as a 0/1 marker', () => {
    const opt = xdrOptional(xdrString());
    expect(roundTrip(opt, null).toString('hex')).toBe('00000000');
    expect(roundTrip(opt, 'x').toString('hex')).toBe('000000010000000178000000');
    expect(() => xdrDecode(opt, Buffer.from('00000002', 'hex'))).toThrow(/invalid marker/);
  });

  it('round-trips structs and arrays in declaration order, and rejects trailing or missing bytes', () => {
    const s = xdrStruct<{ a: number; b: string[]; c: boolean }>('s', {
      a: xdrInt,
      b: xdrArray(xdrString()),
      c: xdrBool,
    });
    const buf = roundTrip(s, { a: 7, b: ['x', 'yz'], c: false });
    expect(buf.toString('hex')).toBe(
      '00000007' + '00000002' + '0000000178000000' + '00000002797a0000' + '00000000',
    );
    expect(() => xdrDecode(s, Buffer.concat([buf, Buffer.alloc(4)]))).toThrow(/trailing/);
    expect(() => xdrDecode(s, buf.subarray(0, buf.length - 4))).toThrow(/truncated/);
  });
});

describe('libvirt types', () => {
  const dom = { name: 'vm1', uuid: '0123abcd-0000-4000-8000-00000000beef', id: -1 };

  it('encodes remote_nonnull_domain with a 16-byte uuid and no uuid length', () => {
    const buf = roundTrip(remoteNonnullDomain, dom);
    expect(buf.toString('hex')).toBe(
      '00000003' + '766d3100' + '0123abcd000040008000' + '00000000beef' + 'ffffffff',
    );
    expect(uuidToText(uuidFromText(dom.uuid))).toBe(dom.uuid);
    expect(() => uuidFromText('nope')).toThrow(XdrError);
  });

  it('round-trips every typed parameter type', () => {
    const params: TypedParam[] = [
      { field: 'i', type: 'int', value: -5 },
      { field: 'u', type: 'uint', value: 5 },
      { field: 'l', type: 'llong', value: -(2n ** 62n) },
      { field: 'ul', type: 'ullong', value: 2n ** 64n - 1n },
      { field: 'd', type: 'double', value: 0.5 },
      { field: 'b', type: 'boolean', value: true },
      { field: 's', type: 'string', value: 'hello' },
    ];
    for (const p of params) roundTrip(remoteTypedParam, p);
    expect(xdrEncode(remoteTypedParam, { field: 'b', type: 'boolean', value: true }).toString('hex')).toBe(
      '00000001' + '62000000' + '00000006' + '00000001',
    );
    const bad = Buffer.from('00000001' + '62000000' + '00000009' + '00000001', 'hex');
    expect(() => xdrDecode(remoteTypedParam, bad)).toThrow(/unknown type 9/);
  });

  it('decodes the full remote_error including the optional domain and network', () => {
    const e = {
      code: 42,
      domain: 10,
      message: "Domain not found: no domain with matching name 'x'",
      level: 2,
      dom,
      str1: 'Domain not found',
      str2: null,
      str3: 'x',
      int1: -1,
      int2: 0,
      net: { name: 'default', uuid: '00000000-0000-0000-0000-000000000001' },
    };
    roundTrip(remoteError, e);
    roundTrip(remoteError, { ...e, dom: null, net: null, message: null });
  });

  it('encodes CONNECT_OPEN args with a present optional name (marker 1)', () => {
    const buf = xdrEncode(PROCEDURES.CONNECT_OPEN.args, { name: 'qemu:///system', flags: 0 });
    expect(buf.subarray(0, 8).toString('hex')).toBe('00000001' + '0000000e');
    expect(buf.length).toBe(4 + 4 + 16 + 4);
  });

  it('gives every procedure a distinct (program, number) pair', () => {
    const seen = new Set<string>();
    for (const p of Object.values(PROCEDURES)) {
      const key = `${p.program}:${p.procedure}`;
      expect(seen.has(key), p.name).toBe(false);
      seen.add(key);
    }
  });
});
