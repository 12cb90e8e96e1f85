import { randomBytes } from 'node:crypto';
import type { IndexEntry, RecordKind } from '../../../src/repo/chunk-index/index.js';

export function randomEntry(over: Partial<IndexEntry> = {}): IndexEntry {
  return {
    id: randomBytes(32),
    pack: randomBytes(16),
    offset: 48 + Math.floor(Math.random() * 1e6),
    length: 1000,
    plaintextBytes: 4096,
    kind: 1 as RecordKind,
    codec: 1,
    ...over,
  };
}

export function randomEntries(n: number): IndexEntry[] {
  return Array.from({ length: n }, () => randomEntry());
}
