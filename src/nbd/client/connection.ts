/**
 * The transmission phase of a client connection: a cookie table, a bounded number of requests in
 * flight, write back-pressure (a full socket buffer holds new requests until 'drain'), and
 * fail-all: when the connection breaks, every pending request rejects with the same error.
 */
import { Semaphore } from '../../util/index.js';
import { NbdClosedError, NbdProtocolError, NbdRequestError, NbdTimeoutError } from '../errors.js';
import { NBD_CMD, NBD_SIZE } from '../protocol.js';
import type { Transport } from '../transport.js';
import { encodeRequest, writeRequestHeader } from '../wire.js';
import { ReplyParser, type InFlightRequest, type ReplyHandler, type RequestKind } from './reply-parser.js';

export interface RawExtent {
  length: number;
  flags: number;
}

interface Pending extends InFlightRequest {
  name: string;
  dest: Buffer | undefined;
  /** READ: bytes received so far (data + holes); a complete reply must cover the request. */
  covered: number;
  /** BLOCK_STATUS: extents per context id. */
  extents: Map<number, RawExtent[]> | undefined;
  error: NbdRequestError | undefined;
  resolve: () => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout | undefined;
}

export interface RequestSpec {
  type: number;
  flags: number;
  offset: number;
  length: number;
  kind: RequestKind;
  name: string;
  /** READ: where the data goes (exactly `length` bytes). */
  dest?: Buffer;
  /** WRITE: the payload (exactly `length` bytes). */
  payload?: Buffer;
}

export interface ConnectionOptions {
  maxInFlight: number;
  /** A request not answered within this time kills the connection (0 = never). */
  requestTimeoutMs: number;
}

export class Connection implements ReplyHandler {
  private readonly parser: ReplyParser;
  private readonly pending = new Map<bigint, Pending>();
  private readonly slots: Semaphore;
  private nextCookie = 1n;
  private failure: Error | undefined;
  private drainWaiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  private idleWaiters: Array<() => void> = [];
  private refusing = false;
  /** Requests admitted (waiting for a slot, or in flight). */
  private active = 0;

  constructor(
    private readonly transport: Transport,
    leftover: readonly Buffer[],
    private readonly opts: ConnectionOptions,
  ) {
    this.slots = new Semaphore(opts.maxInFlight);
    this.parser = new ReplyParser(this);
    transport.socket.on('drain', () => {
      const w = this.drainWaiters;
      this.drainWaiters = [];
      for (const x of w) x.resolve();
    });
    transport.setSink({
      bytes: (b) => this.parser.push(b),
      target: () => this.target(),
      directBytes: (n) => this.parser.consumedDirect(n),
      ended: (err) => this.fail(err),
    });
    try {
      for (const b of leftover) this.parser.push(b);
    } catch (err) {
      transport.end(err instanceof Error ? err : new Error(String(err)));
    }
    if (transport.ended) this.fail(transport.ended);
  }

  get inFlight(): number {
    return this.pending.size;
  }

  get failedWith(): Error | undefined {
    return this.failure;
  }

  /** Sends one request and resolves when its reply is complete (rejects with its error). */
  async request(spec: RequestSpec): Promise<{ extents: Map<number, RawExtent[]> | undefined }> {
    if (this.failure) throw this.failure;
    if (this.refusing) throw new NbdClosedError('the NBD client is closing');
    this.active++;
    await this.slots.acquire();
    try {
      if (this.failure) throw this.failure;
      if (this.transport.socket.writableNeedDrain) await this.drained();
      return await new Promise((resolve, reject) => {
        const cookie = this.nextCookie++;
        const p: Pending = {
          kind: spec.kind,
          offset: spec.offset,
          length: spec.length,
          name: spec.name,
          dest: spec.dest,
          covered: 0,
          extents: spec.kind === 'block-status' ? new Map() : undefined,
          error: undefined,
          resolve: () => resolve({ extents: p.extents }),
          reject,
          timer: undefined,
        };
        this.pending.set(cookie, p);
        if (this.opts.requestTimeoutMs > 0) {
          // After a timeout the server's state is unknown: the connection cannot be trusted.
          p.timer = setTimeout(
            () =>
              this.fail(
                new NbdTimeoutError(
                  `NBD ${spec.name} at ${spec.offset}+${spec.length} not answered within ${this.opts.requestTimeoutMs} ms`,
                ),
              ),
            this.opts.requestTimeoutMs,
          );
        }
        if (spec.payload) {
          const hdr = encodeRequest(spec.flags, spec.type, cookie, spec.offset, spec.length);
          // Small writes go out as one buffer; large ones as header + the caller's payload.
          if (spec.payload.length <= 64 * 1024) {
            const b = Buffer.allocUnsafe(NBD_SIZE.REQUEST_HEADER + spec.payload.length);
            writeRequestHeader(b, 0, spec.flags, spec.type, cookie, spec.offset, spec.length);
            spec.payload.copy(b, NBD_SIZE.REQUEST_HEADER);
            this.transport.write(b);
          } else {
            const s = this.transport.socket;
            s.cork();
            s.write(hdr);
            s.write(spec.payload);
            s.uncork();
          }
        } else {
          this.transport.write(encodeRequest(spec.flags, spec.type, cookie, spec.offset, spec.length));
        }
      });
    } finally {
      this.slots.release();
      if (--this.active === 0) this.wakeIdle();
    }
  }

  private drained(): Promise<void> {
    return new Promise((resolve, reject) => this.drainWaiters.push({ resolve, reject }));
  }

  /** Refuses new requests, waits for those in flight, then disconnects (DISC). */
  async shutdown(): Promise<void> {
    this.refusing = true;
    await this.idle();
    await this.disconnect();
  }

  /** Resolves once no request is admitted or in flight (or the connection failed). */
  idle(): Promise<void> {
    if (this.active === 0 || this.failure) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Sends NBD_CMD_DISC (no reply) and half-closes; the connection is unusable afterwards. */
  async disconnect(): Promise<void> {
    if (this.failure) return;
    const closed = new NbdClosedError('the NBD client was closed');
    this.failure = closed;
    const s = this.transport.socket;
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, 1000);
      t.unref();
      s.once('close', () => {
        clearTimeout(t);
        resolve();
      });
      s.end(encodeRequest(0, NBD_CMD.NBD_CMD_DISC, 0n, 0, 0));
    });
    this.transport.end(closed);
  }

  /** Kills the connection: every pending request (and every later one) rejects with `err`. */
  fail(err: Error): void {
    const first = !this.failure;
    if (first) this.failure = err;
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) {
      if (p.timer) clearTimeout(p.timer);
      p.reject(this.failure ?? err);
    }
    const dw = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of dw) w.reject(this.failure ?? err);
    this.wakeIdle();
    this.transport.end(err);
  }

  private wakeIdle(): void {
    if (this.idleWaiters.length === 0) return;
    const w = this.idleWaiters;
    this.idleWaiters = [];
    for (const f of w) f();
  }

  // ---- ReplyHandler ---------------------------------------------------------------------------

  private target(): Buffer | undefined {
    const t = this.parser.dataTarget();
    if (!t) return undefined;
    const p = this.pending.get(t.cookie);
    if (!p?.dest) return undefined;
    const rel = t.offset - p.offset;
    return p.dest.subarray(rel, rel + t.length);
  }

  lookup(cookie: bigint): InFlightRequest | undefined {
    return this.pending.get(cookie);
  }

  private cover(p: Pending, n: number): void {
    p.covered += n;
    if (p.covered > p.length)
      throw new NbdProtocolError(`the server sent overlapping content chunks for a ${p.name}`);
  }

  data(cookie: bigint, offset: number, bytes: Buffer): void {
    const p = this.pending.get(cookie)!;
    this.cover(p, bytes.length);
    bytes.copy(p.dest!, offset - p.offset);
  }

  dataInPlace(cookie: bigint, _offset: number, length: number): void {
    this.cover(this.pending.get(cookie)!, length);
  }

  hole(cookie: bigint, offset: number, length: number): void {
    const p = this.pending.get(cookie)!;
    this.cover(p, length);
    p.dest!.fill(0, offset - p.offset, offset - p.offset + length);
  }

  blockStatus(cookie: bigint, contextId: number, extents: RawExtent[]): void {
    const p = this.pending.get(cookie)!;
    if (p.extents!.has(contextId))
      throw new NbdProtocolError(`two BLOCK_STATUS chunks for context ${contextId} in one reply`);
    p.extents!.set(contextId, extents);
  }

  error(cookie: bigint, errno: number, message: string, offset: number | undefined): void {
    const p = this.pending.get(cookie)!;
    p.error ??= new NbdRequestError(errno, p.name, message, offset);
  }

  done(cookie: bigint): void {
    const p = this.pending.get(cookie)!;
    if (!p.error && p.kind === 'read' && p.covered !== p.length)
      throw new NbdProtocolError(
        `the server claimed success for a READ of ${p.length} bytes after sending ${p.covered}`,
      );
    this.pending.delete(cookie);
    if (p.timer) clearTimeout(p.timer);
    if (p.error) p.reject(p.error);
    else p.resolve();
  }
}
