/**
 * Dialers: a connected unix or TCP socket, or an ssh child process whose stdin/stdout carry the RPC
 * stream (what libvirt's virnetclient does for qemu+ssh://: the remote side runs virt-ssh-helper if
 * present, else `nc -U socket`).
 */
import { spawn } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { errnoCode } from '../../util/index.js';
import { LibvirtConnectionError } from '../errors.js';
import type { Transport } from '../rpc/connection.js';
import { localSocketPath, type LibvirtUri } from './uri.js';

export interface DialOptions {
  /** Give up connecting after this long (default 30 s). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

function socketTransport(sock: Socket, description: string): Transport {
  return {
    description,
    stream: sock,
    closeReason: async () => undefined,
    destroy: () => sock.destroy(),
  };
}

function connectSocket(
  open: () => Socket,
  description: string,
  explain: (err: Error) => LibvirtConnectionError,
  opts: DialOptions,
): Promise<Transport> {
  return new Promise((resolve, reject) => {
    const sock = open();
    const timeoutMs = opts.timeoutMs ?? 30_000;
    const timer = setTimeout(() => {
      sock.destroy();
      reject(
        new LibvirtConnectionError(`timed out after ${timeoutMs} ms connecting to libvirt at ${description}`),
      );
    }, timeoutMs);
    const onAbort = (): void => {
      sock.destroy();
      reject(
        new LibvirtConnectionError(`connecting to libvirt at ${description} was cancelled`, {
          code: 'CANCELLED',
        }),
      );
    };
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const done = (): void => {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
    };
    sock.once('connect', () => {
      done();
      sock.removeAllListeners('error');
      resolve(socketTransport(sock, description));
    });
    sock.once('error', (err) => {
      done();
      reject(explain(err));
    });
  });
}

export function dialUnix(path: string, opts: DialOptions = {}): Promise<Transport> {
  const description = `unix socket ${path}`;
  return connectSocket(
    () => connect({ path }),
    description,
    (err) => {
      const code = errnoCode(err);
      const base = `cannot connect to libvirt at ${path}`;
      if (code === 'ENOENT') {
        return new LibvirtConnectionError(`${base}: no such socket`, {
          cause: err,
          code: 'LIBVIRT_NOT_RUNNING',
          hint: 'is the libvirt daemon (libvirtd or virtqemud) running?',
        });
      }
      if (code === 'ECONNREFUSED') {
        return new LibvirtConnectionError(`${base}: connection refused`, {
          cause: err,
          code: 'LIBVIRT_NOT_RUNNING',
          hint: 'the libvirt daemon is not running',
        });
      }
      if (code === 'EACCES' || code === 'EPERM') {
        return new LibvirtConnectionError(`${base}: permission denied`, {
          cause: err,
          hint: 'run as root or as a member of the libvirt group',
        });
      }
      return new LibvirtConnectionError(`${base}: ${err.message}`, { cause: err });
    },
    opts,
  );
}

export function dialTcp(host: string, port: number, opts: DialOptions = {}): Promise<Transport> {
  const description = `tcp ${host}:${port}`;
  return connectSocket(
    () => connect({ host, port }),
    description,
    (err) => {
      const code = errnoCode(err);
      return new LibvirtConnectionError(
        `cannot connect to libvirt at ${host}:${port}: ${code ?? err.message}`,
        {
          cause: err,
          code: code === 'ECONNREFUSED' ? 'LIBVIRT_NOT_RUNNING' : 'LIBVIRT_CONNECTION',
          hint:
            code === 'ECONNREFUSED' ? 'is libvirtd listening on TCP (--listen, listen_tcp = 1)?' : undefined,
        },
      );
    },
    opts,
  );
}

/** Quotes a word for a POSIX shell. */
export function shellQuote(s: string): string {
  if (/^[A-Za-z0-9_./:=@%+-]+$/.test(s)) return s;
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * The remote command, as libvirt's virNetClientSSHHelperCommand builds it: virt-ssh-helper when
 * the remote host has it (it finds the right daemon itself), else nc on the daemon socket. An
 * explicit `socket=` or `proxy=netcat` always uses nc on that socket.
 */
export function sshRemoteCommand(u: LibvirtUri): string {
  const nc = shellQuote(u.netcat ?? 'nc');
  const socket = shellQuote(
    u.socket ?? (u.mode === 'system' ? '/run/libvirt/libvirt-sock' : '$XDG_RUNTIME_DIR/libvirt/libvirt-sock'),
  );
  // OpenBSD nc needs -q0 to exit when the client closes; probe whether -q takes an argument.
  const netcat =
    `if ${nc} -q 2>&1 | grep "requires an argument" >/dev/null 2>&1; then ARG=-q0; else ARG=; fi; ` +
    `exec ${nc} $ARG -U ${socket}`;
  const helper = `exec virt-ssh-helper ${shellQuote(u.driverUri)}`;
  let script: string;
  if (u.socket || u.proxy === 'netcat') script = netcat;
  else if (u.proxy === 'native') script = helper;
  else script = `if command -v virt-ssh-helper >/dev/null 2>&1; then ${helper}; else ${netcat}; fi`;
  return `sh -c ${shellQuote(script)}`;
}

/** The ssh argument vector for a qemu+ssh:// URI (without the ssh binary itself). */
export function sshArgs(u: LibvirtUri): string[] {
  const args: string[] = [];
  if (u.port !== undefined) args.push('-p', String(u.port));
  if (u.user) args.push('-l', u.user);
  if (u.keyfile) args.push('-i', u.keyfile);
  if (u.knownHosts) args.push('-o', `UserKnownHostsFile=${u.knownHosts}`);
  if (u.noVerify) args.push('-o', 'StrictHostKeyChecking=no');
  args.push('-T', '-e', 'none', '-o', 'BatchMode=yes', '--', u.host!, sshRemoteCommand(u));
  return args;
}

const STDERR_TAIL_BYTES = 4096;

export function dialSsh(u: LibvirtUri, opts: DialOptions = {}): Promise<Transport> {
  const command = u.sshCommand ?? 'ssh';
  const target = `${u.user ? `${u.user}@` : ''}${u.host}${u.port ? `:${u.port}` : ''}`;
  const description = `ssh ${target}`;
  return new Promise((resolve, reject) => {
    const child = spawn(command, sshArgs(u), { stdio: ['pipe', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => {
      stderr = (stderr + d).slice(-STDERR_TAIL_BYTES);
    });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => {
      child.once('exit', (code, signal) => res({ code, signal }));
      child.once('error', () => res({ code: null, signal: null }));
    });
    const stream = Duplex.from({ readable: child.stdout, writable: child.stdin });
    const transport: Transport = {
      description,
      stream,
      async closeReason() {
        // stdout may close a moment before the process has exited and flushed its stderr.
        const status = await Promise.race([
          exited,
          new Promise<undefined>((r) => setTimeout(() => r(undefined), 1000).unref()),
        ]);
        const tail = stderr
          .split('\n')
          .map((l) => l.trim())
          .filter((l) => l.length > 0)
          .slice(-2)
          .join('; ');
        const st = status
          ? status.code !== null
            ? `ssh exited with status ${status.code}`
            : `ssh killed by ${status.signal}`
          : '';
        return [st, tail].filter((s) => s).join(': ') || undefined;
      },
      destroy() {
        stream.destroy();
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      },
    };
    child.once('error', (err) => {
      stream.destroy();
      reject(
        new LibvirtConnectionError(`cannot run ${command} for ${u.uri}: ${errnoCode(err) ?? err.message}`, {
          cause: err,
          hint: errnoCode(err) === 'ENOENT' ? 'install openssh-client' : undefined,
        }),
      );
    });
    child.once('spawn', () => {
      if (opts.signal?.aborted) {
        transport.destroy();
        reject(
          new LibvirtConnectionError(`connecting to libvirt over ${description} was cancelled`, {
            code: 'CANCELLED',
          }),
        );
        return;
      }
      resolve(transport);
    });
  });
}

/** Opens the transport a parsed URI asks for. */
export function dial(u: LibvirtUri, opts: DialOptions = {}): Promise<Transport> {
  switch (u.transport) {
    case 'unix':
      return dialUnix(localSocketPath(u), opts);
    case 'tcp':
      return dialTcp(u.host!, u.port!, opts);
    case 'ssh':
      return dialSsh(u, opts);
  }
}
