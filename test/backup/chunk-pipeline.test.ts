import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  backupDisk,
  planFromDataExtents,
  ShortReadError,
  SourceReadError,
  type DiskSource,
} from '../../src/backup/index.js';
import { NbdClient } from '../../src/nbd/index.js';
import { MemoryBackend, Repository } from '../../src/repo/index.js';
import { startNbdkit } from '../helpers/nbd-peers.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

const KiB = 1024;
const CS = 64 * KiB;

async function memoryRepo(): Promise<Repository> {
  return Repository.init('memory:', { chunkSizeBytes: CS }, new MemoryBackend());
}

/** An in-memory source that records every read and can be told to come back short. */
function bufferSource(
  data: Buffer,
  opts: { shortFrom?: number } = {},
): DiskSource & { reads: Array<[number, number]> } {
  const reads: Array<[number, number]> = [];
  return {
    sizeBytes: data.length,
    name: 'test.img',
    reads,
    read(offset, length, into) {
      reads.push([offset, length]);
      const end = opts.shortFrom !== undefined ? Math.min(offset + length, opts.shortFrom) : offset + length;
      const n = Math.max(0, end - offset);
      const out = into && into.length >= n ? into.subarray(0, n) : Buffer.alloc(n);
      data.copy(out, 0, offset, offset + n);
      return Promise.resolve(out);
    },
  };
}

describe('backupDisk reads exactly what it needs and never pads a short read', () => {
  let repo: Repository;
  beforeAll(async () => {
    repo = await memoryRepo();
  });
  afterAll(async () => repo.close());

  it('a source that returns fewer bytes than asked is an error naming the source and offset', async () => {
    const data = seededBytes(8 * CS, 1);
    const src = bufferSource(data, { shortFrom: 5 * CS + 100 });
    const err = await backupDisk(repo, { source: src, plan: () => 'read' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ShortReadError);
    expect((err as Error).message).toMatch(
      new RegExp(`cannot read test\\.img at offset ${5 * CS}: got 100 of ${CS} bytes`),
    );
  });

  it('with data extents only the data inside a slot is read; the figures say so', async () => {
    const data = Buffer.alloc(8 * CS);
    seededBytes(4 * KiB, 2).copy(data, CS + 8 * KiB); // 4 KiB of data inside slot 1
    seededBytes(CS + 4 * KiB, 3).copy(data, 3 * CS); // slot 3 and the start of slot 4
    const extents = [
      { offset: CS + 8 * KiB, length: 4 * KiB },
      { offset: 3 * CS, length: CS + 4 * KiB },
    ];
    const src = bufferSource(data);
    const r = await backupDisk(repo, {
      source: src,
      plan: planFromDataExtents(extents),
      dataExtents: extents,
    });
    expect(src.reads).toEqual([
      [CS + 8 * KiB, 4 * KiB],
      [3 * CS, CS],
      [4 * CS, 4 * KiB],
    ]);
    expect(r.stats.bytesRead).toBe(CS + 8 * KiB);
    expect(r.allocatedBytes).toBe(3 * CS);
    expect(r.stats.bytesZero).toBe(5 * CS);
    // The chunks hold the real bytes (the rest of each slot zero): same ids as a whole-slot read.
    const whole = await backupDisk(repo, { source: bufferSource(data), plan: planFromDataExtents(extents) });
    expect(whole.index.get(1)).toBe(r.index.get(1));
    expect(whole.index.get(4)).toBe(r.index.get(4));
    expect(whole.stats.bytesRead).toBe(3 * CS);
  });

  it('pieces of a slot a few KiB apart are read as one (the gap counts as read), far apart as two', async () => {
    const data = Buffer.alloc(2 * CS);
    const extents = [
      { offset: 0, length: 4 * KiB },
      { offset: 8 * KiB, length: 4 * KiB }, // 4 KiB gap: merged
      { offset: 40 * KiB, length: 4 * KiB }, // 28 KiB gap: its own read
    ];
    for (const e of extents) seededBytes(e.length, e.offset).copy(data, e.offset);
    const src = bufferSource(data);
    const r = await backupDisk(repo, {
      source: src,
      plan: planFromDataExtents(extents),
      dataExtents: extents,
    });
    expect(src.reads.sort((a, b) => a[0] - b[0])).toEqual([
      [0, 12 * KiB],
      [40 * KiB, 4 * KiB],
    ]);
    expect(r.stats.bytesRead).toBe(16 * KiB);
  });
});

describe.runIf(requireTools(['nbdkit']))('backupDisk over NBD', () => {
  it('a READ the server cannot complete (a short read in the plugin) names the source and offset', async () => {
    const { dir, cleanup } = await makeTmpDir();
    const repo = await memoryRepo();
    try {
      // Reads from 4 MiB on deliver half the data: nbdkit replies EIO.
      const nbd = await startNbdkit(dir, [
        'eval',
        'get_size=echo 8388608',
        'pread=if [ $4 -ge 4194304 ]; then head -c $(($3/2)) /dev/zero | tr "\\0" b; else head -c $3 /dev/zero | tr "\\0" a; fi',
      ]);
      const client = await NbdClient.connect({ socketPath: nbd.socket, exportName: '' });
      try {
        const err = await backupDisk(repo, {
          source: { sizeBytes: client.sizeBytes, name: 'vm/vda', read: (o, l, b) => client.read(o, l, b) },
          plan: () => 'read',
          readConcurrency: 1,
        }).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(SourceReadError);
        expect((err as Error).message).toMatch(/^cannot read vm\/vda at offset 4194304: /);
      } finally {
        await client.close().catch(() => {});
        await nbd.stop();
      }
    } finally {
      await repo.close();
      await cleanup();
    }
  });
});
