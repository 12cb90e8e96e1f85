import { sleep } from '../../util/index.js';
import { BackendError, type BackendErrorKind } from '../errors.js';
import { payloadBuffer, type Backend, type ObjectInfo, type Payload, type PutOptions } from './backend.js';
import { mapError } from './local-files.js';
import { BackendWrapper, type BackendOp } from './wrapper.js';

/**
 * One fault of a FaultBackend (plain JSON: part of a BackendSpec, so every worker thread injects
 * the same faults; each stack counts its own calls). A rule counts the calls that match `op` and
 * `keyPrefix`; calls number `nth` to `nth + times - 1` of them are hit.
 */
export interface FaultRule {
  /** 'write' = put and putIfAbsent, 'read' = get, getRange and getRangeInto, 'any' = every op. */
  op: BackendOp | 'write' | 'read' | 'any';
  keyPrefix?: string;
  /** The first call hit, counting from 1 (default 1). */
  nth?: number;
  /** How many calls in a row are hit (default 1), or every one from `nth` on. */
  times?: number | 'always';
  /** Waits this long before the call (and before failing it). */
  delayMs?: number;
  /** Fails the call with this kind, worded as the local backend words the matching errno. */
  fail?: BackendErrorKind;
  /**
   * A write that fails half-way: where the inner backend keeps files (openBackend passes the local
   * backend's `leaveTempFile`), half the bytes are left in a temp file, as a process killed
   * mid-write leaves them; no object appears. Fails with `fail` (default 'other': an I/O error).
   */
  halfWrite?: boolean;
}

const OP_GROUPS: Record<'write' | 'read', ReadonlySet<BackendOp>> = {
  write: new Set(['put', 'putIfAbsent']),
  read: new Set(['get', 'getRange', 'getRangeInto']),
};

/** The errno the local backend would have seen for each kind ('range' has none). */
const ERRNO: Record<Exclude<BackendErrorKind, 'range'>, string> = {
  'not-found': 'ENOENT',
  exists: 'EEXIST',
  permission: 'EACCES',
  'no-space': 'ENOSPC',
  transient: 'EAGAIN',
  'not-a-file': 'EISDIR',
  other: 'EIO',
};

const VERB: Record<BackendOp, string> = {
  get: 'read',
  getRange: 'read',
  getRangeInto: 'read',
  put: 'write',
  putIfAbsent: 'write',
  stat: 'stat',
  exists: 'stat',
  list: 'list',
  delete: 'delete',
  barrier: 'sync',
};

/** The error an injected fault throws: the inner backend's own words for that failure. */
export function injectedError(kind: BackendErrorKind, op: BackendOp, key: string): BackendError {
  if (kind === 'range') return new BackendError('range', `range past the end of ${key} (injected)`);
  const errno = Object.assign(new Error(`${ERRNO[kind]} (injected fault)`), { code: ERRNO[kind] });
  return mapError(errno, key, VERB[op]) as BackendError;
}

function validateRule(r: FaultRule): void {
  const ok =
    typeof r.op === 'string' &&
    (r.nth === undefined || (Number.isSafeInteger(r.nth) && r.nth >= 1)) &&
    (r.times === undefined || r.times === 'always' || (Number.isSafeInteger(r.times) && r.times >= 1)) &&
    (r.delayMs === undefined || r.delayMs >= 0);
  if (!ok) throw new RangeError(`invalid fault rule ${JSON.stringify(r)}`);
}

/**
 * Test-only fault injection (nbdkit's error and delay filters): fails or delays chosen calls.
 * It sits innermost in a stack (under retry and the limit), as a real backend's failures do. The
 * chunk store's worker threads build the same stack from the spec, so their stores and reads meet
 * the faults too (each stack counts its own calls).
 */
export class FaultBackend extends BackendWrapper {
  private readonly seen: number[];
  /** Calls per op that reached this wrapper (hit or not). */
  readonly calls = new Map<BackendOp, number>();
  /** Calls hit by a failing rule. */
  failed = 0;

  constructor(
    inner: Backend,
    readonly rules: readonly FaultRule[],
    /** Leaves bytes as a killed writer's temp file (halfWrite); none: a half write leaves nothing. */
    private readonly halfWriter?: (data: Uint8Array) => Promise<void>,
  ) {
    super(inner);
    for (const r of rules) validateRule(r);
    this.seen = rules.map(() => 0);
  }

  /** The first rule that hits this call (every matching rule counts it). */
  private hit(op: BackendOp, key: string): FaultRule | undefined {
    this.calls.set(op, (this.calls.get(op) ?? 0) + 1);
    let found: FaultRule | undefined;
    this.rules.forEach((r, i) => {
      const opMatches =
        r.op === 'any' || r.op === op || ((r.op === 'write' || r.op === 'read') && OP_GROUPS[r.op].has(op));
      if (!opMatches || (r.keyPrefix !== undefined && !key.startsWith(r.keyPrefix))) return;
      const n = ++this.seen[i]!;
      const first = r.nth ?? 1;
      const last = r.times === 'always' ? Infinity : first + (r.times ?? 1) - 1;
      if (n >= first && n <= last) found ??= r;
    });
    return found;
  }

  protected async call<T>(op: BackendOp, key: string, fn: () => Promise<T>): Promise<T> {
    const rule = this.hit(op, key);
    if (rule) await this.apply(rule, op, key);
    return fn();
  }

  private async apply(rule: FaultRule, op: BackendOp, key: string, data?: Buffer): Promise<void> {
    if (rule.delayMs) await sleep(rule.delayMs);
    if (rule.halfWrite) {
      if (this.halfWriter && data) await this.halfWriter(data.subarray(0, data.length >> 1));
      this.failed++;
      throw injectedError(rule.fail ?? 'other', op, key);
    }
    if (rule.fail !== undefined) {
      this.failed++;
      throw injectedError(rule.fail, op, key);
    }
  }

  private async write<T>(
    op: 'put' | 'putIfAbsent',
    key: string,
    data: Payload,
    fn: () => Promise<T>,
  ): Promise<T> {
    const rule = this.hit(op, key);
    if (rule) await this.apply(rule, op, key, rule.halfWrite ? payloadBuffer(data) : undefined);
    return fn();
  }
  override put(key: string, data: Payload, opts?: PutOptions): Promise<void> {
    return this.write('put', key, data, () => this.inner.put(key, data, opts));
  }
  override putIfAbsent(key: string, data: Payload, opts?: PutOptions): Promise<boolean> {
    return this.write('putIfAbsent', key, data, () => this.inner.putIfAbsent(key, data, opts));
  }

  /** A listing is one call: a fault hits it before its first item. */
  override async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const rule = this.hit('list', prefix);
    if (rule) await this.apply(rule, 'list', prefix);
    yield* this.inner.list(prefix);
  }
}
