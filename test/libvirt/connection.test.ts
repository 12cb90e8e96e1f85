/**
 * The RPC connection and client against a scripted fake daemon on a unix socket: serial matching,
 * error decoding, fail-all on framing errors and drops, keepalive, auth, events.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  LibvirtClient,
  LibvirtConnectionError,
  LibvirtError,
  LibvirtProtocolError,
  isNoDomain,
} from '../../src/libvirt/index.js';
import {
  KEEPALIVE_PROGRAM,
  PROCEDURES,
  REMOTE_PROC,
  REMOTE_PROGRAM,
  remoteDomainEventCallbackLifecycleMsg,
  remoteError,
  type DomainRef,
} from '../../src/libvirt/protocol/remote.js';
import { PacketDecoder, encodePacket, type Packet } from '../../src/libvirt/rpc/packet.js';
import { xdrDecode, xdrEncode, type Codec } from '../../src/libvirt/xdr.js';
import { CancelledError } from '../../src/util/index.js';
import { makeTmpDir } from '../helpers/tmp.js';

const DOM: DomainRef = { name: 'vm1', uuid: '11111111-2222-4333-8444-555555555555', id: 4 };

type Handler = (p: Packet, d: FakeDaemon) => void;

class FakeDaemon {
  server!: Server;
  sock: Socket | undefined;
  received: Packet[] = [];
  authTypes = [0];
  keepaliveSupported = 1;
  /** Extra handling for procedures after the handshake; return true when handled. */
  onCall: (p: Packet, d: FakeDaemon) => boolean = () => false;
  private handlers = new Map<number, Handler>();

  constructor(readonly path: string) {
    this.handlers.set(REMOTE_PROC.REMOTE_PROC_AUTH_LIST, (p) =>
      this.reply(p, PROCEDURES.AUTH_LIST.ret, { types: this.authTypes }),
    );
    this.handlers.set(REMOTE_PROC.REMOTE_PROC_CONNECT_OPEN, (p) =>
      this.reply(p, PROCEDURES.CONNECT_OPEN.ret, undefined),
    );
    this.handlers.set(REMOTE_PROC.REMOTE_PROC_CONNECT_SUPPORTS_FEATURE, (p) =>
      this.reply(p, PROCEDURES.CONNECT_SUPPORTS_FEATURE.ret, { supported: this.keepaliveSupported }),
    );
    this.handlers.set(REMOTE_PROC.REMOTE_PROC_CONNECT_CLOSE, (p) =>
      this.reply(p, PROCEDURES.CONNECT_CLOSE.ret, undefined),
    );
  }

  async listen(): Promise<void> {
    this.server = createServer((sock) => {
      this.sock = sock;
      const dec = new PacketDecoder();
      sock.on('data', (chunk: Buffer) => {
        for (const p of dec.push(chunk)) {
          this.received.push(p);
          if (p.header.program === KEEPALIVE_PROGRAM) continue;
          if (this.onCall(p, this)) continue;
          this.handlers.get(p.header.procedure)?.(p, this);
        }
      });
      sock.on('error', () => undefined);
    });
    await new Promise<void>((r) => this.server.listen(this.path, r));
  }

  reply<T>(p: Packet, codec: Codec<T>, value: T): void {
    this.sock!.write(encodePacket({ ...p.header, type: 1, status: 0 }, xdrEncode(codec, value)));
  }

  replyError(p: Packet, code: number, message: string): void {
    const payload = xdrEncode(remoteError, {
      code,
      domain: 10,
      message,
      level: 2,
      dom: DOM,
      str1: 'a',
      str2: null,
      str3: null,
      int1: -1,
      int2: 7,
      net: null,
    });
    this.sock!.write(encodePacket({ ...p.header, type: 1, status: 1 }, payload));
  }

  send(buf: Buffer): void {
    this.sock!.write(buf);
  }

  calls(procedure: number): Packet[] {
    return this.received.filter(
      (p) => p.header.program === REMOTE_PROGRAM && p.header.procedure === procedure,
    );
  }

  async close(): Promise<void> {
    this.sock?.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

describe('libvirt RPC connection (fake daemon)', () => {
  let tmp: { dir: string; cleanup: () => Promise<void> };
  let daemon: FakeDaemon;
  let uri: string;

  beforeEach(async () => {
    tmp = await makeTmpDir('vmvault-rpc-');
    daemon = new FakeDaemon(join(tmp.dir, 'sock'));
    await daemon.listen();
    uri = `qemu+unix:///system?socket=${daemon.path}`;
  });

  afterEach(async () => {
    await daemon.close();
    await tmp.cleanup();
  });

  it('opens the driver URI after AUTH_LIST and asks about keepalive', async () => {
    const c = await LibvirtClient.connect(uri);
    const open = daemon.calls(REMOTE_PROC.REMOTE_PROC_CONNECT_OPEN)[0]!;
    expect(xdrDecode(PROCEDURES.CONNECT_OPEN.args, open.payload)).toEqual({
      name: 'qemu:///system',
      flags: 0,
    });
    expect(daemon.calls(REMOTE_PROC.REMOTE_PROC_AUTH_LIST)).toHaveLength(1);
    const serials = daemon.received.map((p) => p.header.serial);
    expect(serials).toEqual([1, 2, 3]);
    await c.close();
    expect(daemon.calls(REMOTE_PROC.REMOTE_PROC_CONNECT_CLOSE)).toHaveLength(1);
    await c.close(); // idempotent
  });

  it('times out a handshake the daemon never answers, and honours an abort signal', async () => {
    daemon.onCall = () => true; // swallow everything
    const err = await LibvirtClient.connect(uri, { timeoutMs: 100 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LibvirtConnectionError);
    expect((err as Error).message).toBe(
      `libvirt handshake with unix socket ${daemon.path} timed out after 100 ms`,
    );
    const ac = new AbortController();
    const p = LibvirtClient.connect(uri, { signal: ac.signal }).catch((e: unknown) => e);
    setTimeout(() => ac.abort(), 20);
    expect(await p).toBeInstanceOf(CancelledError);
  });

  it('refuses SASL-only daemons with a clear message', async () => {
    daemon.authTypes = [1];
    const err = await LibvirtClient.connect(uri).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LibvirtConnectionError);
    expect((err as LibvirtConnectionError).code).toBe('LIBVIRT_AUTH_UNSUPPORTED');
    expect((err as LibvirtConnectionError).message).toMatch(
      /requires sasl authentication, which vmvault does not support/,
    );
  });

  it('authenticates with polkit when the daemon asks for it', async () => {
    daemon.authTypes = [2];
    daemon.onCall = (p) => {
      if (p.header.procedure !== REMOTE_PROC.REMOTE_PROC_AUTH_POLKIT) return false;
      daemon.reply(p, PROCEDURES.AUTH_POLKIT.ret, { complete: 1 });
      return true;
    };
    const c = await LibvirtClient.connect(uri);
    expect(daemon.calls(REMOTE_PROC.REMOTE_PROC_AUTH_POLKIT)).toHaveLength(1);
    await c.close();
  });

  it('matches replies to calls by serial, in any order', async () => {
    const c = await LibvirtClient.connect(uri);
    const held: Packet[] = [];
    daemon.onCall = (p) => {
      if (p.header.procedure !== REMOTE_PROC.REMOTE_PROC_DOMAIN_LOOKUP_BY_NAME) return false;
      held.push(p);
      if (held.length === 2) {
        for (const q of held.reverse()) {
          const { name } = xdrDecode(PROCEDURES.DOMAIN_LOOKUP_BY_NAME.args, q.payload);
          daemon.reply(q, PROCEDURES.DOMAIN_LOOKUP_BY_NAME.ret, { dom: { ...DOM, name } });
        }
      }
      return true;
    };
    const [a, b] = await Promise.all([c.lookupDomainByName('a'), c.lookupDomainByName('b')]);
    expect(a.name).toBe('a');
    expect(b.name).toBe('b');
    await c.close();
  });

  it('decodes the full remote_error into a LibvirtError and keeps the connection', async () => {
    const c = await LibvirtClient.connect(uri);
    daemon.onCall = (p) => {
      if (p.header.procedure !== REMOTE_PROC.REMOTE_PROC_DOMAIN_LOOKUP_BY_NAME) return false;
      daemon.replyError(p, 42, "Domain not found: no domain with matching name 'x'");
      return true;
    };
    const err = (await c.lookupDomainByName('x').catch((e: unknown) => e)) as LibvirtError;
    expect(err).toBeInstanceOf(LibvirtError);
    expect(isNoDomain(err)).toBe(true);
    expect(err.message).toBe("libvirt: Domain not found: no domain with matching name 'x'");
    expect(err.virCodeName).toBe('VIR_ERR_NO_DOMAIN');
    expect(err.virDomainName).toBe('VIR_FROM_QEMU');
    expect(err.remote).toMatchObject({
      domainName: 'vm1',
      str1: 'a',
      str2: null,
      int1: -1,
      int2: 7,
      networkName: null,
    });
    expect(c.isOpen).toBe(true);
    await c.close();
  });

  it('fails every pending call when a reply names a serial nobody waits for', async () => {
    const c = await LibvirtClient.connect(uri);
    daemon.onCall = (p) => {
      if (p.header.procedure !== REMOTE_PROC.REMOTE_PROC_DOMAIN_LOOKUP_BY_NAME) return false;
      if (xdrDecode(PROCEDURES.DOMAIN_LOOKUP_BY_NAME.args, p.payload).name === 'second') {
        daemon.send(encodePacket({ ...p.header, serial: 999, type: 1, status: 0 }, Buffer.alloc(0)));
      }
      return true;
    };
    const r1 = c.lookupDomainByName('first').catch((e: unknown) => e);
    const r2 = c.lookupDomainByName('second').catch((e: unknown) => e);
    const [e1, e2] = await Promise.all([r1, r2]);
    expect(e1).toBeInstanceOf(LibvirtProtocolError);
    expect(e2).toBe(e1);
    expect((e1 as Error).message).toMatch(/serial 999/);
    expect(await c.getLibVersion().catch((e: unknown) => e)).toBe(e1);
    expect(c.isOpen).toBe(false);
    await c.close();
  });

  it('fails every pending call when a reply cannot be decoded', async () => {
    const c = await LibvirtClient.connect(uri);
    daemon.onCall = (p) => {
      if (p.header.procedure !== REMOTE_PROC.REMOTE_PROC_CONNECT_GET_LIB_VERSION) return false;
      daemon.send(encodePacket({ ...p.header, type: 1, status: 0 }, Buffer.from('0000', 'hex')));
      return true;
    };
    const err = await c.getLibVersion().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LibvirtProtocolError);
    expect((err as Error).message).toMatch(/cannot decode the reply to CONNECT_GET_LIB_VERSION/);
    expect(c.isOpen).toBe(false);
  });

  it('fails pending calls with a connection error when the daemon goes away', async () => {
    const c = await LibvirtClient.connect(uri);
    daemon.onCall = (p) => {
      if (p.header.procedure === REMOTE_PROC.REMOTE_PROC_CONNECT_GET_LIB_VERSION) daemon.sock!.destroy();
      return true;
    };
    const err = await c.getLibVersion().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LibvirtConnectionError);
    expect((err as LibvirtConnectionError).message).toMatch(
      new RegExp(
        `^libvirt connection to unix socket ${daemon.path} lost \\((the daemon closed the connection|the connection was closed)\\)$`,
      ),
    );
    expect((await c.closed()).message).toBe((err as Error).message);
    await c.close();
  });

  it('answers keepalive PINGs with PONGs', async () => {
    const c = await LibvirtClient.connect(uri, { keepaliveIntervalMs: 0 });
    daemon.send(
      encodePacket({ program: KEEPALIVE_PROGRAM, version: 1, procedure: 1, type: 2, serial: 0, status: 0 }),
    );
    await expect
      .poll(() => daemon.received.filter((p) => p.header.program === KEEPALIVE_PROGRAM).length)
      .toBe(1);
    const pong = daemon.received.find((p) => p.header.program === KEEPALIVE_PROGRAM)!;
    expect(pong.header).toMatchObject({ procedure: 2, type: 2, serial: 0 });
    expect(c.isOpen).toBe(true);
    await c.close();
  });

  it('fails the connection when keepalive PINGs go unanswered', async () => {
    const c = await LibvirtClient.connect(uri, { keepaliveIntervalMs: 20, keepaliveCount: 2 });
    const err = await c.closed();
    expect(err.code).toBe('LIBVIRT_KEEPALIVE_TIMEOUT');
    expect(err.message).toMatch(/no keepalive response/);
    const pings = daemon.received.filter(
      (p) => p.header.program === KEEPALIVE_PROGRAM && p.header.procedure === 1,
    );
    expect(pings.length).toBe(2);
    await expect(c.getLibVersion()).rejects.toBe(err);
  });

  it('routes lifecycle events to the subscription and deregisters on close', async () => {
    const c = await LibvirtClient.connect(uri);
    daemon.onCall = (p) => {
      const proc = p.header.procedure;
      if (proc === REMOTE_PROC.REMOTE_PROC_CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY) {
        daemon.reply(p, PROCEDURES.CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY.ret, { callbackID: 17 });
        return true;
      }
      if (proc === REMOTE_PROC.REMOTE_PROC_CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY) {
        daemon.reply(p, PROCEDURES.CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY.ret, undefined);
        return true;
      }
      return false;
    };
    const sub = await c.subscribe({ kinds: ['lifecycle'] });
    const reg = daemon.calls(REMOTE_PROC.REMOTE_PROC_CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY)[0]!;
    expect(xdrDecode(PROCEDURES.CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY.args, reg.payload)).toEqual({
      eventID: 0,
      dom: null,
    });
    const msg = (callbackID: number, event: number, detail: number): Buffer =>
      encodePacket(
        { program: REMOTE_PROGRAM, version: 1, procedure: 318, type: 2, serial: 0, status: 0 },
        xdrEncode(remoteDomainEventCallbackLifecycleMsg, { callbackID, dom: DOM, event, detail }),
      );
    daemon.send(Buffer.concat([msg(99, 2, 0), msg(17, 2, 0), msg(17, 5, 1)]));
    const it = sub[Symbol.asyncIterator]();
    expect((await it.next()).value).toEqual({
      kind: 'lifecycle',
      domain: DOM,
      event: 'started',
      eventCode: 2,
      detail: 0,
    });
    expect((await it.next()).value).toMatchObject({ event: 'stopped', detail: 1 });
    await c.close();
    expect(daemon.calls(REMOTE_PROC.REMOTE_PROC_CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY)).toHaveLength(
      1,
    );
    expect((await it.next()).done).toBe(true);
  });
});
