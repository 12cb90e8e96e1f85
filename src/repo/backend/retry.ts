import { sleep } from '../../util/index.js';
import { BackendError } from '../errors.js';
import type { Backend } from './backend.js';
import { BackendWrapper, type BackendOp } from './wrapper.js';

/** Bounds of the retry wrapper (plain JSON: part of a BackendSpec). */
export interface RetryOptions {
  /** Tries per operation, the first included (default 6). */
  attempts?: number;
  /** The first backoff's upper bound (default 100 ms); it doubles with each retry... */
  baseDelayMs?: number;
  /** ...up to this (default 10 s). */
  maxDelayMs?: number;
  /** No retry starts once this much time has passed since the first try (default 60 s). */
  totalMs?: number;
}

export const RETRY_DEFAULTS: Required<RetryOptions> = {
  attempts: 6,
  baseDelayMs: 100,
  maxDelayMs: 10_000,
  totalMs: 60_000,
};

/** What the retry wrapper takes besides its options: nothing of it crosses to a worker thread. */
export interface RetryRuntime {
  /** Aborting it ends a backoff at once with a CancelledError (the operation in flight runs on). */
  signal?: AbortSignal;
  /** [0, 1); Math.random by default (tests pass a fixed one). */
  random?: () => number;
  /** Told before each backoff. */
  onRetry?: (info: {
    op: BackendOp;
    key: string;
    attempt: number;
    delayMs: number;
    error: BackendError;
  }) => void;
}

/** Only these are worth another try: a BackendError that says so (kind 'transient' by default). */
export function isRetryable(err: unknown): err is BackendError {
  return err instanceof BackendError && err.retryable;
}

/**
 * Retries operations that failed with a retryable error, with exponential backoff and full jitter
 * (each wait uniform in [0, min(maxDelayMs, baseDelayMs·2^n))), bounded by `attempts` and
 * `totalMs`; the last error is thrown as it was. Every other error is thrown at once.
 *
 * A write is resent with the same parts (a gather list is fixed when the call starts: wrapper.ts).
 * A listing is retried only until its first item arrived (from then on a retry could repeat or
 * miss keys). A `putIfAbsent` retried after a failure that hid a success reports false: the object
 * is there, which is what callers of content-addressed keys need.
 */
export class RetryBackend extends BackendWrapper {
  private readonly opts: Required<RetryOptions>;
  /** Retries made so far (tests and debug output). */
  retries = 0;

  constructor(
    inner: Backend,
    opts: RetryOptions = {},
    private readonly runtime: RetryRuntime = {},
  ) {
    super(inner);
    this.opts = { ...RETRY_DEFAULTS, ...opts };
    const o = this.opts;
    if (!Number.isSafeInteger(o.attempts) || o.attempts < 1)
      throw new RangeError(`retry attempts must be a positive integer, not ${o.attempts}`);
    for (const k of ['baseDelayMs', 'maxDelayMs', 'totalMs'] as const)
      if (!(o[k] >= 0)) throw new RangeError(`retry ${k} must be >= 0, not ${o[k]}`);
  }

  protected async call<T>(op: BackendOp, key: string, fn: () => Promise<T>): Promise<T> {
    const start = Date.now();
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn();
      } catch (err) {
        await this.backoff(op, key, attempt, start, err);
      }
    }
  }

  /** Waits before the next try, or throws `err` when it is not retryable or the bounds are reached. */
  private async backoff(
    op: BackendOp,
    key: string,
    attempt: number,
    start: number,
    err: unknown,
  ): Promise<void> {
    const o = this.opts;
    if (!isRetryable(err) || attempt >= o.attempts) throw err;
    const cap = Math.min(o.maxDelayMs, o.baseDelayMs * 2 ** (attempt - 1));
    const delayMs = Math.floor((this.runtime.random ?? Math.random)() * cap);
    if (Date.now() - start + delayMs > o.totalMs) throw err;
    this.retries++;
    this.runtime.onRetry?.({ op, key, attempt, delayMs, error: err });
    await sleep(delayMs, this.runtime.signal);
  }

  /** A listing (of objects or versions) is retried until its first item; later failures end it. */
  protected override async *iterate<T>(prefix: string, open: () => AsyncIterable<T>): AsyncIterable<T> {
    const start = Date.now();
    for (let attempt = 1; ; attempt++) {
      const it = open()[Symbol.asyncIterator]();
      let first: IteratorResult<T>;
      try {
        first = await it.next();
      } catch (err) {
        await this.backoff('list', prefix, attempt, start, err);
        continue;
      }
      if (first.done) return;
      let done = false;
      try {
        yield first.value;
        for (;;) {
          const r = await it.next();
          if (r.done) {
            done = true;
            return;
          }
          yield r.value;
        }
      } finally {
        if (!done) await it.return?.();
      }
    }
  }
}
