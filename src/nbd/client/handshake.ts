/**
 * Client side of the fixed-newstyle handshake: plain sequential code over exact-length reads.
 * Options go one at a time, each until its final reply (doc/proto.md "Option haggling"):
 * STARTTLS (if asked) → STRUCTURED_REPLY → SET_META_CONTEXT → GO, falling back to EXPORT_NAME
 * when the server does not know GO. LIST, INFO and LIST_META_CONTEXT are for haggling-only
 * sessions that end with ABORT.
 */
import type { ByteQueue } from '../byte-queue.js';
import { NbdClosedError, NbdOptionError, NbdProtocolError } from '../errors.js';
import {
  DEFAULT_MAX_PAYLOAD,
  NBD_FLAG,
  NBD_FLAG_C,
  NBD_INFO,
  NBD_OPT,
  NBD_REP,
  NBD_REP_FLAG_ERROR,
  NBD_SIZE,
  nbdOptName,
  nbdRepName,
} from '../protocol.js';
import type { TlsOptions, Transport } from '../transport.js';
import {
  decodeGreeting,
  decodeInfoReply,
  decodeOptionReplyHeader,
  decodeRepMetaContext,
  decodeRepServer,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  encodeU32,
  safeU64,
  type ExportInfo,
} from '../wire.js';

export interface BlockSizeConstraints {
  minimum: number;
  preferred: number;
  maximum: number;
}

export const DEFAULT_BLOCK_SIZE: Readonly<BlockSizeConstraints> = {
  minimum: 1,
  preferred: 4096,
  maximum: DEFAULT_MAX_PAYLOAD,
};

/** Longest option reply accepted (LIST descriptions, messages). */
const MAX_OPTION_REPLY_BYTES = 16 * 1024 * 1024;

interface OptionReply {
  type: number;
  data: Buffer;
}

/** One option exchange at a time over the handshake byte queue. */
export class OptionChannel {
  constructor(
    readonly transport: Transport,
    readonly queue: ByteQueue,
  ) {}

  send(opt: number, data?: Buffer): void {
    this.transport.write(encodeOption(opt, data));
  }

  async reply(opt: number): Promise<OptionReply> {
    const h = decodeOptionReplyHeader(await this.queue.read(NBD_SIZE.OPTION_REPLY_HEADER));
    if (h.option !== opt)
      throw new NbdProtocolError(
        `reply to option ${nbdOptName(h.option)} while waiting for ${nbdOptName(opt)}`,
      );
    if (h.length > MAX_OPTION_REPLY_BYTES) throw new NbdProtocolError(`option reply of ${h.length} bytes`);
    const data = h.length ? Buffer.from(await this.queue.read(h.length)) : Buffer.alloc(0);
    if (h.type === NBD_REP.NBD_REP_ERR_SHUTDOWN) throw new NbdClosedError('the NBD server is shutting down');
    return { type: h.type, data };
  }
}

function refusal(opt: number, r: OptionReply, what: string): NbdOptionError {
  const msg = r.data.length ? `: ${r.data.toString('utf8')}` : '';
  const hint =
    r.type === NBD_REP.NBD_REP_ERR_TLS_REQD
      ? 'the server requires TLS: connect with TLS options (a CA certificate)'
      : r.type === NBD_REP.NBD_REP_ERR_UNKNOWN
        ? 'list the exports the server offers (nbdinfo --list)'
        : undefined;
  return new NbdOptionError(
    r.type,
    `the NBD server refused ${what} (${nbdOptName(opt)}: ${nbdRepName(r.type)})${msg}`,
    hint,
  );
}

const isError = (type: number): boolean => (type & NBD_REP_FLAG_ERROR) !== 0;

/** Reads the greeting and sends the client flags; returns whether NO_ZEROES was agreed. */
export async function greet(ch: OptionChannel): Promise<{ noZeroes: boolean }> {
  const flags = decodeGreeting(await ch.queue.read(NBD_SIZE.GREETING));
  if (!(flags & NBD_FLAG.NBD_FLAG_FIXED_NEWSTYLE))
    throw new NbdProtocolError('the server does not support the fixed newstyle handshake');
  const noZeroes = (flags & NBD_FLAG.NBD_FLAG_NO_ZEROES) !== 0;
  ch.transport.write(
    encodeU32(NBD_FLAG_C.NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_C.NBD_FLAG_C_NO_ZEROES : 0)),
  );
  return { noZeroes };
}

/** NBD_OPT_STARTTLS, then TLS on the same socket; haggling continues encrypted. */
export async function startTls(ch: OptionChannel, tls: TlsOptions, host: string | undefined): Promise<void> {
  ch.send(NBD_OPT.NBD_OPT_STARTTLS);
  const r = await ch.reply(NBD_OPT.NBD_OPT_STARTTLS);
  if (r.type !== NBD_REP.NBD_REP_ACK) throw refusal(NBD_OPT.NBD_OPT_STARTTLS, r, 'TLS');
  if (ch.queue.buffered !== 0) throw new NbdProtocolError('plaintext bytes after the STARTTLS reply');
  await ch.transport.startTls(tls, host);
}

export interface NegotiateOptions {
  exportName: string;
  /** Ask for structured replies (default true). */
  structuredReplies: boolean;
  metaContexts: readonly string[];
  /** A requested meta context the server does not give is an error (default) or just absent. */
  requireMetaContexts: boolean;
}

export interface Negotiated {
  sizeBytes: number;
  transmissionFlags: number;
  blockSize: BlockSizeConstraints;
  structuredReplies: boolean;
  /** Selected meta contexts: name → id. */
  contexts: Map<string, number>;
  /** The server did not know NBD_OPT_GO, so NBD_OPT_EXPORT_NAME was used. */
  usedExportName: boolean;
}

/** Negotiates structured replies and meta contexts, then enters transmission with GO. */
export async function negotiate(
  ch: OptionChannel,
  opts: NegotiateOptions,
  noZeroes: boolean,
): Promise<Negotiated> {
  const { exportName } = opts;
  let structured = false;
  if (opts.structuredReplies) {
    ch.send(NBD_OPT.NBD_OPT_STRUCTURED_REPLY);
    const r = await ch.reply(NBD_OPT.NBD_OPT_STRUCTURED_REPLY);
    if (r.type === NBD_REP.NBD_REP_ACK) structured = true;
    else if (!isError(r.type))
      throw new NbdProtocolError(`unexpected ${nbdRepName(r.type)} to STRUCTURED_REPLY`);
  }

  const contexts = new Map<string, number>();
  const wanted = opts.metaContexts;
  if (wanted.length > 0 && structured) {
    ch.send(NBD_OPT.NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest(exportName, wanted));
    for (;;) {
      const r = await ch.reply(NBD_OPT.NBD_OPT_SET_META_CONTEXT);
      if (r.type === NBD_REP.NBD_REP_ACK) break;
      if (r.type === NBD_REP.NBD_REP_META_CONTEXT) {
        const c = decodeRepMetaContext(r.data);
        contexts.set(c.name, c.id);
        continue;
      }
      if (!isError(r.type))
        throw new NbdProtocolError(`unexpected ${nbdRepName(r.type)} to SET_META_CONTEXT`);
      if (r.type !== NBD_REP.NBD_REP_ERR_UNSUP || opts.requireMetaContexts)
        throw refusal(NBD_OPT.NBD_OPT_SET_META_CONTEXT, r, `the meta contexts ${wanted.join(', ')}`);
      contexts.clear();
      break;
    }
  }
  if (opts.requireMetaContexts && wanted.length > 0) {
    if (!structured)
      throw new NbdOptionError(
        NBD_REP.NBD_REP_ERR_UNSUP,
        'the NBD server has no structured replies, so it cannot report block status',
      );
    const missing = wanted.filter((w) => !contexts.has(w));
    if (missing.length)
      throw new NbdOptionError(
        NBD_REP.NBD_REP_ERR_UNKNOWN,
        `NBD export '${exportName}' does not offer ${missing.join(', ')}`,
      );
  }

  ch.send(NBD_OPT.NBD_OPT_GO, encodeInfoRequest(exportName, [NBD_INFO.NBD_INFO_BLOCK_SIZE]));
  const info: Partial<ExportInfo> = {};
  for (;;) {
    const r = await ch.reply(NBD_OPT.NBD_OPT_GO);
    if (r.type === NBD_REP.NBD_REP_ACK) break;
    if (r.type === NBD_REP.NBD_REP_INFO) {
      decodeInfoReply(r.data, info);
      continue;
    }
    if (r.type === NBD_REP.NBD_REP_ERR_UNSUP)
      return exportNameFallback(ch, opts, noZeroes, structured, contexts);
    if (isError(r.type)) throw refusal(NBD_OPT.NBD_OPT_GO, r, `export '${exportName}'`);
    throw new NbdProtocolError(`unexpected ${nbdRepName(r.type)} to GO`);
  }
  if (info.sizeBytes === undefined || info.transmissionFlags === undefined)
    throw new NbdProtocolError('GO succeeded without NBD_INFO_EXPORT');
  return {
    sizeBytes: info.sizeBytes,
    transmissionFlags: info.transmissionFlags,
    blockSize: checkBlockSize(info.blockSize),
    structuredReplies: structured,
    contexts,
    usedExportName: false,
  };
}

function checkBlockSize(b: BlockSizeConstraints | undefined): BlockSizeConstraints {
  if (!b) return { ...DEFAULT_BLOCK_SIZE };
  const pow2 = (n: number): boolean => n > 0 && (n & (n - 1)) === 0;
  if (!pow2(b.minimum) || b.minimum > 65536 || !pow2(b.preferred) || b.maximum < b.minimum)
    throw new NbdProtocolError(`invalid block size constraints ${b.minimum}/${b.preferred}/${b.maximum}`);
  return { ...b };
}

/** Old servers: EXPORT_NAME answers with size + flags (+ 124 zeros) and no reply header. */
async function exportNameFallback(
  ch: OptionChannel,
  opts: NegotiateOptions,
  noZeroes: boolean,
  structured: boolean,
  contexts: Map<string, number>,
): Promise<Negotiated> {
  ch.send(NBD_OPT.NBD_OPT_EXPORT_NAME, Buffer.from(opts.exportName, 'utf8'));
  let b: Buffer;
  try {
    b = await ch.queue.read(noZeroes ? NBD_SIZE.EXPORT_NAME_REPLY_NO_ZEROES : NBD_SIZE.EXPORT_NAME_REPLY);
  } catch (err) {
    if (err instanceof NbdClosedError)
      throw new NbdOptionError(
        NBD_REP.NBD_REP_ERR_UNKNOWN,
        `the NBD server closed the connection on EXPORT_NAME '${opts.exportName}' (no such export?)`,
      );
    throw err;
  }
  return {
    sizeBytes: safeU64(b, 0, 'export size'),
    transmissionFlags: b.readUInt16BE(8),
    blockSize: { ...DEFAULT_BLOCK_SIZE },
    structuredReplies: structured,
    contexts,
    usedExportName: true,
  };
}

/** NBD_OPT_LIST: the server's exports. */
export async function listExports(ch: OptionChannel): Promise<Array<{ name: string; description: string }>> {
  ch.send(NBD_OPT.NBD_OPT_LIST);
  const out: Array<{ name: string; description: string }> = [];
  for (;;) {
    const r = await ch.reply(NBD_OPT.NBD_OPT_LIST);
    if (r.type === NBD_REP.NBD_REP_ACK) return out;
    if (r.type === NBD_REP.NBD_REP_SERVER) out.push(decodeRepServer(r.data));
    else if (isError(r.type)) throw refusal(NBD_OPT.NBD_OPT_LIST, r, 'to list its exports');
    else throw new NbdProtocolError(`unexpected ${nbdRepName(r.type)} to LIST`);
  }
}

export interface ExportDetails {
  sizeBytes: number;
  transmissionFlags: number;
  blockSize: BlockSizeConstraints;
  description?: string;
}

/** NBD_OPT_INFO: what GO would say, without entering transmission. */
export async function exportInfo(ch: OptionChannel, exportName: string): Promise<ExportDetails> {
  ch.send(
    NBD_OPT.NBD_OPT_INFO,
    encodeInfoRequest(exportName, [NBD_INFO.NBD_INFO_BLOCK_SIZE, NBD_INFO.NBD_INFO_DESCRIPTION]),
  );
  const info: Partial<ExportInfo> = {};
  for (;;) {
    const r = await ch.reply(NBD_OPT.NBD_OPT_INFO);
    if (r.type === NBD_REP.NBD_REP_ACK) break;
    if (r.type === NBD_REP.NBD_REP_INFO) decodeInfoReply(r.data, info);
    else if (isError(r.type)) throw refusal(NBD_OPT.NBD_OPT_INFO, r, `INFO for export '${exportName}'`);
    else throw new NbdProtocolError(`unexpected ${nbdRepName(r.type)} to INFO`);
  }
  if (info.sizeBytes === undefined || info.transmissionFlags === undefined)
    throw new NbdProtocolError('INFO succeeded without NBD_INFO_EXPORT');
  return {
    sizeBytes: info.sizeBytes,
    transmissionFlags: info.transmissionFlags,
    blockSize: checkBlockSize(info.blockSize),
    ...(info.description !== undefined ? { description: info.description } : {}),
  };
}

/** NBD_OPT_LIST_META_CONTEXT (after STRUCTURED_REPLY): context names matching the queries. */
export async function listMetaContexts(
  ch: OptionChannel,
  exportName: string,
  queries: readonly string[],
): Promise<string[]> {
  ch.send(NBD_OPT.NBD_OPT_STRUCTURED_REPLY);
  const sr = await ch.reply(NBD_OPT.NBD_OPT_STRUCTURED_REPLY);
  if (sr.type !== NBD_REP.NBD_REP_ACK) return [];
  ch.send(NBD_OPT.NBD_OPT_LIST_META_CONTEXT, encodeMetaContextRequest(exportName, queries));
  const out: string[] = [];
  for (;;) {
    const r = await ch.reply(NBD_OPT.NBD_OPT_LIST_META_CONTEXT);
    if (r.type === NBD_REP.NBD_REP_ACK) return out;
    if (r.type === NBD_REP.NBD_REP_META_CONTEXT) out.push(decodeRepMetaContext(r.data).name);
    else if (r.type === NBD_REP.NBD_REP_ERR_UNSUP) return [];
    else if (isError(r.type)) throw refusal(NBD_OPT.NBD_OPT_LIST_META_CONTEXT, r, 'to list meta contexts');
    else throw new NbdProtocolError(`unexpected ${nbdRepName(r.type)} to LIST_META_CONTEXT`);
  }
}

/** NBD_OPT_ABORT: ends a haggling-only session (the server may just close). */
export async function abortHaggling(ch: OptionChannel): Promise<void> {
  ch.send(NBD_OPT.NBD_OPT_ABORT);
  await ch.reply(NBD_OPT.NBD_OPT_ABORT).catch(() => undefined);
}
