/**
 * Public surface of the libvirt layer: a TypeScript client for libvirt's remote RPC protocol
 * (unix socket, TCP or ssh), typed errors, domain events, the domain XML model and the backup /
 * checkpoint XML builders. See docs/libvirt.md.
 */
export {
  LibvirtClient,
  type LibvirtConnectOptions,
  type LibvirtVersion,
  type DomainStateInfo,
  type DomainInfo,
  type JobInfo,
  type BlockJobInfo,
  type SubscribeOptions,
} from './client.js';
export {
  LibvirtError,
  LibvirtConnectionError,
  LibvirtProtocolError,
  LibvirtUriError,
  isLibvirtError,
  isLibvirtConnectionError,
  isNoDomain,
  isNoDomainCheckpoint,
  isNoDomainBackup,
  isOperationInvalid,
  isOperationUnsupported,
  isAgentUnresponsive,
  isCheckpointInconsistent,
  isInvalidArg,
  isDomainExists,
  isOperationFailed,
  type RemoteErrorFields,
} from './errors.js';
export {
  DomainEventSubscription,
  typedParamsToRecord,
  type DomainEvent,
  type DomainEventKind,
  type LifecycleEvent,
  type JobCompletedEvent,
  type JobStats,
  type JobStatsFields,
  type TypedParamScalar,
} from './events.js';
export {
  VIR_ERR,
  virErrorCodeName,
  virErrorDomainName,
  type VirErrorCodeName,
} from './protocol/error-names.js';
export * from './protocol/constants.js';
export type {
  DomainRef,
  CheckpointRef,
  SnapshotRef,
  TypedParam,
  TypedParamValue,
} from './protocol/remote.js';
export {
  parseLibvirtUri,
  localSocketPath,
  type LibvirtUri,
  type LibvirtTransportKind,
} from './transport/uri.js';
export {
  parseDomainXml,
  type DomainModel,
  type DomainDisk,
  type DiskSource,
  type BackingStore,
  type DomainOs,
  type DomainLoader,
  type DomainNvram,
  type DiskDevice,
  type DiskType,
} from './domain-xml.js';
export {
  buildPullBackupXml,
  buildCheckpointXml,
  parseBackupXml,
  parseCheckpointXml,
  type BackupServer,
  type BackupDiskSpec,
  type PullBackupSpec,
  type CheckpointDiskSpec,
  type CheckpointSpec,
  type BackupInfo,
  type BackupDiskInfo,
  type CheckpointInfo,
} from './backup-xml.js';
export {
  buildDiskSnapshotXml,
  domainCapsBackupSupport,
  hasIncrementalBackupCapability,
  type SnapshotDiskSpec,
  type DiskSnapshotSpec,
} from './snapshot-xml.js';
export { escapeXml, LibvirtXmlError } from './xml-util.js';
