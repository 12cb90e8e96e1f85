/**
 * Real NBD peers for tests: nbdkit, qemu-nbd, qemu-storage-daemon, and throw-away x509
 * certificates. Every helper puts its sockets and pid files in the caller's temp dir, kills only
 * the process it started (by its pid), and registers its own cleanup: inside a test through
 * `onTestFinished`, otherwise the caller stops it (suites starting peers in `beforeAll` do so in
 * `afterAll`). Nothing sleeps to synchronise: helpers wait for the socket or pid file to appear,
 * with a timeout, and fail early when the peer exits.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { onTestFinished } from 'vitest';
import { exec } from '../../src/util/index.js';

/** Waits until a path exists (a socket a peer creates), or the process exits, or the time runs out. */
export async function waitForPath(path: string, child?: ChildProcess, timeoutMs = 15_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!existsSync(path)) {
    if (child && (child.exitCode !== null || child.signalCode !== null))
      throw new Error(
        `peer exited (${child.exitCode ?? child.signalCode}) before creating ${path}${stderrOf(child)}`,
      );
    if (Date.now() > end) throw new Error(`timed out waiting for ${path}${stderrOf(child)}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const stderrText = new WeakMap<ChildProcess, string>();
function stderrOf(child: ChildProcess | undefined): string {
  const t = child ? stderrText.get(child)?.trim() : undefined;
  return t ? `: ${t.split('\n').slice(-3).join(' | ')}` : '';
}

export interface Peer {
  /** Unix socket path ('' for TCP peers). */
  socket: string;
  /** TCP port (0 for unix socket peers). */
  port: number;
  pid: number;
  /** Stops the peer (SIGTERM to its own pid, then waits for it to exit). Idempotent. */
  stop(): Promise<void>;
}

function track(child: ChildProcess): void {
  let err = '';
  child.stderr?.on('data', (d: Buffer) => {
    err = (err + d.toString()).slice(-4000);
    stderrText.set(child, err);
  });
}

function stopper(child: ChildProcess): () => Promise<void> {
  const closed = new Promise<void>((r) => {
    if (child.exitCode !== null || child.signalCode !== null) r();
    else child.once('close', () => r());
  });
  let stopping: Promise<void> | undefined;
  return () =>
    (stopping ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await closed;
    })());
}

function register(stop: () => Promise<void>): void {
  try {
    onTestFinished(stop);
  } catch {
    // Not inside a test (beforeAll): the caller stops the peer.
  }
}

function peer(child: ChildProcess, socket: string, port: number): Peer {
  const p: Peer = { socket, port, pid: child.pid ?? -1, stop: stopper(child) };
  register(p.stop);
  return p;
}

async function start(cmd: string, args: string[], waitFor: string): Promise<ChildProcess> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  track(child);
  try {
    await waitForPath(waitFor, child);
  } catch (err) {
    await stopper(child)();
    throw err;
  }
  return child;
}

/** A free TCP port on 127.0.0.1 (bound and released; peers bind it right after). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

/** nbdkit in the foreground on a unix socket in `dir`: `startNbdkit(dir, ['memory', 'size=64M'])`. */
export async function startNbdkit(dir: string, args: string[], name = 'nbdkit'): Promise<Peer> {
  const socket = join(dir, `${name}.sock`);
  // The socket file appears at bind(), before listen(): wait for the pid file nbdkit writes once it listens.
  const pidFile = join(dir, `${name}.pid`);
  const child = await start('nbdkit', ['-f', '-U', socket, '-P', pidFile, ...args], pidFile);
  return peer(child, socket, 0);
}

/**
 * qemu-nbd in the foreground on a unix socket in `dir` (or on TCP with `tcp: true`), serving
 * `image` with extra `args` (e.g. ['-r', '-f', 'raw']). Waits for its pid file, which qemu-nbd
 * writes once it listens.
 */
export async function startQemuNbd(
  dir: string,
  image: string,
  args: string[],
  opts: { name?: string; tcp?: boolean } = {},
): Promise<Peer> {
  const name = opts.name ?? 'qemu-nbd';
  const pidFile = join(dir, `${name}.pid`);
  const socket = join(dir, `${name}.sock`);
  if (opts.tcp) {
    // A port another process grabs between freePort() and qemu-nbd's bind makes it exit: retry.
    for (let attempt = 0; ; attempt++) {
      const port = await freePort();
      try {
        const child = await start(
          'qemu-nbd',
          ['-t', '-b', '127.0.0.1', '-p', String(port), '--pid-file', pidFile, ...args, image],
          pidFile,
        );
        return peer(child, '', port);
      } catch (err) {
        if (attempt >= 3) throw err;
      }
    }
  }
  const child = await start('qemu-nbd', ['-t', '-k', socket, '--pid-file', pidFile, ...args, image], pidFile);
  return peer(child, socket, 0);
}

/** qemu-storage-daemon exporting a qcow2 (writable) with one persistent bitmap as qemu:dirty-bitmap:<bitmap>. */
export async function startQsd(
  dir: string,
  image: string,
  exportName: string,
  bitmap: string,
): Promise<Peer> {
  const socket = join(dir, 'qsd.sock');
  const pidFile = join(dir, 'qsd.pid');
  const child = await start(
    'qemu-storage-daemon',
    [
      '--blockdev',
      `driver=file,node-name=file0,filename=${image}`,
      '--blockdev',
      'driver=qcow2,node-name=fmt0,file=file0',
      '--nbd-server',
      `addr.type=unix,addr.path=${socket}`,
      '--export',
      `type=nbd,id=exp0,node-name=fmt0,name=${exportName},writable=on,bitmaps.0=${bitmap}`,
      '--pidfile',
      pidFile,
    ],
    pidFile, // written after the export listens (the socket file exists a moment earlier)
  );
  return peer(child, socket, 0);
}

export interface TlsCerts {
  dir: string;
  caFile: string;
  /** A client certificate and key signed by the same CA (for servers that verify peers). */
  clientCertFile: string;
  clientKeyFile: string;
}

/**
 * A throw-away x509 CA, a server certificate for localhost / 127.0.0.1 (in qemu's layout:
 * ca-cert.pem, server-cert.pem, server-key.pem) and a client certificate (certtool).
 */
export async function makeTlsCerts(dir: string): Promise<TlsCerts> {
  const t = (n: string): string => join(dir, n);
  await writeFile(t('ca.info'), 'cn = vmvault test CA\nca\ncert_signing_key\nexpiration_days = 2\n');
  await writeFile(
    t('server.info'),
    'organization = vmvault\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n',
  );
  await writeFile(
    t('client.info'),
    'organization = vmvault\ncn = vmvault-client\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 2\n',
  );
  await exec('certtool', ['--generate-privkey', '--outfile', t('ca-key.pem')]);
  await exec('certtool', [
    '--generate-self-signed',
    '--load-privkey',
    t('ca-key.pem'),
    '--template',
    t('ca.info'),
    '--outfile',
    t('ca-cert.pem'),
  ]);
  for (const who of ['server', 'client']) {
    await exec('certtool', ['--generate-privkey', '--outfile', t(`${who}-key.pem`)]);
    await exec('certtool', [
      '--generate-certificate',
      '--load-privkey',
      t(`${who}-key.pem`),
      '--load-ca-certificate',
      t('ca-cert.pem'),
      '--load-ca-privkey',
      t('ca-key.pem'),
      '--template',
      t(`${who}.info`),
      '--outfile',
      t(`${who}-cert.pem`),
    ]);
  }
  return {
    dir,
    caFile: t('ca-cert.pem'),
    clientCertFile: t('client-cert.pem'),
    clientKeyFile: t('client-key.pem'),
  };
}
