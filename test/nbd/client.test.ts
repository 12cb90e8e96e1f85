import { createHash } from 'node:crypto';
import { open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BASE_ALLOCATION,
  NbdClient,
  NbdOptionError,
  NbdRequestError,
  NbdTimeoutError,
  startQemuNbd,
  walkExtents,
  type MergedExtent,
} from '../../src/nbd/index.js';
import { exec } from '../../src/util/index.js';
import { makeTlsCerts, startNbdkit, startQsd, waitForPath } from '../helpers/nbd-peers.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const KiB = 1024;
const run = requireTools(['qemu-nbd', 'qemu-img', 'qemu-io', 'qemu-storage-daemon', 'nbdkit', 'certtool']);
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function collect(it: AsyncIterable<MergedExtent>): Promise<MergedExtent[]> {
  const out: MergedExtent[] = [];
  for await (const e of it) out.push(e);
  return out;
}

describe.runIf(run)('NBD client against real servers', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let raw: string;
  let content: Buffer;

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir('vmvault-nbd-'));
    raw = join(dir, 'disk.raw');
    // 48 MiB: random data at 0-8M, a hole, 1 MiB at 20M, zeros written at 30M, data at the end.
    const fh = await open(raw, 'w');
    await fh.truncate(48 * MiB);
    await fh.write(seededBytes(8 * MiB, 1), 0, 8 * MiB, 0);
    await fh.write(seededBytes(MiB, 2), 0, MiB, 20 * MiB);
    await fh.write(seededBytes(64 * KiB, 3), 0, 64 * KiB, 48 * MiB - 64 * KiB);
    await fh.close();
    content = await readFile(raw);
  });
  afterAll(async () => cleanup());

  it('reads a raw image from qemu-nbd byte for byte, and sees its holes', async () => {
    const exp = await startQemuNbd({ path: raw, format: 'raw', runtimeDir: dir });
    try {
      const c = await NbdClient.connect({ socketPath: exp.socketPath, metaContexts: [BASE_ALLOCATION] });
      expect(c.sizeBytes).toBe(48 * MiB);
      expect(c.isReadOnly).toBe(true);
      expect(c.structuredReplies).toBe(true);
      // Many requests in flight at once (more than the 16 the connection allows).
      const parts = await Promise.all(Array.from({ length: 48 }, (_, i) => c.read(i * MiB, MiB)));
      expect(sha(Buffer.concat(parts))).toBe(sha(content));
      const ext = await collect(walkExtents(c, 0, c.sizeBytes));
      const data = ext.filter((e) => !e.isZero);
      expect(data[0]).toMatchObject({ offset: 0, length: 8 * MiB });
      expect(data.some((e) => e.offset === 20 * MiB)).toBe(true);
      expect(ext.reduce((a, e) => a + e.length, 0)).toBe(48 * MiB);
      await expect(c.read(48 * MiB - 10, 20)).rejects.toThrow(/past the end/);
      await c.close();
    } finally {
      await exp.stop();
    }
  });

  it('reads qcow2 through qemu-nbd; unknown export names are refused clearly', async () => {
    const q = join(dir, 'disk.qcow2');
    await exec('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, q]);
    const exp = await startQemuNbd({ path: q, format: 'qcow2', runtimeDir: dir, exportName: 'disk' });
    try {
      expect(await NbdClient.list({ socketPath: exp.socketPath })).toEqual([
        { name: 'disk', description: '' },
      ]);
      const info = await NbdClient.info({ socketPath: exp.socketPath, exportName: 'disk' });
      expect(info.sizeBytes).toBe(48 * MiB);
      expect(info.blockSize.maximum).toBeGreaterThanOrEqual(512);
      const c = await NbdClient.connect({ socketPath: exp.socketPath, exportName: 'disk' });
      expect(sha(await c.read(0, c.sizeBytes))).toBe(sha(content));
      await c.close();
      await expect(NbdClient.connect({ socketPath: exp.socketPath, exportName: 'nope' })).rejects.toThrow(
        NbdOptionError,
      );
      await expect(
        NbdClient.connect({
          socketPath: exp.socketPath,
          exportName: 'disk',
          metaContexts: ['qemu:dirty-bitmap:none'],
        }),
      ).rejects.toThrow(/does not offer qemu:dirty-bitmap:none/);
    } finally {
      await exp.stop();
    }
  });

  it('reports dirty extents of a persistent bitmap exported by qemu-storage-daemon', async () => {
    const q = join(dir, 'bm.qcow2');
    await exec('qemu-img', ['create', '-q', '-f', 'qcow2', q, '64M']);
    await exec('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 4M', q]);
    await exec('qemu-img', ['bitmap', '--add', q, 'b0']);
    await exec('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xaa 1M 64k', '-c', 'write -P 0xbb 10M 1M', q]);
    const qsd = await startQsd(dir, q, 'disk0', 'b0');
    try {
      const ctx = 'qemu:dirty-bitmap:b0';
      expect(
        await NbdClient.listMetaContexts({ socketPath: qsd.socket, exportName: 'disk0' }, [
          'qemu:dirty-bitmap:',
        ]),
      ).toEqual([ctx]);
      const c = await NbdClient.connect({
        socketPath: qsd.socket,
        exportName: 'disk0',
        metaContexts: [BASE_ALLOCATION, ctx],
      });
      const dirty = (await collect(walkExtents(c, 0, c.sizeBytes, ctx))).filter((e) => e.isDirty);
      expect(dirty.map((e) => [e.offset, e.length])).toEqual([
        [1 * MiB, 64 * KiB],
        [10 * MiB, 1 * MiB],
      ]);
      expect((await c.read(MiB, 4))[0]).toBe(0xaa);
      // Writable export: write, write zeroes, flush, read back.
      await c.write(2 * MiB, Buffer.alloc(4096, 0x5a));
      await c.writeZeroes(0, 4096);
      await c.trim(30 * MiB, MiB);
      await c.flush();
      expect((await c.read(2 * MiB, 4096)).every((b) => b === 0x5a)).toBe(true);
      expect((await c.read(0, 4096)).every((b) => b === 0)).toBe(true);
      await c.close();
    } finally {
      await qsd.stop();
    }
  });

  it('splits reads above the server maximum and handles nbdkit pattern / sparse-random / memory', async () => {
    const pat = await startNbdkit(dir, ['pattern', 'size=1G'], 'pattern');
    try {
      const c = await NbdClient.connect({ socketPath: pat.socket });
      const buf = await c.read(100 * MiB, 40 * MiB); // > 32 MiB: split into two requests
      for (const at of [0, 8, 32 * MiB, 40 * MiB - 8])
        expect(buf.readBigUInt64BE(at)).toBe(BigInt(100 * MiB + at));
      await c.close();
    } finally {
      await pat.stop();
    }
    const sr = await startNbdkit(dir, ['sparse-random', 'size=256M', 'seed=7'], 'sparse');
    try {
      const c = await NbdClient.connect({ socketPath: sr.socket, metaContexts: [BASE_ALLOCATION] });
      const ext = await collect(walkExtents(c, 0, c.sizeBytes));
      expect(ext.reduce((a, e) => a + e.length, 0)).toBe(256 * MiB);
      const data = ext.filter((e) => !e.isZero);
      expect(data.length).toBeGreaterThanOrEqual(1);
      // Holes read as zeros; data regions are non-zero somewhere.
      const hole = ext.find((e) => e.isZero && e.length >= 4096)!;
      expect((await c.read(hole.offset, 4096)).every((b) => b === 0)).toBe(true);
      await c.close();
    } finally {
      await sr.stop();
    }
  });

  it('an EIO from the server fails that request only; a stalled server times out', async () => {
    const bad = await startNbdkit(
      dir,
      [
        '--filter=error',
        'pattern',
        'size=64M',
        'error=EIO',
        'error-pread-rate=100%',
        'error-pread-file=' + join(dir, 'eio-on'),
      ],
      'err',
    );
    try {
      const c = await NbdClient.connect({ socketPath: bad.socket });
      expect((await c.read(0, 8)).readBigUInt64BE(0)).toBe(0n);
      await (await open(join(dir, 'eio-on'), 'w')).close();
      const err = await c.read(0, 4096).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(NbdRequestError);
      expect((err as NbdRequestError).errno).toBe(5);
      const { rm } = await import('node:fs/promises');
      await rm(join(dir, 'eio-on'));
      expect((await c.read(4096, 8)).readBigUInt64BE(0)).toBe(4096n); // the connection is fine
      await c.close();
    } finally {
      await bad.stop();
    }
    const slow = await startNbdkit(dir, ['--filter=delay', 'memory', 'size=16M', 'rdelay=10'], 'slow');
    try {
      const c = await NbdClient.connect({ socketPath: slow.socket, requestTimeoutMs: 200 });
      await expect(c.read(0, 4096)).rejects.toThrow(NbdTimeoutError);
      await expect(c.read(0, 4096)).rejects.toThrow(); // the connection is dead after a timeout
      await c.close();
    } finally {
      await slow.stop();
    }
  });

  it('upgrades to TLS with STARTTLS against qemu-nbd --tls-creds, over TCP', async () => {
    const tlsDir = join(dir, 'tls');
    await (await import('node:fs/promises')).mkdir(tlsDir);
    const { caFile } = await makeTlsCerts(tlsDir);
    const port = 20000 + Math.floor(Math.random() * 20000);
    const pidFile = join(dir, 'tls.pid');
    const child = spawn(
      'qemu-nbd',
      [
        '-r',
        '-t',
        '--shared=4',
        '-f',
        'raw',
        '-b',
        '127.0.0.1',
        '-p',
        String(port),
        '--pid-file',
        pidFile,
        '--object',
        `tls-creds-x509,id=tls0,endpoint=server,verify-peer=off,dir=${tlsDir}`,
        '--tls-creds',
        'tls0',
        raw,
      ],
      {
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    try {
      await waitForPath(pidFile, child);
      const c = await NbdClient.connect({ host: '127.0.0.1', port, tls: { caFile } });
      expect(sha(await c.read(0, 8 * MiB))).toBe(sha(content.subarray(0, 8 * MiB)));
      await c.close();
      // Without TLS the server refuses (it requires TLS).
      await expect(NbdClient.connect({ host: '127.0.0.1', port })).rejects.toThrow(NbdOptionError);
      // With the wrong CA the TLS handshake fails.
      const other = join(dir, 'tls2');
      await (await import('node:fs/promises')).mkdir(other);
      const wrong = await makeTlsCerts(other);
      await expect(
        NbdClient.connect({ host: '127.0.0.1', port, tls: { caFile: wrong.caFile } }),
      ).rejects.toThrow(/TLS/);
    } finally {
      if (child.exitCode === null) {
        const closed = new Promise((r) => child.once('close', r));
        child.kill('SIGTERM');
        await closed;
      }
    }
  });
});
