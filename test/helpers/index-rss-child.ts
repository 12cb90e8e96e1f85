/**
 * Child process of the chunk index memory test: loads the index of a repository directory,
 * performs lookups of known ids (hits) and random ids (misses), prints one JSON line with the
 * peak RSS (VmHWM) and the index's stats. Usage: index-rss-child.ts DIR SAMPLE_FILE LOOKUPS
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { openBackend } from '../../src/repo/index.js';
import { ChunkIndex } from '../../src/repo/chunk-index/index.js';
import { plainSealer } from './index-sealer.js';

const [dir, sampleFile, lookupsArg] = process.argv.slice(2);
const lookups = Number(lookupsArg ?? 100_000);
const t0 = Date.now();
const index = await ChunkIndex.load(openBackend(dir!), plainSealer);
const loadMs = Date.now() - t0;
const sample = readFileSync(sampleFile!); // 32 bytes per known id
const known = sample.length / 32;
let hits = 0;
let misses = 0;
let wrong = 0;
const t1 = Date.now();
const batch = Number(process.env.BATCH ?? 32);
for (let i = 0; i < lookups; i += batch) {
  await Promise.all(
    Array.from({ length: Math.min(batch, lookups - i) }, async (_, j) => {
      const k = i + j;
      const h = (k >> 1) % known;
      const id = k % 2 === 0 ? sample.subarray(h * 32, h * 32 + 32) : randomBytes(32);
      const e = await index.lookup(id);
      if (k % 2 === 0) {
        if (e && e.id.equals(id)) hits++;
        else wrong++;
      } else if (e) wrong++;
      else misses++;
    }),
  );
}
const status = readFileSync('/proc/self/status', 'utf8');
const kib = (name: string) =>
  Number(/(\d+)\s*kB/.exec(status.split('\n').find((l) => l.startsWith(name)) ?? '')?.[1]);
console.log(
  JSON.stringify({
    vmHwmBytes: kib('VmHWM:') * 1024,
    loadMs,
    lookupMs: Date.now() - t1,
    hits,
    misses,
    wrong,
    damaged: index.damaged.length,
    stats: index.stats(),
    memory: process.memoryUsage(),
  }),
);
