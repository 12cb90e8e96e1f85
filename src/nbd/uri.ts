/**
 * NBD URIs (NetworkBlockDevice/nbd doc/uri.md): `nbd://host:port/export`,
 * `nbd+unix:///export?socket=PATH`, and the TLS-only `nbds` / `nbds+unix` forms.
 */
import { UsageError } from '../util/index.js';
import { NBD_DEFAULT_PORT } from './protocol.js';

export interface NbdUri {
  /** True for `nbds` / `nbds+unix`: the connection must use TLS. */
  tls: boolean;
  /** TCP: host (IPv6 without brackets) and port. */
  host?: string;
  port?: number;
  /** Unix socket path (`socket=` parameter). */
  socketPath?: string;
  /** The path without its leading `/`, percent-decoded ('' = default export). */
  exportName: string;
  /** Other query parameters (tls-hostname, tls-verify-peer, x-...). */
  params: Record<string, string>;
}

const SCHEMES = ['nbd:', 'nbds:', 'nbd+unix:', 'nbds+unix:'];
const KNOWN_PARAMS = new Set(['socket', 'tls-type', 'tls-hostname', 'tls-verify-peer']);

function bad(uri: string, why: string): UsageError {
  return new UsageError(
    `invalid NBD URI '${uri}': ${why}`,
    'use nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH',
  );
}

export function parseNbdUri(uri: string): NbdUri {
  let u: URL;
  try {
    u = new URL(uri);
  } catch {
    throw bad(uri, 'not a URI');
  }
  if (!SCHEMES.includes(u.protocol)) throw bad(uri, `unknown scheme '${u.protocol.replace(/:$/, '')}'`);
  const unix = u.protocol.endsWith('+unix:');
  const tls = u.protocol.startsWith('nbds');
  const params: Record<string, string> = {};
  for (const [k, v] of u.searchParams) {
    if (!KNOWN_PARAMS.has(k) && !k.startsWith('x-')) throw bad(uri, `unknown query parameter '${k}'`);
    params[k] = v;
  }
  let exportName: string;
  try {
    exportName = decodeURIComponent(u.pathname.replace(/^\//, ''));
  } catch {
    throw bad(uri, 'bad percent-encoding in the export name');
  }
  if (unix) {
    const socketPath = params.socket;
    if (!socketPath) throw bad(uri, 'nbd+unix needs a socket= parameter');
    if (u.host) throw bad(uri, 'nbd+unix URIs take no host');
    delete params.socket;
    return { tls, socketPath, exportName, params };
  }
  if ('socket' in params) throw bad(uri, 'socket= belongs to nbd+unix URIs');
  if (!u.hostname) throw bad(uri, 'no host');
  const port = u.port ? Number(u.port) : NBD_DEFAULT_PORT;
  const host = u.hostname.startsWith('[') ? u.hostname.slice(1, -1) : u.hostname;
  return { tls, host, port, exportName, params };
}

export function formatNbdUri(u: Omit<NbdUri, 'params'> & { params?: Record<string, string> }): string {
  const scheme = `${u.tls ? 'nbds' : 'nbd'}${u.socketPath !== undefined ? '+unix' : ''}`;
  const path = `/${u.exportName.split('/').map(encodeURIComponent).join('/')}`;
  const q = new URLSearchParams();
  if (u.socketPath !== undefined) q.set('socket', u.socketPath);
  for (const [k, v] of Object.entries(u.params ?? {})) q.set(k, v);
  const query = q.size ? `?${q.toString().replace(/%2F/g, '/')}` : '';
  if (u.socketPath !== undefined) return `${scheme}://${path}${query}`;
  if (!u.host) throw new RangeError('an NBD TCP URI needs a host');
  const host = u.host.includes(':') ? `[${u.host}]` : u.host;
  const port = u.port !== undefined && u.port !== NBD_DEFAULT_PORT ? `:${u.port}` : '';
  return `${scheme}://${host}${port}${path}${query}`;
}
