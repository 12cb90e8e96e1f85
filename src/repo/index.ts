export type { Backend, BackendCapabilities, ObjectInfo, Payload, PutOptions } from './backend/backend.js';
export { payloadConcat, payloadLength, payloadParts } from './backend/backend.js';
export { LocalBackend } from './backend/local.js';
export { MemoryBackend } from './backend/memory.js';
export { openBackend, backendSpecFor, specOf, type BackendSpec, type OpenRuntime } from './backend/open.js';
export { S3Backend, s3RequestCounts, type S3RequestCounts, type S3Spec } from './backend/s3.js';
export { parseS3Location, formatS3Location, isS3Location, type S3Location } from './backend/s3-location.js';
export {
  RetryBackend,
  RETRY_DEFAULTS,
  isRetryable,
  type RetryOptions,
  type RetryRuntime,
} from './backend/retry.js';
export { LimitBackend } from './backend/limit.js';
export { ReadOnlyBackend } from './backend/readonly.js';
export { FaultBackend, type FaultRule } from './backend/fault.js';
export { BackendWrapper, type BackendOp } from './backend/wrapper.js';
export { BlobFormatError } from './blob.js';
export { isAllZero, isChunkId, type ChunkId } from './chunk-id.js';
export {
  BlobCodec,
  codecSpec,
  ID_KEY_BYTES,
  ENC_KEY_BYTES,
  RECORD_OVERHEAD,
  TRAILER_OVERHEAD,
  PACK_HEADER_BYTES,
  OBJECT_HEADER_BYTES,
  OBJECT_BINDER_BYTES,
  MAX_OBJECT_PLAINTEXT_BYTES,
  FLAG_ENCRYPTED,
  type CodecKeys,
  type CodecSpec,
  type ObjectKindV2,
  type RecordKind,
  type RecordMeta,
} from './codec.js';
export {
  checkRepository,
  checkFailure,
  describeProblem,
  describeGroup,
  groupProblems,
  parseDataSubset,
  formatDataSubset,
  packPart,
  selectPacks,
  type DataSubset,
  type ProblemGroup,
  type RepairedObject,
  type CheckOptions,
  type CheckProblem,
  type CheckProblemKind,
  type CheckResult,
} from './check.js';
export { PackStore, ChunksLostError, type PutResult } from './pack-store.js';
export {
  runBenchmark,
  BENCHMARK_KEY_PREFIX,
  type BenchmarkFigure,
  type BenchmarkOptions,
  type BenchmarkResult,
  type BenchmarkStep,
} from './benchmark.js';
export {
  canonicalJson,
  configMac,
  createKeySlot,
  DEFAULT_KDF,
  generateMasterKey,
  KDF_BOUNDS,
  keyIdOf,
  KEY_SLOT_PREFIX,
  KeySlotNotFoundError,
  listKeySlots,
  MASTER_KEY_BYTES,
  MAX_KEY_SLOT_BYTES,
  MAX_KEY_SLOTS_TRIED,
  NoKeySlotError,
  dirKekCache,
  removeKeySlot,
  splitMasterKey,
  unlockMasterKey,
  WrongPasswordError,
  type DamagedKeySlot,
  type KekCache,
  type KeySlot,
  type KeySlotJson,
  type OnDamagedKeySlot,
  type ScryptParams,
} from './keys.js';
export { newConfig, parseCompression, type RepoConfig, type InitOptions } from './config.js';
export { DiskIndex, slotCountFor } from './disk-index.js';
export {
  encodePage,
  readTree,
  treePages,
  treeShape,
  writeTree,
  INNER_PAGE_KIND,
  LEAF_PAGE_KIND,
  ZERO_ROOT,
  type PageKind,
  type PageStore,
  type TreePage,
  type TreeShape,
  type WriteTreeResult,
} from './disk-tree.js';
export * from './errors.js';
export * as format from './format.js';
export { Repository, defaultHost, type OpenOptions, type SnapshotListing } from './repository.js';
export {
  MANIFEST_LIMITS,
  SnapshotDamagedError,
  validateManifest,
  damagedManifestHint,
} from './manifest-schema.js';
export {
  encodeManifest,
  decodeManifest,
  shortId,
  emptyDiskStats,
  type Snapshot,
  type SnapshotId,
  type SnapshotDisk,
  type SnapshotFile,
  type SnapshotManifest,
  type SnapshotOrigin,
  type DiskStats,
} from './snapshot.js';
export { resolveSnapshotRef, byTime, MIN_ID_PREFIX } from './snapshot-ref.js';
export {
  CHECK_RECORD_KEY,
  checkRecordOf,
  readCheckRecord,
  writeCheckRecord,
  type CheckRecord,
  type CheckRecordRead,
} from './check-record.js';
export {
  repoStats,
  type GrowthPoint,
  type RepoStats,
  type RepoStatsDetail,
  type StatsOptions,
  type VmStats,
} from './stats.js';
export {
  MAX_PACK_BYTES,
  MAX_PACK_RECORDS,
  PACK_FOOTER_BYTES,
  PACK_VERSION,
  PackWriter,
  TRAILER_ENTRY_BYTES,
  TRAILER_READ_BYTES,
  kindFits as recordKindAllowed,
  packKeyOf,
  parsePack,
  parsePackHeader,
  parsePackKey,
  readPackTrailer,
  verifyPack,
  type PackHeader,
  type PackKind,
  type PackProblem,
  type SealedPack,
} from './pack.js';
export { ChunkIndex, codecSectionSealer } from './chunk-index/index.js';
export {
  applyRetention,
  describePolicy,
  formatDuration,
  isEmptyPolicy,
  parseDuration,
  parseKeepCount,
  validatePolicy,
  type DurationSpec,
  type RetentionDecision,
  type RetentionItem,
  type RetentionPolicy,
} from './retention.js';
export {
  Session,
  SessionExpiredError,
  SESSION_TTL_MS,
  SESSION_HEARTBEAT_MS,
  type ListedSession,
  type SessionInfo,
} from './session.js';
export { syncSnapshots, checkCompatible, type SyncOptions, type SyncResult } from './sync.js';
export { prune, type PruneOptions, type PrunePhase, type PruneResult } from './gc/prune.js';
export { IdSet } from './gc/id-set.js';
export {
  GC_PREFIX,
  gcKey,
  pendingGenerations,
  readGenerations,
  type CondemnedStep,
  type DeletedStep,
  type Generation,
  type WaitStep,
} from './gc/steps.js';
export {
  MAINTENANCE_LOCK,
  MaintenanceLockedError,
  lockIsStale,
  readLock,
  releaseLock,
  takeLock,
  type LockHolder,
} from './gc/lock.js';
