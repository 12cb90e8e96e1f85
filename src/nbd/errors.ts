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
  constructor(
    readonly errno: number,
    readonly request: string,
    serverMessage = '',
  ) {
    super(
      'NBD_REQUEST',
      `NBD ${request} failed: ${nbdErrnoName(errno)}${serverMessage ? ` (${serverMessage})` : ''}`,
    );
  }
}

/** The server refused an option during the handshake (e.g. unknown export). */
export class NbdOptionError extends VmvaultError {
  constructor(
    readonly replyType: number,
    message: string,
  ) {
    super('NBD_OPTION', message);
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
