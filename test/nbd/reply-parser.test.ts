import { describe, expect, it } from 'vitest';
import { ReplyParser } from '../../src/nbd/client/reply-parser.js';
import type { InFlightRequest, ReplyHandler } from '../../src/nbd/client/reply-parser.js';
import { NbdProtocolError } from '../../src/nbd/index.js';
import { encodeChunkHeader, encodeSimpleReply } from '../../src/nbd/wire.js';

/** Records what the parser reports, and reassembles READ data like the client does. */
class Recorder implements ReplyHandler {
  readonly events: string[] = [];
  readonly dest = new Map<bigint, Buffer>();
  constructor(readonly requests: Map<bigint, InFlightRequest>) {
    for (const [c, r] of requests) if (r.kind === 'read') this.dest.set(c, Buffer.alloc(r.length, 0xee));
  }
  lookup(cookie: bigint): InFlightRequest | undefined {
    return this.requests.get(cookie);
  }
  data(cookie: bigint, offset: number, bytes: Buffer): void {
    bytes.copy(this.dest.get(cookie)!, offset - this.requests.get(cookie)!.offset);
  }
  dataInPlace(): void {}
  hole(cookie: bigint, offset: number, length: number): void {
    const at = offset - this.requests.get(cookie)!.offset;
    this.dest.get(cookie)!.fill(0, at, at + length);
    this.events.push(`hole ${cookie} ${offset}+${length}`);
  }
  blockStatus(cookie: bigint, id: number, extents: Array<{ length: number; flags: number }>): void {
    this.events.push(`bs ${cookie} ctx${id} ${extents.map((e) => `${e.length}:${e.flags}`).join(',')}`);
  }
  error(cookie: bigint, errno: number, message: string, offset: number | undefined): void {
    this.events.push(`error ${cookie} ${errno} '${message}'${offset === undefined ? '' : ` @${offset}`}`);
  }
  done(cookie: bigint): void {
    this.events.push(`done ${cookie}`);
  }
}

const u64 = (n: number): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
};
const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};
const u16 = (n: number): Buffer => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
};
const DONE = 1;
const chunk = (cookie: bigint, flags: number, type: number, payload: Buffer): Buffer =>
  Buffer.concat([encodeChunkHeader(cookie, flags, type, payload.length), payload]);

const data = Buffer.from(Array.from({ length: 64 }, (_, i) => i + 1));
const requests = (): Map<bigint, InFlightRequest> =>
  new Map<bigint, InFlightRequest>([
    [1n, { kind: 'read', offset: 1000, length: 64 }],
    [2n, { kind: 'read', offset: 0, length: 16 }],
    [3n, { kind: 'block-status', offset: 0, length: 1 << 20 }],
    [4n, { kind: 'other', offset: 0, length: 0 }],
    [5n, { kind: 'read', offset: 0, length: 8 }],
  ]);

/** A stream exercising every reply form; chunks of different cookies interleave. */
const stream = Buffer.concat([
  // cookie 1: data for the second half, a hole in the first, then NONE
  chunk(1n, 0, 1, Buffer.concat([u64(1032), data.subarray(32)])),
  // cookie 2: a simple reply with 16 bytes of data
  encodeSimpleReply(2n, 0),
  data.subarray(0, 16),
  chunk(1n, 0, 2, Buffer.concat([u64(1000), u32(32)])),
  // cookie 3: two contexts, the second ends the reply
  chunk(3n, 0, 5, Buffer.concat([u32(1), u32(4096), u32(3), u32(8192), u32(0)])),
  chunk(3n, DONE, 5, Buffer.concat([u32(2), u32(1 << 20), u32(1)])),
  chunk(1n, DONE, 0, Buffer.alloc(0)),
  // cookie 4: an error chunk with a message; cookie 5: error with offset, then an unknown error type
  chunk(4n, DONE, 32769, Buffer.concat([u32(28), u16(5), Buffer.from('full!')])),
  chunk(5n, 0, 32770, Buffer.concat([u32(5), u16(2), Buffer.from('io'), u64(4)])),
  chunk(5n, DONE, 40000, Buffer.concat([u32(1), u16(0)])),
]);

const expected = [
  'hole 1 1000+32',
  'bs 3 ctx1 4096:3,8192:0',
  'bs 3 ctx2 1048576:1',
  'done 3',
  'done 1',
  "error 4 28 'full!'",
  'done 4',
  "error 5 5 'io' @4",
  "error 5 1 ''",
  'done 5',
];

describe('ReplyParser', () => {
  it('parses simple and structured replies, interleaved', () => {
    const r = new Recorder(requests());
    new ReplyParser(r).push(stream);
    expect(r.events.filter((e) => !e.startsWith('done 2'))).toEqual(expected);
    expect(r.events).toContain('done 2');
    expect(r.dest.get(1n)!.equals(Buffer.concat([Buffer.alloc(32), data.subarray(32)]))).toBe(true);
    expect(r.dest.get(2n)!.equals(data.subarray(0, 16))).toBe(true);
  });

  it('gives the same result for the stream split at every byte boundary, and byte by byte', () => {
    const whole = new Recorder(requests());
    new ReplyParser(whole).push(stream);
    for (let cut = 1; cut < stream.length; cut++) {
      const r = new Recorder(requests());
      const p = new ReplyParser(r);
      p.push(stream.subarray(0, cut));
      p.push(stream.subarray(cut));
      expect(r.events, `split at ${cut}`).toEqual(whole.events);
      expect(r.dest.get(1n)!.equals(whole.dest.get(1n)!)).toBe(true);
    }
    const r = new Recorder(requests());
    const p = new ReplyParser(r);
    for (let i = 0; i < stream.length; i++) p.push(stream.subarray(i, i + 1));
    expect(r.events).toEqual(whole.events);
    expect(p.isIdle).toBe(true);
  });

  it('names a data target while a READ payload arrives, and accepts it filled in place', () => {
    const r = new Recorder(requests());
    const p = new ReplyParser(r);
    const head = chunk(1n, DONE, 1, Buffer.concat([u64(1000), data]));
    p.push(head.subarray(0, 20 + 8 + 10));
    expect(p.dataTarget()).toEqual({ cookie: 1n, offset: 1010, length: 54 });
    p.consumedDirect(54);
    expect(r.events).toEqual(['done 1']);
    expect(p.dataTarget()).toBeUndefined();
  });

  const broken: Array<[string, Buffer]> = [
    ['a bad magic', Buffer.from('HTTP/1.1 400 Bad Request\r\n')],
    ['a cookie nobody waits for', encodeSimpleReply(99n, 0)],
    ['an unknown non-error chunk type', chunk(4n, DONE, 77, Buffer.alloc(0))],
    ['data outside the request', chunk(1n, DONE, 1, Buffer.concat([u64(999), data.subarray(0, 8)]))],
    ['data running past the request', chunk(1n, DONE, 1, Buffer.concat([u64(1060), data.subarray(0, 8)]))],
    ['a hole outside the request', chunk(1n, DONE, 2, Buffer.concat([u64(1064), u32(1)]))],
    [
      'data for a request that is not a READ',
      chunk(4n, DONE, 1, Buffer.concat([u64(0), data.subarray(0, 1)])),
    ],
    ['block status for a READ', chunk(1n, DONE, 5, Buffer.concat([u32(1), u32(1), u32(0)]))],
    ['a NONE chunk with a payload', chunk(4n, DONE, 0, Buffer.alloc(4))],
    ['a NONE chunk without DONE', chunk(4n, 0, 0, Buffer.alloc(0))],
    ['an error message longer than its chunk', chunk(4n, DONE, 32769, Buffer.concat([u32(5), u16(50)]))],
    ['a zero-length extent', chunk(3n, DONE, 5, Buffer.concat([u32(1), u32(0), u32(0)]))],
  ];
  it.each(broken)('throws NbdProtocolError on %s', (_name, bytes) => {
    const p = new ReplyParser(new Recorder(requests()));
    expect(() => p.push(bytes)).toThrow(NbdProtocolError);
  });
});
