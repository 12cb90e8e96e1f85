export {
  restoreDisk,
  findDisk,
  type ChunkSink,
  type DamagedRange,
  type RestoreDiskOptions,
  type RestoreDiskResult,
} from './restore.js';
export { RawWriter, createRawWriter } from './raw-writer.js';
