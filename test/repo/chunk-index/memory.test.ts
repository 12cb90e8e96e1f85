import { spawnSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { build } from 'esbuild';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTmpDir } from '../../helpers/tmp.js';
import { generateSyntheticIndex, type SyntheticIndex } from '../../helpers/synthetic-index.js';

/**
 * Issue 11: peak RSS ≤ 256 MiB for backup, restore and check with a 10 M-entry index. The real
 * commands add ~90 MiB of their own, so the index alone (loaded in a child process, 100 k
 * lookups, half hits) must stay ≤ 150 MiB. The child is bundled with esbuild and run by plain
 * node (tsx's loader alone costs ~60 MiB). Generation takes ~11 s here (640 MiB written).
 */
const ENTRIES = Number(process.env.VMVAULT_INDEX_RSS_ENTRIES ?? 10_000_000);
const LIMIT_BYTES = 150 * 1024 * 1024;

let tmp: { dir: string; cleanup: () => Promise<void> };
let gen: SyntheticIndex;
let child: string;

beforeAll(async () => {
  tmp = await makeTmpDir('vmvault-index-rss-');
  gen = await generateSyntheticIndex({ repo: join(tmp.dir, 'repo'), entries: ENTRIES });
  await writeFile(join(tmp.dir, 'sample'), Buffer.concat(gen.sample));
  gen.sample = [];
  child = resolve(import.meta.dirname, '../../../.tmp/index-rss-child.mjs');
  await build({
    entryPoints: [resolve(import.meta.dirname, '../../helpers/index-rss-child.ts')],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    outfile: child,
    packages: 'external',
    logLevel: 'error',
  });
}, 300_000);

afterAll(async () => {
  await tmp?.cleanup();
});

describe('chunk index memory', () => {
  it(`holds a ${ENTRIES / 1e6} M-entry index and serves 100 k lookups in ≤ 150 MiB peak RSS`, () => {
    const r = spawnSync(process.execPath, [child, join(tmp.dir, 'repo'), join(tmp.dir, 'sample'), '100000'], {
      encoding: 'utf8',
      timeout: 240_000,
    });
    expect(r.stderr).toBe('');
    const out = JSON.parse(r.stdout) as {
      vmHwmBytes: number;
      hits: number;
      misses: number;
      wrong: number;
      damaged: number;
      loadMs: number;
      lookupMs: number;
      stats: { entries: number; filterBytes: number; directoryBytes: number };
    };
    const perEntry = (out.stats.filterBytes + out.stats.directoryBytes) / out.stats.entries;
    console.log(
      `chunk index of ${gen.entries} entries (${(gen.bytes / 2 ** 20).toFixed(0)} MiB, generated in ${gen.ms} ms): ` +
        `peak RSS ${(out.vmHwmBytes / 2 ** 20).toFixed(1)} MiB, ${perEntry.toFixed(2)} B/entry in memory, ` +
        `load ${out.loadMs} ms, 100 k lookups ${out.lookupMs} ms`,
    );
    expect(out).toMatchObject({ hits: 50_000, misses: 50_000, wrong: 0, damaged: 0 });
    expect(out.stats.entries).toBe(gen.entries);
    expect(perEntry).toBeLessThanOrEqual(2.6);
    expect(out.vmHwmBytes).toBeLessThanOrEqual(LIMIT_BYTES);
  }, 300_000);
});
