import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

/**
 * Import rules (docs/architecture.md): util ← (nbd, libvirt, repo) ← (backup, restore, ui) ← cli.
 * nbd, libvirt and repo never import each other; a folder is entered only through its index.ts.
 */
const SRC = resolve(import.meta.dirname, '../src');
const LAYER: Record<string, number> = {
  util: 0,
  nbd: 1,
  libvirt: 1,
  repo: 1,
  backup: 2,
  restore: 2,
  ui: 2,
  cli: 3,
};

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? files(p) : p.endsWith('.ts') ? [p] : [];
  });
}

describe('architecture', () => {
  it('imports only go downward, and only through index.ts', () => {
    const problems: string[] = [];
    for (const file of files(SRC)) {
      const from = relative(SRC, file).split('/')[0]!;
      const text = readFileSync(file, 'utf8');
      for (const m of text.matchAll(/(?:import|export)[^'"]*?from\s+['"](\.[^'"]+)['"]/g)) {
        const target = resolve(dirname(file), m[1]!);
        const rel = relative(SRC, target);
        if (rel.startsWith('..')) continue;
        const to = rel.split('/')[0]!;
        if (to === from) continue;
        if (!(to in LAYER) || !(from in LAYER)) {
          problems.push(`${relative(SRC, file)}: unknown folder ${to}`);
          continue;
        }
        if (LAYER[to]! >= LAYER[from]!)
          problems.push(`${relative(SRC, file)} imports ${rel} (${from} may not import ${to})`);
        if (rel !== `${to}/index.js` && rel !== `${to}/index.ts`)
          problems.push(`${relative(SRC, file)} imports ${rel}: use ${to}/index.js`);
      }
    }
    expect(problems).toEqual([]);
  });

  it('only the codec seals, opens and hashes objects (src/repo/codec.ts, over blob.ts)', () => {
    // The id function, compression and encryption come from the repository config and keys through
    // one BlobCodec; a direct call elsewhere would bypass the id key or the encryption key.
    // benchmark-worker.ts times the bare primitives (`vmvault benchmark`) and never writes or reads
    // an object of the repository.
    const allowed = new Set(['repo/codec.ts', 'repo/blob.ts', 'repo/benchmark-worker.ts']);
    const direct =
      /@napi-rs\/blake-hash|zstd-napi|\b(?:zstdCompressTo|zstdDecompressInto|scratchBuffer|blake3)\s*\(/;
    const problems: string[] = [];
    for (const file of files(SRC)) {
      const rel = relative(SRC, file);
      if (allowed.has(rel)) continue;
      readFileSync(file, 'utf8')
        .split('\n')
        .forEach((line, i) => {
          if (!/^\s*(?:\/\/|\*)/.test(line) && direct.test(line))
            problems.push(`${rel}:${i + 1}: ${line.trim()}`);
        });
    }
    expect(problems).toEqual([]);
  });

  it('storage goes through the Backend interface: no local-files.ts outside backend/, no instanceof LocalBackend', () => {
    // The chunk store's workers build the stack from its spec (docs/architecture.md, "The storage
    // stack"); reaching the local backend's files or class directly would bypass the wrappers.
    const problems: string[] = [];
    for (const file of files(SRC)) {
      const rel = relative(SRC, file);
      const text = readFileSync(file, 'utf8');
      if (!rel.startsWith('repo/backend/'))
        for (const m of text.matchAll(/(?:import|export)[^'"]*?from\s+['"](\.[^'"]+)['"]/g))
          if (/(?:^|\/)local-files(?:\.[jt]s)?$/.test(m[1]!)) problems.push(`${rel} imports ${m[1]}`);
      text.split('\n').forEach((line, i) => {
        if (/\binstanceof\s+LocalBackend\b/.test(line)) problems.push(`${rel}:${i + 1}: ${line.trim()}`);
      });
    }
    expect(problems).toEqual([]);
  });
});
