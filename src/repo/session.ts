import { hostname } from 'node:os';
import { printable, VmvaultError } from '../util/index.js';
import type { Backend } from './backend/backend.js';
import type { BlobCodec } from './codec.js';
import { BlobFormatError } from './blob.js';
import { Keys } from './format.js';

/**
 * Sessions: leases of the processes writing to a repository (docs/gc.md). A writer PUTs
 * `sessions/<its session id>` at start and again every `SESSION_HEARTBEAT_MS`; the object's
 * modification time (the server's clock) says it is alive. One not refreshed for `SESSION_TTL_MS`
 * is stale. Before committing a snapshot a writer checks its own lease (`fence`): a writer paused
 * past its lease aborts instead of committing, so a garbage collector may count it gone.
 */
export const SESSION_PREFIX = Keys.sessionPrefix;
export const SESSION_HEARTBEAT_MS = 5 * 60_000;
export const SESSION_TTL_MS = 30 * 60_000;
/** A writer whose last heartbeat is older than this fences itself (TTL − 1.5 heartbeats). */
export const SESSION_FENCE_MS = SESSION_TTL_MS - 1.5 * SESSION_HEARTBEAT_MS;
const MAX_SESSION_BYTES = 64 * 1024;

export interface SessionInfo {
  version: 1;
  host: string;
  pid: number;
  command: string;
  startedAt: string;
  /** Snapshots this session reads and must keep (an incremental's parent, a restore's source). */
  pins: string[];
}

export class SessionExpiredError extends VmvaultError {
  constructor(reason: string) {
    super('SESSION_EXPIRED', `this process's session expired (${reason}): nothing was committed`, {
      hint: 'run the command again (a paused or partitioned writer aborts rather than race a prune)',
    });
  }
}

export const sessionKey = (idHex: string): string => Keys.session(idHex);

export interface SessionTiming {
  heartbeatMs?: number;
  fenceMs?: number;
}

export class Session {
  private timer: NodeJS.Timeout | undefined;
  /** Local monotonic time (ms) of the last heartbeat the storage acknowledged. */
  private lastBeat = 0;
  private ended = false;
  private ownsBackend = false;
  private readonly heartbeatMs: number;
  private readonly fenceMs: number;

  private constructor(
    private readonly backend: Backend,
    private readonly codec: BlobCodec,
    readonly id: Buffer,
    readonly info: SessionInfo,
    timing: SessionTiming,
  ) {
    this.heartbeatMs = timing.heartbeatMs ?? SESSION_HEARTBEAT_MS;
    this.fenceMs = timing.fenceMs ?? SESSION_FENCE_MS;
  }

  get key(): string {
    return sessionKey(this.id.toString('hex'));
  }

  /**
   * Writes the session and starts its heartbeat. With `ownsBackend` the session writes through
   * a stack of its own (a reader's repository stack is read-only) and closes it at `end`, or here
   * when the first write fails.
   */
  static async start(
    backend: Backend,
    codec: BlobCodec,
    id: Buffer,
    what: { command: string; pins?: string[]; ownsBackend?: boolean },
    timing: SessionTiming = {},
  ): Promise<Session> {
    const info: SessionInfo = {
      version: 1,
      host: hostname(),
      pid: process.pid,
      command: what.command,
      startedAt: new Date().toISOString(),
      pins: what.pins ?? [],
    };
    const s = new Session(backend, codec, id, info, timing);
    s.ownsBackend = what.ownsBackend === true;
    try {
      await s.beat();
    } catch (err) {
      if (s.ownsBackend) await backend.close().catch(() => undefined);
      throw err;
    }
    s.timer = setInterval(() => void s.beat().catch(() => undefined), s.heartbeatMs);
    s.timer.unref();
    return s;
  }

  /** Adds pins (snapshot ids) and writes them at once. */
  async pin(ids: string[]): Promise<void> {
    for (const id of ids) if (!this.info.pins.includes(id)) this.info.pins.push(id);
    await this.beat();
  }

  private async beat(): Promise<void> {
    if (this.ended) return;
    const started = performance.now();
    const json = Buffer.from(JSON.stringify(this.info), 'utf8');
    await this.backend.put(this.key, this.codec.sealObject('session', json, this.id, { name: this.key }));
    // A gap longer than the fence time (the process was stopped, or heartbeats failed) means a
    // collector may already have counted this session gone: a later heartbeat does not undo that.
    if (this.lastBeat !== 0 && started - this.lastBeat > this.fenceMs)
      this.lapsedFor ??= started - this.lastBeat;
    this.lastBeat = started;
  }

  /** Set once a gap between acknowledged heartbeats exceeded the fence time (ms of the gap). */
  private lapsedFor: number | undefined;

  /**
   * Throws SessionExpiredError when the lease may have lapsed: the last acknowledged heartbeat is
   * older than the fence time, two acknowledged heartbeats were ever further apart than that (a
   * process stopped and resumed), or the session object is gone (removed by `unlock --stale`).
   */
  async fence(): Promise<void> {
    if (this.lapsedFor !== undefined)
      throw new SessionExpiredError(`its heartbeats stopped for ${Math.round(this.lapsedFor / 1000)} s`);
    const age = performance.now() - this.lastBeat;
    if (age > this.fenceMs)
      throw new SessionExpiredError(`no heartbeat reached the repository for ${Math.round(age / 1000)} s`);
    if ((await this.backend.stat(this.key)) === undefined)
      throw new SessionExpiredError('its session object was removed');
  }

  /** Stops the heartbeat and deletes the session object (best effort: a stale one expires). */
  async end(): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    if (this.timer) clearInterval(this.timer);
    await this.backend.delete(this.key).catch(() => undefined);
    if (this.ownsBackend) await this.backend.close().catch(() => undefined);
  }
}

export interface ListedSession {
  id: string;
  info?: SessionInfo;
  /** Why the object could not be read, when it could not. */
  damaged?: string;
  modifiedMs: number;
  ageMs: number;
  stale: boolean;
  /** Why it is stale: its lease ran out, or its process is gone (same host). */
  staleReason?: string;
  /** Its host is this one and its process is gone: it can never write again. */
  processGone?: boolean;
}

function parseInfo(json: Buffer): SessionInfo {
  const v: unknown = JSON.parse(json.toString('utf8'));
  if (typeof v !== 'object' || v === null) throw new BlobFormatError('not an object');
  const o = v as Record<string, unknown>;
  const str = (k: string, max = 255): string => {
    const x = o[k];
    if (typeof x !== 'string' || x.length > max)
      throw new BlobFormatError(`field ${k} is not a string of at most ${max}`);
    return x;
  };
  if (o.version !== 1) throw new BlobFormatError('unknown session version');
  const pid = o.pid;
  if (!Number.isSafeInteger(pid) || (pid as number) < 0)
    throw new BlobFormatError('pid is not a whole number');
  const pins = o.pins;
  if (
    !Array.isArray(pins) ||
    pins.length > 1024 ||
    !pins.every((p) => typeof p === 'string' && /^[0-9a-f]{64}$/.test(p))
  )
    throw new BlobFormatError('pins are not snapshot ids');
  return {
    version: 1,
    host: str('host'),
    pid: pid as number,
    command: str('command', 64),
    startedAt: str('startedAt', 40),
    pins: pins as string[],
  };
}

/** Is a process of this host alive (EPERM: alive, another user's)? */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Every session object, read and validated (a damaged one is listed as such), with its age by the
 * storage's clock: `nowMs` is the storage's current time (Backend.serverTimeMs).
 */
export async function listSessions(
  backend: Backend,
  codec: BlobCodec,
  nowMs: number,
  ttlMs: number = SESSION_TTL_MS,
): Promise<ListedSession[]> {
  const out: ListedSession[] = [];
  for await (const o of backend.list(SESSION_PREFIX)) {
    const id = o.key.slice(SESSION_PREFIX.length);
    if (!/^[0-9a-f]{32}$/.test(id)) continue;
    const modifiedMs = o.modifiedMs ?? nowMs;
    const ageMs = Math.max(0, nowMs - modifiedMs);
    const s: ListedSession = { id, modifiedMs, ageMs, stale: ageMs > ttlMs };
    if (s.stale) s.staleReason = `no heartbeat for ${Math.round(ageMs / 60_000)} min`;
    try {
      if (o.sizeBytes > MAX_SESSION_BYTES)
        throw new BlobFormatError(`${o.sizeBytes} bytes, more than a session`);
      const json = codec.openObject('session', await backend.get(o.key), {
        name: o.key,
        maxPlaintextBytes: MAX_SESSION_BYTES,
      });
      s.info = parseInfo(json);
      if (!s.stale && s.info.host === hostname() && !processAlive(s.info.pid)) {
        s.stale = true;
        s.staleReason = `process ${s.info.pid} is gone from this host`;
        s.processGone = true;
      }
    } catch (err) {
      if (err instanceof BlobFormatError || err instanceof SyntaxError)
        s.damaged = printable(err.message, 200);
      else if ((err as { kind?: string }).kind === 'not-found')
        continue; // ended meanwhile
      else throw err;
    }
    out.push(s);
  }
  return out.sort((a, b) => a.modifiedMs - b.modifiedMs);
}
