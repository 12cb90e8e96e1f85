/**
 * One RPC connection to a libvirt daemon: serial table, call(), event routing, keepalive, and
 * fail-all. Any framing or decoding error, an unexpected serial, or the transport ending rejects
 * every pending call with the same LibvirtConnectionError and destroys the transport.
 */
import type { Duplex } from 'node:stream';
import { nullLogger, type Logger } from '../../util/index.js';
import { LibvirtConnectionError, LibvirtError, LibvirtProtocolError } from '../errors.js';
import {
  KEEPALIVE_PROC,
  KEEPALIVE_PROGRAM,
  KEEPALIVE_PROTOCOL_VERSION,
  remoteError,
  type ProcedureDescriptor,
} from '../protocol/remote.js';
import { XdrError, xdrDecode, xdrEncode } from '../xdr.js';
import { encodePacket, PacketDecoder, VIR_NET_STATUS, VIR_NET_TYPE, type Packet } from './packet.js';

/** A byte stream to a daemon plus what the dialer knows about it. */
export interface Transport {
  /** For messages: "unix socket /run/libvirt/libvirt-sock", "ssh root@host:22". */
  readonly description: string;
  readonly stream: Duplex;
  /** Extra detail once the stream ended (ssh: the tail of its stderr). Resolves within ~1 s. */
  closeReason(): Promise<string | undefined>;
  /** Tears the transport down (kills the ssh child). Idempotent. */
  destroy(): void;
}

interface PendingCall {
  name: string;
  program: number;
  procedure: number;
  resolve(payload: Buffer): void;
  reject(err: Error): void;
}

export interface RpcConnectionOptions {
  logger?: Logger;
  /** Called for every MESSAGE packet of a non-keepalive program (events). */
  onMessage?: (packet: Packet) => void;
  /** Called once when the connection fails or is closed. */
  onClose?: (err: LibvirtConnectionError) => void;
}

export class RpcConnection {
  private readonly decoder = new PacketDecoder();
  private readonly pending = new Map<number, PendingCall>();
  private nextSerial = 1;
  private failure: Promise<LibvirtConnectionError> | undefined;
  private failureSync: LibvirtConnectionError | undefined;
  private keepaliveTimer: NodeJS.Timeout | undefined;
  private missedKeepalives = 0;
  private lastReceivedMs = Date.now();
  private readonly logger: Logger;

  constructor(
    readonly transport: Transport,
    private readonly options: RpcConnectionOptions = {},
  ) {
    this.logger = options.logger ?? nullLogger;
    const stream = transport.stream;
    stream.on('data', (chunk: Buffer) => this.onData(chunk));
    stream.on('end', () => this.fail(undefined, 'the daemon closed the connection'));
    stream.on('close', () => this.fail(undefined, 'the connection was closed'));
    stream.on('error', (err: Error) => this.fail(err, err.message));
  }

  get isOpen(): boolean {
    return this.failure === undefined;
  }

  /** Calls one procedure and decodes its result. Rejects with LibvirtError on a daemon error. */
  async call<A, R>(desc: ProcedureDescriptor<A, R>, args: A): Promise<R> {
    if (this.failure) throw await this.failure;
    const payload = xdrEncode(desc.args, args);
    const serial = this.nextSerial;
    this.nextSerial = this.nextSerial >= 0xffffffff ? 1 : this.nextSerial + 1;
    const packet = encodePacket(
      {
        program: desc.program,
        version: desc.version,
        procedure: desc.procedure,
        type: VIR_NET_TYPE.VIR_NET_CALL,
        serial,
        status: VIR_NET_STATUS.VIR_NET_OK,
      },
      payload,
    );
    const reply = await new Promise<Buffer>((resolve, reject) => {
      this.pending.set(serial, {
        name: desc.name,
        program: desc.program,
        procedure: desc.procedure,
        resolve,
        reject,
      });
      this.transport.stream.write(packet);
    });
    try {
      return xdrDecode(desc.ret, reply);
    } catch (err) {
      const e = new LibvirtProtocolError(
        `cannot decode the reply to ${desc.name}: ${(err as Error).message}`,
        err,
      );
      this.fail(e, e.message);
      throw e;
    }
  }

  /**
   * Sends a keepalive PING whenever nothing arrived for `intervalMs`, and fails the connection
   * when `count` PINGs in a row went unanswered (libvirt's virKeepAlive semantics).
   */
  startKeepalive(intervalMs: number, count: number): void {
    if (this.keepaliveTimer || intervalMs <= 0) return;
    this.keepaliveTimer = setInterval(() => {
      if (Date.now() - this.lastReceivedMs < intervalMs) return;
      if (this.missedKeepalives >= count) {
        const secs = Math.round((intervalMs * count) / 1000);
        this.fail(
          new LibvirtConnectionError(
            `libvirt connection to ${this.transport.description} timed out: no keepalive response for ${secs} s`,
            { code: 'LIBVIRT_KEEPALIVE_TIMEOUT' },
          ),
          'keepalive timeout',
        );
        return;
      }
      this.missedKeepalives++;
      this.sendKeepalive(KEEPALIVE_PROC.KEEPALIVE_PROC_PING);
    }, intervalMs);
    this.keepaliveTimer.unref();
  }

  /** Rejects every pending call with a "closed" error and tears the transport down. */
  close(): void {
    this.fail(
      new LibvirtConnectionError(`libvirt connection to ${this.transport.description} is closed`, {
        code: 'LIBVIRT_CLOSED',
      }),
      'closed',
    );
  }

  /** Resolves with the error the connection failed with (after close() too). */
  closed(): Promise<LibvirtConnectionError> {
    return new Promise((resolve) => {
      if (this.failure) void this.failure.then(resolve);
      else {
        const prev = this.options.onClose;
        this.options.onClose = (err) => {
          prev?.(err);
          resolve(err);
        };
      }
    });
  }

  private sendKeepalive(proc: number): void {
    if (this.failure) return;
    this.transport.stream.write(
      encodePacket({
        program: KEEPALIVE_PROGRAM,
        version: KEEPALIVE_PROTOCOL_VERSION,
        procedure: proc,
        type: VIR_NET_TYPE.VIR_NET_MESSAGE,
        serial: 0,
        status: VIR_NET_STATUS.VIR_NET_OK,
      }),
    );
  }

  private onData(chunk: Buffer): void {
    if (this.failure) return;
    this.lastReceivedMs = Date.now();
    this.missedKeepalives = 0;
    let packets: Packet[];
    try {
      packets = this.decoder.push(chunk);
    } catch (err) {
      this.fail(err as Error, (err as Error).message);
      return;
    }
    for (const p of packets) {
      if (this.failure) return;
      try {
        this.dispatch(p);
      } catch (err) {
        const e =
          err instanceof LibvirtConnectionError
            ? err
            : new LibvirtProtocolError(
                `cannot decode packet (procedure ${p.header.procedure}): ${(err as Error).message}`,
                err,
              );
        this.fail(e, e.message);
        return;
      }
    }
  }

  private dispatch(p: Packet): void {
    const h = p.header;
    if (h.program === KEEPALIVE_PROGRAM) {
      if (h.type !== VIR_NET_TYPE.VIR_NET_MESSAGE)
        throw new LibvirtProtocolError(`keepalive packet of type ${h.type}`);
      if (h.procedure === KEEPALIVE_PROC.KEEPALIVE_PROC_PING)
        this.sendKeepalive(KEEPALIVE_PROC.KEEPALIVE_PROC_PONG);
      return;
    }
    switch (h.type) {
      case VIR_NET_TYPE.VIR_NET_REPLY:
      case VIR_NET_TYPE.VIR_NET_REPLY_WITH_FDS: {
        const call = this.pending.get(h.serial);
        if (!call)
          throw new LibvirtProtocolError(`reply with serial ${h.serial} that no call is waiting for`);
        if (call.program !== h.program || call.procedure !== h.procedure) {
          throw new LibvirtProtocolError(
            `reply for serial ${h.serial} names program ${h.program.toString(16)} procedure ${h.procedure}, expected ${call.name}`,
          );
        }
        this.pending.delete(h.serial);
        if (h.status === VIR_NET_STATUS.VIR_NET_OK) {
          call.resolve(p.payload);
        } else if (h.status === VIR_NET_STATUS.VIR_NET_ERROR) {
          const e = xdrDecode(remoteError, p.payload);
          call.reject(
            new LibvirtError(
              {
                code: e.code,
                domain: e.domain,
                message: e.message,
                level: e.level,
                domainName: e.dom?.name ?? null,
                str1: e.str1,
                str2: e.str2,
                str3: e.str3,
                int1: e.int1,
                int2: e.int2,
                networkName: e.net?.name ?? null,
              },
              call.name,
            ),
          );
        } else {
          throw new LibvirtProtocolError(`reply to ${call.name} with status ${h.status}`);
        }
        return;
      }
      case VIR_NET_TYPE.VIR_NET_MESSAGE:
        this.options.onMessage?.(p);
        return;
      default:
        throw new LibvirtProtocolError(
          `unexpected packet type ${h.type} (procedure ${h.procedure}, serial ${h.serial})`,
        );
    }
  }

  private fail(err: Error | undefined, why: string): void {
    if (this.failure) return;
    if (this.keepaliveTimer) clearInterval(this.keepaliveTimer);
    this.keepaliveTimer = undefined;
    // Known errors are final at once; otherwise ask the transport for detail (ssh stderr) first.
    const immediate = err instanceof LibvirtConnectionError ? err : undefined;
    this.failure = (async () => {
      if (immediate) return immediate;
      const reason = await this.transport.closeReason().catch(() => undefined);
      const detail = reason ? `: ${reason}` : '';
      return new LibvirtConnectionError(
        `libvirt connection to ${this.transport.description} lost (${why})${detail}`,
        {
          cause: err,
          hint: 'check that the libvirt daemon is running and reachable',
        },
      );
    })();
    this.transport.stream.removeAllListeners('data');
    if (err instanceof XdrError) this.logger.debug(`libvirt: ${err.message}`);
    void this.failure.then((e) => {
      this.failureSync = e;
      this.transport.destroy();
      const calls = [...this.pending.values()];
      this.pending.clear();
      for (const c of calls) c.reject(e);
      this.options.onClose?.(e);
    });
  }

  /** The error the connection failed with, once known. */
  get error(): LibvirtConnectionError | undefined {
    return this.failureSync;
  }
}
