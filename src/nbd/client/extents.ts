import { NbdProtocolError } from '../errors.js';
import { BASE_ALLOCATION, NBD_STATE, NBD_STATE_DIRTY } from '../protocol.js';
import type { NbdClient, NbdExtent } from './client.js';

export interface MergedExtent {
  offset: number;
  length: number;
  /** Unallocated (base:allocation HOLE). */
  isHole: boolean;
  /** Reads as zeros (base:allocation ZERO). */
  isZero: boolean;
  /** Set in the dirty-bitmap context; true when no bitmap context is walked. */
  isDirty: boolean;
}

/** What one block status round asks for at most. */
const STEP_BYTES = 1024 * 1024 * 1024;

/**
 * Walks [offset, offset+length) and yields extents merged from base:allocation and, optionally, a
 * dirty-bitmap context: the boundaries of both are intersected, a reply that covers less than
 * asked is continued from the first byte not covered by every context, and adjacent extents with
 * equal flags are joined. Without a base:allocation context (a server without structured replies
 * or meta contexts, connected with `requireMetaContexts: false`) everything is data.
 */
export async function* walkExtents(
  client: NbdClient,
  offset: number,
  length: number,
  dirtyContext?: string,
): AsyncIterable<MergedExtent> {
  const end = offset + length;
  if (offset < 0 || end > client.sizeBytes || length < 0)
    throw new RangeError(`extent walk ${offset}+${length} is outside the export (${client.sizeBytes} bytes)`);
  if (dirtyContext && !client.hasMetaContext(dirtyContext))
    throw new NbdProtocolError(`the connection has no ${dirtyContext} context selected`);
  const hasBase = client.hasMetaContext(BASE_ALLOCATION);
  let pos = offset;
  let carry: MergedExtent | undefined;
  while (pos < end) {
    const ask = Math.min(end - pos, STEP_BYTES);
    let base: NbdExtent[];
    let dirty: NbdExtent[] | undefined;
    if (hasBase || dirtyContext) {
      const status = await client.blockStatus(pos, ask);
      base = hasBase ? need(status, BASE_ALLOCATION) : [{ offset: pos, length: ask, flags: 0 }];
      dirty = dirtyContext ? need(status, dirtyContext) : undefined;
    } else {
      base = [{ offset: pos, length: ask, flags: 0 }];
    }
    const covered = Math.min(endOf(base), dirty ? endOf(dirty) : Infinity);
    if (covered <= pos) throw new NbdProtocolError('block status made no progress');
    let bi = 0;
    let di = 0;
    let at = pos;
    while (at < covered) {
      const b = base[bi]!;
      const d = dirty?.[di];
      const stop = Math.min(b.offset + b.length, d ? d.offset + d.length : Infinity, covered);
      const e: MergedExtent = {
        offset: at,
        length: stop - at,
        isHole: (b.flags & NBD_STATE.NBD_STATE_HOLE) !== 0,
        isZero: (b.flags & NBD_STATE.NBD_STATE_ZERO) !== 0,
        isDirty: d ? (d.flags & NBD_STATE_DIRTY) !== 0 : true,
      };
      if (carry && carry.isHole === e.isHole && carry.isZero === e.isZero && carry.isDirty === e.isDirty)
        carry.length += e.length;
      else {
        if (carry) yield carry;
        carry = e;
      }
      at = stop;
      if (at >= b.offset + b.length) bi++;
      if (d && at >= d.offset + d.length) di++;
    }
    pos = covered;
  }
  if (carry) yield carry;
}

function need(status: Map<string, NbdExtent[]>, context: string): NbdExtent[] {
  const list = status.get(context);
  if (!list || list.length === 0) throw new NbdProtocolError(`block status reply without ${context} extents`);
  return list;
}

function endOf(list: NbdExtent[]): number {
  const last = list[list.length - 1]!;
  return last.offset + last.length;
}
