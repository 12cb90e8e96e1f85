import { ByteQueue } from '../byte-queue.js';
import {
  NbdClosedError,
  NbdOptionError,
  NbdProtocolError,
  NbdRequestError,
  NbdTimeoutError,
} from '../errors.js';
import { DEFAULT_MAX_PAYLOAD, NBD_CMD, NBD_CMD_FLAG, NBD_ERRNO, NBD_FLAG_T, NBD_REP } from '../protocol.js';
import { Transport, queueSink, type Endpoint, type TlsOptions } from '../transport.js';
import { parseNbdUri } from '../uri.js';
import { Connection } from './connection.js';
import {
  OptionChannel,
  abortHaggling,
  exportInfo,
  greet,
  listExports,
  listMetaContexts,
  negotiate,
  startTls,
  type BlockSizeConstraints,
  type ExportDetails,
} from './handshake.js';

export type { BlockSizeConstraints, ExportDetails };
export type NbdTlsOptions = TlsOptions;

export interface NbdConnectOptions extends Endpoint {
  /**
   * `nbd://host:port/export`, `nbd+unix:///export?socket=PATH` (and the `nbds` forms, which
   * require `tls`). Sets the endpoint and export name; explicit fields win.
   */
  uri?: string;
  /** Export name ('' = the default export). */
  exportName?: string;
  /** Meta contexts to select (e.g. base:allocation, qemu:dirty-bitmap:backup-vda). */
  metaContexts?: readonly string[];
  /**
   * When true (default), a meta context the server does not give is an error (NbdOptionError).
   * When false, it is simply missing from `contexts` (and `walkExtents` treats the export as all
   * data if base:allocation is missing).
   */
  requireMetaContexts?: boolean;
  /** Negotiate structured replies (default true; false forces simple replies). */
  structuredReplies?: boolean;
  /** Requests in flight at once (default 16, QEMU's per-connection limit). */
  maxInFlight?: number;
  /** Handshake timeout (ms). */
  timeoutMs?: number;
  /** A request not answered within this time kills the connection (NbdTimeoutError). */
  requestTimeoutMs?: number;
  /** Upgrade to TLS with NBD_OPT_STARTTLS before anything else (x509). */
  tls?: NbdTlsOptions;
  signal?: AbortSignal;
}

/** One extent of a block status reply: `length` bytes from `offset` with the context's `flags`. */
export interface NbdExtent {
  offset: number;
  length: number;
  flags: number;
}

export interface WriteOptions {
  /** NBD_CMD_FLAG_FUA: the data is on stable storage when the request completes. */
  fua?: boolean;
}

export interface WriteZeroesOptions extends WriteOptions {
  /** NBD_CMD_FLAG_NO_HOLE: allocate rather than punch a hole. */
  noHole?: boolean;
}

/** Largest effect length for WRITE_ZEROES / TRIM / CACHE / BLOCK_STATUS in one request. */
const MAX_EFFECT_BYTES = 1024 * 1024 * 1024;

function resolveOptions(opts: NbdConnectOptions): NbdConnectOptions {
  if (!opts.uri) return opts;
  const u = parseNbdUri(opts.uri);
  if (u.tls && !opts.tls)
    throw new NbdOptionError(0, `${opts.uri} requires TLS`, 'give a CA certificate (tls.caFile)');
  return {
    ...(u.socketPath !== undefined ? { socketPath: u.socketPath } : { host: u.host, port: u.port }),
    exportName: u.exportName,
    ...opts,
  };
}

async function open(
  opts: NbdConnectOptions,
  onTransport: (t: Transport) => void,
): Promise<{ ch: OptionChannel; noZeroes: boolean }> {
  const queue = new ByteQueue();
  const transport = await Transport.connect(opts, queueSink(queue), opts.signal);
  onTransport(transport);
  const ch = new OptionChannel(transport, queue);
  try {
    const { noZeroes } = await greet(ch);
    if (opts.tls) await startTls(ch, opts.tls, opts.host);
    return { ch, noZeroes };
  } catch (err) {
    transport.end(err instanceof Error ? err : new Error(String(err)));
    throw err;
  }
}

/** Runs `fn` with a handshake timeout / abort signal that tear the transport down. */
async function guarded<T>(
  opts: NbdConnectOptions,
  fn: (onTransport: (t: Transport) => void) => Promise<T>,
): Promise<T> {
  let transport: Transport | undefined;
  let timedOut = false;
  const timer = opts.timeoutMs
    ? setTimeout(() => {
        timedOut = true;
        transport?.end(new NbdTimeoutError(`NBD handshake not finished within ${opts.timeoutMs} ms`));
      }, opts.timeoutMs)
    : undefined;
  const onAbort = (): void => transport?.end(new NbdClosedError('NBD connection cancelled'));
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    return await fn((t) => {
      transport = t;
      if (timedOut) t.end(new NbdTimeoutError(`NBD handshake not finished within ${opts.timeoutMs} ms`));
    });
  } catch (err) {
    if (timedOut && !(err instanceof NbdTimeoutError))
      throw new NbdTimeoutError(`NBD handshake not finished within ${opts.timeoutMs} ms`);
    throw err;
  } finally {
    if (timer) clearTimeout(timer);
    opts.signal?.removeEventListener('abort', onAbort);
  }
}

/**
 * An NBD client (fixed newstyle; structured replies, meta contexts and TLS when asked). Requests
 * are pipelined up to `maxInFlight`, matched by cookie, split at the server's maximum payload, and
 * never cross the end of the export. A framing error fails every pending request and closes the
 * connection; an errno reply fails only its request (NbdRequestError).
 */
export class NbdClient {
  /** Selected meta contexts: name → id. */
  readonly contexts: ReadonlyMap<string, number>;
  private readonly contextNames = new Map<number, string>();
  private closing: Promise<void> | undefined;

  private constructor(
    private readonly conn: Connection,
    readonly exportName: string,
    readonly sizeBytes: number,
    readonly transmissionFlags: number,
    readonly blockSize: BlockSizeConstraints,
    readonly structuredReplies: boolean,
    contexts: Map<string, number>,
    /** The server lacked NBD_OPT_GO and NBD_OPT_EXPORT_NAME was used. */
    readonly usedExportName: boolean,
  ) {
    this.contexts = contexts;
    for (const [name, id] of contexts) this.contextNames.set(id, name);
  }

  static async connect(options: NbdConnectOptions): Promise<NbdClient> {
    const opts = resolveOptions(options);
    const maxInFlight = opts.maxInFlight ?? 16;
    if (!(maxInFlight >= 1)) throw new RangeError('maxInFlight must be at least 1');
    return guarded(opts, async (onTransport) => {
      const { ch, noZeroes } = await open(opts, onTransport);
      try {
        const exportName = opts.exportName ?? '';
        const n = await negotiate(
          ch,
          {
            exportName,
            structuredReplies: opts.structuredReplies ?? true,
            metaContexts: opts.metaContexts ?? [],
            requireMetaContexts: opts.requireMetaContexts ?? true,
          },
          noZeroes,
        );
        const conn = new Connection(ch.transport, ch.queue.takeAll(), {
          maxInFlight,
          requestTimeoutMs: opts.requestTimeoutMs ?? 0,
        });
        return new NbdClient(
          conn,
          exportName,
          n.sizeBytes,
          n.transmissionFlags,
          n.blockSize,
          n.structuredReplies,
          n.contexts,
          n.usedExportName,
        );
      } catch (err) {
        ch.transport.end(err instanceof Error ? err : new Error(String(err)));
        throw err;
      }
    });
  }

  /** Opens a session for option haggling only, runs `fn`, ends it with NBD_OPT_ABORT. */
  private static haggle<T>(options: NbdConnectOptions, fn: (ch: OptionChannel) => Promise<T>): Promise<T> {
    const opts = resolveOptions(options);
    return guarded(opts, async (onTransport) => {
      const { ch } = await open(opts, onTransport);
      try {
        const result = await fn(ch);
        await abortHaggling(ch);
        return result;
      } finally {
        ch.transport.end(new NbdClosedError('option haggling finished'));
      }
    });
  }

  /** The server's exports (NBD_OPT_LIST). */
  static list(opts: NbdConnectOptions): Promise<Array<{ name: string; description: string }>> {
    return NbdClient.haggle(opts, (ch) => listExports(ch));
  }

  /** Size, flags, block sizes and description of an export, without entering transmission (NBD_OPT_INFO). */
  static info(opts: NbdConnectOptions): Promise<ExportDetails> {
    return NbdClient.haggle(opts, (ch) => exportInfo(ch, resolveOptions(opts).exportName ?? ''));
  }

  /** Meta contexts an export offers for the queries (NBD_OPT_LIST_META_CONTEXT; [] = all). */
  static listMetaContexts(opts: NbdConnectOptions, queries: readonly string[] = []): Promise<string[]> {
    return NbdClient.haggle(opts, (ch) =>
      listMetaContexts(ch, resolveOptions(opts).exportName ?? '', queries),
    );
  }

  private has(flag: number): boolean {
    return (this.transmissionFlags & flag) !== 0;
  }
  get isReadOnly(): boolean {
    return this.has(NBD_FLAG_T.NBD_FLAG_READ_ONLY);
  }
  get canFlush(): boolean {
    return this.has(NBD_FLAG_T.NBD_FLAG_SEND_FLUSH);
  }
  get canFua(): boolean {
    return this.has(NBD_FLAG_T.NBD_FLAG_SEND_FUA);
  }
  get canTrim(): boolean {
    return this.has(NBD_FLAG_T.NBD_FLAG_SEND_TRIM);
  }
  get canWriteZeroes(): boolean {
    return this.has(NBD_FLAG_T.NBD_FLAG_SEND_WRITE_ZEROES);
  }
  get canCache(): boolean {
    return this.has(NBD_FLAG_T.NBD_FLAG_SEND_CACHE);
  }
  get canMultiConn(): boolean {
    return this.has(NBD_FLAG_T.NBD_FLAG_CAN_MULTI_CONN);
  }
  hasMetaContext(name: string): boolean {
    return this.contexts.has(name);
  }
  /** Requests currently waiting for their reply. */
  get inFlight(): number {
    return this.conn.inFlight;
  }

  /** Largest READ/WRITE payload sent in one request: the server's maximum (≤ 32 MiB), block aligned. */
  get maxPayload(): number {
    const max = Math.min(this.blockSize.maximum, DEFAULT_MAX_PAYLOAD);
    return Math.max(this.blockSize.minimum, max - (max % this.blockSize.minimum));
  }

  private checkRange(offset: number, length: number, what: string): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0)
      throw new RangeError(`NBD ${what}: invalid range ${offset}+${length}`);
    if (offset + length > this.sizeBytes)
      throw new RangeError(
        `NBD ${what} ${offset}+${length} is past the end of the export (${this.sizeBytes} bytes)`,
      );
  }

  private checkAligned(offset: number, length: number, what: string): void {
    const m = this.blockSize.minimum;
    if (offset % m !== 0 || length % m !== 0)
      throw new RangeError(`NBD ${what} ${offset}+${length} is not aligned to the server's ${m}-byte blocks`);
  }

  private checkWritable(what: string): void {
    if (this.isReadOnly) throw new NbdRequestError(NBD_ERRNO.NBD_EPERM, what, 'the export is read-only');
  }

  /**
   * Reads `length` bytes at `offset` into `into` (or a new buffer). Split at `maxPayload`; reads
   * not aligned to the server's minimum block are widened and copied. Holes read as zeros.
   */
  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    this.checkRange(offset, length, 'read');
    const dest = into && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafe(length);
    if (length === 0) return dest;
    const m = this.blockSize.minimum;
    if (offset % m !== 0 || length % m !== 0) {
      const start = offset - (offset % m);
      const end = Math.min(this.sizeBytes, Math.ceil((offset + length) / m) * m);
      const wide = await this.read(start, end - start);
      wide.copy(dest, 0, offset - start, offset - start + length);
      return dest;
    }
    const max = this.maxPayload;
    if (length <= max) {
      await this.readPiece(offset, dest);
      return dest;
    }
    const parts: Array<Promise<void>> = [];
    for (let at = 0; at < length; at += max)
      parts.push(this.readPiece(offset + at, dest.subarray(at, Math.min(length, at + max))));
    await settleAll(parts);
    return dest;
  }

  private async readPiece(offset: number, dest: Buffer): Promise<void> {
    await this.conn.request({
      type: NBD_CMD.NBD_CMD_READ,
      flags: 0,
      offset,
      length: dest.length,
      kind: 'read',
      name: 'READ',
      dest,
    });
  }

  async write(offset: number, data: Buffer, opts: WriteOptions = {}): Promise<void> {
    this.checkRange(offset, data.length, 'write');
    this.checkAligned(offset, data.length, 'write');
    this.checkWritable('WRITE');
    const flags = opts.fua && this.canFua ? NBD_CMD_FLAG.NBD_CMD_FLAG_FUA : 0;
    const max = this.maxPayload;
    const parts: Array<Promise<unknown>> = [];
    for (let at = 0; at < data.length; at += max) {
      const piece = data.subarray(at, Math.min(at + max, data.length));
      parts.push(
        this.conn.request({
          type: NBD_CMD.NBD_CMD_WRITE,
          flags,
          offset: offset + at,
          length: piece.length,
          kind: 'other',
          name: 'WRITE',
          payload: piece,
        }),
      );
    }
    await settleAll(parts);
  }

  /** Zeroes a range (WRITE_ZEROES, or plain writes of zeros where the server lacks it). */
  async writeZeroes(offset: number, length: number, opts: WriteZeroesOptions = {}): Promise<void> {
    this.checkRange(offset, length, 'write-zeroes');
    this.checkAligned(offset, length, 'write-zeroes');
    this.checkWritable('WRITE_ZEROES');
    if (!this.canWriteZeroes) {
      const zeros = Buffer.alloc(Math.min(length, this.maxPayload));
      const parts: Array<Promise<void>> = [];
      for (let at = 0; at < length; at += zeros.length)
        parts.push(this.write(offset + at, zeros.subarray(0, Math.min(zeros.length, length - at)), opts));
      await settleAll(parts);
      return;
    }
    const flags =
      (opts.fua && this.canFua ? NBD_CMD_FLAG.NBD_CMD_FLAG_FUA : 0) |
      (opts.noHole ? NBD_CMD_FLAG.NBD_CMD_FLAG_NO_HOLE : 0);
    await this.effect(NBD_CMD.NBD_CMD_WRITE_ZEROES, 'WRITE_ZEROES', flags, offset, length);
  }

  /** Discards a range (content afterwards is unspecified); a no-op where the server has no TRIM. */
  async trim(offset: number, length: number, opts: WriteOptions = {}): Promise<void> {
    this.checkRange(offset, length, 'trim');
    this.checkAligned(offset, length, 'trim');
    this.checkWritable('TRIM');
    if (!this.canTrim) return;
    const flags = opts.fua && this.canFua ? NBD_CMD_FLAG.NBD_CMD_FLAG_FUA : 0;
    await this.effect(NBD_CMD.NBD_CMD_TRIM, 'TRIM', flags, offset, length);
  }

  /** Asks the server to prefetch a range (NBD_CMD_CACHE); a no-op where it is not offered. */
  async cache(offset: number, length: number): Promise<void> {
    this.checkRange(offset, length, 'cache');
    if (!this.canCache) return;
    await this.effect(NBD_CMD.NBD_CMD_CACHE, 'CACHE', 0, offset, length);
  }

  /** Commands without payload whose length is only an effect length: split at 1 GiB. */
  private async effect(
    type: number,
    name: string,
    flags: number,
    offset: number,
    length: number,
  ): Promise<void> {
    const step = MAX_EFFECT_BYTES - (MAX_EFFECT_BYTES % this.blockSize.minimum);
    const parts: Array<Promise<unknown>> = [];
    for (let at = 0; at < length || (length === 0 && at === 0); at += step) {
      const n = Math.min(step, length - at);
      parts.push(this.conn.request({ type, flags, offset: offset + at, length: n, kind: 'other', name }));
      if (length === 0) break;
    }
    await settleAll(parts);
  }

  async flush(): Promise<void> {
    if (!this.canFlush) return;
    await this.conn.request({
      type: NBD_CMD.NBD_CMD_FLUSH,
      flags: 0,
      offset: 0,
      length: 0,
      kind: 'other',
      name: 'FLUSH',
    });
  }

  /**
   * Block status of [offset, offset+length) in every selected context: a map from context name to
   * extents starting at `offset`, clamped to the request. A server may answer for less than asked
   * (re-ask from the first uncovered byte; `walkExtents` does), and each context's extents may
   * end at a different place.
   */
  async blockStatus(
    offset: number,
    length: number,
    opts: { reqOne?: boolean } = {},
  ): Promise<Map<string, NbdExtent[]>> {
    this.checkRange(offset, length, 'block status');
    if (length === 0) throw new RangeError('NBD block status of 0 bytes');
    if (this.contexts.size === 0)
      throw new NbdOptionError(
        NBD_REP.NBD_REP_ERR_UNSUP,
        'block status needs a meta context, and none was selected',
      );
    const m = this.blockSize.minimum;
    const max = MAX_EFFECT_BYTES - (MAX_EFFECT_BYTES % m);
    const len = Math.min(length, max);
    const { extents } = await this.conn.request({
      type: NBD_CMD.NBD_CMD_BLOCK_STATUS,
      flags: opts.reqOne ? NBD_CMD_FLAG.NBD_CMD_FLAG_REQ_ONE : 0,
      offset,
      length: len,
      kind: 'block-status',
      name: 'BLOCK_STATUS',
    });
    const out = new Map<string, NbdExtent[]>();
    const end = offset + len;
    for (const [id, raw] of extents!) {
      const name = this.contextNames.get(id);
      if (name === undefined) throw new NbdProtocolError(`block status for unknown context id ${id}`);
      const list: NbdExtent[] = [];
      let at = offset;
      for (const x of raw) {
        if (at >= end) break; // the last extent may run past the request: clamp
        const l = Math.min(x.length, end - at);
        list.push({ offset: at, length: l, flags: x.flags });
        at += l;
      }
      out.set(name, list);
    }
    return out;
  }

  /**
   * Ends the session politely: waits for requests in flight, sends NBD_CMD_DISC and closes the
   * socket. Later requests fail with NbdClosedError. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= this.conn.shutdown();
    return this.closing;
  }

  /** Tears the connection down at once; pending requests reject with NbdClosedError. */
  destroy(): void {
    this.conn.fail(new NbdClosedError('the NBD client was destroyed'));
  }
}

/** Like Promise.all, but waits for every part (no request left writing into a buffer we returned). */
async function settleAll(parts: Array<Promise<unknown>>): Promise<void> {
  const r = await Promise.allSettled(parts);
  for (const x of r) if (x.status === 'rejected') throw x.reason;
}
