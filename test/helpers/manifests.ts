import { emptyDiskStats, format, type SnapshotManifest } from '../../src/repo/index.js';

/** A one-disk image snapshot manifest (vda) over the disk tree `root`, for tests that build repositories by hand. */
export function imageManifest(root: string, sizeBytes: number, chunkSizeBytes: number): SnapshotManifest {
  return {
    version: format.MANIFEST_VERSION,
    vm: { name: 'vm' },
    time: new Date().toISOString(),
    host: 'h',
    tags: [],
    parent: null,
    mode: 'image',
    checkpoint: null,
    disks: [
      { target: 'vda', sizeBytes, chunkSizeBytes, root, allocatedBytes: sizeBytes, stats: emptyDiskStats() },
    ],
    files: [],
    program: 'test',
  };
}
