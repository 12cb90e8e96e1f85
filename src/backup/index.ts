export {
  backupDisk,
  planFromDataExtents,
  SourceReadError,
  ShortReadError,
  type DiskSource,
  type SlotAction,
  type BackupDiskOptions,
  type BackupDiskResult,
} from './chunk-pipeline.js';
export {
  backupImages,
  defaultDiskName,
  parseImageSpecs,
  type ImageSpec,
  type BackupImageOptions,
} from './image.js';
export { VERSION, PROGRAM } from './version.js';
export {
  planBackup,
  checkpointPrefix,
  newCheckpointName,
  BACKUP_LEVELS,
  type BackupLevel,
  type BackupMode,
  type BackupPlan,
  type DiskPlan,
  type PlanInput,
} from './plan.js';
export {
  backupDomain,
  type ExportReader,
  type ExportExtent,
  type ExportOpener,
  type VmBackupOptions,
  type VmBackupResult,
} from './live.js';
export { nbdExports } from './nbd-exports.js';
export {
  BACKUP_METHODS,
  chooseMethod,
  overlayOwner,
  staleOverlays,
  type BackupMethod,
  type MethodFacts,
} from './snapshot-method.js';
