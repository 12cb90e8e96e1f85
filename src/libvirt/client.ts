/**
 * LibvirtClient: typed methods over the procedure descriptors in protocol/remote.ts. Every method
 * is one `call(descriptor, args)`; no method encodes bytes itself.
 */
import { CancelledError, nullLogger, type Logger } from '../util/index.js';
import { LibvirtConnectionError, isNoDomainCheckpoint } from './errors.js';
import {
  DomainEventSubscription,
  jobStatsFields,
  jobTypeName,
  lifecycleEventName,
  type DomainEventKind,
  type JobStats,
} from './events.js';
import {
  DOMAIN_STATE_NAMES,
  VIR_DOMAIN_EVENT_ID,
  VIR_DOMAIN_QEMU_AGENT_COMMAND,
  VIR_DOMAIN_QEMU_MONITOR_COMMAND,
  VIR_DRV_FEATURE,
  type DomainStateName,
  type JobTypeName,
} from './protocol/constants.js';
import {
  PROCEDURES as P,
  REMOTE_AUTH,
  REMOTE_PROC,
  REMOTE_PROGRAM,
  remoteDomainEventCallbackJobCompletedMsg,
  remoteDomainEventCallbackLifecycleMsg,
  type CheckpointRef,
  type DomainRef,
  type SnapshotRef,
  type ProcedureDescriptor,
} from './protocol/remote.js';
import { VIR_NET_TYPE, type Packet } from './rpc/packet.js';
import { RpcConnection } from './rpc/connection.js';
import { dial } from './transport/dial.js';
import { parseLibvirtUri, type LibvirtUri } from './transport/uri.js';
import { xdrDecode } from './xdr.js';

export interface LibvirtConnectOptions {
  /** Open read-only (VIR_CONNECT_RO). */
  readOnly?: boolean;
  /** Send a keepalive PING after this much silence (default 5000; 0 = never send, only answer). */
  keepaliveIntervalMs?: number;
  /** Fail the connection after this many unanswered PINGs (default 5). */
  keepaliveCount?: number;
  /** Timeout for connecting and for the handshake (default 30 s). */
  timeoutMs?: number;
  signal?: AbortSignal;
  logger?: Logger;
}

export interface LibvirtVersion {
  major: number;
  minor: number;
  micro: number;
  /** major * 1,000,000 + minor * 1,000 + micro, as libvirt encodes it. */
  encoded: number;
}

function decodeVersion(v: number): LibvirtVersion {
  return {
    major: Math.floor(v / 1_000_000),
    minor: Math.floor(v / 1000) % 1000,
    micro: v % 1000,
    encoded: v,
  };
}

export interface DomainStateInfo {
  state: DomainStateName | 'unknown';
  /** VIR_DOMAIN_* state number. */
  stateCode: number;
  /** The per-state reason code (virDomainRunningReason, virDomainShutoffReason...). */
  reason: number;
}

export interface DomainInfo {
  state: DomainStateName | 'unknown';
  stateCode: number;
  maxMemKiB: number;
  memoryKiB: number;
  nrVirtCpu: number;
  cpuTimeNs: bigint;
}

export interface JobInfo {
  type: JobTypeName;
  typeCode: number;
  timeElapsedMs: number;
  timeRemainingMs: number;
  dataTotal: number;
  dataProcessed: number;
  dataRemaining: number;
  memTotal: number;
  memProcessed: number;
  memRemaining: number;
  fileTotal: number;
  fileProcessed: number;
  fileRemaining: number;
}

/** virDomainBlockJobInfo of one disk; `null` from getBlockJobInfo when the disk has no job. */
export interface BlockJobInfo {
  /** VIR_DOMAIN_BLOCK_JOB_TYPE_* (4 = active commit). */
  type: number;
  bandwidth: number;
  cur: number;
  end: number;
  /**
   * cur == end > 0: libvirt reports this only once QEMU says the job is ready (for an active
   * commit: ready to pivot); before that it keeps cur below end.
   */
  ready: boolean;
}

export interface SubscribeOptions {
  /** Which events (default both). */
  kinds?: readonly DomainEventKind[];
  /** Only this domain (default all domains). */
  domain?: DomainRef;
}

const UUID_RE = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;

export class LibvirtClient {
  private readonly subscriptions = new Map<number, DomainEventSubscription>();
  private closing: Promise<void> | undefined;

  private constructor(
    readonly uri: LibvirtUri,
    private readonly conn: RpcConnection,
    private readonly logger: Logger,
  ) {}

  /**
   * Connects, authenticates (none / polkit) and opens the QEMU driver. Throws LibvirtUriError for
   * a bad URI, LibvirtConnectionError when the daemon cannot be reached, LibvirtError when it
   * refuses the connection.
   */
  static async connect(uri: string, opts: LibvirtConnectOptions = {}): Promise<LibvirtClient> {
    const parsed = parseLibvirtUri(uri);
    const logger = opts.logger ?? nullLogger;
    const transport = await dial(parsed, { timeoutMs: opts.timeoutMs, signal: opts.signal });
    const ref: { client?: LibvirtClient } = {};
    const conn = new RpcConnection(transport, {
      logger,
      onMessage: (p) => ref.client?.onMessage(p),
      onClose: (err) => ref.client?.onClosed(err),
    });
    const client = new LibvirtClient(parsed, conn, logger);
    ref.client = client;
    const timeoutMs = opts.timeoutMs ?? 30_000;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      conn.close();
    }, timeoutMs);
    const onAbort = (): void => conn.close();
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await client.handshake(opts);
    } catch (err) {
      conn.close();
      if (opts.signal?.aborted) throw new CancelledError();
      if (timedOut) {
        throw new LibvirtConnectionError(
          `libvirt handshake with ${transport.description} timed out after ${timeoutMs} ms`,
          { cause: err, hint: 'is the daemon (or the ssh remote command) answering?' },
        );
      }
      throw err;
    } finally {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
    }
    const intervalMs = opts.keepaliveIntervalMs ?? 5000;
    if (client.keepaliveSupported && intervalMs > 0)
      conn.startKeepalive(intervalMs, opts.keepaliveCount ?? 5);
    return client;
  }

  private keepaliveSupported = false;

  private async handshake(opts: LibvirtConnectOptions): Promise<void> {
    const { types } = await this.conn.call(P.AUTH_LIST, undefined);
    if (types.length > 0 && !types.includes(REMOTE_AUTH.REMOTE_AUTH_NONE)) {
      if (types.includes(REMOTE_AUTH.REMOTE_AUTH_POLKIT)) {
        const { complete } = await this.conn.call(P.AUTH_POLKIT, undefined);
        if (complete !== 1)
          throw new LibvirtConnectionError(`polkit authentication to ${this.uri.uri} did not complete`);
      } else {
        const names = types
          .map((t) => (t === REMOTE_AUTH.REMOTE_AUTH_SASL ? 'sasl' : `type ${t}`))
          .join(', ');
        throw new LibvirtConnectionError(
          `libvirt at ${this.uri.uri} requires ${names} authentication, which vmvault does not support`,
          {
            code: 'LIBVIRT_AUTH_UNSUPPORTED',
            hint: 'connect as root through the local unix socket, or use qemu+ssh:// to the host',
          },
        );
      }
    }
    await this.conn.call(P.CONNECT_OPEN, { name: this.uri.driverUri, flags: opts.readOnly ? 1 : 0 });
    const { supported } = await this.conn.call(P.CONNECT_SUPPORTS_FEATURE, {
      feature: VIR_DRV_FEATURE.VIR_DRV_FEATURE_PROGRAM_KEEPALIVE,
    });
    this.keepaliveSupported = supported === 1;
  }

  /** Whether the connection is still usable. */
  get isOpen(): boolean {
    return this.conn.isOpen && this.closing === undefined;
  }

  /** Resolves with the error once the connection is gone (dropped or closed). */
  closed(): Promise<LibvirtConnectionError> {
    return this.conn.closed();
  }

  /** Deregisters events, sends CONNECT_CLOSE and closes the transport. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      if (this.conn.isOpen) {
        for (const s of [...new Set(this.subscriptions.values())]) await s.close().catch(() => undefined);
        await Promise.race([
          this.conn.call(P.CONNECT_CLOSE, undefined).catch(() => undefined),
          new Promise((r) => setTimeout(r, 5000).unref()),
        ]);
      }
      this.conn.close();
    })();
    return this.closing;
  }

  private call<A, R>(desc: ProcedureDescriptor<A, R>, args: A): Promise<R> {
    return this.conn.call(desc, args);
  }

  // ----- connection ------------------------------------------------------------------------

  async getLibVersion(): Promise<LibvirtVersion> {
    return decodeVersion((await this.call(P.CONNECT_GET_LIB_VERSION, undefined)).libVer);
  }

  /** The hypervisor (QEMU) version. */
  async getHypervisorVersion(): Promise<LibvirtVersion> {
    return decodeVersion((await this.call(P.CONNECT_GET_VERSION, undefined)).hvVer);
  }

  /** All domains; flags are VIR_CONNECT_LIST_DOMAINS_* (0 = all). */
  async listAllDomains(flags = 0): Promise<DomainRef[]> {
    return (await this.call(P.CONNECT_LIST_ALL_DOMAINS, { needResults: 1, flags })).domains;
  }

  // ----- domains ---------------------------------------------------------------------------

  async lookupDomainByName(name: string): Promise<DomainRef> {
    return (await this.call(P.DOMAIN_LOOKUP_BY_NAME, { name })).dom;
  }

  async lookupDomainByUuid(uuid: string): Promise<DomainRef> {
    return (await this.call(P.DOMAIN_LOOKUP_BY_UUID, { uuid })).dom;
  }

  /** By UUID when the text is one, else by name. */
  lookupDomain(nameOrUuid: string): Promise<DomainRef> {
    return UUID_RE.test(nameOrUuid)
      ? this.lookupDomainByUuid(nameOrUuid)
      : this.lookupDomainByName(nameOrUuid);
  }

  /** Domain XML; flags are VIR_DOMAIN_XML_* (SECURE, INACTIVE, ...). */
  async getDomainXml(dom: DomainRef, flags = 0): Promise<string> {
    return (await this.call(P.DOMAIN_GET_XML_DESC, { dom, flags })).xml;
  }

  async getDomainState(dom: DomainRef): Promise<DomainStateInfo> {
    const r = await this.call(P.DOMAIN_GET_STATE, { dom, flags: 0 });
    return { state: DOMAIN_STATE_NAMES[r.state] ?? 'unknown', stateCode: r.state, reason: r.reason };
  }

  async getDomainInfo(dom: DomainRef): Promise<DomainInfo> {
    const r = await this.call(P.DOMAIN_GET_INFO, { dom });
    return {
      state: DOMAIN_STATE_NAMES[r.state] ?? 'unknown',
      stateCode: r.state,
      maxMemKiB: r.maxMem,
      memoryKiB: r.memory,
      nrVirtCpu: r.nrVirtCpu,
      cpuTimeNs: r.cpuTime,
    };
  }

  async isDomainActive(dom: DomainRef): Promise<boolean> {
    return (await this.call(P.DOMAIN_IS_ACTIVE, { dom })).active === 1;
  }

  /** Defines (or redefines) a persistent domain; flags are VIR_DOMAIN_DEFINE_*. */
  async defineDomainXml(xml: string, flags = 0): Promise<DomainRef> {
    return (await this.call(P.DOMAIN_DEFINE_XML_FLAGS, { xml, flags })).dom;
  }

  /** flags are VIR_DOMAIN_UNDEFINE_* (CHECKPOINTS_METADATA, NVRAM, ...). */
  async undefineDomain(dom: DomainRef, flags = 0): Promise<void> {
    await this.call(P.DOMAIN_UNDEFINE_FLAGS, { dom, flags });
  }

  /** Starts a defined domain; returns it with its new id. flags are VIR_DOMAIN_START_*. */
  async startDomain(dom: DomainRef, flags = 0): Promise<DomainRef> {
    return (await this.call(P.DOMAIN_CREATE_WITH_FLAGS, { dom, flags })).dom;
  }

  /** Hard power-off. flags are VIR_DOMAIN_DESTROY_*. */
  async destroyDomain(dom: DomainRef, flags = 0): Promise<void> {
    await this.call(P.DOMAIN_DESTROY_FLAGS, { dom, flags });
  }

  /** Hot-plugs (or persistently adds) a device; flags are VIR_DOMAIN_AFFECT_*. */
  async attachDevice(dom: DomainRef, xml: string, flags = 0): Promise<void> {
    await this.call(P.DOMAIN_ATTACH_DEVICE_FLAGS, { dom, xml, flags });
  }

  async detachDevice(dom: DomainRef, xml: string, flags = 0): Promise<void> {
    await this.call(P.DOMAIN_DETACH_DEVICE_FLAGS, { dom, xml, flags });
  }

  // ----- backup jobs -----------------------------------------------------------------------

  /** Starts a backup job; with checkpointXml the new checkpoint is created atomically with it. */
  async backupBegin(
    dom: DomainRef,
    backupXml: string,
    checkpointXml: string | null = null,
    flags = 0,
  ): Promise<void> {
    await this.call(P.DOMAIN_BACKUP_BEGIN, { dom, backupXml, checkpointXml, flags });
  }

  /** The running backup job's effective XML (export names, bitmaps, socket). */
  async backupGetXml(dom: DomainRef): Promise<string> {
    return (await this.call(P.DOMAIN_BACKUP_GET_XML_DESC, { dom, flags: 0 })).xml;
  }

  /** Aborts the domain's current job (ends a pull-mode backup). */
  async abortJob(dom: DomainRef, flags = 0): Promise<void> {
    if (flags === 0) await this.call(P.DOMAIN_ABORT_JOB, { dom });
    else await this.call(P.DOMAIN_ABORT_JOB_FLAGS, { dom, flags });
  }

  async getJobInfo(dom: DomainRef): Promise<JobInfo> {
    const r = await this.call(P.DOMAIN_GET_JOB_INFO, { dom });
    return {
      type: jobTypeName(r.type),
      typeCode: r.type,
      timeElapsedMs: r.timeElapsed,
      timeRemainingMs: r.timeRemaining,
      dataTotal: r.dataTotal,
      dataProcessed: r.dataProcessed,
      dataRemaining: r.dataRemaining,
      memTotal: r.memTotal,
      memProcessed: r.memProcessed,
      memRemaining: r.memRemaining,
      fileTotal: r.fileTotal,
      fileProcessed: r.fileProcessed,
      fileRemaining: r.fileRemaining,
    };
  }

  /** flags are VIR_DOMAIN_JOB_STATS_* (COMPLETED, KEEP_COMPLETED). */
  async getJobStats(dom: DomainRef, flags = 0): Promise<JobStats> {
    const r = await this.call(P.DOMAIN_GET_JOB_STATS, { dom, flags });
    return { type: jobTypeName(r.type), typeCode: r.type, ...jobStatsFields(r.params) };
  }

  // ----- snapshots and block jobs ---------------------------------------------------------

  /** flags are VIR_DOMAIN_SNAPSHOT_CREATE_* (DISK_ONLY, NO_METADATA, ATOMIC, QUIESCE, ...). */
  async snapshotCreateXml(dom: DomainRef, xml: string, flags = 0): Promise<SnapshotRef> {
    return (await this.call(P.DOMAIN_SNAPSHOT_CREATE_XML, { dom, xmlDesc: xml, flags })).snap;
  }

  /** flags are VIR_DOMAIN_SNAPSHOT_DELETE_* (CHILDREN, METADATA_ONLY, CHILDREN_ONLY). */
  async snapshotDelete(snap: SnapshotRef, flags = 0): Promise<void> {
    await this.call(P.DOMAIN_SNAPSHOT_DELETE, { snap, flags });
  }

  /**
   * Starts a block commit on `disk` (target or path); base/top null = libvirt's defaults.
   * flags are VIR_DOMAIN_BLOCK_COMMIT_* (ACTIVE, SHALLOW, ...); bandwidth 0 = unlimited.
   */
  async blockCommit(
    dom: DomainRef,
    disk: string,
    opts: { base?: string | null; top?: string | null; bandwidth?: number; flags?: number } = {},
  ): Promise<void> {
    await this.call(P.DOMAIN_BLOCK_COMMIT, {
      dom,
      disk,
      base: opts.base ?? null,
      top: opts.top ?? null,
      bandwidth: opts.bandwidth ?? 0,
      flags: opts.flags ?? 0,
    });
  }

  /** The block job on `disk`, or null when it has none. */
  async getBlockJobInfo(dom: DomainRef, disk: string, flags = 0): Promise<BlockJobInfo | null> {
    const r = await this.call(P.DOMAIN_GET_BLOCK_JOB_INFO, { dom, path: disk, flags });
    if (r.found !== 1) return null;
    return {
      type: r.type,
      bandwidth: r.bandwidth,
      cur: r.cur,
      end: r.end,
      ready: r.end > 0 && r.cur === r.end,
    };
  }

  /** Ends the block job on `disk`; flags are VIR_DOMAIN_BLOCK_JOB_ABORT_* (PIVOT, ASYNC). */
  async blockJobAbort(dom: DomainRef, disk: string, flags = 0): Promise<void> {
    await this.call(P.DOMAIN_BLOCK_JOB_ABORT, { dom, path: disk, flags });
  }

  /** The host capabilities XML (virConnectGetCapabilities). */
  async getCapabilities(): Promise<string> {
    return (await this.call(P.CONNECT_GET_CAPABILITIES, undefined)).capabilities;
  }

  /** Domain capabilities XML (virConnectGetDomainCapabilities); null values = libvirt's defaults. */
  async getDomainCapabilities(
    opts: {
      emulatorbin?: string | null;
      arch?: string | null;
      machine?: string | null;
      virttype?: string | null;
    } = {},
  ): Promise<string> {
    return (
      await this.call(P.CONNECT_GET_DOMAIN_CAPABILITIES, {
        emulatorbin: opts.emulatorbin ?? null,
        arch: opts.arch ?? null,
        machine: opts.machine ?? null,
        virttype: opts.virttype ?? null,
        flags: 0,
      })
    ).capabilities;
  }

  // ----- checkpoints -----------------------------------------------------------------------

  /** flags are VIR_DOMAIN_CHECKPOINT_CREATE_* (REDEFINE, QUIESCE, REDEFINE_VALIDATE). */
  async checkpointCreateXml(dom: DomainRef, xml: string, flags = 0): Promise<CheckpointRef> {
    return (await this.call(P.DOMAIN_CHECKPOINT_CREATE_XML, { dom, xmlDesc: xml, flags })).checkpoint;
  }

  /** flags are VIR_DOMAIN_CHECKPOINT_LIST_* (ROOTS, TOPOLOGICAL, LEAVES, NO_LEAVES). */
  async listAllCheckpoints(dom: DomainRef, flags = 0): Promise<CheckpointRef[]> {
    return (await this.call(P.DOMAIN_LIST_ALL_CHECKPOINTS, { dom, needResults: 1, flags })).checkpoints;
  }

  async listCheckpointChildren(checkpoint: CheckpointRef, flags = 0): Promise<CheckpointRef[]> {
    return (await this.call(P.DOMAIN_CHECKPOINT_LIST_ALL_CHILDREN, { checkpoint, needResults: 1, flags }))
      .checkpoints;
  }

  async lookupCheckpointByName(dom: DomainRef, name: string): Promise<CheckpointRef> {
    return (await this.call(P.DOMAIN_CHECKPOINT_LOOKUP_BY_NAME, { dom, name, flags: 0 })).checkpoint;
  }

  /** flags are VIR_DOMAIN_CHECKPOINT_XML_* (SECURE, NO_DOMAIN, SIZE). */
  async checkpointGetXml(checkpoint: CheckpointRef, flags = 0): Promise<string> {
    return (await this.call(P.DOMAIN_CHECKPOINT_GET_XML_DESC, { checkpoint, flags })).xml;
  }

  /** The parent checkpoint, or null for a root checkpoint. */
  async checkpointGetParent(checkpoint: CheckpointRef): Promise<CheckpointRef | null> {
    try {
      return (await this.call(P.DOMAIN_CHECKPOINT_GET_PARENT, { checkpoint, flags: 0 })).parent;
    } catch (err) {
      if (isNoDomainCheckpoint(err)) return null;
      throw err;
    }
  }

  /** flags are VIR_DOMAIN_CHECKPOINT_DELETE_* (CHILDREN, METADATA_ONLY, CHILDREN_ONLY). */
  async checkpointDelete(checkpoint: CheckpointRef, flags = 0): Promise<void> {
    await this.call(P.DOMAIN_CHECKPOINT_DELETE, { checkpoint, flags });
  }

  // ----- guest agent -----------------------------------------------------------------------

  /** Freezes guest filesystems (all when `mountpoints` is empty); returns how many were frozen. */
  async fsFreeze(dom: DomainRef, mountpoints: readonly string[] = []): Promise<number> {
    return (await this.call(P.DOMAIN_FSFREEZE, { dom, mountpoints: [...mountpoints], flags: 0 })).filesystems;
  }

  async fsThaw(dom: DomainRef, mountpoints: readonly string[] = []): Promise<number> {
    return (await this.call(P.DOMAIN_FSTHAW, { dom, mountpoints: [...mountpoints], flags: 0 })).filesystems;
  }

  /** The guest's clock through the agent (fails with VIR_ERR_AGENT_UNRESPONSIVE without one). */
  async getDomainTime(dom: DomainRef): Promise<{ seconds: number; nseconds: number }> {
    return this.call(P.DOMAIN_GET_TIME, { dom, flags: 0 });
  }

  /** A raw guest-agent command (QEMU program); `timeoutSec` -2 block, -1 default, 0 no wait. */
  async agentCommand(
    dom: DomainRef,
    cmd: string,
    timeoutSec: number = VIR_DOMAIN_QEMU_AGENT_COMMAND.VIR_DOMAIN_QEMU_AGENT_COMMAND_DEFAULT,
  ): Promise<string | null> {
    return (await this.call(P.QEMU_DOMAIN_AGENT_COMMAND, { dom, cmd, timeout: timeoutSec, flags: 0 })).result;
  }

  /** Resolves when the guest agent answers guest-ping; rejects (AGENT_UNRESPONSIVE...) otherwise. */
  async agentPing(dom: DomainRef, timeoutSec = 5): Promise<void> {
    await this.agentCommand(dom, '{"execute":"guest-ping"}', timeoutSec);
  }

  /** A QEMU monitor command: QMP JSON by default, HMP text with `{ hmp: true }`. */
  async qemuMonitorCommand(dom: DomainRef, cmd: string, opts: { hmp?: boolean } = {}): Promise<string> {
    const flags = opts.hmp
      ? VIR_DOMAIN_QEMU_MONITOR_COMMAND.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
      : VIR_DOMAIN_QEMU_MONITOR_COMMAND.VIR_DOMAIN_QEMU_MONITOR_COMMAND_DEFAULT;
    return (await this.call(P.QEMU_DOMAIN_MONITOR_COMMAND, { dom, cmd, flags })).result;
  }

  // ----- events ----------------------------------------------------------------------------

  /**
   * Registers for domain events (CALLBACK_REGISTER_ANY per kind). Events are buffered from the
   * moment this resolves. `close()` on the subscription (or on the client) deregisters.
   */
  async subscribe(opts: SubscribeOptions = {}): Promise<DomainEventSubscription> {
    const kinds = opts.kinds ?? ['lifecycle', 'job-completed'];
    const ids: number[] = [];
    const sub = new DomainEventSubscription(async () => {
      for (const id of ids) {
        this.subscriptions.delete(id);
        if (this.conn.isOpen) {
          await this.call(P.CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY, { callbackID: id }).catch(
            () => undefined,
          );
        }
      }
    });
    try {
      for (const kind of kinds) {
        const eventID =
          kind === 'lifecycle'
            ? VIR_DOMAIN_EVENT_ID.VIR_DOMAIN_EVENT_ID_LIFECYCLE
            : VIR_DOMAIN_EVENT_ID.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED;
        const { callbackID } = await this.call(P.CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY, {
          eventID,
          dom: opts.domain ?? null,
        });
        ids.push(callbackID);
        this.subscriptions.set(callbackID, sub);
      }
    } catch (err) {
      await sub.close();
      throw err;
    }
    return sub;
  }

  private onMessage(p: Packet): void {
    const h = p.header;
    if (h.program !== REMOTE_PROGRAM || h.type !== VIR_NET_TYPE.VIR_NET_MESSAGE) return;
    if (h.procedure === REMOTE_PROC.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_LIFECYCLE) {
      const m = xdrDecode(remoteDomainEventCallbackLifecycleMsg, p.payload);
      this.subscriptions.get(m.callbackID)?.push({
        kind: 'lifecycle',
        domain: m.dom,
        event: lifecycleEventName(m.event),
        eventCode: m.event,
        detail: m.detail,
      });
    } else if (h.procedure === REMOTE_PROC.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_JOB_COMPLETED) {
      const m = xdrDecode(remoteDomainEventCallbackJobCompletedMsg, p.payload);
      this.subscriptions
        .get(m.callbackID)
        ?.push({ kind: 'job-completed', domain: m.dom, stats: jobStatsFields(m.params) });
    } else {
      this.logger.debug(`libvirt: ignoring event procedure ${h.procedure}`);
    }
  }

  private onClosed(err: LibvirtConnectionError): void {
    for (const s of new Set(this.subscriptions.values())) s.end(err);
    this.subscriptions.clear();
  }
}
