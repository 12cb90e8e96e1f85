export {
  NbdClient,
  type NbdConnectOptions,
  type NbdTlsOptions,
  type NbdExtent,
  type BlockSizeConstraints,
  type ExportDetails,
  type WriteOptions,
  type WriteZeroesOptions,
} from './client/client.js';
export { walkExtents, type MergedExtent } from './client/extents.js';
export { parseNbdUri, formatNbdUri, type NbdUri } from './uri.js';
export { startQemuNbd, reapStaleQemuNbd, type QemuNbdOptions, type QemuNbdExport } from './qemu-nbd.js';
export {
  NbdClosedError,
  NbdListenError,
  NbdOptionError,
  NbdProtocolError,
  NbdRequestError,
  NbdTimeoutError,
} from './errors.js';
export * from './protocol.js';
export { NbdServer, type NbdServerOptions } from './server/server.js';
export {
  isWritable,
  releasePieces,
  settlePieces,
  type NbdExport,
  type ExportExtent,
  type ExportBlockSize,
  type ReadPiece,
} from './server/export.js';
export { FileExport, MemoryExport } from './server/exports.js';
export { CowOverlay } from './server/overlay.js';
