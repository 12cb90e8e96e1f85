/**
 * The malformed-repository suite, objects below the manifests (format 2): the packs holding a
 * snapshot's chunks and disk index pages truncated, bit-flipped in a record, emptied, replaced by
 * another pack or by a directory, or deleted. For each: a one-line error or a check finding, exit
 * code 20, nothing written outside the restore target, and the rest of the repository usable. And
 * `check --repair` plus a backup of the same data heal what was damaged.
 */
import { chmod, mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobCodec, codecSpec } from '../../src/repo/index.js';
import { errorLine, runCli, type CliResult } from '../helpers/cli.js';
import { corruptRecord, recordFile } from '../helpers/repo-files.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';

const KiB = 1024;
const CHUNK = 64 * KiB;

interface CheckJson {
  ok: boolean;
  problems: Array<{ kind: string; snapshot: string }>;
}

describe('malformed objects: packs of chunks and of disk index pages', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: string;
  let imgA: string;
  let imgB: string;
  let snapA: string;
  let snapB: string;
  let rootA: string;
  let rawChunkA: string;
  let zstdChunkA: string;
  let outs = 0;

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir('vmvault-malformed-objects-'));
    repo = join(dir, 'repo');
    imgA = join(dir, 'a.raw');
    imgB = join(dir, 'b.raw');
    const text = Buffer.from('compressible text, stored with zstd. '.repeat(2000)).subarray(0, CHUNK);
    const a = Buffer.concat([seededBytes(CHUNK, 1), text, seededBytes(CHUNK, 2), Buffer.alloc(CHUNK)]);
    const b = Buffer.concat([seededBytes(CHUNK, 4), seededBytes(7000, 5)]);
    await writeFile(imgA, a);
    await writeFile(imgB, b);
    // The ids of an unencrypted repository (unkeyed BLAKE3-256), as `init` below makes.
    const codec = BlobCodec.fromSpec(codecSpec(1));
    rawChunkA = codec.chunkId(a.subarray(0, CHUNK));
    zstdChunkA = codec.chunkId(text);
    expect((await runCli(['init', repo, '--chunk-size', '64K'])).code).toBe(0);
    const ra = await runCli(['backup-image', '-r', repo, '--vm', 'a', `${imgA}:vda`, '--json']);
    expect(ra.code, ra.stderr).toBe(0);
    const rb = await runCli(['backup-image', '-r', repo, '--vm', 'b', `${imgB}:vda`, '--json']);
    expect(rb.code, rb.stderr).toBe(0);
    snapA = (JSON.parse(ra.stdout) as { snapshot: string }).snapshot;
    snapB = (JSON.parse(rb.stdout) as { snapshot: string }).snapshot;
    const show = await runCli(['show', snapA, '-r', repo, '--json']);
    rootA = (JSON.parse(show.stdout) as { disks: Array<{ root: string }> }).disks[0]!.root;
  });
  afterAll(async () => cleanup());

  async function testDirEntries(): Promise<string[]> {
    return (await readdir(dir)).filter((n) => !n.startsWith('out-')).sort();
  }

  async function restore(snap: string): Promise<{ r: CliResult; written: string[]; out: string }> {
    const outDir = join(dir, `out-${outs++}`);
    await mkdir(outDir);
    const before = await testDirEntries();
    const out = join(outDir, 'vda.raw');
    const r = await runCli(['restore', snap, '-r', repo, '--disk', 'vda', '-o', out]);
    expect(await testDirEntries(), 'nothing is written outside the restore target').toEqual(before);
    return { r, written: await readdir(outDir), out };
  }

  async function expectRestoreFails(snap: string, pattern: RegExp): Promise<void> {
    const { r, written } = await restore(snap);
    expect(r.code, r.stderr).toBe(20);
    expect(errorLine(r)).toMatch(pattern);
    expect(r.stderr).not.toMatch(/internal error/);
    for (const w of written) expect(w).toMatch(/vda\.raw/);
  }

  async function expectCheckFinds(kind: RegExp): Promise<void> {
    const r = await runCli(['check', '--read-data', '--json', '-r', repo]);
    expect(r.code, r.stderr).toBe(20);
    expect(r.stderr).not.toMatch(/internal error/);
    let json: CheckJson;
    try {
      json = JSON.parse(r.stdout) as CheckJson;
    } catch {
      const lines = r.stderr.split('\n').filter((l) => l.startsWith('vmvault: '));
      expect(lines, r.stderr).toHaveLength(1);
      expect(lines[0]).toMatch(/in its place|not a file|directory/);
      return;
    }
    expect(json.ok).toBe(false);
    expect(
      json.problems.some((p) => kind.test(p.kind)),
      JSON.stringify(json.problems),
    ).toBe(true);
  }

  async function expectOtherRestores(): Promise<void> {
    const { r, out } = await restore(snapB);
    expect(r.code, r.stderr).toBe(0);
    expect((await readFile(out)).equals(await readFile(imgB))).toBe(true);
  }

  /** Runs `fn` with the pack file `p` replaced by `content` (a directory, or gone), then puts it back. */
  async function withDamage(
    p: string,
    content: Buffer | 'directory' | 'deleted',
    fn: () => Promise<void>,
  ): Promise<void> {
    const original = await readFile(p);
    await rm(p, { force: true });
    if (content === 'directory') await mkdir(p);
    else if (content !== 'deleted') await writeFile(p, content);
    try {
      await fn();
    } finally {
      await rm(p, { recursive: true, force: true });
      await writeFile(p, original);
      await chmod(p, 0o600);
    }
  }

  const flip = (b: Buffer, at: number): Buffer => {
    const c = Buffer.from(b);
    c[at] = c[at]! ^ 0x20;
    return c;
  };

  describe("a damaged pack of A's chunks: restore exits 20 with one line, check --read-data finds it, B restores", () => {
    const cases: Array<
      [
        string,
        (pack: Buffer, rec: { offset: number; length: number }) => Promise<Buffer | 'directory' | 'deleted'>,
      ]
    > = [
      ['a flipped byte in a record', async (p, r) => flip(p, r.offset + (r.length >> 1))],
      ['truncated to half', async (p) => p.subarray(0, p.length >> 1)],
      ['truncated to 10 bytes', async (p) => p.subarray(0, 10)],
      ['emptied', async () => Buffer.alloc(0)],
      ['replaced by a directory', async () => 'directory' as const],
      ['deleted', async () => 'deleted' as const],
    ];
    for (const which of ['zstd', 'raw'] as const)
      it.each(cases)(`${which} chunk's pack %s`, async (_name, make) => {
        const rec = await recordFile(repo, which === 'zstd' ? zstdChunkA : rawChunkA);
        await withDamage(rec.path, await make(await readFile(rec.path), rec), async () => {
          await expectRestoreFails(snapA, /chunk [0-9a-f]{12}… is (corrupt|missing)|in its place|not a file/);
          await expectCheckFinds(/^(chunk-|pack-)/);
          await expectOtherRestores();
        });
      });
  });

  describe("a damaged meta pack (A's disk index pages): restore exits 20, check finds it, B restores", () => {
    const cases: Array<
      [
        string,
        (pack: Buffer, rec: { offset: number; length: number }) => Promise<Buffer | 'directory' | 'deleted'>,
      ]
    > = [
      ['a flipped byte in the root page', async (p, r) => flip(p, r.offset + (r.length >> 1))],
      ['truncated to half', async (p) => p.subarray(0, p.length >> 1)],
      ['emptied', async () => Buffer.alloc(0)],
      ['replaced by a directory', async () => 'directory' as const],
      ['deleted', async () => 'deleted' as const],
    ];
    it.each(cases)('%s', async (_name, make) => {
      const rec = await recordFile(repo, rootA);
      expect(rec.key.startsWith('meta/')).toBe(true);
      await withDamage(rec.path, await make(await readFile(rec.path), rec), async () => {
        await expectRestoreFails(
          snapA,
          /disk index page [0-9a-f]{12} (is damaged|is missing)|in its place|not a file/,
        );
        await expectCheckFinds(/^(index-|pack-)/);
        await expectOtherRestores();
      });
    });
  });

  it('a damaged trailer: restores still work (records are read through the index), check finds the pack', async () => {
    const rec = await recordFile(repo, rawChunkA);
    await withDamage(
      rec.path,
      flip(await readFile(rec.path), (await readFile(rec.path)).length - 30),
      async () => {
        const { r, out } = await restore(snapA);
        expect(r.code, r.stderr).toBe(0);
        expect((await readFile(out)).equals(await readFile(imgA))).toBe(true);
        await expectCheckFinds(/^pack-/);
      },
    );
  });

  it('a pack moved under another name is refused (its name is the hash of its bytes)', async () => {
    const rec = await recordFile(repo, rawChunkA);
    const other = rec.path.replace(/[0-9a-f]{32}$/, (n) => `${n.slice(0, 31)}${n[31] === '0' ? '1' : '0'}`);
    await rename(rec.path, other);
    try {
      await expectRestoreFails(snapA, /chunk [0-9a-f]{12}… is missing/);
      await expectCheckFinds(/^(chunk-|pack-)/);
    } finally {
      await rename(other, rec.path);
    }
  });

  it('check --repair voids a damaged record and the next backup of the same data heals the old snapshot', async () => {
    await corruptRecord(repo, zstdChunkA);
    await expectRestoreFails(snapA, /chunk [0-9a-f]{12}… is corrupt/);
    const repair = await runCli(['check', '--read-data', '--repair', '-r', repo]);
    expect(repair.code).toBe(20);
    expect(repair.stdout).toMatch(/voided/);
    const again = await runCli(['backup-image', '-r', repo, '--vm', 'a', `${imgA}:vda`]);
    expect(again.code, again.stderr).toBe(0);
    const { r, out } = await restore(snapA);
    expect(r.code, r.stderr).toBe(0);
    expect((await readFile(out)).equals(await readFile(imgA))).toBe(true);
    const clean = await runCli(['check', '--read-data', '-r', repo]);
    expect(clean.code, clean.stdout + clean.stderr).toBe(0);
    expect((await stat(join(repo, 'quarantine'))).isDirectory()).toBe(true);
  });
});
