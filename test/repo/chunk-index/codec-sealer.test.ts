import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { BlobCodec, codecSpec, MemoryBackend } from '../../../src/repo/index.js';
import { ChunkIndex, codecSectionSealer } from '../../../src/repo/chunk-index/index.js';
import { randomEntries } from './helpers.js';

// The chunk index's own tests use a plain test sealer; this runs it through the real codec (the
// binding the repository uses), unencrypted and encrypted, so that the contract between the two
// (raw sections of computable size, binder and section binding) is tested where it is used.
describe.each([
  ['unencrypted', () => BlobCodec.fromSpec(codecSpec(1))],
  ['encrypted', () => BlobCodec.fromSpec(codecSpec(1, { idKey: randomBytes(32), encKey: randomBytes(32) }))],
])('chunk index sealed by the %s codec', (_name, makeCodec) => {
  it('writes deltas a fresh load finds; a tampered object is damage, never a wrong entry', async () => {
    const codec = makeCodec();
    const backend = new MemoryBackend();
    const index = await ChunkIndex.load(backend, codecSectionSealer(codec));
    const es = randomEntries(700); // more than one page of 64 entries
    index.add(es);
    const name = await index.writeDelta(Buffer.alloc(16, 1));
    expect(name).toMatch(/^[0-9a-f]{32}$/);
    const fresh = await ChunkIndex.load(backend, codecSectionSealer(codec));
    expect(fresh.damaged).toEqual([]);
    for (const e of es) expect(await fresh.lookup(e.id)).toEqual(e);
    expect(await fresh.lookup(randomBytes(32))).toBeUndefined();

    const raw = await backend.get(`index/${name}`);
    const at = raw.length - 100; // inside the last page
    raw.writeUInt8(raw.readUInt8(at) ^ 1, at);
    await backend.put(`index/${name}`, raw);
    const other = await ChunkIndex.load(backend, codecSectionSealer(codec));
    const found = await Promise.all(es.map((e) => other.lookup(e.id).catch(() => 'damaged')));
    expect(other.damaged.length > 0 || found.some((f) => f === undefined || f === 'damaged')).toBe(true);
    for (const [i, f] of found.entries()) if (f !== undefined && f !== 'damaged') expect(f).toEqual(es[i]);
  });
});
