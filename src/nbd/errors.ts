import { VmvaultError } from '../util/index.js';
import { nbdErrnoName } from './protocol.js';

/** The peer broke the protocol: the connection is dead and every pending request fails with this. */
export class NbdProtocolError extends VmvaultError {
  constructor(message: string) {
    super('NBD_PROTOCOL', `NBD protocol error: ${message}`);
  }
}

/** The server answered one request with an errno; the connection stays usable. */
export class NbdRequestError extends VmvaultError {
  /** `EIO`, `EINVAL`, ... (`errno N` for values outside the spec). */
  readonly errnoName: string;
  constructor(
    readonly errno: number,
    readonly request: string,
    readonly serverMessage = '',
    /** From NBD_REPLY_TYPE_ERROR_OFFSET: where the failure is. */
    readonly errorOffset?: number,
  ) {
    super(
      'NBD_REQUEST',
      `NBD ${request} failed: ${nbdErrnoName(errno)}${serverMessage ? ` (${serverMessage})` : ''}${
        errorOffset === undefined ? '' : ` at offset ${errorOffset}`
      }`,
      { details: { errno, request } },
    );
    this.errnoName = nbdErrnoName(errno);
  }
}

/** The server refused an option during the handshake (e.g. unknown export, TLS required). */
export class NbdOptionError extends VmvaultError {
  constructor(
    /** The NBD_REP_ERR_* reply (0 when the refusal is ours, e.g. an unreadable certificate). */
    readonly replyType: number,
    message: string,
    hint?: string,
  ) {
    super('NBD_OPTION', message, { hint });
  }
}

export class NbdClosedError extends VmvaultError {
  constructor(message = 'NBD connection closed') {
    super('NBD_CLOSED', message);
  }
}

export class NbdTimeoutError extends VmvaultError {
  constructor(message: string) {
    super('NBD_TIMEOUT', message);
  }
}

/** The server cannot listen where it was asked to (socket path, address, port). */
export class NbdListenError extends VmvaultError {
  constructor(message: string, hint: string, exitCode?: number) {
    super('NBD_LISTEN', message, { hint, ...(exitCode === undefined ? {} : { exitCode }) });
  }
}
