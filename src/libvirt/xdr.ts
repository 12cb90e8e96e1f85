/**
 * XDR (RFC 4506) codecs on top of util/bytes. A `Codec<T>` both encodes and decodes one XDR type;
 * composite codecs (struct, array, optional, union) are built from smaller ones, so every libvirt
 * procedure is described declaratively in protocol/*.ts and no method hand-rolls wire bytes.
 *
 * Decoding errors throw XdrError; the RPC layer turns them into a protocol error that kills the
 * connection (a reply we cannot parse means we no longer agree on the stream).
 */
import { BufferReader, BufferWriter, ShortBufferError, toSafeNumber } from '../util/index.js';

export class XdrError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'XdrError';
  }
}

export interface Codec<T> {
  /** A short type name for error messages ("string<4194304>", "remote_nonnull_domain"). */
  readonly name: string;
  encode(w: BufferWriter, value: T): void;
  decode(r: BufferReader): T;
}

export type CodecType<C> = C extends Codec<infer T> ? T : never;

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

const INT32_MIN = -0x80000000;
const INT32_MAX = 0x7fffffff;
const UINT32_MAX = 0xffffffff;

function checkInt(name: string, v: number, min: number, max: number): void {
  if (!Number.isInteger(v) || v < min || v > max) throw new XdrError(`${name}: value ${v} out of range`);
}

export const xdrInt: Codec<number> = {
  name: 'int',
  encode(w, v) {
    checkInt('int', v, INT32_MIN, INT32_MAX);
    w.i32(v);
  },
  decode: (r) => r.i32(),
};

export const xdrUint: Codec<number> = {
  name: 'unsigned int',
  encode(w, v) {
    checkInt('unsigned int', v, 0, UINT32_MAX);
    w.u32(v);
  },
  decode: (r) => r.u32(),
};

/** `hyper` as a JS number (safe-integer checked when decoding). */
export const xdrHyper: Codec<number> = {
  name: 'hyper',
  encode(w, v) {
    if (!Number.isSafeInteger(v)) throw new XdrError(`hyper: value ${v} is not a safe integer`);
    w.i64(v);
  },
  decode: (r) => toSafeNumber(r.i64big()),
};

/** `unsigned hyper` as a JS number (safe-integer checked when decoding). */
export const xdrUhyper: Codec<number> = {
  name: 'unsigned hyper',
  encode(w, v) {
    if (!Number.isSafeInteger(v) || v < 0) throw new XdrError(`unsigned hyper: value ${v} out of range`);
    w.u64(v);
  },
  decode: (r) => toSafeNumber(r.u64big()),
};

/** `unsigned hyper` kept as bigint (values that may exceed 2^53, such as counters). */
export const xdrUhyperBig: Codec<bigint> = {
  name: 'unsigned hyper',
  encode: (w, v) => void w.u64(v),
  decode: (r) => r.u64big(),
};

export const xdrHyperBig: Codec<bigint> = {
  name: 'hyper',
  encode: (w, v) => void w.i64(v),
  decode: (r) => r.i64big(),
};

export const xdrBool: Codec<boolean> = {
  name: 'bool',
  encode: (w, v) => void w.u32(v ? 1 : 0),
  decode(r) {
    const v = r.u32();
    if (v > 1) throw new XdrError(`bool: invalid value ${v}`);
    return v === 1;
  },
};

export const xdrDouble: Codec<number> = {
  name: 'double',
  encode(w, v) {
    const b = Buffer.allocUnsafe(8);
    b.writeDoubleBE(v, 0);
    w.bytes(b);
  },
  decode: (r) => r.bytes(8).readDoubleBE(0),
};

export const xdrVoid: Codec<void> = {
  name: 'void',
  encode() {},
  decode() {},
};

/** `string<max>`: u32 length, UTF-8 bytes, zero padding to 4. */
export function xdrString(max = 0xffffffff): Codec<string> {
  return {
    name: `string<${max}>`,
    encode(w, v) {
      const b = Buffer.from(v, 'utf8');
      if (b.length > max) throw new XdrError(`string of ${b.length} bytes exceeds the limit ${max}`);
      w.u32(b.length).bytes(b).zeros(pad4(b.length));
    },
    decode(r) {
      const n = r.u32();
      if (n > max) throw new XdrError(`string of ${n} bytes exceeds the limit ${max}`);
      const s = r.bytes(n).toString('utf8');
      r.skip(pad4(n));
      return s;
    },
  };
}

/** `opaque name[n]`: exactly n bytes plus padding, no length. */
export function xdrFixedOpaque(n: number): Codec<Buffer> {
  return {
    name: `opaque[${n}]`,
    encode(w, v) {
      if (v.length !== n) throw new XdrError(`opaque[${n}]: got ${v.length} bytes`);
      w.bytes(v).zeros(pad4(n));
    },
    decode(r) {
      const b = Buffer.from(r.bytes(n));
      r.skip(pad4(n));
      return b;
    },
  };
}

/** `opaque name<max>`: u32 length, bytes, padding. */
export function xdrOpaque(max = 0xffffffff): Codec<Buffer> {
  return {
    name: `opaque<${max}>`,
    encode(w, v) {
      if (v.length > max) throw new XdrError(`opaque of ${v.length} bytes exceeds the limit ${max}`);
      w.u32(v.length).bytes(v).zeros(pad4(v.length));
    },
    decode(r) {
      const n = r.u32();
      if (n > max) throw new XdrError(`opaque of ${n} bytes exceeds the limit ${max}`);
      const b = Buffer.from(r.bytes(n));
      r.skip(pad4(n));
      return b;
    },
  };
}

/** `T name<max>`: u32 count, then the items. */
export function xdrArray<T>(item: Codec<T>, max = 0xffffffff): Codec<T[]> {
  return {
    name: `${item.name}<${max}>`,
    encode(w, v) {
      if (v.length > max) throw new XdrError(`array of ${v.length} items exceeds the limit ${max}`);
      w.u32(v.length);
      for (const x of v) item.encode(w, x);
    },
    decode(r) {
      const n = r.u32();
      if (n > max) throw new XdrError(`array of ${n} items exceeds the limit ${max}`);
      // Each item takes at least 4 bytes: refuse counts the buffer cannot hold before allocating.
      if (n * 4 > r.remaining) throw new XdrError(`array of ${n} items does not fit in ${r.remaining} bytes`);
      const out: T[] = [];
      for (let i = 0; i < n; i++) out.push(item.decode(r));
      return out;
    },
  };
}

/** Optional data `T *name`: u32 0 (null), or u32 1 followed by T. */
export function xdrOptional<T>(item: Codec<T>): Codec<T | null> {
  return {
    name: `${item.name}*`,
    encode(w, v) {
      if (v === null || v === undefined) {
        w.u32(0);
      } else {
        w.u32(1);
        item.encode(w, v);
      }
    },
    decode(r) {
      const present = r.u32();
      if (present === 0) return null;
      if (present !== 1) throw new XdrError(`optional ${item.name}: invalid marker ${present}`);
      return item.decode(r);
    },
  };
}

type FieldCodecs<T> = { [K in keyof T]: Codec<T[K]> };

/**
 * A struct: fields in wire order. Object key order is the wire order, so write the descriptor in
 * the same order as the `.x` file.
 */
export function xdrStruct<T extends object>(name: string, fields: FieldCodecs<T>): Codec<T> {
  const entries = Object.entries(fields) as Array<[keyof T & string, Codec<unknown>]>;
  return {
    name,
    encode(w, v) {
      for (const [key, codec] of entries) codec.encode(w, v[key]);
    },
    decode(r) {
      const out: Record<string, unknown> = {};
      for (const [key, codec] of entries) out[key] = codec.decode(r);
      return out as T;
    },
  };
}

/** Maps a codec's value type (for example a 16-byte uuid to its text form). */
export function xdrMap<A, B>(inner: Codec<A>, name: string, to: (a: A) => B, from: (b: B) => A): Codec<B> {
  return {
    name,
    encode: (w, v) => inner.encode(w, from(v)),
    decode: (r) => to(inner.decode(r)),
  };
}

/** Encodes one value into a fresh buffer. */
export function xdrEncode<T>(codec: Codec<T>, value: T): Buffer {
  const w = new BufferWriter(64);
  codec.encode(w, value);
  return w.toBuffer();
}

/** Decodes a whole buffer; trailing bytes are an error (the peer and we disagree on the type). */
export function xdrDecode<T>(codec: Codec<T>, buf: Buffer): T {
  const r = new BufferReader(buf);
  let v: T;
  try {
    v = codec.decode(r);
  } catch (err) {
    if (err instanceof ShortBufferError) throw new XdrError(`${codec.name}: truncated (${err.message})`);
    if (err instanceof RangeError) throw new XdrError(`${codec.name}: ${err.message}`);
    throw err;
  }
  if (r.remaining !== 0) throw new XdrError(`${codec.name}: ${r.remaining} trailing bytes`);
  return v;
}
