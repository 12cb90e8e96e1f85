/**
 * libvirt connection URIs as virsh takes them (docs/uri.rst), restricted to what vmvault speaks:
 *
 *   qemu:///system  qemu:///session                     local unix socket (virtqemud or libvirtd)
 *   qemu+unix:///system?socket=PATH                      explicit unix socket
 *   qemu+ssh://[user@]host[:port]/system[?keyfile=&socket=&known_hosts=&no_verify=1&netcat=&command=&proxy=]
 *   qemu+tcp://host[:port]/system                         plain TCP (tests; port 16509 by default)
 *
 * The driver URI sent in CONNECT_OPEN is the URI without transport and transport parameters
 * (`qemu:///system`), as libvirt's remote driver does.
 */
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { LibvirtUriError } from '../errors.js';

export type LibvirtTransportKind = 'unix' | 'ssh' | 'tcp';

export interface LibvirtUri {
  /** The URI as given. */
  readonly uri: string;
  readonly transport: LibvirtTransportKind;
  /** `system` or `session`. */
  readonly mode: 'system' | 'session';
  /** Sent in CONNECT_OPEN: `qemu:///system`. */
  readonly driverUri: string;
  readonly host?: string;
  readonly port?: number;
  readonly user?: string;
  /** `socket=`: the daemon socket (local for unix, on the remote host for ssh). */
  readonly socket?: string;
  /** ssh: `keyfile=` identity file. */
  readonly keyfile?: string;
  /** ssh: `known_hosts=` file. */
  readonly knownHosts?: string;
  /** ssh: `no_verify=1` disables host key checking. */
  readonly noVerify?: boolean;
  /** ssh: `netcat=` path of nc on the remote host (default `nc`). */
  readonly netcat?: string;
  /** ssh: `command=` the ssh binary (default `ssh`). */
  readonly sshCommand?: string;
  /** ssh: `proxy=auto|netcat|native` (native is treated as netcat-free virt-ssh-helper). */
  readonly proxy?: 'auto' | 'netcat' | 'native';
}

const SCHEME_RE = /^([a-z][a-z0-9]*)(?:\+([a-z0-9]+))?:\/\//i;
const KNOWN_PARAMS = new Set([
  'socket',
  'keyfile',
  'known_hosts',
  'no_verify',
  'no_tty',
  'netcat',
  'command',
  'proxy',
]);

function parseQuery(uri: string, query: string): Map<string, string> {
  const out = new Map<string, string>();
  if (!query) return out;
  for (const part of query.split('&')) {
    if (!part) continue;
    const eq = part.indexOf('=');
    const rawKey = eq < 0 ? part : part.slice(0, eq);
    const rawVal = eq < 0 ? '' : part.slice(eq + 1);
    let key: string;
    let val: string;
    try {
      key = decodeURIComponent(rawKey);
      val = decodeURIComponent(rawVal);
    } catch {
      throw new LibvirtUriError(uri, `bad percent-encoding in '${part}'`);
    }
    if (!KNOWN_PARAMS.has(key)) {
      throw new LibvirtUriError(
        uri,
        `unsupported parameter '${key}'`,
        `supported: ${[...KNOWN_PARAMS].join(', ')}`,
      );
    }
    out.set(key, val);
  }
  return out;
}

/** Parses and validates a connection URI. Throws LibvirtUriError (exit code 2). */
export function parseLibvirtUri(uri: string): LibvirtUri {
  const m = SCHEME_RE.exec(uri);
  if (!m) throw new LibvirtUriError(uri, 'not a URI of the form driver[+transport]://[host]/path');
  const driver = m[1]!.toLowerCase();
  const transportName = (m[2] ?? '').toLowerCase();
  if (driver !== 'qemu') {
    throw new LibvirtUriError(uri, `driver '${driver}' is not supported (vmvault backs up QEMU/KVM domains)`);
  }
  let parsed: URL;
  try {
    parsed = new URL(uri);
  } catch {
    throw new LibvirtUriError(uri, 'malformed URI');
  }
  if (parsed.hash) throw new LibvirtUriError(uri, 'fragments are not allowed');
  const path = parsed.pathname;
  if (path !== '/system' && path !== '/session') {
    throw new LibvirtUriError(uri, `path '${path || '/'}' must be /system or /session`);
  }
  const mode = path === '/system' ? 'system' : 'session';
  const params = parseQuery(uri, parsed.search.replace(/^\?/, ''));
  const host = parsed.hostname.replace(/^\[(.*)\]$/, '$1');
  const user = parsed.username ? decodeURIComponent(parsed.username) : undefined;
  if (parsed.password)
    throw new LibvirtUriError(uri, 'passwords in URIs are not supported', 'use an ssh key (keyfile=)');
  let port: number | undefined;
  if (parsed.port) {
    port = Number(parsed.port);
    if (!Number.isInteger(port) || port < 1 || port > 65535)
      throw new LibvirtUriError(uri, `bad port '${parsed.port}'`);
  }
  const driverUri = `qemu:///${mode}`;
  const socket = params.get('socket');
  const common = { uri, mode, driverUri, ...(socket ? { socket } : {}) } as const;

  let transport: LibvirtTransportKind;
  if (transportName === '' || transportName === 'unix') {
    if (transportName === '' && host) {
      throw new LibvirtUriError(
        uri,
        'a host without a transport means TLS, which vmvault does not support',
        'use qemu+ssh://host/system',
      );
    }
    if (host) throw new LibvirtUriError(uri, 'a unix socket URI cannot name a host');
    transport = 'unix';
    for (const k of params.keys()) {
      if (k !== 'socket') throw new LibvirtUriError(uri, `parameter '${k}' only applies to qemu+ssh://`);
    }
    return { ...common, transport };
  }
  if (transportName === 'tcp') {
    if (!host) throw new LibvirtUriError(uri, 'qemu+tcp:// needs a host');
    for (const k of params.keys())
      throw new LibvirtUriError(uri, `parameter '${k}' does not apply to qemu+tcp://`);
    return { uri, mode, driverUri, transport: 'tcp', host, port: port ?? 16509 };
  }
  if (transportName === 'ssh') {
    if (!host) throw new LibvirtUriError(uri, 'qemu+ssh:// needs a host');
    const proxy = params.get('proxy') ?? 'auto';
    if (proxy !== 'auto' && proxy !== 'netcat' && proxy !== 'native') {
      throw new LibvirtUriError(uri, `proxy '${proxy}' must be auto, netcat or native`);
    }
    const noVerify = params.get('no_verify');
    return {
      ...common,
      transport: 'ssh',
      host,
      ...(port !== undefined ? { port } : {}),
      ...(user ? { user } : {}),
      ...(params.has('keyfile') ? { keyfile: params.get('keyfile')! } : {}),
      ...(params.has('known_hosts') ? { knownHosts: params.get('known_hosts')! } : {}),
      ...(noVerify !== undefined ? { noVerify: noVerify !== '0' } : {}),
      ...(params.has('netcat') ? { netcat: params.get('netcat')! } : {}),
      ...(params.has('command') ? { sshCommand: params.get('command')! } : {}),
      proxy,
    };
  }
  throw new LibvirtUriError(
    uri,
    `transport '${transportName}' is not supported`,
    'use unix (default), ssh or tcp',
  );
}

/** The local unix socket for a URI: `socket=` or the daemon's default, virtqemud first. */
export function localSocketPath(u: LibvirtUri, exists: (p: string) => boolean = existsSync): string {
  if (u.socket) return u.socket;
  const dir =
    u.mode === 'system'
      ? '/run/libvirt'
      : process.env.XDG_RUNTIME_DIR
        ? join(process.env.XDG_RUNTIME_DIR, 'libvirt')
        : join(homedir(), '.cache', 'libvirt');
  const modular = join(dir, 'virtqemud-sock');
  if (exists(modular)) return modular;
  return join(dir, 'libvirt-sock');
}
