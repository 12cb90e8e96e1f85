import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupImages } from '../../src/backup/index.js';
import { backendSpecFor, openBackend, Repository, s3RequestCounts } from '../../src/repo/index.js';
import { SnapshotExport } from '../../src/restore/index.js';
import { startS3rver, type S3TestServer } from '../helpers/s3-servers.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';

const MiB = 1024 * 1024;

/** Reads from an S3 repository: coalesced ranged GETs, and read-ahead for a sequential NBD reader. */
describe('reading a snapshot from S3', () => {
  let server: S3TestServer;
  let location: string;
  let data: Buffer;
  let snapshotId: string;
  let cleanup: () => Promise<void>;

  const backend = (): ReturnType<typeof openBackend> => {
    const spec = backendSpecFor(location);
    spec.s3!.credentials = { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey };
    return openBackend(spec);
  };

  beforeAll(async () => {
    server = await startS3rver();
    location = `s3:${server.endpoint}/read-ahead/r`;
    const t = await makeTmpDir();
    cleanup = t.cleanup;
    data = seededBytes(24 * MiB, 3);
    const img = join(t.dir, 'disk.raw');
    await writeFile(img, data);
    const repo = await Repository.init(location, {}, backend());
    try {
      snapshotId = (await backupImages(repo, { vm: 'seq', images: [{ path: img, target: 'vda' }] })).id;
    } finally {
      await repo.close();
    }
  });
  afterAll(async () => {
    await server?.stop();
    await cleanup?.();
  });

  it('a sequential reader of 64 KiB blocks gets read-ahead: a few GETs, not one per chunk', async () => {
    const repo = await Repository.open(location, {}, backend());
    try {
      const snap = await repo.getSnapshot(snapshotId);
      const exp = await SnapshotExport.open(repo, snap, snap.disks[0]!);
      const before = s3RequestCounts().GET;
      const block = 64 * 1024;
      for (let at = 0; at < data.length; at += block) {
        const got = await exp.read(at, block);
        if (!got.equals(data.subarray(at, at + block))) throw new Error(`block at ${at} differs`);
      }
      const gets = s3RequestCounts().GET - before;
      expect(exp.cacheStats.prefetches).toBeGreaterThan(10);
      // 24 chunks: with read-ahead, runs of chunks come in one ranged GET each.
      expect(gets).toBeLessThan(12);
    } finally {
      await repo.close();
    }
  });
});
