export {
  backupDisk,
  planFromDataExtents,
  type DiskSource,
  type SlotAction,
  type BackupDiskOptions,
  type BackupDiskResult,
} from './chunk-pipeline.js';
export { backupImages, parseImageSpecs, type ImageSpec, type BackupImageOptions } from './image.js';
export { VERSION, PROGRAM } from './version.js';
