import { hostname } from 'node:os';
import { ExitCode, printable, VmvaultError } from '../../util/index.js';
import type { Backend } from '../backend/backend.js';
import { BlobFormatError } from '../blob.js';
import type { BlobCodec } from '../codec.js';
import { isNotFound } from '../errors.js';
import { Keys } from '../format.js';
import { processAlive, type ListedSession } from '../session.js';

/**
 * The maintenance lock (docs/gc.md): `locks/maintenance`, created if absent, naming the holder's
 * session. Only one prune runs at a time; backups never look at it. It is alive exactly while
 * the session it names is (the session's heartbeat keeps both), so a killed prune's lock goes
 * stale with its session and the next prune takes it over.
 */
export const MAINTENANCE_LOCK = Keys.lock('maintenance');
const MAX_LOCK_BYTES = 4096;

export interface LockHolder {
  version: 1;
  session: string;
  host: string;
  pid: number;
  command: string;
  since: string;
}

export class MaintenanceLockedError extends VmvaultError {
  constructor(holder: LockHolder | undefined, why: string) {
    super(
      'REPO_LOCKED',
      holder
        ? `another ${printable(holder.command, 40)} holds the repository's maintenance lock (host ${printable(holder.host, 60)}, pid ${holder.pid}, since ${printable(holder.since, 40)})`
        : `the repository's maintenance lock is held (${why})`,
      {
        exitCode: ExitCode.REPO_LOCKED,
        hint: "wait for it to finish; if that process is gone, 'vmvault unlock --stale' removes its lock once its session is stale",
      },
    );
  }
}

function binder(): Buffer {
  return Buffer.from('maintenance-lock');
}

function parse(json: Buffer): LockHolder {
  const v: unknown = JSON.parse(json.toString('utf8'));
  if (typeof v !== 'object' || v === null) throw new BlobFormatError('not an object');
  const o = v as Record<string, unknown>;
  if (o.version !== 1 || typeof o.session !== 'string' || !/^[0-9a-f]{32}$/.test(o.session))
    throw new BlobFormatError('no session');
  const str = (k: string): string => {
    const x = o[k];
    if (typeof x !== 'string' || x.length > 255) throw new BlobFormatError(`no ${k}`);
    return x;
  };
  if (!Number.isSafeInteger(o.pid)) throw new BlobFormatError('no pid');
  return {
    version: 1,
    session: o.session,
    host: str('host'),
    pid: o.pid as number,
    command: str('command'),
    since: str('since'),
  };
}

/** The holder of the lock, or undefined when there is none; `damaged` when it cannot be read. */
export async function readLock(
  backend: Backend,
  codec: BlobCodec,
): Promise<{ holder?: LockHolder; damaged?: string } | undefined> {
  const info = await backend.stat(MAINTENANCE_LOCK);
  if (!info) return undefined;
  try {
    if (info.sizeBytes > MAX_LOCK_BYTES) throw new BlobFormatError('too large');
    const blob = await backend.get(MAINTENANCE_LOCK);
    return {
      holder: parse(
        codec.openObject('session', blob, { name: MAINTENANCE_LOCK, maxPlaintextBytes: MAX_LOCK_BYTES }),
      ),
    };
  } catch (err) {
    if (isNotFound(err)) return undefined;
    if (err instanceof BlobFormatError || err instanceof SyntaxError)
      return { damaged: printable(err.message, 200) };
    throw err;
  }
}

/** Is the lock's holder gone: its process (this host), or its session absent or stale? A damaged lock counts as stale. */
export function lockIsStale(lock: { holder?: LockHolder }, sessions: readonly ListedSession[]): boolean {
  if (!lock.holder) return true;
  // A holder on this host whose process is gone (killed), whatever state its session object is in
  // (a kill during a heartbeat PUT can leave it unreadable on a server that writes in place).
  if (lock.holder.host === hostname() && !processAlive(lock.holder.pid)) return true;
  const s = sessions.find((x) => x.id === lock.holder!.session);
  return !s || s.stale;
}

/**
 * Takes the lock for `sessionId`. A lock whose session is gone or stale is removed and taken
 * over (once); a live holder → MaintenanceLockedError (exit 11, naming it).
 */
export async function takeLock(
  backend: Backend,
  codec: BlobCodec,
  sessionId: string,
  command: string,
  sessions: () => Promise<ListedSession[]>,
): Promise<void> {
  const holder: LockHolder = {
    version: 1,
    session: sessionId,
    host: hostname(),
    pid: process.pid,
    command,
    since: new Date().toISOString(),
  };
  const sealed = codec.sealObject('session', Buffer.from(JSON.stringify(holder)), binder(), {
    name: MAINTENANCE_LOCK,
  });
  for (let attempt = 0; attempt < 2; attempt++) {
    if (await backend.putIfAbsent(MAINTENANCE_LOCK, sealed, { exclusive: true })) {
      // Create-if-absent without a conditional PUT (HEAD + PUT on some S3 servers) can let two
      // takers both succeed: read it back, the later writer wins and the other backs off.
      const now = await readLock(backend, codec);
      if (now?.holder?.session === sessionId) return;
      throw new MaintenanceLockedError(now?.holder, 'taken meanwhile');
    }
    const cur = await readLock(backend, codec);
    if (!cur) continue; // released meanwhile
    if (cur.holder?.session === sessionId) return;
    if (!lockIsStale(cur, await sessions())) throw new MaintenanceLockedError(cur.holder, 'held');
    await backend.delete(MAINTENANCE_LOCK);
  }
  throw new MaintenanceLockedError(undefined, 'another prune took it over at the same moment');
}

/** Releases the lock if this session still holds it. */
export async function releaseLock(backend: Backend, codec: BlobCodec, sessionId: string): Promise<void> {
  const cur = await readLock(backend, codec).catch(() => undefined);
  if (cur?.holder?.session === sessionId) await backend.delete(MAINTENANCE_LOCK).catch(() => undefined);
}
