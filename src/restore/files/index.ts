export { GuestFiles, GuestPathError, type GuestEntry, type GetResult } from './guest-files.js';
export { GuestfishError, GUESTFISH_MISSING, gfQuote, type GuestDrive } from './guestfish.js';
export { extractTar, TarFormatError, type ExtractResult } from './extract.js';
export {
  GuestPathNotFoundError,
  driveLetters,
  filesystemName,
  parseFilesystems,
  pathComponents,
  resolveGuestPath,
  type GuestFilesystem,
  type ResolvedPath,
} from './paths.js';
export { withSnapshotFiles, type SnapshotFilesOptions } from './session.js';
