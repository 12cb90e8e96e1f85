/** The chunk index of format 2 (docs/format-2-index.md): internal to src/repo. */
export {
  ENTRY_BYTES,
  compareEntries,
  decodeEntry,
  encodeEntry,
  packKey,
  sameEntry,
  type IndexEntry,
  type RecordKind,
} from './entry.js';
export { codecSectionSealer, type SectionSealer } from './sealer.js';
export {
  ChunkIndex,
  type ChunkIndexOptions,
  type ChunkIndexStats,
  type CompactResult,
  type DamagedIndexObject,
  type IndexObjectInfo,
  type RebuildResult,
} from './chunk-index.js';
export { VOID_PREFIX, VOID_MAX_BYTES, type VoidRecord } from './voids.js';
export {
  INDEX_PREFIX,
  ObjectBuilder,
  ObjectKind,
  PAGE_ENTRIES,
  SHARD_ENTRIES,
  contentName,
  type BuiltObject,
  type ObjectMeta,
} from './object.js';
