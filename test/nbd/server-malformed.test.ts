/**
 * A bad client never crashes or hangs the server: scripted raw sockets send broken handshakes and
 * requests; each gets the spec's answer (an option error, an errno reply with a refused write's
 * payload skipped) or a closed connection, and other clients carry on.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BASE_ALLOCATION,
  IHAVEOPT,
  MemoryExport,
  NBD_CMD,
  NBD_CMD_FLAG,
  NBD_ERRNO,
  NBD_FLAG_C,
  NBD_INFO,
  NBD_OPT,
  NBD_REP,
  NBD_REPLY_TYPE,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  NbdClient,
  NbdServer,
  type NbdExport,
} from '../../src/nbd/index.js';
import {
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  encodeRequest,
  encodeU32,
  writeRequestHeader,
} from '../../src/nbd/wire.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { rawClient, type Wire } from './scripted-peer.js';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;

interface OptReply {
  opt: number;
  type: number;
  data: Buffer;
}

async function optReply(w: Wire): Promise<OptReply> {
  const h = await w.read(20);
  const len = h.readUInt32BE(16);
  return {
    opt: h.readUInt32BE(8),
    type: h.readUInt32BE(12),
    data: len ? await w.read(len) : Buffer.alloc(0),
  };
}

/** Replies to one option until its final one (ACK or an error). */
async function optFinal(w: Wire): Promise<OptReply[]> {
  const out: OptReply[] = [];
  for (;;) {
    const r = await optReply(w);
    out.push(r);
    if (r.type === NBD_REP.NBD_REP_ACK || r.type >= 2 ** 31) return out;
  }
}

async function greeted(path: string): Promise<Wire> {
  const w = await rawClient(path);
  await w.read(18);
  w.write(encodeU32(NBD_FLAG_C.NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C.NBD_FLAG_C_NO_ZEROES));
  return w;
}

/** A raw connection in transmission on export `name`. */
async function transmitting(path: string, name: string, structured: boolean, context = false): Promise<Wire> {
  const w = await greeted(path);
  if (structured) {
    w.write(encodeOption(NBD_OPT.NBD_OPT_STRUCTURED_REPLY));
    await optFinal(w);
  }
  if (context) {
    w.write(
      encodeOption(NBD_OPT.NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest(name, [BASE_ALLOCATION])),
    );
    await optFinal(w);
  }
  w.write(encodeOption(NBD_OPT.NBD_OPT_GO, encodeInfoRequest(name, [])));
  const go = await optFinal(w);
  expect(go[go.length - 1]!.type).toBe(NBD_REP.NBD_REP_ACK);
  return w;
}

interface Reply {
  cookie: bigint;
  errno: number;
  type?: number;
  message?: string;
}

/** One complete reply: a simple reply (with `dataLength` bytes on success) or one structured chunk. */
async function reply(w: Wire, dataLength = 0): Promise<Reply> {
  const magic = (await w.read(4)).readUInt32BE(0);
  if (magic === NBD_SIMPLE_REPLY_MAGIC) {
    const b = await w.read(12);
    const errno = b.readUInt32BE(0);
    if (errno === 0 && dataLength) await w.read(dataLength);
    return { cookie: b.readBigUInt64BE(4), errno };
  }
  expect(magic).toBe(NBD_STRUCTURED_REPLY_MAGIC);
  const b = await w.read(16);
  const type = b.readUInt16BE(2);
  const len = b.readUInt32BE(12);
  const payload = len ? await w.read(len) : Buffer.alloc(0);
  const isError = (type & 0x8000) !== 0;
  return {
    cookie: b.readBigUInt64BE(4),
    type,
    errno: isError ? payload.readUInt32BE(0) : 0,
    ...(isError ? { message: payload.subarray(6, 6 + payload.readUInt16BE(4)).toString() } : {}),
  };
}

describe('malformed input never takes the NBD server down', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let server: NbdServer;
  let sock: string;
  const content = seededBytes(SIZE, 5);
  const clientErrors: Error[] = [];

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir('vmvault-nbdbad-'));
    server = new NbdServer([new MemoryExport('rw', Buffer.from(content)), readOnly('ro', content)], {
      onClientError: (e) => clientErrors.push(e),
    });
    sock = join(dir, 'srv.sock');
    await server.listenUnix(sock);
  });
  afterAll(async () => {
    await server.close();
    await cleanup();
  });

  const stillWorks = async (): Promise<void> => {
    const c = await NbdClient.connect({
      socketPath: sock,
      exportName: 'ro',
      metaContexts: [BASE_ALLOCATION],
    });
    expect((await c.read(4096, 4096)).equals(content.subarray(4096, 8192))).toBe(true);
    await c.close();
  };

  it('bad client flags, a bad option magic, EXPORT_NAME of an unknown export: the connection is closed', async () => {
    const a = await rawClient(sock);
    await a.read(18);
    a.write(encodeU32(0xff));
    await a.closedByPeer();
    const b = await greeted(sock);
    b.write(Buffer.alloc(16, 0x41));
    await b.closedByPeer();
    const c = await greeted(sock);
    c.write(encodeOption(NBD_OPT.NBD_OPT_EXPORT_NAME, Buffer.from('nope')));
    await c.closedByPeer();
    expect(clientErrors.some((e) => /client flags/.test(e.message))).toBe(true);
    await stillWorks();
  });

  it('option errors keep the handshake going: too big, unknown, malformed, out of order, unknown export', async () => {
    const w = await greeted(sock);
    // An option claiming 1 MiB of data: read, discarded, refused; the stream stays in sync.
    const big = Buffer.alloc(16);
    big.writeBigUInt64BE(IHAVEOPT, 0);
    big.writeUInt32BE(NBD_OPT.NBD_OPT_GO, 8);
    big.writeUInt32BE(MiB, 12);
    w.write(big, Buffer.alloc(MiB, 0x55));
    expect((await optFinal(w))[0]!.type).toBe(NBD_REP.NBD_REP_ERR_TOO_BIG);
    w.write(encodeOption(999));
    expect((await optFinal(w))[0]!.type).toBe(NBD_REP.NBD_REP_ERR_UNSUP);
    w.write(encodeOption(NBD_OPT.NBD_OPT_STARTTLS));
    expect((await optFinal(w))[0]!.type).toBe(NBD_REP.NBD_REP_ERR_UNSUP);
    w.write(encodeOption(NBD_OPT.NBD_OPT_INFO, Buffer.from([0, 0, 0, 9, 1])));
    expect((await optFinal(w))[0]!.type).toBe(NBD_REP.NBD_REP_ERR_INVALID);
    w.write(encodeOption(NBD_OPT.NBD_OPT_LIST, Buffer.from('x')));
    expect((await optFinal(w))[0]!.type).toBe(NBD_REP.NBD_REP_ERR_INVALID);
    w.write(
      encodeOption(NBD_OPT.NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest('ro', [BASE_ALLOCATION])),
    );
    expect((await optFinal(w))[0]!.type).toBe(NBD_REP.NBD_REP_ERR_INVALID); // before STRUCTURED_REPLY
    w.write(encodeOption(NBD_OPT.NBD_OPT_GO, encodeInfoRequest('nope', [])));
    expect((await optFinal(w))[0]!.type).toBe(NBD_REP.NBD_REP_ERR_UNKNOWN);
    // Then a proper INFO with NAME and DESCRIPTION, and an ABORT.
    w.write(encodeOption(NBD_OPT.NBD_OPT_INFO, encodeInfoRequest('ro', [NBD_INFO.NBD_INFO_NAME])));
    const info = await optFinal(w);
    expect(info.map((r) => r.type)).toEqual([
      NBD_REP.NBD_REP_INFO,
      NBD_REP.NBD_REP_INFO,
      NBD_REP.NBD_REP_INFO,
      NBD_REP.NBD_REP_ACK,
    ]);
    expect(info[0]!.data.readBigUInt64BE(2)).toBe(BigInt(SIZE));
    w.write(encodeOption(NBD_OPT.NBD_OPT_ABORT));
    expect((await optFinal(w))[0]!.type).toBe(NBD_REP.NBD_REP_ACK);
    await w.closedByPeer();
    await stillWorks();
  });

  it('bad requests get the spec errno; a refused write payload is skipped and the stream stays in sync', async () => {
    const w = await transmitting(sock, 'ro', true);
    const req = (type: number, offset: bigint, length: number, cookie: bigint, flags = 0): Buffer => {
      const b = Buffer.alloc(28);
      writeRequestHeader(b, 0, flags, type, cookie, 0, length);
      b.writeBigUInt64BE(offset, 16);
      return b;
    };
    // A write to a read-only export whose 64 KiB payload looks like requests (it must be skipped).
    const fake = Buffer.concat(
      Array.from({ length: 2340 }, () => encodeRequest(0, NBD_CMD.NBD_CMD_READ, 7n, 0, 1)),
    );
    w.write(
      req(NBD_CMD.NBD_CMD_WRITE, 0n, fake.length, 1n),
      fake,
      req(99, 0n, 0, 2n),
      req(NBD_CMD.NBD_CMD_READ, BigInt(SIZE - 10), 20, 3n),
      req(NBD_CMD.NBD_CMD_READ, 0n, 64 * MiB, 4n),
      req(NBD_CMD.NBD_CMD_READ, 0n, 512, 5n, 1 << 9), // unknown flag
      req(NBD_CMD.NBD_CMD_BLOCK_STATUS, 0n, 4096, 6n), // no context selected
      req(NBD_CMD.NBD_CMD_READ, 0xfffffffffffff000n, 4096, 8n), // offset near 2^64
      req(NBD_CMD.NBD_CMD_TRIM, 0n, 4096, 9n),
      req(NBD_CMD.NBD_CMD_READ, 0n, 0, 10n), // zero length: fine
      req(NBD_CMD.NBD_CMD_CACHE, 0n, SIZE, 11n),
      req(NBD_CMD.NBD_CMD_READ, 4096n, 4096, 12n, NBD_CMD_FLAG.NBD_CMD_FLAG_DF),
    );
    const got = new Map<bigint, Reply>();
    for (let i = 0; i < 11; i++) {
      const r = await reply(w);
      if (r.type === NBD_REPLY_TYPE.NBD_REPLY_TYPE_OFFSET_DATA) continue; // cookie 12's data chunk
      got.set(r.cookie, r);
    }
    expect(got.get(1n)!.errno).toBe(NBD_ERRNO.NBD_EPERM);
    expect(got.get(2n)!.errno).toBe(NBD_ERRNO.NBD_EINVAL);
    expect(got.get(3n)!.errno).toBe(NBD_ERRNO.NBD_EINVAL);
    expect(got.get(4n)!.errno).toBe(NBD_ERRNO.NBD_EOVERFLOW);
    expect(got.get(5n)!.errno).toBe(NBD_ERRNO.NBD_EINVAL);
    expect(got.get(6n)!.errno).toBe(NBD_ERRNO.NBD_EINVAL);
    expect(got.get(8n)!.errno).toBe(NBD_ERRNO.NBD_EINVAL);
    expect(got.get(9n)!.errno).toBe(NBD_ERRNO.NBD_EPERM);
    expect(got.get(10n)!.errno).toBe(0);
    expect(got.get(11n)!.errno).toBe(0);
    expect(got.has(7n)).toBe(false); // the payload was never taken for requests
    // DISC: the server closes the connection.
    w.write(encodeRequest(0, NBD_CMD.NBD_CMD_DISC, 13n, 0, 0));
    await w.closedByPeer();
    await stillWorks();
  });

  it('simple replies: writes past the end, oversized reads and writes; a bad request magic closes the connection', async () => {
    const w = await transmitting(sock, 'rw', false);
    const past = encodeRequest(0, NBD_CMD.NBD_CMD_WRITE, 1n, SIZE - 100, 4096);
    const big = encodeRequest(0, NBD_CMD.NBD_CMD_WRITE, 2n, 0, 33 * MiB);
    w.write(past, Buffer.alloc(4096, 1), big, Buffer.alloc(33 * MiB, 2));
    w.write(encodeRequest(0, NBD_CMD.NBD_CMD_READ, 3n, 0, 33 * MiB));
    w.write(encodeRequest(0, NBD_CMD.NBD_CMD_WRITE_ZEROES, 4n, SIZE - 4096, 8192));
    w.write(encodeRequest(0, NBD_CMD.NBD_CMD_WRITE, 5n, 0, 4), Buffer.from('abcd'));
    w.write(encodeRequest(0, NBD_CMD.NBD_CMD_READ, 6n, 0, 4));
    const got = new Map<bigint, number>();
    for (let i = 0; i < 5; i++) {
      const r = await reply(w);
      got.set(r.cookie, r.errno);
    }
    const six = await reply(w, 4);
    expect([...got.entries()].sort((a, b) => Number(a[0] - b[0]))).toEqual([
      [1n, NBD_ERRNO.NBD_ENOSPC],
      [2n, NBD_ERRNO.NBD_EINVAL],
      [3n, NBD_ERRNO.NBD_EINVAL],
      [4n, NBD_ERRNO.NBD_ENOSPC],
      [5n, 0],
    ]);
    expect(six.errno).toBe(0);
    w.write(Buffer.from('GET / HTTP/1.1\r\n\r\n0123456789'));
    await w.closedByPeer();
    expect(clientErrors.some((e) => /bad request magic/.test(e.message))).toBe(true);
    await stillWorks();
  });

  it('clients that vanish mid-handshake, mid-request or mid-payload leave the server serving', async () => {
    const a = await rawClient(sock);
    a.socket.destroy();
    const b = await greeted(sock);
    b.write(encodeOption(NBD_OPT.NBD_OPT_GO).subarray(0, 10));
    b.socket.destroy();
    const c = await transmitting(sock, 'rw', true);
    c.write(encodeRequest(0, NBD_CMD.NBD_CMD_WRITE, 1n, 0, MiB), Buffer.alloc(1000));
    c.socket.destroy();
    const d = await transmitting(sock, 'ro', true);
    for (let i = 0; i < 64; i++) d.write(encodeRequest(0, NBD_CMD.NBD_CMD_READ, BigInt(i), 0, MiB));
    d.socket.destroy(); // replies pending, nobody reading them
    await stillWorks();
    // Many well-behaved clients at once, next to it all.
    await Promise.all(Array.from({ length: 8 }, stillWorks));
  });
});

/** A read-only export of `data` (no allocation information: everything is data). */
function readOnly(name: string, data: Buffer): NbdExport {
  return { name, sizeBytes: data.length, read: async (o, l) => Buffer.from(data.subarray(o, o + l)) };
}
