/**
 * The client against scripted servers: the corners real servers do not show on demand (no GO,
 * broken framing, short block status replies, a server that dies mid-request).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BASE_ALLOCATION,
  NBD_CMD,
  NBD_FLAG,
  NBD_FLAG_T,
  NBD_OPT,
  NBD_REP,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE,
  NbdClient,
  NbdClosedError,
  NbdProtocolError,
  walkExtents,
  type MergedExtent,
} from '../../src/nbd/index.js';
import {
  decodeRequestHeader,
  encodeChunkHeader,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoExport,
  encodeOptionReply,
  encodeRepMetaContext,
  encodeSimpleReply,
  encodeU32,
} from '../../src/nbd/wire.js';
import { makeTmpDir } from '../helpers/tmp.js';
import { fakeServer, type Wire } from './scripted-peer.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;

/** Reads the client flags and options until `stop` returns true for one; returns that option's data. */
async function options(
  w: Wire,
  answer: (opt: number, data: Buffer) => boolean,
): Promise<{ opt: number; data: Buffer }> {
  await w.read(4);
  for (;;) {
    const h = await w.read(16);
    const opt = h.readUInt32BE(8);
    const len = h.readUInt32BE(12);
    const data = len ? await w.read(len) : Buffer.alloc(0);
    if (answer(opt, data)) return { opt, data };
  }
}

function pattern(offset: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (offset + i) % 251;
  return b;
}

describe('NBD client against scripted servers', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => ({ dir, cleanup } = await makeTmpDir('vmvault-nbdfake-')));
  afterAll(async () => cleanup());

  it('falls back to EXPORT_NAME (with the 124 zero bytes) and simple replies when the server knows neither GO nor structured replies', async () => {
    const srv = await fakeServer(dir, async (w) => {
      w.write(encodeGreeting(NBD_FLAG.NBD_FLAG_FIXED_NEWSTYLE)); // no NO_ZEROES
      const { data } = await options(w, (opt) => {
        if (opt === NBD_OPT.NBD_OPT_EXPORT_NAME) return true;
        w.write(encodeOptionReply(opt, NBD_REP.NBD_REP_ERR_UNSUP));
        return false;
      });
      expect(data.toString()).toBe('old');
      w.write(
        encodeExportNameReply(SIZE, NBD_FLAG_T.NBD_FLAG_HAS_FLAGS | NBD_FLAG_T.NBD_FLAG_READ_ONLY, false),
      );
      for (;;) {
        const r = decodeRequestHeader(await w.read(28));
        if (r.type === NBD_CMD.NBD_CMD_DISC) return;
        w.write(encodeSimpleReply(r.cookie, 0), pattern(Number(r.offset), r.length));
      }
    });
    try {
      const c = await NbdClient.connect({
        socketPath: srv.socket,
        exportName: 'old',
        metaContexts: [BASE_ALLOCATION],
        requireMetaContexts: false,
      });
      expect(c.usedExportName).toBe(true);
      expect(c.structuredReplies).toBe(false);
      expect(c.sizeBytes).toBe(SIZE);
      expect(c.isReadOnly).toBe(true);
      expect((await c.read(12345, 3 * MiB)).equals(pattern(12345, 3 * MiB))).toBe(true);
      // No block status: everything is data.
      const ext: MergedExtent[] = [];
      for await (const e of walkExtents(c, 0, SIZE)) ext.push(e);
      expect(ext).toEqual([{ offset: 0, length: SIZE, isHole: false, isZero: false, isDirty: true }]);
      await c.close();
    } finally {
      await srv.close();
    }
  });

  it('re-asks when block status covers less than asked, clamps extents running past, intersects contexts', async () => {
    const DIRTY = 'qemu:dirty-bitmap:b';
    const srv = await fakeServer(dir, async (w) => {
      w.write(encodeGreeting(NBD_FLAG.NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG.NBD_FLAG_NO_ZEROES));
      await options(w, (opt) => {
        if (opt === NBD_OPT.NBD_OPT_SET_META_CONTEXT) {
          w.write(
            encodeOptionReply(opt, NBD_REP.NBD_REP_META_CONTEXT, encodeRepMetaContext(7, BASE_ALLOCATION)),
          );
          w.write(encodeOptionReply(opt, NBD_REP.NBD_REP_META_CONTEXT, encodeRepMetaContext(9, DIRTY)));
        } else if (opt === NBD_OPT.NBD_OPT_GO) {
          w.write(encodeOptionReply(opt, NBD_REP.NBD_REP_INFO, encodeInfoExport(SIZE, 1)));
        }
        w.write(encodeOptionReply(opt, NBD_REP.NBD_REP_ACK));
        return opt === NBD_OPT.NBD_OPT_GO;
      });
      for (;;) {
        const r = decodeRequestHeader(await w.read(28));
        if (r.type === NBD_CMD.NBD_CMD_DISC) return;
        const off = Number(r.offset);
        // base: 1 MiB of data, then a 5 MiB hole that runs past any request (and the export end
        // at the tail is clamped); dirty: 3 MiB clean then 5 MiB dirty, answering for 8 MiB only.
        const ext = (id: number, list: Array<[number, number]>): Buffer => {
          const body = Buffer.concat([
            encodeU32(id),
            ...list.flatMap(([l, f]) => [encodeU32(l), encodeU32(f)]),
          ]);
          return Buffer.concat([
            encodeChunkHeader(
              r.cookie,
              id === 9 ? NBD_REPLY_FLAG_DONE : 0,
              NBD_REPLY_TYPE.NBD_REPLY_TYPE_BLOCK_STATUS,
              body.length,
            ),
            body,
          ]);
        };
        const left = SIZE - off;
        w.write(
          ext(7, [
            [MiB, 0],
            [Math.min(5 * MiB, left + MiB), 3],
          ]),
          ext(9, [
            [3 * MiB, 0],
            [5 * MiB, 1],
          ]),
        );
      }
    });
    try {
      const c = await NbdClient.connect({ socketPath: srv.socket, metaContexts: [BASE_ALLOCATION, DIRTY] });
      const one = await c.blockStatus(0, 2 * MiB);
      expect(one.get(BASE_ALLOCATION)).toEqual([
        { offset: 0, length: MiB, flags: 0 },
        { offset: MiB, length: MiB, flags: 3 },
      ]);
      expect(one.get(DIRTY)).toEqual([{ offset: 0, length: 2 * MiB, flags: 0 }]);
      const ext: MergedExtent[] = [];
      for await (const e of walkExtents(c, 0, 12 * MiB, DIRTY)) ext.push(e);
      // Rounds: [0,6M) (base covers 6M, dirty 8M) then from 6M: [6M,12M).
      expect(ext.map((e) => [e.offset / MiB, e.length / MiB, e.isZero, e.isDirty])).toEqual([
        [0, 1, false, false],
        [1, 2, true, false],
        [3, 3, true, true],
        [6, 1, false, false],
        [7, 2, true, false],
        [9, 3, true, true],
      ]);
      await c.close();
    } finally {
      await srv.close();
    }
  });

  it('a framing error kills the connection and rejects every pending request with it', async () => {
    const srv = await fakeServer(dir, async (w) => {
      w.write(encodeGreeting(NBD_FLAG.NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG.NBD_FLAG_NO_ZEROES));
      await options(w, (opt) => {
        if (opt === NBD_OPT.NBD_OPT_GO)
          w.write(encodeOptionReply(opt, NBD_REP.NBD_REP_INFO, encodeInfoExport(SIZE, 1)));
        w.write(
          encodeOptionReply(
            opt,
            opt === NBD_OPT.NBD_OPT_STRUCTURED_REPLY ? NBD_REP.NBD_REP_ERR_UNSUP : NBD_REP.NBD_REP_ACK,
          ),
        );
        return opt === NBD_OPT.NBD_OPT_GO;
      });
      // Wait for four requests, answer the first properly, then send garbage.
      const reqs = [];
      for (let i = 0; i < 4; i++) reqs.push(decodeRequestHeader(await w.read(28)));
      w.write(encodeSimpleReply(reqs[0]!.cookie, 0), Buffer.alloc(reqs[0]!.length, 1));
      w.write(Buffer.from('garbage garbage garbage'));
      await w.closedByPeer();
    });
    try {
      const c = await NbdClient.connect({ socketPath: srv.socket });
      const reads = [0, 1, 2, 3].map((i) => c.read(i * 4096, 4096));
      await expect(reads[0]).resolves.toEqual(Buffer.alloc(4096, 1));
      for (const r of reads.slice(1)) await expect(r).rejects.toThrow(NbdProtocolError);
      await expect(c.read(0, 512)).rejects.toThrow(NbdProtocolError);
      await c.close();
    } finally {
      await srv.close();
    }
  });

  it('a server that dies mid-request fails the pending requests with NbdClosedError', async () => {
    const srv = await fakeServer(dir, async (w) => {
      w.write(encodeGreeting(NBD_FLAG.NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG.NBD_FLAG_NO_ZEROES));
      await options(w, (opt) => {
        if (opt === NBD_OPT.NBD_OPT_GO)
          w.write(encodeOptionReply(opt, NBD_REP.NBD_REP_INFO, encodeInfoExport(SIZE, 1)));
        w.write(encodeOptionReply(opt, NBD_REP.NBD_REP_ACK));
        return opt === NBD_OPT.NBD_OPT_GO;
      });
      const r = decodeRequestHeader(await w.read(28));
      // Half a data chunk, then the connection drops.
      w.write(
        encodeChunkHeader(
          r.cookie,
          NBD_REPLY_FLAG_DONE,
          NBD_REPLY_TYPE.NBD_REPLY_TYPE_OFFSET_DATA,
          8 + r.length,
        ),
      );
      w.socket.destroy();
    });
    try {
      const c = await NbdClient.connect({ socketPath: srv.socket });
      await expect(c.read(0, 65536)).rejects.toThrow(NbdClosedError);
      await expect(c.read(0, 512)).rejects.toThrow(NbdClosedError);
    } finally {
      await srv.close();
    }
  });

  it('refuses an oldstyle server and a handshake that never finishes (timeout)', async () => {
    const old = await fakeServer(
      dir,
      async (w) => {
        const b = Buffer.alloc(152);
        b.write('NBDMAGIC', 0);
        b.writeBigUInt64BE(0x00420281861253n, 8);
        w.write(b);
        await w.closedByPeer();
      },
      'old',
    );
    const mute = await fakeServer(dir, async (w) => w.closedByPeer(), 'mute');
    try {
      await expect(NbdClient.connect({ socketPath: old.socket })).rejects.toThrow(/newstyle/);
      await expect(NbdClient.connect({ socketPath: mute.socket, timeoutMs: 100 })).rejects.toThrow(
        /not finished/,
      );
    } finally {
      await old.close();
      await mute.close();
    }
  });
});
