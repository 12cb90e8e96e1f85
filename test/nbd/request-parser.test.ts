import { describe, expect, it } from 'vitest';
import { NBD_CMD, NBD_ERRNO, NbdProtocolError } from '../../src/nbd/index.js';
import { RequestParser } from '../../src/nbd/server/request-parser.js';
import {
  sanitizeExtents,
  validateRequest,
  type ValidationContext,
} from '../../src/nbd/server/transmission.js';
import { encodeRequest, type RequestHeader } from '../../src/nbd/wire.js';

function record(stream: Buffer, cuts: number[]): string[] {
  const events: string[] = [];
  const p = new RequestParser({
    acceptPayload: (h) => (h.cookie === 3n ? NBD_ERRNO.NBD_EPERM : 0),
    request: (h, payload, errno) =>
      events.push(
        `${h.type}:${h.cookie}:${h.offset}+${h.length}:${payload?.toString('hex') ?? '-'}:${errno}`,
      ),
  });
  let at = 0;
  for (const c of [...cuts, stream.length]) {
    p.push(stream.subarray(at, c));
    at = c;
  }
  expect(p.isIdle).toBe(true);
  return events;
}

describe('RequestParser', () => {
  const stream = Buffer.concat([
    encodeRequest(0, NBD_CMD.NBD_CMD_READ, 1n, 4096, 512),
    encodeRequest(1, NBD_CMD.NBD_CMD_WRITE, 2n, 0, 4),
    Buffer.from([1, 2, 3, 4]),
    encodeRequest(0, NBD_CMD.NBD_CMD_WRITE, 3n, 8, 6), // refused: its payload is skipped
    Buffer.from('ignore'),
    encodeRequest(0, NBD_CMD.NBD_CMD_WRITE, 4n, 0, 0),
    encodeRequest(0, NBD_CMD.NBD_CMD_DISC, 5n, 0, 0),
  ]);
  const expected = [
    '0:1:4096+512:-:0',
    '1:2:0+4:01020304:0',
    `1:3:8+6:-:${NBD_ERRNO.NBD_EPERM}`,
    '1:4:0+0::0',
    '2:5:0+0:-:0',
  ];

  it('parses requests with payloads and skips refused ones, split at every byte boundary', () => {
    expect(record(stream, [])).toEqual(expected);
    for (let cut = 1; cut < stream.length; cut++)
      expect(record(stream, [cut]), `cut ${cut}`).toEqual(expected);
    expect(
      record(
        stream,
        Array.from({ length: stream.length - 1 }, (_, i) => i + 1),
      ),
    ).toEqual(expected);
  });

  it('throws NbdProtocolError on a bad magic as soon as the magic is in', () => {
    const p = new RequestParser({ acceptPayload: () => 0, request: () => {} });
    expect(() => p.push(Buffer.from('GET '))).toThrow(NbdProtocolError);
  });
});

describe('validateRequest', () => {
  const ctx: ValidationContext = {
    sizeBytes: 1 << 20,
    writable: true,
    structured: true,
    baseAllocation: true,
    blockSize: { minimum: 512, preferred: 4096, maximum: 65536 },
  };
  const h = (type: number, offset: number | bigint, length: number, flags = 0): RequestHeader => ({
    type,
    flags,
    cookie: 1n,
    offset: BigInt(offset),
    length,
  });
  it.each([
    ['a good read', h(NBD_CMD.NBD_CMD_READ, 0, 4096), ctx, 0],
    ['an unknown command', h(42, 0, 0), ctx, NBD_ERRNO.NBD_EINVAL],
    ['an unknown flag', h(NBD_CMD.NBD_CMD_READ, 0, 512, 1 << 12), ctx, NBD_ERRNO.NBD_EINVAL],
    ['FUA on a read', h(NBD_CMD.NBD_CMD_READ, 0, 512, 1), ctx, NBD_ERRNO.NBD_EINVAL],
    [
      'DF without structured replies',
      h(NBD_CMD.NBD_CMD_READ, 0, 512, 4),
      { ...ctx, structured: false },
      NBD_ERRNO.NBD_EINVAL,
    ],
    ['a read past the end', h(NBD_CMD.NBD_CMD_READ, (1 << 20) - 512, 1024), ctx, NBD_ERRNO.NBD_EINVAL],
    ['a write past the end', h(NBD_CMD.NBD_CMD_WRITE, (1 << 20) - 512, 1024), ctx, NBD_ERRNO.NBD_ENOSPC],
    ['a misaligned read', h(NBD_CMD.NBD_CMD_READ, 100, 512), ctx, NBD_ERRNO.NBD_EINVAL],
    ['a read over the maximum', h(NBD_CMD.NBD_CMD_READ, 0, 131072), ctx, NBD_ERRNO.NBD_EOVERFLOW],
    ['a write over the maximum', h(NBD_CMD.NBD_CMD_WRITE, 0, 131072), ctx, NBD_ERRNO.NBD_EINVAL],
    ['a big WRITE_ZEROES (effect length)', h(NBD_CMD.NBD_CMD_WRITE_ZEROES, 0, 1 << 20), ctx, 0],
    [
      'a trim on a read-only export',
      h(NBD_CMD.NBD_CMD_TRIM, 0, 512),
      { ...ctx, writable: false },
      NBD_ERRNO.NBD_EPERM,
    ],
    [
      'block status without a context',
      h(NBD_CMD.NBD_CMD_BLOCK_STATUS, 0, 512),
      { ...ctx, baseAllocation: false },
      NBD_ERRNO.NBD_EINVAL,
    ],
    ['an offset near 2^64', h(NBD_CMD.NBD_CMD_READ, 0xfffffffffffffe00n, 512), ctx, NBD_ERRNO.NBD_EINVAL],
    ['a flush', h(NBD_CMD.NBD_CMD_FLUSH, 0, 0), ctx, 0],
  ])('%s', (_name, req, c, errno) => {
    expect(validateRequest(req, c)).toBe(errno);
  });
});

describe('sanitizeExtents', () => {
  it('keeps the contiguous prefix, clamps to the request, merges equal flags, never returns nothing', () => {
    expect(
      sanitizeExtents(
        [
          { offset: 0, length: 100, flags: 0 },
          { offset: 100, length: 100, flags: 0 },
          { offset: 200, length: 1000, flags: 3 },
        ],
        50,
        500,
      ),
    ).toEqual([
      { offset: 50, length: 150, flags: 0 },
      { offset: 200, length: 350, flags: 3 },
    ]);
    expect(sanitizeExtents([{ offset: 10, length: 5, flags: 3 }], 0, 100)).toEqual([
      { offset: 0, length: 100, flags: 0 },
    ]);
  });
});
