/**
 * Hostile clients against the server's limits: clients that send large READs and never read the
 * replies (memory stays bounded, the server stops reading them, and when they hold the budget
 * others need they are dropped), floods of idle connections (new clients still get in promptly,
 * established ones are never evicted), and handshakes that never finish (timed out).
 */
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { MemoryExport, NBD_CMD, NBD_FLAG_C, NBD_OPT, NbdClient, NbdServer } from '../../src/nbd/index.js';
import { encodeInfoRequest, encodeOption, encodeRequest, encodeU32 } from '../../src/nbd/wire.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { Wire } from './scripted-peer.js';

const MiB = 1024 * 1024;
const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function started(
  opts: ConstructorParameters<typeof NbdServer>[1],
  size = 64 * MiB,
): Promise<{ server: NbdServer; sock: string; data: Buffer; port: number }> {
  const { dir, cleanup } = await makeTmpDir('vmvault-nbdlim-');
  const data = seededBytes(size, 5);
  const server = new NbdServer([new MemoryExport('d', data)], opts);
  const sock = join(dir, 's.sock');
  await server.listenUnix(sock);
  const port = await server.listenTcp('127.0.0.1', 0);
  cleanups.push(async () => {
    await server.close();
    await cleanup();
  });
  return { server, sock, data, port };
}

function rawConnect(where: string | number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = typeof where === 'string' ? connect(where) : connect(where, '127.0.0.1');
    s.once('connect', () => resolve(s));
    s.once('error', reject);
    cleanups.push(async () => void s.destroy());
  });
}

/** A client in transmission (simple replies) that sends `n` READs of `len` and never reads a reply. */
async function nonReader(sock: string, n: number, len: number): Promise<Socket> {
  const s = await rawConnect(sock);
  const w = new Wire(s);
  await w.read(18);
  w.write(encodeU32(NBD_FLAG_C.NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C.NBD_FLAG_C_NO_ZEROES));
  w.write(encodeOption(NBD_OPT.NBD_OPT_GO, encodeInfoRequest('d', [])));
  // INFO (export) + INFO (block size) + ACK
  for (let i = 0; i < 3; i++) {
    const h = await w.read(20);
    await w.read(h.readUInt32BE(16));
  }
  s.removeAllListeners('data');
  s.pause(); // from here on nothing is read: replies pile up in the server
  for (let i = 0; i < n; i++) s.write(encodeRequest(0, NBD_CMD.NBD_CMD_READ, BigInt(i), 0, len));
  return s;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('server limits against hostile clients', () => {
  it('clients that never read their replies hold bounded memory; a reading client is still served', async () => {
    const budget = 48 * MiB;
    const perConn = 16 * MiB;
    const { server, sock, data } = await started({
      readBudgetBytes: budget,
      maxConnectionBytes: perConn,
      replyStallTimeoutMs: 300,
    });
    // 4 × 40 READs of 8 MiB = 1.25 GiB asked for: before the fix all of it ended in send buffers.
    for (let i = 0; i < 4; i++) await nonReader(sock, 40, 8 * MiB);
    await sleep(500);
    expect(server.peakReadBytes).toBeLessThanOrEqual(budget);
    const client = await NbdClient.connect({ socketPath: sock, exportName: 'd' });
    cleanups.push(() => client.close());
    const t0 = Date.now();
    const got = await client.read(0, data.length);
    expect(got.equals(data)).toBe(true);
    expect(Date.now() - t0).toBeLessThan(10_000);
    // The non-readers held the budget the reader needed: they were dropped, not the reader.
    expect(server.stats.stalled).toBeGreaterThan(0);
    expect(server.peakReadBytes).toBeLessThanOrEqual(budget);
    expect(process.memoryUsage().arrayBuffers).toBeLessThan(600 * MiB);
  }, 30_000);

  it('a non-reader is paused, not dropped, while nobody waits; it holds at most its own bound', async () => {
    const perConn = 16 * MiB;
    const { server, sock, data } = await started({ maxConnectionBytes: perConn, replyStallTimeoutMs: 200 });
    for (let i = 0; i < 2; i++) await nonReader(sock, 100, 4 * MiB);
    await sleep(600);
    // Each holds ≤ its bound (+ one request), the server stopped taking its requests.
    expect(server.readBytesInUse).toBeLessThanOrEqual(2 * (perConn + 4 * MiB));
    expect(server.peakReadBytes).toBeLessThanOrEqual(2 * (perConn + 4 * MiB));
    expect(server.stats.stalled).toBe(0);
    expect(server.connectionCount).toBe(2);
    const client = await NbdClient.connect({ socketPath: sock, exportName: 'd' });
    cleanups.push(() => client.close());
    expect((await client.read(MiB, 8 * MiB)).equals(data.subarray(MiB, 9 * MiB))).toBe(true);
  }, 30_000);

  it('a flood of idle connections neither locks new clients out nor evicts established ones', async () => {
    const { server, sock, data } = await started({ maxConnections: 64, maxHandshakes: 16 }, 4 * MiB);
    const established = await NbdClient.connect({ socketPath: sock, exportName: 'd' });
    cleanups.push(() => established.close());
    for (let i = 0; i < 300; i++) await rawConnect(sock); // never say a word
    await sleep(100);
    expect(server.handshakeCount).toBeLessThanOrEqual(16);
    const t0 = Date.now();
    const late = await NbdClient.connect({ socketPath: sock, exportName: 'd' });
    cleanups.push(() => late.close());
    expect(Date.now() - t0).toBeLessThan(2000);
    expect((await late.read(0, 4096)).equals(data.subarray(0, 4096))).toBe(true);
    expect((await established.read(4096, 4096)).equals(data.subarray(4096, 8192))).toBe(true);
    expect(server.stats.evicted).toBeGreaterThan(0);
  }, 30_000);

  it('per TCP peer: idle handshakes make room; with only established ones a new client is refused at once', async () => {
    const { server, port } = await started({ maxConnectionsPerPeer: 3 }, 4 * MiB);
    for (let i = 0; i < 10; i++) await rawConnect(port);
    const a = await NbdClient.connect({ host: '127.0.0.1', port, exportName: 'd' });
    const b = await NbdClient.connect({ host: '127.0.0.1', port, exportName: 'd' });
    const c = await NbdClient.connect({ host: '127.0.0.1', port, exportName: 'd' });
    cleanups.push(async () => {
      for (const x of [a, b, c]) await x.close();
    });
    const t0 = Date.now();
    await expect(NbdClient.connect({ host: '127.0.0.1', port, exportName: 'd' })).rejects.toThrow();
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(server.stats.refused).toBeGreaterThan(0);
    for (const x of [a, b, c]) expect((await x.read(0, 512)).length).toBe(512);
  }, 30_000);

  it('a handshake that never finishes is closed after the handshake timeout', async () => {
    const { server, sock } = await started({ handshakeTimeoutMs: 200 }, MiB);
    const s = await rawConnect(sock);
    const closed = new Promise<void>((r) => s.once('close', () => r()));
    s.on('data', () => {});
    const t0 = Date.now();
    await closed;
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(server.stats.handshakeTimeouts).toBe(1);
  });
});
