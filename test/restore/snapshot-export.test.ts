/**
 * A snapshot disk served by our NBD server (in-process, so the chunk cache can be inspected), read
 * by real peers: nbdcopy (four connections, deep queues), nbdinfo --map, qemu-img compare and
 * qemu-io. Chunks are decoded into shared buffers and lent to the server without copies.
 */
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdClient, NbdServer } from '../../src/nbd/index.js';
import { Repository, type Snapshot } from '../../src/repo/index.js';
import { SnapshotExport } from '../../src/restore/index.js';
import { exec } from '../../src/util/index.js';
import { runCli } from '../helpers/cli.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';
import { corruptRecord, recordFile } from '../helpers/repo-files.js';

const MiB = 1024 * 1024;
const run = requireTools(['nbdcopy', 'nbdinfo', 'qemu-img', 'qemu-io']);
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe.runIf(run)('SnapshotExport served over NBD', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let repoPath: string;
  let original: Buffer;
  let repo: Repository;
  let snap: Snapshot;

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir('vmvault-export-'));
    repoPath = join(dir, 'repo');
    // 40 MiB + a partial chunk: random (stored raw), text (zstd), zeros (holes), a repeated block.
    original = Buffer.alloc(40 * MiB + 5000);
    seededBytes(12 * MiB, 3).copy(original, 0);
    Buffer.from('served text '.repeat(400_000)).copy(original, 16 * MiB);
    const block = seededBytes(MiB, 4);
    for (const at of [30, 31, 35]) block.copy(original, at * MiB);
    seededBytes(5000, 5).copy(original, 40 * MiB);
    await writeFile(join(dir, 'disk.raw'), original);
    expect((await runCli(['init', repoPath])).code).toBe(0);
    const r = await runCli(['backup-image', '-r', repoPath, '--vm', 'exp', `${join(dir, 'disk.raw')}:vda`]);
    expect(r.code, r.stderr).toBe(0);
    repo = await Repository.open(repoPath);
    snap = await repo.resolveSnapshot('exp@latest');
  });
  afterAll(async () => {
    await repo?.close();
    await cleanup?.();
  });

  async function serving<T>(exp: SnapshotExport, fn: (uri: string) => Promise<T>): Promise<T> {
    const sock = join(dir, `s${Math.random().toString(36).slice(2)}.sock`);
    const server = new NbdServer([exp]);
    await server.listenUnix(sock);
    try {
      return await fn(`nbd+unix:///vda?socket=${sock}`);
    } finally {
      await server.close();
    }
  }

  it('nbdcopy (4 connections × 64 requests) gets every byte; each chunk is decoded once', async () => {
    // A cache that holds every data chunk: no eviction, so the count of loads is exact whatever
    // the timing (eviction under pressure is chunk-cache.test.ts's job).
    const exp = await SnapshotExport.open(repo, snap, snap.disks[0]!, { cacheBytes: 32 * MiB });
    let loads = 0;
    await serving(exp, async (uri) => {
      await exec('nbdcopy', [
        '--connections=4',
        '--requests=64',
        '--request-size=262144',
        uri,
        join(dir, 'copy.raw'),
      ]);
      loads = exp.cacheStats.loads;
      await exec('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(dir, 'disk.raw'), uri]);
    });
    expect(sha(await readFile(join(dir, 'copy.raw')))).toBe(sha(original));
    // 12 + 5 (text) + 3 blocks + the tail = 21 data slots, each decoded once: the four 256 KiB
    // requests of a chunk share one load.
    expect(loads).toBe(21);
    expect(exp.cacheStats.overflows).toBe(0);
    await exp.close();
  });

  it('zero chunks are holes in nbdinfo --map; small unaligned reads through qemu-io match', async () => {
    const exp = await SnapshotExport.open(repo, snap, snap.disks[0]!);
    await serving(exp, async (uri) => {
      const map = JSON.parse((await exec('nbdinfo', ['--map', '--json', uri])).stdout) as Array<{
        offset: number;
        length: number;
        type: number;
      }>;
      const holes = map.filter((e) => e.type === 3).reduce((n, e) => n + e.length, 0);
      expect(holes).toBe(20 * MiB); // 40 MiB less 12 + 5 + 3 data chunks
      const q = await exec('qemu-io', [
        '-r',
        '-f',
        'raw',
        '-c',
        `read -P ${original[16 * MiB + 7]} ${16 * MiB + 7} 1`,
        '-c',
        `read -v ${30 * MiB - 512} 1024`,
        uri,
      ]);
      expect(q.stdout).not.toMatch(/Pattern verification failed/);
    });
    await exp.close();
  });

  it('a damaged chunk fails only the reads that touch it (EIO); the server keeps serving', async () => {
    const index = await repo.getIndex(snap.disks[0]!);
    const id = index.get(5)!;
    const rec = await recordFile(repoPath, id);
    const file = rec.path;
    const saved = await readFile(file);
    await corruptRecord(repoPath, id);
    try {
      const exp = await SnapshotExport.open(repo, snap, snap.disks[0]!);
      await serving(exp, async (uri) => {
        const bad = await exec('qemu-io', ['-r', '-f', 'raw', '-c', `read ${5 * MiB} 4096`, uri], {
          allowFailure: true,
        });
        expect(bad.stdout + bad.stderr).toMatch(/Input\/output error/);
        const good = await exec('qemu-io', [
          '-r',
          '-f',
          'raw',
          '-c',
          `read -P ${original[6 * MiB]} ${6 * MiB} 1`,
          uri,
        ]);
        expect(good.stdout).not.toMatch(/failed/);
      });
      await exp.close();
    } finally {
      await writeFile(file, saved);
    }
  });

  it('clients that vanish in the middle of replies release every chunk lent to them', async () => {
    // A cache smaller than the reads in flight: lent chunks, overflow buffers and evictions mix.
    const exp = await SnapshotExport.open(repo, snap, snap.disks[0]!, { cacheBytes: 4 * MiB });
    const sock = join(dir, 'vanish.sock');
    const server = new NbdServer([exp]);
    await server.listenUnix(sock);
    try {
      for (let round = 0; round < 4; round++) {
        const client = await NbdClient.connect({ socketPath: sock, exportName: 'vda' });
        const reads = Array.from({ length: 48 }, (_, i) =>
          client.read(((i * 7 + round) % 40) * MiB, MiB).then(
            () => true,
            () => false,
          ),
        );
        await Promise.race(reads); // some replies are out, others still being written
        client.destroy();
        await Promise.all(reads);
      }
      // The server hears each disconnect and its pending socket writes fail: each releases.
      for (let i = 0; i < 100 && exp.pinnedChunks > 0; i++) await new Promise((r) => setTimeout(r, 20));
      expect(exp.pinnedChunks).toBe(0);
      // And it still serves every byte to the next client.
      const client = await NbdClient.connect({ socketPath: sock, exportName: 'vda' });
      expect(sha(await client.read(0, original.length))).toBe(sha(original));
      await client.close();
      expect(exp.pinnedChunks).toBe(0);
    } finally {
      await server.close();
    }
  });
});
