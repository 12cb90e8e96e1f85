export {
  restoreDisk,
  findDisk,
  type ChunkSink,
  type DamagedRange,
  type RestoreDiskOptions,
  type RestoreDiskResult,
} from './restore.js';
export { RawWriter, createRawWriter } from './raw-writer.js';
export {
  adjustDomainXml,
  type AdjustedDomainXml,
  type DomainConfigOptions,
  type DiskRestoreTarget,
} from './domain-config.js';
export {
  restoreInPlace,
  openRawTarget,
  openNbdTarget,
  openInPlaceTarget,
  type InPlaceTarget,
  type InPlaceResult,
} from './in-place.js';
export {
  restoreSnapshot,
  makeSinkFactory,
  type RestoreOptions,
  type RestoreResult,
  type RestoredDisk,
  type ImageFormat,
  type SinkFactory,
} from './snapshot-restore.js';
export { createQcow2Writer, Qcow2Writer, ImageWriteError, type Qcow2WriterOptions } from './qcow2/index.js';
export { SnapshotExport } from './snapshot-export.js';
export {
  GuestFiles,
  GuestPathError,
  GuestPathNotFoundError,
  GuestfishError,
  GUESTFISH_MISSING,
  withSnapshotFiles,
  type GuestEntry,
  type GetResult,
  type GuestFilesystem,
} from './files/index.js';
