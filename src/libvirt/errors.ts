import { ExitCode, VmvaultError, type VmvaultErrorOptions } from '../util/index.js';
import { VIR_ERR, virErrorCodeName, virErrorDomainName } from './protocol/error-names.js';

/** The full `remote_error` a daemon sends with status ERROR. */
export interface RemoteErrorFields {
  code: number;
  domain: number;
  message: string | null;
  level: number;
  domainName: string | null;
  str1: string | null;
  str2: string | null;
  str3: string | null;
  int1: number;
  int2: number;
  networkName: string | null;
}

/**
 * The daemon answered a call with an error (the connection itself is fine). `virCode` is the
 * numeric virErrorNumber, `virCodeName` its name (`VIR_ERR_NO_DOMAIN`). Identify errors with the
 * predicates below, never by message text.
 */
export class LibvirtError extends VmvaultError {
  readonly virCode: number;
  readonly virCodeName: string;
  readonly virDomain: number;
  readonly virDomainName: string;
  readonly level: number;
  readonly remote: RemoteErrorFields;
  /** The procedure that failed, for example `DOMAIN_LOOKUP_BY_NAME`. */
  readonly procedure: string;

  constructor(remote: RemoteErrorFields, procedure: string) {
    const text = remote.message ?? `${virErrorCodeName(remote.code)} (no message)`;
    super('LIBVIRT_ERROR', `libvirt: ${text}`, {
      details: { virCode: remote.code, virDomain: remote.domain, procedure },
    });
    this.virCode = remote.code;
    this.virCodeName = virErrorCodeName(remote.code);
    this.virDomain = remote.domain;
    this.virDomainName = virErrorDomainName(remote.domain);
    this.level = remote.level;
    this.remote = remote;
    this.procedure = procedure;
  }
}

/**
 * The transport is gone or never came up: daemon not running, socket refused, ssh failed, the
 * connection dropped, or a keepalive timed out. Every call pending on the connection rejects with
 * the same instance.
 */
export class LibvirtConnectionError extends VmvaultError {
  constructor(message: string, options: VmvaultErrorOptions & { code?: string } = {}) {
    super(options.code ?? 'LIBVIRT_CONNECTION', message, options);
  }
}

/** The peer broke the RPC framing or sent bytes we cannot decode; the connection is killed. */
export class LibvirtProtocolError extends LibvirtConnectionError {
  constructor(message: string, cause?: unknown) {
    super(`libvirt protocol error: ${message}`, { code: 'LIBVIRT_PROTOCOL', cause });
  }
}

/** A connection URI vmvault cannot use (syntax, scheme, parameter). */
export class LibvirtUriError extends VmvaultError {
  constructor(uri: string, problem: string, hint?: string) {
    super('LIBVIRT_URI', `invalid libvirt URI '${uri}': ${problem}`, {
      hint:
        hint ?? 'use qemu:///system, qemu+unix:///system?socket=PATH or qemu+ssh://[user@]host[:port]/system',
      exitCode: ExitCode.USAGE,
    });
  }
}

export function isLibvirtError(err: unknown): err is LibvirtError {
  return err instanceof LibvirtError;
}

export function isLibvirtConnectionError(err: unknown): err is LibvirtConnectionError {
  return err instanceof LibvirtConnectionError;
}

function hasCode(err: unknown, code: number): boolean {
  return err instanceof LibvirtError && err.virCode === code;
}

export const isNoDomain = (err: unknown): boolean => hasCode(err, VIR_ERR.VIR_ERR_NO_DOMAIN);
export const isNoDomainCheckpoint = (err: unknown): boolean =>
  hasCode(err, VIR_ERR.VIR_ERR_NO_DOMAIN_CHECKPOINT);
export const isNoDomainBackup = (err: unknown): boolean => hasCode(err, VIR_ERR.VIR_ERR_NO_DOMAIN_BACKUP);
export const isOperationInvalid = (err: unknown): boolean => hasCode(err, VIR_ERR.VIR_ERR_OPERATION_INVALID);
export const isOperationUnsupported = (err: unknown): boolean =>
  hasCode(err, VIR_ERR.VIR_ERR_OPERATION_UNSUPPORTED) || hasCode(err, VIR_ERR.VIR_ERR_NO_SUPPORT);
export const isAgentUnresponsive = (err: unknown): boolean =>
  hasCode(err, VIR_ERR.VIR_ERR_AGENT_UNRESPONSIVE);
export const isCheckpointInconsistent = (err: unknown): boolean =>
  hasCode(err, VIR_ERR.VIR_ERR_CHECKPOINT_INCONSISTENT);
export const isInvalidArg = (err: unknown): boolean => hasCode(err, VIR_ERR.VIR_ERR_INVALID_ARG);
export const isDomainExists = (err: unknown): boolean => hasCode(err, VIR_ERR.VIR_ERR_DOM_EXIST);
export const isOperationFailed = (err: unknown): boolean => hasCode(err, VIR_ERR.VIR_ERR_OPERATION_FAILED);
