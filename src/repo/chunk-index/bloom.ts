/**
 * The Bloom filter of an index object (design §2.3): 2^b bits with b = max(6, ⌈log2(10·E)⌉),
 * k = 7 probes. Probe j is bit `u32be(id, 4j) >>> (32 − b)` (the top b bits of the id's bytes
 * 4j…4j+3, j = 0…6: bytes 0–27 of the id, which are uniform for keyed BLAKE3 ids). Bit i is
 * bit (i & 7) of byte i >> 3 (least significant first).
 */
export const BLOOM_PROBES = 7;
export const MIN_FILTER_LOG2 = 6;
/** 2^31 bits = 256 MiB: more than any object the index accepts needs. */
export const MAX_FILTER_LOG2 = 31;

export function filterLog2(entries: number): number {
  if (entries <= 0) return MIN_FILTER_LOG2;
  return Math.max(MIN_FILTER_LOG2, Math.ceil(Math.log2(10 * entries)));
}

export function filterBytes(log2: number): number {
  return 2 ** log2 / 8;
}

function probe(id: Uint8Array, j: number, shift: number): number {
  const o = 4 * j;
  const v = ((id[o]! << 24) | (id[o + 1]! << 16) | (id[o + 2]! << 8) | id[o + 3]!) >>> 0;
  return shift >= 32 ? 0 : v >>> shift;
}

export function filterAdd(filter: Uint8Array, log2: number, id: Uint8Array): void {
  const shift = 32 - log2;
  for (let j = 0; j < BLOOM_PROBES; j++) {
    const bit = probe(id, j, shift);
    filter[bit >>> 3] = filter[bit >>> 3]! | (1 << (bit & 7));
  }
}

/** False: the id is certainly not in the object; true: it may be. */
export function filterHas(filter: Uint8Array, log2: number, id: Uint8Array): boolean {
  const shift = 32 - log2;
  for (let j = 0; j < BLOOM_PROBES; j++) {
    const bit = probe(id, j, shift);
    if ((filter[bit >>> 3]! & (1 << (bit & 7))) === 0) return false;
  }
  return true;
}
