import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BASE_ALLOCATION,
  CowOverlay,
  FileExport,
  MemoryExport,
  NbdClient,
  NbdServer,
  formatNbdUri,
  walkExtents,
  type MergedExtent,
} from '../../src/nbd/index.js';
import { exec } from '../../src/util/index.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const run = requireTools(['nbdinfo', 'nbdcopy', 'nbdsh', 'qemu-img', 'qemu-io']);
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** 32 MiB: data at 0-4M and 20-21M, zeros elsewhere. */
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
  let fileData: Buffer;
  let basePath: string;
  let overlay: CowOverlay;
  const uri = (name: string): string => formatNbdUri({ tls: false, socketPath: sock, exportName: name });

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir('vmvault-nbdsrv-'));
    data = image();
    fileData = Buffer.concat([seededBytes(24 * MiB, 9), Buffer.alloc(8 * MiB - 4096), seededBytes(4096, 10)]);
    await writeFile(join(dir, 'file.raw'), fileData);
    basePath = join(dir, 'base.raw');
    await writeFile(basePath, image());
    await mkdir(join(dir, 'ovl'));
    overlay = await CowOverlay.create(
      await FileExport.open(basePath, 'cow', { description: 'overlay' }),
      join(dir, 'ovl'),
    );
    server = new NbdServer([
      new MemoryExport('mem', data, 'memory export'),
      await FileExport.open(join(dir, 'file.raw'), 'file', { description: 'a raw file' }),
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

  it('nbdinfo: lists exports with descriptions, sizes, flags and block sizes, maps holes', async () => {
    const list = (await exec('nbdinfo', ['--list', `nbd+unix:///?socket=${sock}`])).stdout;
    expect(list).toMatch(/export="mem":\s+description: memory export/);
    expect(list).toMatch(/export="file":\s+description: a raw file/);
    expect(list).toMatch(/export="cow"/);
    expect((await exec('nbdinfo', ['--size', uri('mem')])).stdout.trim()).toBe(String(32 * MiB));
    const info = JSON.parse((await exec('nbdinfo', ['--json', uri('file')])).stdout) as {
      exports: Array<Record<string, unknown>>;
    };
    expect(info.exports[0]).toMatchObject({
      'export-name': 'file',
      is_read_only: true,
      can_multi_conn: true,
      can_cache: true,
      block_size_minimum: 1,
      block_size_maximum: 32 * MiB,
    });
    const map = (await exec('nbdinfo', ['--map', uri('mem')])).stdout;
    expect(map).toMatch(/^\s*0\s+4194304\s+0\s+data/m);
    expect(map).toMatch(/4194304\s+16777216\s+3\s+hole,zero/);
  });

  it('nbdcopy and qemu-img read it byte for byte, over unix sockets and TCP, with several connections', async () => {
    await exec('nbdcopy', ['--connections=4', uri('file'), join(dir, 'copy.raw')]);
    expect(sha(await readFile(join(dir, 'copy.raw')))).toBe(sha(fileData));
    await exec('nbdcopy', [`nbd://127.0.0.1:${port}/mem`, join(dir, 'copy2.raw')]);
    expect(sha(await readFile(join(dir, 'copy2.raw')))).toBe(sha(data));
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
    expect((await exec('qemu-img', ['info', uri('mem')])).stdout).toMatch(/virtual size: 32 MiB/);
    const conv = join(dir, 'conv.qcow2');
    await exec('qemu-img', ['convert', '-O', 'qcow2', uri('mem'), conv]);
    expect((await exec('qemu-img', ['compare', '-F', 'raw', conv, join(dir, 'copy2.raw')])).stdout).toMatch(
      /identical/,
    );
    // The zero ranges travelled as holes: the qcow2 holds only the 5 MiB of data.
    const qinfo = JSON.parse((await exec('qemu-img', ['info', '--output=json', conv])).stdout) as {
      'actual-size': number;
    };
    expect(qinfo['actual-size']).toBeLessThan(8 * MiB);
  });

  it('a client without structured replies (libnbd) gets simple replies', async () => {
    const r = await exec(
      'nbdsh',
      [
        '-c',
        'h.set_request_structured_replies(False)',
        '-c',
        `h.connect_uri(${JSON.stringify(uri('mem'))})`,
        '-c',
        'import hashlib',
        '-c',
        'print(h.get_structured_replies_negotiated(), h.can_meta_context("base:allocation"))',
        '-c',
        `print(hashlib.sha256(b"".join(h.pread(4*1024*1024, o) for o in range(0, ${32 * MiB}, 4*1024*1024))).hexdigest())`,
      ],
      { env: { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` } },
    ); // nbdsh needs the system python3

    const [flags, digest] = r.stdout.trim().split('\n');
    expect(flags).toBe('False False');
    expect(digest).toBe(sha(data));
  });

  it('our own client: many connections and requests at once, block status, reads split', async () => {
    const clients = await Promise.all(
      Array.from({ length: 6 }, () =>
        NbdClient.connect({
          socketPath: sock,
          exportName: 'mem',
          metaContexts: [BASE_ALLOCATION],
          maxInFlight: 64,
        }),
      ),
    );
    const reads = await Promise.all(
      clients.flatMap((c, i) => Array.from({ length: 16 }, (_, k) => c.read(((i * 16 + k) % 31) * MiB, MiB))),
    );
    reads.forEach((r, j) => {
      const off = (j % 31) * MiB;
      expect(r.equals(data.subarray(off, off + MiB)), `read ${j}`).toBe(true);
    });
    const ext: MergedExtent[] = [];
    for await (const e of walkExtents(clients[0]!, 0, clients[0]!.sizeBytes)) ext.push(e);
    expect(ext.filter((e) => !e.isZero).map((e) => [e.offset, e.length])).toEqual([
      [0, 4 * MiB],
      [20 * MiB, MiB],
    ]);
    expect(clients[0]!.isReadOnly).toBe(false); // MemoryExport takes writes
    expect(clients[0]!.canMultiConn).toBe(false);
    await Promise.all(clients.map((c) => c.close()));
    const f = await NbdClient.connect({ socketPath: sock, exportName: 'file', structuredReplies: false });
    expect(sha(await f.read(0, f.sizeBytes))).toBe(sha(fileData));
    await f.close();
  });

  it('writable overlay: qemu-io writes, zeroes and discards are visible through the export; the base file is unchanged', async () => {
    const before = sha(await readFile(basePath));
    await exec('qemu-io', [
      '-f',
      'raw',
      '-c',
      'write -P 0xab 1M 64k',
      '-c',
      'write -P 0xcd 10000 3000',
      '-c',
      'write -z 2M 1M',
      '-c',
      'discard 20M 512k',
      '-c',
      'write -P 0xef 33550336 4096',
      uri('cow'),
    ]);
    const r = await exec('qemu-io', [
      '-f',
      'raw',
      '-c',
      'read -P 0xab 1M 64k',
      '-c',
      'read -P 0xcd 10000 3000',
      '-c',
      'read -P 0 2M 1M',
      '-c',
      'read -P 0xef 33550336 4096',
      uri('cow'),
    ]);
    expect(r.stdout).not.toMatch(/Pattern verification failed/);
    const expected = image();
    expected.fill(0xab, MiB, MiB + 64 * 1024);
    expected.fill(0xcd, 10000, 13000);
    expected.fill(0, 2 * MiB, 3 * MiB);
    expected.fill(0, 20 * MiB, 20 * MiB + 512 * 1024); // a discard of whole blocks reads as zeros here
    expected.fill(0xef, 33550336, 33550336 + 4096);
    await exec('nbdcopy', [uri('cow'), join(dir, 'cow.raw')]);
    expect(sha(await readFile(join(dir, 'cow.raw')))).toBe(sha(expected));
    // The map shows written data and zeroed ranges.
    const map = (await exec('nbdinfo', ['--map', uri('cow')])).stdout;
    expect(map).toMatch(/2097152\s+1048576\s+3\s+hole,zero/);
    expect(sha(await readFile(basePath))).toBe(before);
    expect(overlay.changedRanges().zeroed).toEqual([
      [2 * MiB, MiB],
      [20 * MiB, 512 * 1024],
    ]);
  });

  it('overlay: concurrent partial-block writes from several connections lose no bytes', async () => {
    const odir = join(dir, 'conc');
    await mkdir(odir);
    const base = seededBytes(MiB, 77);
    const expected = Buffer.from(base);
    const ov = await CowOverlay.create(new MemoryExport('c', Buffer.from(base)), odir);
    const srv = new NbdServer([ov]);
    const s = join(odir, 'c.sock');
    await srv.listenUnix(s);
    try {
      const clients = await Promise.all(
        [0, 1, 2].map(() => NbdClient.connect({ socketPath: s, exportName: 'c' })),
      );
      // 300 writes of 1000 bytes, neighbours sharing 4 KiB blocks, spread over three connections.
      await Promise.all(
        Array.from({ length: 300 }, (_, i) => {
          const chunk = Buffer.alloc(1000, (i % 250) + 1);
          chunk.copy(expected, i * 1000);
          return clients[i % 3]!.write(i * 1000, chunk);
        }),
      );
      await clients[0]!.writeZeroes(512 * 1024, 64 * 1024);
      expected.fill(0, 512 * 1024, 576 * 1024);
      expect(sha(await clients[1]!.read(0, MiB))).toBe(sha(expected));
      await Promise.all(clients.map((c) => c.close()));
    } finally {
      await srv.close();
    }
    expect(existsSync(ov.path)).toBe(false);
  });

  it('an overlay file is removed on close, or kept with a map of what changed', async () => {
    const odir = join(dir, 'keep');
    await mkdir(odir);
    const gone = await CowOverlay.create(new MemoryExport('a', Buffer.alloc(MiB)), odir);
    await gone.write(0, Buffer.alloc(4096, 1));
    await gone.close();
    expect(existsSync(gone.path)).toBe(false);
    const kept = await CowOverlay.create(new MemoryExport('b', Buffer.alloc(MiB)), odir, { keep: true });
    await kept.write(8192, Buffer.alloc(100, 1));
    await kept.close();
    expect(existsSync(kept.path)).toBe(true);
    expect(JSON.parse(await readFile(`${kept.path}.map`, 'utf8'))).toMatchObject({ written: [[8192, 4096]] });
  });
});
