import { createHash } from 'node:crypto';
import { mkdir, open, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BASE_ALLOCATION,
  NbdClient,
  NbdClosedError,
  NbdOptionError,
  NbdRequestError,
  NbdTimeoutError,
  QEMU_ALLOCATION_DEPTH,
  formatNbdUri,
  startQemuNbd as startQemuNbdLib,
  walkExtents,
  type MergedExtent,
} from '../../src/nbd/index.js';
import { exec } from '../../src/util/index.js';
import { makeTlsCerts, startNbdkit, startQemuNbd, startQsd } from '../helpers/nbd-peers.js';
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
    // 48 MiB: random data at 0-8M, a hole, 1 MiB at 20M, data at the end.
    const fh = await open(raw, 'w');
    await fh.truncate(48 * MiB);
    await fh.write(seededBytes(8 * MiB, 1), 0, 8 * MiB, 0);
    await fh.write(seededBytes(MiB, 2), 0, MiB, 20 * MiB);
    await fh.write(seededBytes(64 * KiB, 3), 0, 64 * KiB, 48 * MiB - 64 * KiB);
    await fh.close();
    content = await readFile(raw);
  });
  afterAll(async () => cleanup());

  it('reads a raw image from qemu-nbd byte for byte with many requests in flight, and sees its holes', async () => {
    const exp = await startQemuNbdLib({ path: raw, format: 'raw', runtimeDir: dir });
    try {
      const c = await NbdClient.connect({ socketPath: exp.socketPath, metaContexts: [BASE_ALLOCATION] });
      expect(c.sizeBytes).toBe(48 * MiB);
      expect(c.isReadOnly).toBe(true);
      expect(c.structuredReplies).toBe(true);
      expect(c.canMultiConn).toBe(true);
      // More requests than the connection allows in flight (16): the rest queue.
      let maxInFlight = 0;
      const parts = await Promise.all(
        Array.from({ length: 48 }, (_, i) =>
          c.read(i * MiB, MiB).then((b) => {
            maxInFlight = Math.max(maxInFlight, c.inFlight);
            return b;
          }),
        ),
      );
      expect(maxInFlight).toBeLessThanOrEqual(16);
      expect(sha(Buffer.concat(parts))).toBe(sha(content));
      // One read bigger than the 32 MiB maximum payload: split, reassembled in place.
      const into = Buffer.alloc(48 * MiB);
      expect(sha(await c.read(0, 48 * MiB, into))).toBe(sha(content));
      const ext = await collect(walkExtents(c, 0, c.sizeBytes));
      const data = ext.filter((e) => !e.isZero);
      expect(data[0]).toMatchObject({ offset: 0, length: 8 * MiB });
      expect(data.some((e) => e.offset === 20 * MiB)).toBe(true);
      expect(ext.reduce((a, e) => a + e.length, 0)).toBe(48 * MiB);
      await expect(c.read(48 * MiB - 10, 20)).rejects.toThrow(/past the end/);
      await expect(c.write(0, Buffer.alloc(512))).rejects.toThrow(NbdRequestError);
      await c.close();
      await c.close(); // idempotent
      await expect(c.read(0, 512)).rejects.toThrow(NbdClosedError);
    } finally {
      await exp.stop();
    }
  });

  it('qcow2 through qemu-nbd: LIST with descriptions, INFO, unknown exports and contexts refused clearly, URIs', async () => {
    const q = join(dir, 'disk.qcow2');
    await exec('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, q]);
    const p = await startQemuNbd(dir, q, ['-r', '-f', 'qcow2', '-x', 'disk', '-D', 'the test disk'], {
      name: 'q1',
    });
    const uri = formatNbdUri({ tls: false, socketPath: p.socket, exportName: 'disk' });
    expect(await NbdClient.list({ socketPath: p.socket })).toEqual([
      { name: 'disk', description: 'the test disk' },
    ]);
    const info = await NbdClient.info({ uri });
    expect(info.sizeBytes).toBe(48 * MiB);
    expect(info.description).toBe('the test disk');
    expect(info.blockSize.maximum).toBeGreaterThanOrEqual(512);
    const c = await NbdClient.connect({ uri });
    expect(sha(await c.read(0, c.sizeBytes))).toBe(sha(content));
    await c.close();
    const err = await NbdClient.connect({ socketPath: p.socket, exportName: 'nope' }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(NbdOptionError);
    expect((err as NbdOptionError).message).toMatch(/export 'nope'.*ERR_UNKNOWN/);
    await expect(NbdClient.connect({ uri, metaContexts: ['qemu:dirty-bitmap:none'] })).rejects.toThrow(
      /does not offer qemu:dirty-bitmap:none/,
    );
    // Not required: simply absent.
    const c2 = await NbdClient.connect({
      uri,
      metaContexts: [BASE_ALLOCATION, 'qemu:dirty-bitmap:none'],
      requireMetaContexts: false,
    });
    expect([...c2.contexts.keys()]).toEqual([BASE_ALLOCATION]);
    await c2.close();
  });

  it('qemu:allocation-depth next to base:allocation, each context with its own extents', async () => {
    const base = join(dir, 'depth-base.qcow2');
    const top = join(dir, 'depth-top.qcow2');
    await exec('qemu-img', ['create', '-q', '-f', 'qcow2', base, '8M']);
    await exec('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 1M', base]);
    await exec('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
    await exec('qemu-io', ['-f', 'qcow2', '-c', 'write -P 2 2M 1M', top]);
    const p = await startQemuNbd(dir, top, ['-r', '-f', 'qcow2', '-A'], { name: 'depth' });
    expect(await NbdClient.listMetaContexts({ socketPath: p.socket })).toEqual(
      expect.arrayContaining([BASE_ALLOCATION, QEMU_ALLOCATION_DEPTH]),
    );
    const c = await NbdClient.connect({
      socketPath: p.socket,
      metaContexts: [BASE_ALLOCATION, QEMU_ALLOCATION_DEPTH],
    });
    const st = await c.blockStatus(0, 8 * MiB);
    const depth = st.get(QEMU_ALLOCATION_DEPTH)!.map((e) => [e.offset / MiB, e.length / MiB, e.flags]);
    expect(depth).toEqual([
      [0, 1, 2], // in the backing file
      [1, 1, 0],
      [2, 1, 1], // in the top image
      [3, 5, 0],
    ]);
    expect(st.get(BASE_ALLOCATION)![0]).toMatchObject({ offset: 0, flags: 0 });
    await c.close();
  });

  it('reports dirty extents of a persistent bitmap exported by qemu-storage-daemon; writes', async () => {
    const q = join(dir, 'bm.qcow2');
    await exec('qemu-img', ['create', '-q', '-f', 'qcow2', q, '64M']);
    await exec('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 4M', q]);
    await exec('qemu-img', ['bitmap', '--add', q, 'b0']);
    await exec('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xaa 1M 64k', '-c', 'write -P 0xbb 10M 1M', q]);
    const qsd = await startQsd(dir, q, 'disk0', 'b0');
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
    const ext = await collect(walkExtents(c, 0, c.sizeBytes, ctx));
    expect(ext.filter((e) => e.isDirty).map((e) => [e.offset, e.length])).toEqual([
      [1 * MiB, 64 * KiB],
      [10 * MiB, 1 * MiB],
    ]);
    // Boundaries of both contexts intersect: the 4 MiB of data splits around the dirty 64 KiB.
    expect(ext.filter((e) => e.offset < 4 * MiB).map((e) => [e.offset, e.isZero, e.isDirty])).toEqual([
      [0, false, false],
      [MiB, false, true],
      [MiB + 64 * KiB, false, false],
    ]);
    expect((await c.read(MiB, 4))[0]).toBe(0xaa);
    // Writable export: write, write zeroes, trim, flush, read back.
    await c.write(2 * MiB, Buffer.alloc(4096, 0x5a), { fua: true });
    await c.writeZeroes(0, 4096);
    await c.trim(30 * MiB, MiB);
    await c.flush();
    expect((await c.read(2 * MiB, 4096)).every((b) => b === 0x5a)).toBe(true);
    expect((await c.read(0, 4096)).every((b) => b === 0)).toBe(true);
    await c.close();
    await qsd.stop();
  });

  it('nbdkit: splits at the advertised maximum, widens unaligned reads, pattern / sparse-random', async () => {
    const pat = await startNbdkit(
      dir,
      [
        '--filter=blocksize-policy',
        'pattern',
        'size=1G',
        'blocksize-minimum=512',
        'blocksize-maximum=65536',
        'blocksize-error-policy=error',
      ],
      'pattern',
    );
    const c = await NbdClient.connect({ socketPath: pat.socket });
    expect(c.blockSize).toMatchObject({ minimum: 512, maximum: 65536 });
    expect(c.maxPayload).toBe(65536);
    const buf = await c.read(100 * MiB, 3 * MiB + 4096); // 49 requests of ≤ 64 KiB
    for (const at of [0, 8, 65536, 3 * MiB]) expect(buf.readBigUInt64BE(at)).toBe(BigInt(100 * MiB + at));
    const odd = await c.read(1000, 24); // widened to 512-byte blocks
    expect(odd.readBigUInt64BE(0)).toBe(1000n);
    await expect(c.write(100, Buffer.alloc(512))).rejects.toThrow(RangeError);
    await c.close();

    const big = await startNbdkit(dir, ['pattern', 'size=1G'], 'pattern2');
    const c2 = await NbdClient.connect({ socketPath: big.socket });
    const b2 = await c2.read(100 * MiB, 40 * MiB); // > 32 MiB: split into two requests
    for (const at of [0, 8, 32 * MiB, 40 * MiB - 8])
      expect(b2.readBigUInt64BE(at)).toBe(BigInt(100 * MiB + at));
    await c2.close();

    const sr = await startNbdkit(dir, ['sparse-random', 'size=256M', 'seed=7'], 'sparse');
    const c3 = await NbdClient.connect({ socketPath: sr.socket, metaContexts: [BASE_ALLOCATION] });
    const ext = await collect(walkExtents(c3, 0, c3.sizeBytes));
    expect(ext.reduce((a, e) => a + e.length, 0)).toBe(256 * MiB);
    expect(ext.filter((e) => !e.isZero).length).toBeGreaterThanOrEqual(1);
    const hole = ext.find((e) => e.isZero && e.length >= 4096)!;
    expect((await c3.read(hole.offset, 4096)).every((b) => b === 0)).toBe(true);
    const dataExt = ext.find((e) => !e.isZero && e.length >= 4096)!;
    expect((await c3.read(dataExt.offset, 4096)).some((b) => b !== 0)).toBe(true);
    await c3.close();
  });

  it('nbdkit --no-sr: simple replies, and block status is either refused or (optional) absent', async () => {
    const p = await startNbdkit(dir, ['--no-sr', 'pattern', 'size=64M'], 'nosr');
    await expect(
      NbdClient.connect({ socketPath: p.socket, metaContexts: [BASE_ALLOCATION] }),
    ).rejects.toThrow(/no structured replies/);
    const c = await NbdClient.connect({
      socketPath: p.socket,
      metaContexts: [BASE_ALLOCATION],
      requireMetaContexts: false,
    });
    expect(c.structuredReplies).toBe(false);
    expect(c.contexts.size).toBe(0);
    const b = await c.read(5 * MiB, 2 * MiB);
    expect(b.readBigUInt64BE(MiB)).toBe(BigInt(6 * MiB));
    expect(await collect(walkExtents(c, 0, 64 * MiB))).toEqual([
      { offset: 0, length: 64 * MiB, isHole: false, isZero: false, isDirty: true },
    ]);
    await c.close();
  });

  it('many large writes in flight (socket back-pressure) land intact; maxInFlight is honoured', async () => {
    const p = await startNbdkit(
      dir,
      ['--filter=delay', 'memory', 'size=96M', 'wdelay=5ms', 'rdelay=5ms'],
      'mem',
    );
    const c = await NbdClient.connect({ socketPath: p.socket, maxInFlight: 4 });
    const data = seededBytes(64 * MiB, 42);
    let maxInFlight = 0;
    await Promise.all(
      Array.from({ length: 32 }, (_, i) =>
        c.write(i * 2 * MiB, data.subarray(i * 2 * MiB, (i + 1) * 2 * MiB)).then(() => {
          maxInFlight = Math.max(maxInFlight, c.inFlight);
        }),
      ),
    );
    expect(maxInFlight).toBeLessThanOrEqual(4);
    await c.writeZeroes(64 * MiB, 32 * MiB);
    expect(sha(await c.read(0, 64 * MiB))).toBe(sha(data));
    expect((await c.read(64 * MiB, 32 * MiB)).every((x) => x === 0)).toBe(true);
    // close() waits for requests in flight instead of failing them.
    const pending = c.read(0, 4 * MiB);
    await c.close();
    expect(sha(await pending)).toBe(sha(data.subarray(0, 4 * MiB)));
  });

  it('an EIO from the server fails that request only; a stalled server times out', async () => {
    const flag = join(dir, 'eio-on');
    const bad = await startNbdkit(
      dir,
      [
        '--filter=error',
        'pattern',
        'size=64M',
        'error=EIO',
        'error-pread-rate=100%',
        `error-pread-file=${flag}`,
      ],
      'err',
    );
    const c = await NbdClient.connect({ socketPath: bad.socket });
    expect((await c.read(0, 8)).readBigUInt64BE(0)).toBe(0n);
    await (await open(flag, 'w')).close();
    const err = await c.read(0, 4096).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdRequestError);
    expect((err as NbdRequestError).errno).toBe(5);
    expect((err as NbdRequestError).errnoName).toBe('EIO');
    await rm(flag);
    expect((await c.read(4096, 8)).readBigUInt64BE(0)).toBe(4096n); // the connection is fine
    await c.close();

    const slow = await startNbdkit(dir, ['--filter=delay', 'memory', 'size=16M', 'rdelay=10'], 'slow');
    const s = await NbdClient.connect({ socketPath: slow.socket, requestTimeoutMs: 200 });
    await expect(s.read(0, 4096)).rejects.toThrow(NbdTimeoutError);
    await expect(s.read(0, 4096)).rejects.toThrow(NbdTimeoutError); // dead after a timeout
    await s.close();
  });

  it('STARTTLS (x509) against qemu-nbd --tls-creds over TCP, with and without client certificates', async () => {
    const tlsDir = join(dir, 'tls');
    await mkdir(tlsDir);
    const certs = await makeTlsCerts(tlsDir);
    const tlsArgs = (verify: boolean): string[] => [
      '-r',
      '-f',
      'raw',
      '--object',
      `tls-creds-x509,id=tls0,endpoint=server,verify-peer=${verify ? 'on' : 'off'},dir=${tlsDir}`,
      '--tls-creds',
      'tls0',
    ];
    const p = await startQemuNbd(dir, raw, tlsArgs(false), { name: 'tls', tcp: true });
    const c = await NbdClient.connect({ host: '127.0.0.1', port: p.port, tls: { caFile: certs.caFile } });
    expect(sha(await c.read(0, 8 * MiB))).toBe(sha(content.subarray(0, 8 * MiB)));
    await c.close();
    // Without TLS the server refuses (it requires TLS), and says so.
    const refused = await NbdClient.connect({ host: '127.0.0.1', port: p.port }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(NbdOptionError);
    expect((refused as NbdOptionError).hint).toMatch(/requires TLS/);
    // With the wrong CA the TLS handshake fails.
    const other = join(dir, 'tls2');
    await mkdir(other);
    const wrong = await makeTlsCerts(other);
    await expect(
      NbdClient.connect({ host: '127.0.0.1', port: p.port, tls: { caFile: wrong.caFile } }),
    ).rejects.toThrow(/TLS/);
    await p.stop();

    // verify-peer=on: a client certificate is required.
    const v = await startQemuNbd(dir, raw, tlsArgs(true), { name: 'tlsv', tcp: true });
    await expect(
      NbdClient.connect({ host: '127.0.0.1', port: v.port, tls: { caFile: certs.caFile } }).then((x) =>
        x.read(0, 512),
      ),
    ).rejects.toThrow();
    const cv = await NbdClient.connect({
      uri: `nbds://127.0.0.1:${v.port}/`,
      tls: { caFile: certs.caFile, certFile: certs.clientCertFile, keyFile: certs.clientKeyFile },
    });
    expect(sha(await cv.read(20 * MiB, MiB))).toBe(sha(content.subarray(20 * MiB, 21 * MiB)));
    await cv.close();
  });
});
