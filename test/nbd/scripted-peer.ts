/**
 * Scripted raw-socket NBD peers for tests: a fake server whose every byte is written by the test
 * (to reach corners real servers never show: no GO, broken framing, short block status), and a
 * raw client socket for the server's malformed-input suite.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { waitForPath } from '../helpers/nbd-peers.js';

/** Exact-length reads over a socket. */
export class Wire {
  private chunks: Buffer[] = [];
  private have = 0;
  private wake: (() => void) | undefined;
  closed = false;

  constructor(readonly socket: Socket) {
    socket.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.have += d.length;
      this.wake?.();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake?.();
    });
    socket.on('error', () => {});
  }

  /** The next n bytes; rejects if the peer closes first. */
  async read(n: number): Promise<Buffer> {
    while (this.have < n) {
      if (this.closed) throw new Error(`peer closed with ${this.have}/${n} bytes buffered`);
      await new Promise<void>((r) => (this.wake = r));
      this.wake = undefined;
    }
    const all = Buffer.concat(this.chunks);
    this.chunks = [all.subarray(n)];
    this.have -= n;
    return all.subarray(0, n);
  }

  /** Resolves when the peer has closed the connection. */
  async closedByPeer(): Promise<void> {
    while (!this.closed) {
      await new Promise<void>((r) => (this.wake = r));
      this.wake = undefined;
    }
  }

  write(...parts: Buffer[]): void {
    this.socket.write(Buffer.concat(parts));
  }
}

export interface FakeServer {
  socket: string;
  close(): Promise<void>;
}

/** A unix-socket server in `dir` running `script` for each connection. */
export async function fakeServer(
  dir: string,
  script: (w: Wire) => Promise<void>,
  name = 'fake',
): Promise<FakeServer> {
  const path = join(dir, `${name}.sock`);
  const sockets = new Set<Socket>();
  const server: Server = createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    void script(new Wire(s)).catch(() => s.destroy());
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  await waitForPath(path);
  return {
    socket: path,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** A raw client connection to a unix socket. */
export async function rawClient(path: string): Promise<Wire> {
  const s = connect(path);
  await new Promise<void>((resolve, reject) => {
    s.once('connect', resolve);
    s.once('error', reject);
  });
  return new Wire(s);
}
