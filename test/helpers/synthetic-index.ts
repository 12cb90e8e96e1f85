/**
 * A synthetic chunk index: N random entries as base shards (2^18 entries each, disjoint id
 * ranges) plus a few deltas, written into a repository directory's `index/` (no packs behind
 * them). For the memory test and for running real commands against a 10 M-entry index.
 *
 * As a script:
 *   npx tsx test/helpers/synthetic-index.ts --repo DIR --entries 10000000 [--id-hex 64]
 *     [--deltas 4] [--delta-entries 2000] [--sample FILE] [--sample-every 100]
 * (--sample: the known ids, 32 raw bytes each)
 * (sealed with the test sealer; bind the repository's codec through `sealer` from code).
 */
import { randomFillSync } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { openBackend, type Backend } from '../../src/repo/index.js';
import {
  ENTRY_BYTES,
  ObjectBuilder,
  ObjectKind,
  SHARD_ENTRIES,
  type SectionSealer,
} from '../../src/repo/chunk-index/index.js';
import { plainSealer } from './index-sealer.js';

export interface SyntheticIndexOptions {
  /** Repository directory (its index/ receives the objects) or a backend. */
  repo: string | Backend;
  entries: number;
  /** The repository's chunk id length in hex; index entries hold 32-byte ids, so only 64 is accepted. */
  idHexLength?: number;
  deltas?: number;
  deltaEntries?: number;
  /** Keep every n-th id as a known hit (default 100). */
  sampleEvery?: number;
  sealer?: SectionSealer;
  /** Entries per pack (default 16: 16 MiB packs of 1 MiB chunks). */
  entriesPerPack?: number;
}

export interface SyntheticIndex {
  entries: number;
  objects: number;
  bytes: number;
  /** Ids known to be in the index (every `sampleEvery`-th). */
  sample: Buffer[];
  ms: number;
}

/** Sorted, distinct random 8-byte prefixes in [lo·2^32, hi·2^32). */
function sortedPrefixes(n: number, lo: number, hi: number): BigUint64Array {
  const raw = new Uint32Array(2 * n);
  for (let off = 0; off < raw.length; off += 16384)
    randomFillSync(raw.subarray(off, Math.min(raw.length, off + 16384)));
  const out = new BigUint64Array(n);
  const span = hi - lo;
  for (let i = 0; i < n; i++) {
    const top = lo + Math.floor((raw[2 * i]! / 2 ** 32) * span);
    out[i] = (BigInt(top) << 32n) | BigInt(raw[2 * i + 1]!);
  }
  out.sort();
  return out;
}

/** Encoded entries in id order from sorted prefixes (duplicate prefixes dropped). */
function encodeRun(
  prefixes: BigUint64Array,
  perPack: number,
  state: { pack: Buffer; inPack: number },
): Buffer {
  const buf = Buffer.alloc(prefixes.length * ENTRY_BYTES);
  randomFillSync(buf);
  let n = 0;
  let prev = -1n;
  for (const p of prefixes) {
    if (p === prev) continue;
    prev = p;
    const at = n * ENTRY_BYTES;
    buf.writeBigUInt64BE(p, at);
    if (state.inPack === perPack) {
      state.pack = Buffer.alloc(16);
      randomFillSync(state.pack);
      state.inPack = 0;
    }
    state.pack.copy(buf, at + 32);
    buf.writeUInt32BE(48 + state.inPack * 1_050_000, at + 48);
    buf.writeUInt32BE(1_000_000, at + 52);
    buf.writeUInt32BE(1_048_576, at + 56);
    buf[at + 60] = 1;
    buf[at + 61] = 1;
    buf[at + 62] = 0;
    buf[at + 63] = 0;
    state.inPack++;
    n++;
  }
  return buf.subarray(0, n * ENTRY_BYTES);
}

export async function generateSyntheticIndex(o: SyntheticIndexOptions): Promise<SyntheticIndex> {
  const t0 = Date.now();
  if ((o.idHexLength ?? 64) !== 64)
    throw new RangeError(`chunk index entries hold 32-byte ids (64 hex), not ${o.idHexLength} hex digits`);
  if (typeof o.repo === 'string') await mkdir(resolve(o.repo), { recursive: true });
  const backend = typeof o.repo === 'string' ? openBackend(resolve(o.repo)) : o.repo;
  const sealer = o.sealer ?? plainSealer;
  const every = o.sampleEvery ?? 100;
  const perPack = o.entriesPerPack ?? 16;
  const state = { pack: Buffer.alloc(16), inPack: perPack };
  const sample: Buffer[] = [];
  let entries = 0;
  let objects = 0;
  let bytes = 0;
  const write = async (builder: ObjectBuilder, shardCount: number) => {
    const built = builder.finish(shardCount, []);
    await backend.putIfAbsent(built.key, built.bytes, { durable: 'at-barrier' });
    objects++;
    bytes += built.sizeBytes;
    return built.key;
  };
  const keys: string[] = [];
  const add = (builder: ObjectBuilder, run: Buffer) => {
    for (let at = 0; at < run.length; at += ENTRY_BYTES) {
      builder.add(run, at);
      if (entries++ % every === 0) sample.push(Buffer.from(run.subarray(at, at + 32)));
    }
  };
  const shards = Math.max(1, Math.ceil(o.entries / SHARD_ENTRIES));
  const setId = Buffer.alloc(16);
  randomFillSync(setId);
  for (let s = 0; s < shards; s++) {
    const n = Math.min(SHARD_ENTRIES, o.entries - s * SHARD_ENTRIES);
    const lo = Math.floor((s * 2 ** 32) / shards);
    const hi = Math.floor(((s + 1) * 2 ** 32) / shards);
    const run = encodeRun(sortedPrefixes(Math.max(0, n), lo, hi), perPack, state);
    const builder = new ObjectBuilder(
      sealer,
      {
        kind: ObjectKind.base,
        generation: 1,
        sessionId: Buffer.alloc(16),
        createdMs: Date.now(),
        setId,
        shardNumber: s,
      },
      n,
    );
    add(builder, run);
    keys.push(await write(builder, s === shards - 1 ? shards : 0));
  }
  for (let d = 0; d < (o.deltas ?? 4); d++) {
    const run = encodeRun(sortedPrefixes(o.deltaEntries ?? 2000, 0, 2 ** 32), perPack, state);
    const id = Buffer.alloc(16);
    randomFillSync(id);
    const builder = new ObjectBuilder(
      sealer,
      {
        kind: ObjectKind.delta,
        generation: 2,
        sessionId: id,
        createdMs: Date.now(),
        setId: id,
        shardNumber: 0,
      },
      run.length / ENTRY_BYTES,
    );
    add(builder, run);
    keys.push(await write(builder, 1));
  }
  await backend.barrier(keys);
  return { entries, objects, bytes, sample, ms: Date.now() - t0 };
}

async function main(argv: string[]): Promise<void> {
  const arg = (name: string): string | undefined => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const repo = arg('repo');
  const entries = Number(arg('entries') ?? NaN);
  if (!repo || !Number.isSafeInteger(entries) || entries < 0) {
    console.error(
      'usage: synthetic-index.ts --repo DIR --entries N [--id-hex 64] [--deltas 4] [--delta-entries 2000] [--sample FILE] [--sample-every 100]',
    );
    process.exit(2);
  }
  const r = await generateSyntheticIndex({
    repo,
    entries,
    idHexLength: Number(arg('id-hex') ?? 64),
    deltas: Number(arg('deltas') ?? 4),
    deltaEntries: Number(arg('delta-entries') ?? 2000),
    sampleEvery: Number(arg('sample-every') ?? 100),
  });
  const file = arg('sample');
  if (file) await writeFile(file, Buffer.concat(r.sample)); // 32 bytes per id
  console.log(JSON.stringify({ entries: r.entries, objects: r.objects, bytes: r.bytes, ms: r.ms }));
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  await main(process.argv.slice(2));
}
