import { createHash } from 'node:crypto';
import { connect } from 'node:net';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BASE_ALLOCATION,
  CowOverlay,
  FileExport,
  MemoryExport,
  NbdClient,
  NbdServer,
  walkExtents,
} from '../../src/nbd/index.js';
import { exec } from '../../src/util/index.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const run = requireTools(['nbdinfo', 'nbdcopy', 'qemu-img', 'qemu-io']);
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

function image(): Buffer {
  const b = Buffer.alloc(32 * MiB);
  seededBytes(4 * MiB, 1).copy(b, 0);
  seededBytes(MiB, 2).copy(b, 20 * MiB);
  return b;
}

describe.runIf(run)('NBD server against real clients', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let server: NbdServer;
  let sock: string;
  let port: number;
  let data: Buffer;
  let overlayBase: Buffer;

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir('vmvault-nbdsrv-'));
    data = image();
    overlayBase = image();
    await writeFile(join(dir, 'file.raw'), data);
    const overlay = await CowOverlay.create(new MemoryExport('cow', overlayBase), dir);
    server = new NbdServer([
      new MemoryExport('mem', data, 'memory export'),
      await FileExport.open(join(dir, 'file.raw'), 'file'),
      overlay,
    ]);
    sock = join(dir, 'srv.sock');
    await server.listenUnix(sock);
    port = await server.listenTcp('127.0.0.1', 0);
  });
  afterAll(async () => {
    await server.close();
    await cleanup();
  });

  it('nbdinfo lists the exports with descriptions and maps holes', async () => {
    const list = (await exec('nbdinfo', ['--list', `nbd+unix:///?socket=${sock}`])).stdout;
    expect(list).toMatch(/export="mem":\s+description: memory export/);
    expect(list).toMatch(/export="file"/);
    expect((await exec('nbdinfo', ['--size', `nbd+unix:///mem?socket=${sock}`])).stdout.trim()).toBe(
      String(32 * MiB),
    );
    const map = (await exec('nbdinfo', ['--map', `nbd+unix:///mem?socket=${sock}`])).stdout;
    expect(map).toMatch(/^\s*0\s+4194304\s+0\s+data/m);
    expect(map).toMatch(/4194304\s+16777216\s+3\s+hole,zero/);
  });

  it('nbdcopy and qemu-img read it byte for byte, over unix sockets and TCP', async () => {
    await exec('nbdcopy', [`nbd+unix:///mem?socket=${sock}`, join(dir, 'copy.raw')]);
    expect(sha(await readFile(join(dir, 'copy.raw')))).toBe(sha(data));
    const cmp = await exec('qemu-img', [
      'compare',
      '-f',
      'raw',
      '-F',
      'raw',
      `nbd://127.0.0.1:${port}/file`,
      join(dir, 'file.raw'),
    ]);
    expect(cmp.stdout).toMatch(/Images are identical/);
    const info = await exec('qemu-img', ['info', `nbd+unix:///mem?socket=${sock}`]);
    expect(info.stdout).toMatch(/virtual size: 32 MiB/);
    const conv = join(dir, 'conv.qcow2');
    await exec('qemu-img', ['convert', '-O', 'qcow2', `nbd+unix:///mem?socket=${sock}`, conv]);
    expect((await exec('qemu-img', ['compare', '-F', 'raw', conv, join(dir, 'file.raw')])).stdout).toMatch(
      /identical/,
    );
  });

  it('our own client: reads, block status, many clients at once', async () => {
    const clients = await Promise.all(
      Array.from({ length: 6 }, () =>
        NbdClient.connect({ socketPath: sock, exportName: 'mem', metaContexts: [BASE_ALLOCATION] }),
      ),
    );
    const reads = await Promise.all(clients.map((c, i) => c.read(i * MiB, 3 * MiB)));
    reads.forEach((r, i) =>
      expect(
        r.findIndex((b, k) => b !== data[i * MiB + k]),
        `client ${i}`,
      ).toBe(-1),
    );
    const ext: Array<{ offset: number; isZero: boolean }> = [];
    for await (const e of walkExtents(clients[0]!, 0, clients[0]!.sizeBytes)) ext.push(e);
    expect(ext.filter((e) => !e.isZero).map((e) => e.offset)).toEqual([0, 20 * MiB]);
    expect(clients[0]!.isReadOnly).toBe(false); // MemoryExport takes writes
    await Promise.all(clients.map((c) => c.close()));
  });

  it('writable overlay: qemu-io writes are visible through the export, the base is unchanged', async () => {
    const before = sha(overlayBase);
    await exec('qemu-io', [
      '-f',
      'raw',
      '-c',
      'write -P 0xab 1M 64k',
      '-c',
      'write -P 0xcd 10000 3000',
      `nbd+unix:///cow?socket=${sock}`,
    ]);
    const r = await exec('qemu-io', [
      '-f',
      'raw',
      '-c',
      'read -P 0xab 1M 64k',
      '-c',
      'read -P 0xcd 10000 3000',
      `nbd+unix:///cow?socket=${sock}`,
    ]);
    expect(r.stdout).not.toMatch(/Pattern verification failed/);
    const c = await NbdClient.connect({ socketPath: sock, exportName: 'cow' });
    const around = await c.read(8192, 8192); // partial-block write kept its neighbours
    expect(around.subarray(0, 10000 - 8192).equals(overlayBase.subarray(8192, 10000))).toBe(true);
    await c.close();
    expect(sha(overlayBase)).toBe(before);
  });

  describe('malformed input never takes the server down', () => {
    /** Sends raw bytes after an optional handshake, returns what came back before the close. */
    async function raw(send: (s: import('node:net').Socket) => void, waitMs = 300): Promise<Buffer> {
      return new Promise((resolve) => {
        const s = connect(sock);
        const got: Buffer[] = [];
        s.on('data', (d: Buffer) => got.push(d));
        s.on('close', () => resolve(Buffer.concat(got)));
        s.on('error', () => {});
        s.once('data', () => send(s));
        setTimeout(() => s.destroy(), waitMs);
      });
    }
    const stillWorks = async (): Promise<void> => {
      const c = await NbdClient.connect({ socketPath: sock, exportName: 'mem' });
      expect((await c.read(0, 16)).equals(data.subarray(0, 16))).toBe(true);
      await c.close();
    };

    it('bad client flags, bad option magic, huge option length, unknown option', async () => {
      await raw((s) => s.write(Buffer.from([0, 0, 0, 0xff])));
      await raw((s) => {
        s.write(Buffer.from([0, 0, 0, 3]));
        s.write(Buffer.alloc(16, 0x41));
      });
      const big = Buffer.alloc(16);
      big.writeBigUInt64BE(0x49484156454f5054n, 0);
      big.writeUInt32BE(7, 8);
      big.writeUInt32BE(0xfffffff0, 12);
      await raw((s) => {
        s.write(Buffer.from([0, 0, 0, 3]));
        s.write(big);
        s.write(Buffer.alloc(1024));
      });
      const unknown = Buffer.alloc(16);
      unknown.writeBigUInt64BE(0x49484156454f5054n, 0);
      unknown.writeUInt32BE(999, 8);
      const reply = await raw((s) => {
        s.write(Buffer.from([0, 0, 0, 3]));
        s.write(unknown);
      });
      expect(reply.length).toBeGreaterThanOrEqual(18 + 20);
      expect(reply.readUInt32BE(18 + 12)).toBe(2 ** 31 + 1); // NBD_REP_ERR_UNSUP
      await stillWorks();
    });

    it('requests out of range, too large, unknown; a refused write keeps the stream in sync; abrupt close', async () => {
      // A hand-made session: EXPORT_NAME for the read-only 'file' export, simple replies.
      const replies = await new Promise<Buffer>((resolve) => {
        const s = connect(sock);
        const got: Buffer[] = [];
        let stage = 0;
        const req = (type: number, offset: bigint, length: number, cookie: bigint): Buffer => {
          const h = Buffer.alloc(28);
          h.writeUInt32BE(0x25609513, 0);
          h.writeUInt16BE(type, 6);
          h.writeBigUInt64BE(cookie, 8);
          h.writeBigUInt64BE(offset, 16);
          h.writeUInt32BE(length, 24);
          return h;
        };
        s.on('data', (d: Buffer) => {
          got.push(d);
          const all = Buffer.concat(got);
          if (stage === 0 && all.length >= 18) {
            stage = 1;
            got.length = 0;
            const opt = Buffer.alloc(16);
            opt.writeBigUInt64BE(0x49484156454f5054n, 0);
            opt.writeUInt32BE(1, 8); // NBD_OPT_EXPORT_NAME
            opt.writeUInt32BE(4, 12);
            s.write(Buffer.concat([Buffer.from([0, 0, 0, 3]), opt, Buffer.from('file')]));
          } else if (stage === 1 && all.length >= 10) {
            stage = 2;
            got.length = 0;
            // A refused write (its payload must be skipped), an unknown command, a read past the
            // end, a read far too large, then a valid read.
            s.write(
              Buffer.concat([
                req(1, 0n, 4096, 1n),
                Buffer.alloc(4096, 7),
                req(99, 0n, 0, 2n),
                req(0, BigInt(31 * MiB), 2 * MiB, 3n),
                req(0, 0n, 64 * MiB, 4n),
                req(0, 0n, 16, 5n),
              ]),
            );
          } else if (stage === 2 && all.length >= 5 * 16 + 16) {
            s.destroy();
            resolve(all);
          }
        });
        s.on('error', () => {});
        setTimeout(() => {
          s.destroy();
          resolve(Buffer.concat(got));
        }, 3000);
      });
      const errs = new Map<bigint, number>();
      for (let at = 0; at + 16 <= replies.length;) {
        const cookie = replies.readBigUInt64BE(at + 8);
        errs.set(cookie, replies.readUInt32BE(at + 4));
        at += 16 + (cookie === 5n && replies.readUInt32BE(at + 4) === 0 ? 16 : 0);
      }
      expect(errs.get(1n)).toBe(1); // EPERM: read-only export
      expect(errs.get(2n)).toBe(22); // EINVAL: unknown command
      expect(errs.get(3n)).toBe(22); // EINVAL: past the end
      expect(errs.get(4n)).toBe(22); // too large (EINVAL without structured replies)
      expect(errs.get(5n)).toBe(0);
      await raw((sock2) => {
        sock2.write(Buffer.from([0, 0, 0, 3]));
        sock2.destroy(); // abrupt close mid-handshake
      });
      await stillWorks();
    });
  });
});
