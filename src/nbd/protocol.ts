/**
 * NBD wire constants, named as in the protocol specification (NetworkBlockDevice/nbd doc/proto.md).
 * Shared by the client and the server.
 */
export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const NBD_REP_MAGIC = 0x0003e889045565a9n;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

export const NBD_FLAG = {
  NBD_FLAG_FIXED_NEWSTYLE: 1 << 0,
  NBD_FLAG_NO_ZEROES: 1 << 1,
} as const;

export const NBD_FLAG_C = {
  NBD_FLAG_C_FIXED_NEWSTYLE: 1 << 0,
  NBD_FLAG_C_NO_ZEROES: 1 << 1,
} as const;

/** Transmission flags (u16). */
export const NBD_FLAG_T = {
  NBD_FLAG_HAS_FLAGS: 1 << 0,
  NBD_FLAG_READ_ONLY: 1 << 1,
  NBD_FLAG_SEND_FLUSH: 1 << 2,
  NBD_FLAG_SEND_FUA: 1 << 3,
  NBD_FLAG_ROTATIONAL: 1 << 4,
  NBD_FLAG_SEND_TRIM: 1 << 5,
  NBD_FLAG_SEND_WRITE_ZEROES: 1 << 6,
  NBD_FLAG_SEND_DF: 1 << 7,
  NBD_FLAG_CAN_MULTI_CONN: 1 << 8,
  NBD_FLAG_SEND_RESIZE: 1 << 9,
  NBD_FLAG_SEND_CACHE: 1 << 10,
  NBD_FLAG_SEND_FAST_ZERO: 1 << 11,
} as const;

export const NBD_OPT = {
  NBD_OPT_EXPORT_NAME: 1,
  NBD_OPT_ABORT: 2,
  NBD_OPT_LIST: 3,
  NBD_OPT_STARTTLS: 5,
  NBD_OPT_INFO: 6,
  NBD_OPT_GO: 7,
  NBD_OPT_STRUCTURED_REPLY: 8,
  NBD_OPT_LIST_META_CONTEXT: 9,
  NBD_OPT_SET_META_CONTEXT: 10,
} as const;

export const NBD_REP = {
  NBD_REP_ACK: 1,
  NBD_REP_SERVER: 2,
  NBD_REP_INFO: 3,
  NBD_REP_META_CONTEXT: 4,
  NBD_REP_ERR_UNSUP: 2 ** 31 + 1,
  NBD_REP_ERR_POLICY: 2 ** 31 + 2,
  NBD_REP_ERR_INVALID: 2 ** 31 + 3,
  NBD_REP_ERR_PLATFORM: 2 ** 31 + 4,
  NBD_REP_ERR_TLS_REQD: 2 ** 31 + 5,
  NBD_REP_ERR_UNKNOWN: 2 ** 31 + 6,
  NBD_REP_ERR_SHUTDOWN: 2 ** 31 + 7,
  NBD_REP_ERR_BLOCK_SIZE_REQD: 2 ** 31 + 8,
  NBD_REP_ERR_TOO_BIG: 2 ** 31 + 9,
  NBD_REP_ERR_EXT_HEADER_REQD: 2 ** 31 + 10,
} as const;
export const NBD_REP_FLAG_ERROR = 2 ** 31;

export const NBD_INFO = {
  NBD_INFO_EXPORT: 0,
  NBD_INFO_NAME: 1,
  NBD_INFO_DESCRIPTION: 2,
  NBD_INFO_BLOCK_SIZE: 3,
} as const;

export const NBD_CMD = {
  NBD_CMD_READ: 0,
  NBD_CMD_WRITE: 1,
  NBD_CMD_DISC: 2,
  NBD_CMD_FLUSH: 3,
  NBD_CMD_TRIM: 4,
  NBD_CMD_CACHE: 5,
  NBD_CMD_WRITE_ZEROES: 6,
  NBD_CMD_BLOCK_STATUS: 7,
} as const;

export const NBD_CMD_FLAG = {
  NBD_CMD_FLAG_FUA: 1 << 0,
  NBD_CMD_FLAG_NO_HOLE: 1 << 1,
  NBD_CMD_FLAG_DF: 1 << 2,
  NBD_CMD_FLAG_REQ_ONE: 1 << 3,
  NBD_CMD_FLAG_FAST_ZERO: 1 << 4,
} as const;

export const NBD_REPLY_FLAG_DONE = 1 << 0;

export const NBD_REPLY_TYPE = {
  NBD_REPLY_TYPE_NONE: 0,
  NBD_REPLY_TYPE_OFFSET_DATA: 1,
  NBD_REPLY_TYPE_OFFSET_HOLE: 2,
  NBD_REPLY_TYPE_BLOCK_STATUS: 5,
  NBD_REPLY_TYPE_ERROR: 32769,
  NBD_REPLY_TYPE_ERROR_OFFSET: 32770,
} as const;
export const NBD_REPLY_TYPE_ERROR_BIT = 1 << 15;

/** base:allocation flags. */
export const NBD_STATE = {
  NBD_STATE_HOLE: 1 << 0,
  NBD_STATE_ZERO: 1 << 1,
} as const;
/** qemu:dirty-bitmap flags. */
export const NBD_STATE_DIRTY = 1 << 0;

export const NBD_ERRNO = {
  NBD_EPERM: 1,
  NBD_EIO: 5,
  NBD_ENOMEM: 12,
  NBD_EINVAL: 22,
  NBD_ENOSPC: 28,
  NBD_EOVERFLOW: 75,
  NBD_ENOTSUP: 95,
  NBD_ESHUTDOWN: 108,
} as const;

export function nbdErrnoName(errno: number): string {
  for (const [k, v] of Object.entries(NBD_ERRNO)) if (v === errno) return k.replace('NBD_', '');
  return `errno ${errno}`;
}

export const BASE_ALLOCATION = 'base:allocation';
export const QEMU_DIRTY_BITMAP_PREFIX = 'qemu:dirty-bitmap:';
/** qemu:allocation-depth: the whole u32 is the depth (0 unallocated, 1 top layer, 2 backing, ...). */
export const QEMU_ALLOCATION_DEPTH = 'qemu:allocation-depth';
/** Largest payload a portable client sends or expects without a BLOCK_SIZE constraint. */
export const DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024;
/** The IANA port of NBD. */
export const NBD_DEFAULT_PORT = 10809;
/** Longest name or query string the spec allows. */
export const NBD_MAX_STRING = 4096;

/** Fixed wire sizes (bytes). */
export const NBD_SIZE = {
  GREETING: 18,
  CLIENT_FLAGS: 4,
  OPTION_HEADER: 16,
  OPTION_REPLY_HEADER: 20,
  EXPORT_NAME_REPLY: 134,
  EXPORT_NAME_REPLY_NO_ZEROES: 10,
  REQUEST_HEADER: 28,
  SIMPLE_REPLY_HEADER: 16,
  STRUCTURED_REPLY_HEADER: 20,
} as const;

export type NbdOpt = (typeof NBD_OPT)[keyof typeof NBD_OPT];
export type NbdCmd = (typeof NBD_CMD)[keyof typeof NBD_CMD];
export type NbdReplyType = (typeof NBD_REPLY_TYPE)[keyof typeof NBD_REPLY_TYPE];
export type NbdErrno = (typeof NBD_ERRNO)[keyof typeof NBD_ERRNO];

function nameOf(table: Record<string, number>, value: number, prefix: string): string {
  for (const [k, v] of Object.entries(table)) if (v === value) return k.slice(prefix.length);
  return String(value);
}

/** `GO`, `READ`, `ERR_UNSUP`: the spec name without its prefix (for messages). */
export function nbdOptName(opt: number): string {
  return nameOf(NBD_OPT, opt, 'NBD_OPT_');
}
export function nbdCmdName(cmd: number): string {
  return nameOf(NBD_CMD, cmd, 'NBD_CMD_');
}
export function nbdRepName(rep: number): string {
  return nameOf(NBD_REP, rep, 'NBD_REP_');
}

/** Node errno codes mapped to the NBD error a server sends for them. */
export function nbdErrnoFromCode(code: string | undefined): number {
  switch (code) {
    case 'EPERM':
    case 'EACCES':
    case 'EROFS':
      return NBD_ERRNO.NBD_EPERM;
    case 'ENOMEM':
      return NBD_ERRNO.NBD_ENOMEM;
    case 'EINVAL':
      return NBD_ERRNO.NBD_EINVAL;
    case 'ENOSPC':
    case 'EDQUOT':
    case 'EFBIG':
      return NBD_ERRNO.NBD_ENOSPC;
    case 'ENOTSUP':
    case 'EOPNOTSUPP':
      return NBD_ERRNO.NBD_ENOTSUP;
    default:
      return NBD_ERRNO.NBD_EIO;
  }
}
