/**
 * Domain events as typed values: lifecycle (started, stopped, ...) and job-completed (a backup job
 * ended). A subscription buffers events from the moment it is registered, so a caller that starts
 * an operation and then waits never misses the event; it is an async iterator and has waitFor().
 */
import { toSafeNumber } from '../util/index.js';
import { LibvirtConnectionError } from './errors.js';
import {
  JOB_TYPE_NAMES,
  LIFECYCLE_EVENT_NAMES,
  type JobTypeName,
  type LifecycleEventName,
} from './protocol/constants.js';
import type { DomainRef, TypedParam } from './protocol/remote.js';

/** A typed-parameter value: 64-bit integers become numbers when safe, else stay bigint. */
export type TypedParamScalar = number | bigint | string | boolean;

export function typedParamsToRecord(params: readonly TypedParam[]): Record<string, TypedParamScalar> {
  const out: Record<string, TypedParamScalar> = {};
  for (const p of params) {
    if (p.type === 'llong' || p.type === 'ullong') {
      const big = p.value;
      out[p.field] =
        big <= BigInt(Number.MAX_SAFE_INTEGER) && big >= BigInt(Number.MIN_SAFE_INTEGER)
          ? toSafeNumber(big)
          : big;
    } else {
      out[p.field] = p.value;
    }
  }
  return out;
}

/** The job statistics libvirt reports (virDomainGetJobStats keys), typed where vmvault uses them. */
export interface JobStatsFields {
  /** VIR_DOMAIN_JOB_OPERATION_* (9 = backup). */
  operation?: number;
  /** Whether a completed job succeeded (`success`). */
  success?: boolean;
  /** `errmsg` of a failed job. */
  errmsg?: string;
  timeElapsedMs?: number;
  dataTotal?: number;
  dataProcessed?: number;
  dataRemaining?: number;
  diskTempUsed?: number;
  diskTempTotal?: number;
  /** Every parameter as received. */
  params: Record<string, TypedParamScalar>;
}

export interface JobStats extends JobStatsFields {
  type: JobTypeName;
  typeCode: number;
}

function num(v: TypedParamScalar | undefined): number | undefined {
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  return undefined;
}

export function jobStatsFields(params: readonly TypedParam[]): JobStatsFields {
  const rec = typedParamsToRecord(params);
  const f: JobStatsFields = { params: rec };
  const set = <K extends keyof JobStatsFields>(k: K, v: JobStatsFields[K] | undefined): void => {
    if (v !== undefined) f[k] = v;
  };
  set('operation', num(rec.operation));
  const success = rec.success;
  set(
    'success',
    typeof success === 'boolean' ? success : success === undefined ? undefined : Boolean(success),
  );
  set('errmsg', typeof rec.errmsg === 'string' ? rec.errmsg : undefined);
  set('timeElapsedMs', num(rec.time_elapsed));
  set('dataTotal', num(rec.data_total));
  set('dataProcessed', num(rec.data_processed));
  set('dataRemaining', num(rec.data_remaining));
  set('diskTempUsed', num(rec.disk_temp_used));
  set('diskTempTotal', num(rec.disk_temp_total));
  return f;
}

export function jobTypeName(code: number): JobTypeName {
  return JOB_TYPE_NAMES[code] ?? 'none';
}

export interface LifecycleEvent {
  kind: 'lifecycle';
  domain: DomainRef;
  /** `stopped`, `started`, ... */
  event: LifecycleEventName | 'unknown';
  /** VIR_DOMAIN_EVENT_* */
  eventCode: number;
  /** The per-event detail (for stopped: VIR_DOMAIN_EVENT_STOPPED_*). */
  detail: number;
}

export interface JobCompletedEvent {
  kind: 'job-completed';
  domain: DomainRef;
  stats: JobStatsFields;
}

export type DomainEvent = LifecycleEvent | JobCompletedEvent;
export type DomainEventKind = DomainEvent['kind'];

export function lifecycleEventName(code: number): LifecycleEventName | 'unknown' {
  return LIFECYCLE_EVENT_NAMES[code] ?? 'unknown';
}

const MAX_BUFFERED_EVENTS = 1024;

interface Waiter {
  match: (e: DomainEvent) => boolean;
  resolve: (e: DomainEvent) => void;
  reject: (err: Error) => void;
}

/**
 * Events for one registration. Iterate with `for await`, or `waitFor(predicate)`. `close()`
 * deregisters the callbacks with the daemon.
 */
export class DomainEventSubscription implements AsyncIterable<DomainEvent> {
  private queue: DomainEvent[] = [];
  private waiters: Waiter[] = [];
  private ended: Error | undefined;
  private closed = false;

  /** @internal */
  constructor(private readonly deregister: () => Promise<void>) {}

  /** @internal Called by the client for each decoded event. */
  push(e: DomainEvent): void {
    if (this.ended) return;
    const i = this.waiters.findIndex((w) => w.match(e));
    if (i >= 0) {
      const [w] = this.waiters.splice(i, 1);
      w!.resolve(e);
      return;
    }
    this.queue.push(e);
    if (this.queue.length > MAX_BUFFERED_EVENTS) this.queue.shift();
  }

  /** @internal The connection is gone (or the subscription closed): wake every waiter. */
  end(err: Error): void {
    if (this.ended) return;
    this.ended = err;
    for (const w of this.waiters) w.reject(err);
    this.waiters = [];
  }

  /** Resolves with the first buffered or future event that matches. */
  waitFor(
    match: (e: DomainEvent) => boolean = () => true,
    opts: { timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<DomainEvent> {
    const i = this.queue.findIndex(match);
    if (i >= 0) return Promise.resolve(this.queue.splice(i, 1)[0]!);
    if (this.ended) return Promise.reject(this.ended);
    return new Promise<DomainEvent>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const cleanup = (): void => {
        if (timer) clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
        this.waiters = this.waiters.filter((w) => w !== waiter);
      };
      const waiter: Waiter = {
        match,
        resolve: (e) => {
          cleanup();
          resolve(e);
        },
        reject: (err) => {
          cleanup();
          reject(err);
        },
      };
      const onAbort = (): void =>
        waiter.reject(
          new LibvirtConnectionError('waiting for a libvirt event was cancelled', { code: 'CANCELLED' }),
        );
      if (opts.timeoutMs !== undefined) {
        timer = setTimeout(
          () =>
            waiter.reject(
              new LibvirtConnectionError(`no matching libvirt event within ${opts.timeoutMs} ms`, {
                code: 'LIBVIRT_EVENT_TIMEOUT',
              }),
            ),
          opts.timeoutMs,
        );
      }
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(waiter);
    });
  }

  async *[Symbol.asyncIterator](): AsyncIterator<DomainEvent> {
    while (true) {
      try {
        yield await this.waitFor();
      } catch (err) {
        if (this.closed) return;
        throw err;
      }
    }
  }

  /** Deregisters from the daemon and ends iteration. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.end(new LibvirtConnectionError('event subscription closed', { code: 'LIBVIRT_CLOSED' }));
    await this.deregister();
  }
}
