import { describe, expect, it } from 'vitest';
import { MemoryBackend, Repository, emptyDiskStats, type Snapshot } from '../../src/repo/index.js';
import { restoreDisk, type ChunkSink } from '../../src/restore/index.js';

/** A sink that records how it was ended (restoreDisk owns it once called). */
function recordingSink(): ChunkSink & { ended: string[] } {
  const ended: string[] = [];
  return {
    ended,
    write: () => Promise.resolve(),
    finish: () => {
      ended.push('finish');
      return Promise.resolve();
    },
    abort: () => {
      ended.push('abort');
      return Promise.resolve();
    },
  };
}

describe('restoreDisk', () => {
  it('aborts its sink when the disk index cannot be read (the output file is closed and removed)', async () => {
    const repo = await Repository.init('memory:', { chunkSizeBytes: 64 * 1024 }, new MemoryBackend());
    try {
      const disk = {
        target: 'vda',
        sizeBytes: 64 * 1024,
        chunkSizeBytes: 64 * 1024,
        root: 'ab'.repeat(32), // no such index
        allocatedBytes: 0,
        stats: emptyDiskStats(),
      };
      const snap = { id: 'cd'.repeat(32), disks: [disk] } as unknown as Snapshot;
      const sink = recordingSink();
      await expect(restoreDisk(repo, snap, disk, sink)).rejects.toMatchObject({ exitCode: 20 });
      expect(sink.ended).toEqual(['abort']);
    } finally {
      await repo.close();
    }
  });
});
