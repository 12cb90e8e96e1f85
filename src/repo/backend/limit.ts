import { Semaphore } from '../../util/index.js';
import type { Backend } from './backend.js';
import { BackendWrapper, type BackendOp } from './wrapper.js';

/**
 * A concurrency limit: at most `maxInFlight` operations of the inner backend at once (a listing
 * holds a slot only while it fetches an item). Others wait in FIFO order.
 */
export class LimitBackend extends BackendWrapper {
  private readonly slots: Semaphore;
  constructor(
    inner: Backend,
    readonly maxInFlight: number,
  ) {
    super(inner);
    if (!Number.isSafeInteger(maxInFlight) || maxInFlight < 1)
      throw new RangeError(`maxInFlight must be a positive integer, not ${maxInFlight}`);
    this.slots = new Semaphore(maxInFlight);
  }
  protected call<T>(_op: BackendOp, _key: string, fn: () => Promise<T>): Promise<T> {
    return this.slots.run(fn);
  }
}
