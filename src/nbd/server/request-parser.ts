/**
 * Sans-IO parser for NBD transmission requests (server side). Fed bytes in any split; reports
 * each request with its WRITE payload. Before a WRITE payload is collected, `acceptPayload` decides
 * whether it is wanted: a refused write's payload is skipped without buffering (as nbdkit does),
 * so the stream stays in sync whatever the request claimed. A bad magic throws NbdProtocolError:
 * the connection must be closed.
 *
 * WRITE payloads are kept as views of the input until complete (memory grows only with the bytes
 * the client really sent, whatever length it announced), so input buffers must not be reused by
 * the caller (socket 'data' buffers never are).
 */
import { NbdProtocolError } from '../errors.js';
import { NBD_CMD, NBD_REQUEST_MAGIC, NBD_SIZE } from '../protocol.js';
import { decodeRequestHeader, type RequestHeader } from '../wire.js';

export interface RequestSink {
  /** For a WRITE header: 0 to receive the payload, or the errno the request will fail with. */
  acceptPayload(h: RequestHeader): number;
  /** A complete request; `payload` for accepted WRITEs, `refusedErrno` for refused ones. */
  request(h: RequestHeader, payload: Buffer | undefined, refusedErrno: number): void;
}

export class RequestParser {
  private readonly hdr = Buffer.alloc(NBD_SIZE.REQUEST_HEADER);
  private hdrFill = 0;
  private current: RequestHeader | undefined;
  private pieces: Buffer[] = [];
  private payloadFill = 0;
  /** Bytes of a refused payload still to skip. */
  private skip = 0;
  private refusedErrno = 0;

  constructor(private readonly sink: RequestSink) {}

  /** True between requests. */
  get isIdle(): boolean {
    return this.hdrFill === 0 && this.current === undefined;
  }

  push(input: Buffer): void {
    let at = 0;
    while (at < input.length) {
      if (this.current) {
        const h = this.current;
        if (this.skip > 0) {
          const k = Math.min(this.skip, input.length - at);
          this.skip -= k;
          at += k;
          if (this.skip === 0) this.finish(h, undefined);
        } else {
          const k = Math.min(h.length - this.payloadFill, input.length - at);
          this.pieces.push(input.subarray(at, at + k));
          this.payloadFill += k;
          at += k;
          if (this.payloadFill === h.length) {
            const p = this.pieces.length === 1 ? this.pieces[0]! : Buffer.concat(this.pieces, h.length);
            this.pieces = [];
            this.finish(h, p);
          }
        }
        continue;
      }
      const k = Math.min(NBD_SIZE.REQUEST_HEADER - this.hdrFill, input.length - at);
      input.copy(this.hdr, this.hdrFill, at, at + k);
      this.hdrFill += k;
      at += k;
      if (this.hdrFill >= 4 && this.hdr.readUInt32BE(0) !== NBD_REQUEST_MAGIC)
        throw new NbdProtocolError(`bad request magic 0x${this.hdr.readUInt32BE(0).toString(16)}`);
      if (this.hdrFill < NBD_SIZE.REQUEST_HEADER) continue;
      this.hdrFill = 0;
      const h = decodeRequestHeader(this.hdr);
      if (h.type !== NBD_CMD.NBD_CMD_WRITE || h.length === 0) {
        this.sink.request(h, h.type === NBD_CMD.NBD_CMD_WRITE ? Buffer.alloc(0) : undefined, 0);
        continue;
      }
      const errno = this.sink.acceptPayload(h);
      this.current = h;
      this.refusedErrno = errno;
      if (errno !== 0) this.skip = h.length;
      else {
        this.pieces = [];
        this.payloadFill = 0;
      }
    }
  }

  private finish(h: RequestHeader, payload: Buffer | undefined): void {
    this.current = undefined;
    const errno = this.refusedErrno;
    this.refusedErrno = 0;
    this.sink.request(h, payload, errno);
  }
}
