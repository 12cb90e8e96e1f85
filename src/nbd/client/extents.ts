import { NbdProtocolError } from '../errors.js';
import { BASE_ALLOCATION, NBD_STATE, NBD_STATE_DIRTY } from '../protocol.js';
import type { NbdClient } from './client.js';

export interface MergedExtent {
  offset: number;
  length: number;
  /** Unallocated (base:allocation HOLE). */
  isHole: boolean;
  /** Reads as zeros (ZERO flag). */
  isZero: boolean;
  /** Set in the dirty bitmap context; true when no bitmap context is walked. */
  isDirty: boolean;
}

const STEP = 1024 * 1024 * 1024;

/**
 * Walks [offset, offset+length) and yields extents merged from base:allocation and, optionally,
 * a dirty-bitmap context: boundaries of both are intersected, and replies that cover less than
 * asked are continued from the first uncovered byte. Adjacent extents with equal flags are joined.
 */
export async function* walkExtents(
  client: NbdClient,
  offset: number,
  length: number,
  dirtyContext?: string,
): AsyncIterable<MergedExtent> {
  const end = offset + length;
  let pos = offset;
  let carry: MergedExtent | undefined;
  while (pos < end) {
    const ask = Math.min(end - pos, STEP);
    const status = await client.blockStatus(pos, ask);
    const base = status.get(BASE_ALLOCATION);
    if (!base || base.length === 0)
      throw new NbdProtocolError('block status reply without base:allocation extents');
    const dirty = dirtyContext ? status.get(dirtyContext) : undefined;
    if (dirtyContext && (!dirty || dirty.length === 0))
      throw new NbdProtocolError(`block status reply without ${dirtyContext} extents`);
    let bi = 0;
    let di = 0;
    let at = pos;
    const baseEnd = base[base.length - 1]!.offset + base[base.length - 1]!.length;
    const dirtyEnd = dirty ? dirty[dirty.length - 1]!.offset + dirty[dirty.length - 1]!.length : baseEnd;
    const covered = Math.min(baseEnd, dirtyEnd);
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
    if (covered <= pos) throw new NbdProtocolError('block status made no progress');
    pos = covered;
  }
  if (carry) yield carry;
}
