/**
 * Server side of the fixed-newstyle handshake, as plain sequential code over exact-length reads.
 * Every option gets its final reply before the next is read; unknown options get ERR_UNSUP,
 * malformed ones ERR_INVALID, oversized ones are skipped and refused with ERR_TOO_BIG. A client
 * that breaks framing (bad magic, unknown client flags) is disconnected.
 */
import type { ByteQueue } from '../byte-queue.js';
import { NbdProtocolError } from '../errors.js';
import {
  BASE_ALLOCATION,
  DEFAULT_MAX_PAYLOAD,
  NBD_FLAG,
  NBD_FLAG_C,
  NBD_FLAG_T,
  NBD_INFO,
  NBD_OPT,
  NBD_REP,
  NBD_SIZE,
} from '../protocol.js';
import {
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeOptionReply,
  encodeRepMetaContext,
  encodeRepServer,
} from '../wire.js';
import { isWritable, type ExportBlockSize, type NbdExport } from './export.js';

/** Longest option payload accepted (names and queries are ≤ 4 KiB each). */
const MAX_OPTION_BYTES = 64 * 1024;
/** Options one connection may send before it is considered abusive. */
const MAX_OPTIONS = 1024;
/** Context id of base:allocation on every connection. */
export const BASE_ALLOCATION_ID = 1;

export const DEFAULT_EXPORT_BLOCK_SIZE: ExportBlockSize = {
  minimum: 1,
  preferred: 4096,
  maximum: DEFAULT_MAX_PAYLOAD,
};

/** The client left during the handshake (ABORT, or a close): not an error. */
export class ClientGone extends Error {}

export interface HandshakeIo {
  queue: ByteQueue;
  write(b: Buffer): void;
}

export interface Negotiated {
  exp: NbdExport;
  structured: boolean;
  /** base:allocation was selected for this export. */
  baseAllocation: boolean;
  flags: number;
}

export function transmissionFlags(e: NbdExport, structured: boolean): number {
  let f = NBD_FLAG_T.NBD_FLAG_HAS_FLAGS | NBD_FLAG_T.NBD_FLAG_SEND_FLUSH | NBD_FLAG_T.NBD_FLAG_SEND_CACHE;
  if (isWritable(e))
    f |= NBD_FLAG_T.NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_T.NBD_FLAG_SEND_TRIM | NBD_FLAG_T.NBD_FLAG_SEND_FUA;
  else f |= NBD_FLAG_T.NBD_FLAG_READ_ONLY | NBD_FLAG_T.NBD_FLAG_CAN_MULTI_CONN;
  if (structured) f |= NBD_FLAG_T.NBD_FLAG_SEND_DF;
  return f;
}

export async function serverHandshake(
  io: HandshakeIo,
  exports: ReadonlyMap<string, NbdExport>,
): Promise<Negotiated> {
  io.write(encodeGreeting(NBD_FLAG.NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG.NBD_FLAG_NO_ZEROES));
  const cflags = (await io.queue.read(NBD_SIZE.CLIENT_FLAGS)).readUInt32BE(0);
  if (cflags & ~(NBD_FLAG_C.NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C.NBD_FLAG_C_NO_ZEROES))
    throw new NbdProtocolError(`unknown client flags 0x${cflags.toString(16)}`);
  const fixed = (cflags & NBD_FLAG_C.NBD_FLAG_C_FIXED_NEWSTYLE) !== 0;
  const noZeroes = (cflags & NBD_FLAG_C.NBD_FLAG_C_NO_ZEROES) !== 0;
  let structured = false;
  /** The export name SET_META_CONTEXT selected base:allocation for, if any. */
  let contextFor: string | undefined;

  const reply = (opt: number, type: number, data?: Buffer | string): void =>
    io.write(encodeOptionReply(opt, type, typeof data === 'string' ? Buffer.from(data, 'utf8') : data));

  for (let n = 0; ; n++) {
    if (n >= MAX_OPTIONS) throw new NbdProtocolError('too many options');
    const h = decodeOptionHeader(await io.queue.read(NBD_SIZE.OPTION_HEADER));
    const opt = h.option;
    if (h.length > MAX_OPTION_BYTES) {
      if (opt === NBD_OPT.NBD_OPT_EXPORT_NAME || !fixed) throw new NbdProtocolError('option too long');
      await io.queue.readInto(undefined, 0, h.length); // keep the stream in sync
      reply(opt, NBD_REP.NBD_REP_ERR_TOO_BIG, 'option too long');
      continue;
    }
    const data = h.length ? Buffer.from(await io.queue.read(h.length)) : Buffer.alloc(0);
    switch (opt) {
      case NBD_OPT.NBD_OPT_EXPORT_NAME: {
        const exp = exports.get(data.toString('utf8'));
        if (!exp) throw new ClientGone(); // the protocol's only answer: hang up
        const flags = transmissionFlags(exp, structured);
        io.write(encodeExportNameReply(exp.sizeBytes, flags, noZeroes));
        return { exp, structured, baseAllocation: structured && contextFor === exp.name, flags };
      }
      case NBD_OPT.NBD_OPT_ABORT:
        reply(opt, NBD_REP.NBD_REP_ACK);
        throw new ClientGone();
      case NBD_OPT.NBD_OPT_LIST:
        if (data.length !== 0) {
          reply(opt, NBD_REP.NBD_REP_ERR_INVALID, 'LIST takes no data');
          break;
        }
        for (const e of exports.values())
          reply(opt, NBD_REP.NBD_REP_SERVER, encodeRepServer(e.name, e.description ?? ''));
        reply(opt, NBD_REP.NBD_REP_ACK);
        break;
      case NBD_OPT.NBD_OPT_STRUCTURED_REPLY:
        if (data.length !== 0) reply(opt, NBD_REP.NBD_REP_ERR_INVALID, 'STRUCTURED_REPLY takes no data');
        else {
          structured = true;
          reply(opt, NBD_REP.NBD_REP_ACK);
        }
        break;
      case NBD_OPT.NBD_OPT_LIST_META_CONTEXT:
      case NBD_OPT.NBD_OPT_SET_META_CONTEXT: {
        const set = opt === NBD_OPT.NBD_OPT_SET_META_CONTEXT;
        const p = decodeMetaContextRequest(data);
        if (!p) {
          reply(opt, NBD_REP.NBD_REP_ERR_INVALID, 'malformed meta context request');
          break;
        }
        if (!structured) {
          reply(opt, NBD_REP.NBD_REP_ERR_INVALID, 'negotiate structured replies first');
          break;
        }
        if (!exports.has(p.name)) {
          reply(opt, NBD_REP.NBD_REP_ERR_UNKNOWN, `no export '${p.name}'`);
          break;
        }
        // base:allocation is the only context; LIST also matches the namespace query "base:".
        const matches = (q: string): boolean => q === BASE_ALLOCATION || (!set && q === 'base:');
        const hit = set ? p.queries.some(matches) : p.queries.length === 0 || p.queries.some(matches);
        if (set) contextFor = hit ? p.name : undefined;
        if (hit)
          reply(
            opt,
            NBD_REP.NBD_REP_META_CONTEXT,
            encodeRepMetaContext(set ? BASE_ALLOCATION_ID : 0, BASE_ALLOCATION),
          );
        reply(opt, NBD_REP.NBD_REP_ACK);
        break;
      }
      case NBD_OPT.NBD_OPT_INFO:
      case NBD_OPT.NBD_OPT_GO: {
        const p = decodeInfoRequest(data);
        if (!p) {
          reply(opt, NBD_REP.NBD_REP_ERR_INVALID, 'malformed INFO/GO request');
          break;
        }
        const exp = exports.get(p.name);
        if (!exp) {
          reply(opt, NBD_REP.NBD_REP_ERR_UNKNOWN, `no export '${p.name}'`);
          break;
        }
        const flags = transmissionFlags(exp, structured);
        const bs = exp.blockSize ?? DEFAULT_EXPORT_BLOCK_SIZE;
        reply(opt, NBD_REP.NBD_REP_INFO, encodeInfoExport(exp.sizeBytes, flags));
        // Sent whether asked or not: our constraints are the defaults unless the export says otherwise.
        reply(opt, NBD_REP.NBD_REP_INFO, encodeInfoBlockSize(bs.minimum, bs.preferred, bs.maximum));
        if (p.infos.includes(NBD_INFO.NBD_INFO_NAME))
          reply(opt, NBD_REP.NBD_REP_INFO, encodeInfoString(NBD_INFO.NBD_INFO_NAME, exp.name));
        if (p.infos.includes(NBD_INFO.NBD_INFO_DESCRIPTION) && exp.description)
          reply(opt, NBD_REP.NBD_REP_INFO, encodeInfoString(NBD_INFO.NBD_INFO_DESCRIPTION, exp.description));
        reply(opt, NBD_REP.NBD_REP_ACK);
        if (opt === NBD_OPT.NBD_OPT_GO)
          return { exp, structured, baseAllocation: structured && contextFor === exp.name, flags };
        break;
      }
      case NBD_OPT.NBD_OPT_STARTTLS:
        reply(opt, NBD_REP.NBD_REP_ERR_UNSUP, 'this server does not offer TLS');
        break;
      default:
        if (!fixed) throw new NbdProtocolError(`unknown option ${opt} from a non-fixed-newstyle client`);
        reply(opt, NBD_REP.NBD_REP_ERR_UNSUP, `unknown option ${opt}`);
    }
  }
}
