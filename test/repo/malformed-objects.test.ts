/**
 * The malformed-repository suite, objects below the manifests: every disk index and chunk blob (and
 * the chunks of the files stored beside the disks) truncated, bit-flipped, emptied, replaced by a
 * valid object of another kind or by a directory, and crafted with hostile field values. For each:
 * a one-line error or a check finding, exit code 20, nothing written outside the restore target,
 * and the rest of the repository usable. And a backup heals what it finds damaged.
 */
import { chmod, mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  chunkIdOf,
  DiskIndex,
  encodeBlob,
  format,
  hashBytes,
  BackendError,
  Repository,
  type Snapshot,
} from '../../src/repo/index.js';
import { errorLine, runCli, type CliResult } from '../helpers/cli.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

const KiB = 1024;
const CHUNK = 64 * KiB;
const run = requireTools(['qemu-img']);

interface CheckJson {
  ok: boolean;
  problems: Array<{ kind: string; snapshot: string; reason?: string; message: string }>;
}

/** A blob with its header fields set by hand and a correct integrity tag (only the fields are wrong). */
function craftBlob(opts: {
  codec: number;
  plaintextBytes: bigint;
  payload: Buffer;
  payloadBytes?: bigint;
}): Buffer {
  const head = Buffer.alloc(format.BLOB_HEADER_BYTES);
  head.writeUInt32BE(format.BLOB_MAGIC, 0);
  head.writeUInt8(format.BLOB_VERSION, 4);
  head.writeUInt8(opts.codec, 5);
  head.writeBigUInt64BE(opts.plaintextBytes, 8);
  head.writeBigUInt64BE(opts.payloadBytes ?? BigInt(opts.payload.length), 16);
  const body = Buffer.concat([head, opts.payload]);
  return Buffer.concat([body, hashBytes(body).subarray(0, format.BLOB_TAG_BYTES)]);
}

/** A disk index plaintext with hand-set header fields and a correct trailing checksum. */
function craftIndex(f: { chunkSize: number; diskSize: bigint; slots: bigint; bodySlots: number }): Buffer {
  const head = Buffer.alloc(format.INDEX_HEADER_BYTES);
  head.writeUInt32BE(format.INDEX_MAGIC, 0);
  head.writeUInt8(format.INDEX_VERSION, 4);
  head.writeUInt32BE(f.chunkSize, 8);
  head.writeBigUInt64BE(f.diskSize, 16);
  head.writeBigUInt64BE(f.slots, 24);
  const body = Buffer.concat([head, Buffer.alloc(f.bodySlots * 32)]);
  return Buffer.concat([body, hashBytes(body)]);
}

function flip(buf: Buffer, at: number): Buffer {
  const b = Buffer.from(buf);
  b[at] = b[at]! ^ 0x55;
  return b;
}

describe.runIf(run)('malformed objects: indexes, chunks and file chunks', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: string;
  let imgA: string;
  let imgB: string;
  let snapA: Snapshot;
  let snapB: Snapshot;
  let indexA: string;
  /** Slot 1 of image A: compressible text, stored zstd, not shared with B. */
  let chunkA: string;
  /** Slot 0 of image A: random, stored raw, not shared with B. */
  let rawChunkA: string;
  let outs = 0;

  const path = (key: string): string => join(repo, ...key.split('/'));
  const indexPath = (id: string): string => path(format.Keys.index(id));
  const chunkPath = (id: string): string => path(format.Keys.data(id));

  async function replaceWith(p: string, content: Buffer | 'directory'): Promise<void> {
    await rm(p, { recursive: true, force: true });
    if (content === 'directory') await mkdir(p);
    else await writeFile(p, content, { mode: 0o600 });
  }

  /** Runs `fn` with the object at `p` replaced by `content`, then puts the original bytes back. */
  async function withDamage(
    p: string,
    content: Buffer | 'directory',
    fn: () => Promise<void>,
  ): Promise<void> {
    const original = await readFile(p);
    await replaceWith(p, content);
    try {
      await fn();
    } finally {
      await replaceWith(p, original);
      await chmod(p, 0o600);
    }
  }

  async function testDirEntries(): Promise<string[]> {
    return (await readdir(dir)).filter((n) => !n.startsWith('out-')).sort();
  }

  /** Restores disk vda of `snap` into a fresh directory; returns the result and what was written there. */
  async function restore(snap: string): Promise<{ r: CliResult; written: string[]; out: string }> {
    const outDir = join(dir, `out-${outs++}`);
    await mkdir(outDir);
    const before = await testDirEntries();
    const out = join(outDir, 'vda.raw');
    const r = await runCli(['restore', snap, '-r', repo, '--disk', 'vda', '-o', out]);
    expect(await testDirEntries(), 'nothing is written outside the restore target').toEqual(before);
    return { r, written: await readdir(outDir), out };
  }

  /** The restore fails with a one-line error and exit 20, and writes only its target (or nothing). */
  async function expectRestoreFails(snap: string, pattern: RegExp): Promise<void> {
    const { r, written } = await restore(snap);
    expect(r.code, r.stderr).toBe(20);
    expect(errorLine(r)).toMatch(pattern);
    expect(r.stderr).not.toMatch(/internal error/);
    for (const w of written) expect(w).toMatch(/vda\.raw/);
  }

  /**
   * `check --read-data` exits 20 and reports the damage: as a finding naming the snapshot, or (an
   * object check cannot read at all, such as a directory in an index's place) as a one-line error
   * naming the object.
   */
  async function expectCheckFinds(kind: RegExp, snap: string): Promise<void> {
    const r = await runCli(['check', '--read-data', '--json', '-r', repo]);
    expect(r.code, r.stderr).toBe(20);
    expect(r.stderr).not.toMatch(/internal error/);
    let json: CheckJson;
    try {
      json = JSON.parse(r.stdout) as CheckJson;
    } catch {
      // --json: the one-line error, then the exit_error JSON line.
      const lines = r.stderr.split('\n').filter((l) => l.startsWith('vmvault: '));
      expect(lines, r.stderr).toHaveLength(1);
      expect(lines[0]).toMatch(/in its place/);
      return;
    }
    expect(json.ok).toBe(false);
    expect(
      json.problems.some((p) => kind.test(p.kind) && p.snapshot === snap),
      JSON.stringify(json.problems),
    ).toBe(true);
  }

  /** The rest of the repository is usable: snapshot B restores byte for byte. */
  async function expectOtherRestores(): Promise<void> {
    const { r, out } = await restore(snapB.id);
    expect(r.code, r.stderr).toBe(0);
    expect((await readFile(out)).equals(await readFile(imgB))).toBe(true);
  }

  async function withRepo<T>(fn: (r: Repository) => Promise<T>): Promise<T> {
    const r = await Repository.open(repo, { workers: 1 });
    try {
      return await fn(r);
    } finally {
      await r.close();
    }
  }

  /** A manifest like A's whose disk names index `indexId`; returns its id (delete it after). */
  async function manifestNaming(indexId: string): Promise<string> {
    return withRepo(async (r) => {
      const { id: _id, ...m } = snapA;
      void _id;
      const s = await r.putSnapshot({
        ...m,
        time: new Date(Date.parse(m.time) + 1000 + outs).toISOString(),
        disks: [{ ...m.disks[0]!, root: indexId }],
      });
      return s.id;
    });
  }

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir('vmvault-malformed-'));
    repo = join(dir, 'repo');
    imgA = join(dir, 'a.raw');
    imgB = join(dir, 'b.raw');
    const text = Buffer.from('compressible text, stored with zstd. '.repeat(2000)).subarray(0, CHUNK);
    const a = Buffer.concat([
      seededBytes(CHUNK, 1),
      text,
      seededBytes(CHUNK, 2),
      Buffer.alloc(CHUNK),
      seededBytes(5000, 3),
    ]);
    const b = Buffer.concat([seededBytes(CHUNK, 4), seededBytes(CHUNK, 2), seededBytes(7000, 5)]);
    await writeFile(imgA, a);
    await writeFile(imgB, b);
    rawChunkA = chunkIdOf(a.subarray(0, CHUNK));
    chunkA = chunkIdOf(text);
    expect((await runCli(['init', repo, '--chunk-size', '64K'])).code).toBe(0);
    const ra = await runCli(['backup-image', '-r', repo, '--vm', 'a', `${imgA}:vda`, '--json']);
    expect(ra.code, ra.stderr).toBe(0);
    const rb = await runCli(['backup-image', '-r', repo, '--vm', 'b', `${imgB}:vda`, '--json']);
    expect(rb.code, rb.stderr).toBe(0);
    await withRepo(async (r) => {
      snapA = await r.getSnapshot((JSON.parse(ra.stdout) as { snapshot: string }).snapshot);
      snapB = await r.getSnapshot((JSON.parse(rb.stdout) as { snapshot: string }).snapshot);
    });
    indexA = snapA.disks[0]!.root;
    const blob = await readFile(chunkPath(chunkA));
    expect(blob.readUInt8(5)).toBe(format.Codec.ZSTD);
    expect((await readFile(chunkPath(rawChunkA))).readUInt8(5)).toBe(format.Codec.NONE);
  });
  afterAll(async () => cleanup());

  describe('a damaged disk index: restore exits 20 with one line, check finds it, B restores', () => {
    const cases: Array<[string, () => Promise<Buffer | 'directory'>]> = [
      ['truncated to half', async () => (await readFile(indexPath(indexA))).subarray(0, 60)],
      ['truncated to 10 bytes', async () => (await readFile(indexPath(indexA))).subarray(0, 10)],
      ['emptied', async () => Buffer.alloc(0)],
      ['a flipped payload byte', async () => flip(await readFile(indexPath(indexA)), 40)],
      ['a flipped length field', async () => flip(await readFile(indexPath(indexA)), 15)],
      ['replaced by a manifest blob', async () => readFile(path(format.Keys.snapshot(snapA.id)))],
      ['replaced by a chunk blob', async () => readFile(chunkPath(chunkA))],
      ['replaced by a directory', async () => 'directory' as const],
      [
        'a plaintext length of 2^53 (valid tag)',
        async () =>
          craftBlob({ codec: format.Codec.ZSTD, plaintextBytes: 2n ** 53n, payload: Buffer.alloc(40, 1) }),
      ],
      [
        'a plaintext length of 2 GiB for a tiny zstd payload (valid tag)',
        async () =>
          craftBlob({ codec: format.Codec.ZSTD, plaintextBytes: 2n ** 31n, payload: Buffer.alloc(40, 1) }),
      ],
      [
        'a payload length of 2^53 (valid tag)',
        async () =>
          craftBlob({
            codec: format.Codec.NONE,
            plaintextBytes: 40n,
            payload: Buffer.alloc(40),
            payloadBytes: 2n ** 53n,
          }),
      ],
    ];
    it.each(cases)('%s', async (_name, make) => {
      await withDamage(indexPath(indexA), await make(), async () => {
        await expectRestoreFails(
          snapA.id,
          /disk index [0-9a-f]{8} (is damaged|is missing|does not match)|in its place/,
        );
        await expectCheckFinds(/^index-/, snapA.id);
        await expectOtherRestores();
      });
    });
  });

  describe('a crafted index with hostile header fields (valid blob, id and checksum)', () => {
    const size = BigInt(4 * CHUNK + 5000);
    const cases: Array<[string, Buffer]> = [
      [
        'a slot count of 2^53',
        craftIndex({ chunkSize: CHUNK, diskSize: size, slots: 2n ** 53n, bodySlots: 5 }),
      ],
      [
        'a slot count one more than the disk needs',
        craftIndex({ chunkSize: CHUNK, diskSize: size, slots: 6n, bodySlots: 6 }),
      ],
      ['a chunk size of 0', craftIndex({ chunkSize: 0, diskSize: size, slots: 5n, bodySlots: 5 })],
      [
        'a chunk size that is not a power of two',
        craftIndex({ chunkSize: CHUNK + 1, diskSize: size, slots: 5n, bodySlots: 5 }),
      ],
      [
        'a disk size of 2^60',
        craftIndex({ chunkSize: CHUNK, diskSize: 2n ** 60n, slots: 2n ** 44n, bodySlots: 5 }),
      ],
      [
        'a disk size of 2^64 - 1',
        craftIndex({ chunkSize: CHUNK, diskSize: 2n ** 64n - 1n, slots: 5n, bodySlots: 5 }),
      ],
    ];
    it.each(cases)('%s', async (_name, plain) => {
      const id = hashBytes(plain).toString('hex');
      await mkdir(join(repo, 'index', id.slice(0, 2)), { recursive: true });
      await writeFile(indexPath(id), encodeBlob(plain, { levelZstd: 3 }));
      const snap = await manifestNaming(id);
      try {
        await expectRestoreFails(snap, /disk index [0-9a-f]{8} is damaged/);
        await expectCheckFinds(/^index-damaged$/, snap);
        await expectOtherRestores();
      } finally {
        await rm(path(format.Keys.snapshot(snap)));
        await rm(indexPath(id));
      }
    });
  });

  describe('a damaged chunk: restore exits 20 with one line, check --read-data finds it, B restores', () => {
    const cases: Array<[string, string, () => Promise<Buffer | 'directory'>]> = [
      ['truncated (zstd)', 'zstd', async () => (await readFile(chunkPath(chunkA))).subarray(0, 30)],
      ['truncated (raw)', 'raw', async () => (await readFile(chunkPath(rawChunkA))).subarray(0, 1000)],
      ['emptied', 'zstd', async () => Buffer.alloc(0)],
      ['a flipped payload byte (zstd)', 'zstd', async () => flip(await readFile(chunkPath(chunkA)), 50)],
      ['a flipped payload byte (raw)', 'raw', async () => flip(await readFile(chunkPath(rawChunkA)), 5000)],
      ['a flipped length field', 'raw', async () => flip(await readFile(chunkPath(rawChunkA)), 10)],
      ['replaced by an index blob', 'zstd', async () => readFile(indexPath(indexA))],
      ['replaced by a manifest blob', 'zstd', async () => readFile(path(format.Keys.snapshot(snapB.id)))],
      ['replaced by another chunk', 'raw', async () => readFile(chunkPath(chunkA))],
      ['replaced by a directory', 'zstd', async () => 'directory' as const],
      [
        'a plaintext length of 2^53 (valid tag)',
        'zstd',
        async () =>
          craftBlob({ codec: format.Codec.ZSTD, plaintextBytes: 2n ** 53n, payload: Buffer.alloc(40, 1) }),
      ],
      [
        'a plaintext longer than a chunk (raw, valid tag)',
        'raw',
        async () =>
          craftBlob({
            codec: format.Codec.NONE,
            plaintextBytes: BigInt(2 * CHUNK),
            payload: seededBytes(2 * CHUNK, 9),
          }),
      ],
      [
        'a plaintext longer than a chunk (zstd, valid tag)',
        'zstd',
        async () =>
          craftBlob({
            codec: format.Codec.ZSTD,
            plaintextBytes: BigInt(CHUNK + 1),
            payload: Buffer.alloc(100, 1),
          }),
      ],
    ];
    it.each(cases)('%s', async (_name, which, make) => {
      const id = which === 'raw' ? rawChunkA : chunkA;
      await withDamage(chunkPath(id), await make(), async () => {
        await expectRestoreFails(snapA.id, /chunk [0-9a-f]+…? is (corrupt|missing)|in its place/);
        await expectCheckFinds(/^chunk-/, snapA.id);
        await expectOtherRestores();
      });
    });
  });

  it('a backup of the same content heals a damaged index: the new snapshot restores, and so does the old', async () => {
    const original = await readFile(indexPath(indexA));
    await writeFile(indexPath(indexA), flip(original, 40));
    await expectRestoreFails(snapA.id, /disk index [0-9a-f]{8} is damaged/);
    const r = await runCli(['backup-image', '-r', repo, '--vm', 'a', `${imgA}:vda`, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { snapshot: string; disks: Array<{ bytesStored: number }> };
    expect(out.disks[0]!.bytesStored, 'the healed index counts as stored').toBeGreaterThanOrEqual(
      original.length,
    );
    for (const snap of [out.snapshot, snapA.id]) {
      const { r: rr, out: file } = await restore(snap);
      expect(rr.code, rr.stderr).toBe(0);
      expect((await readFile(file)).equals(await readFile(imgA))).toBe(true);
    }
    expect((await readFile(indexPath(indexA))).equals(original)).toBe(true);
    await rm(path(format.Keys.snapshot(out.snapshot)));
  });

  it('a backup replaces an emptied or truncated chunk file (not a plausible blob) and counts it as stored', async () => {
    const original = await readFile(chunkPath(chunkA));
    for (const bad of [
      Buffer.alloc(0),
      original.subarray(0, 20),
      Buffer.concat([original, Buffer.alloc(CHUNK)]),
    ]) {
      await writeFile(chunkPath(chunkA), bad);
      const r = await runCli(['backup-image', '-r', repo, '--vm', 'a', `${imgA}:vda`, '--json']);
      expect(r.code, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout) as { snapshot: string; disks: Array<{ bytesNew: number }> };
      expect(out.disks[0]!.bytesNew).toBe(CHUNK);
      const { r: rr, out: file } = await restore(snapA.id);
      expect(rr.code, rr.stderr).toBe(0);
      expect((await readFile(file)).equals(await readFile(imgA))).toBe(true);
      await rm(path(format.Keys.snapshot(out.snapshot)));
    }
    expect((await stat(chunkPath(chunkA))).isFile()).toBe(true);
  });

  it('a directory in a chunk file\'s place is an error naming it for backup (not "present"), missing for check', async () => {
    await withDamage(chunkPath(chunkA), 'directory', async () => {
      const r = await runCli(['backup-image', '-r', repo, '--vm', 'a', `${imgA}:vda`]);
      expect(r.code, r.stderr).toBe(20);
      expect(errorLine(r)).toMatch(
        /data.[0-9a-f]{2}.[0-9a-f]{64}: a directory is in its place; move it out of the repository/,
      );
      await expectCheckFinds(/^chunk-missing$/, snapA.id);
      for (const workers of [0, 2]) {
        const store = await Repository.open(repo, { workers });
        try {
          await expect(store.chunks.has(chunkA)).rejects.toMatchObject({
            code: 'BACKEND_NOT_A_FILE',
            exitCode: 20,
          });
        } finally {
          await store.close();
        }
      }
    });
  });

  it('file chunks (a stored domain XML): damaged ones are found by restore and check, and putFile heals them', async () => {
    const xml = Buffer.from(`<domain><name>a</name>${'<disk/>'.repeat(15000)}</domain>`); // two chunks
    const { fileSnap, file } = await withRepo(async (r) => {
      const f = await r.putFile('domain-xml', 'a.xml', xml);
      const { id: _id, ...m } = snapB;
      void _id;
      const s = await r.putSnapshot({ ...m, time: new Date().toISOString(), files: [f] });
      return { fileSnap: s.id, file: f };
    });
    expect(file.chunks).toHaveLength(2);
    const first = chunkPath(file.chunks[0]!);
    for (const damage of ['emptied', 'flipped', 'manifest', 'directory'] as const) {
      const original = await readFile(first);
      const content =
        damage === 'emptied'
          ? Buffer.alloc(0)
          : damage === 'flipped'
            ? flip(original, 45)
            : damage === 'manifest'
              ? await readFile(path(format.Keys.snapshot(snapB.id)))
              : 'directory';
      await withDamage(first, content, async () => {
        await withRepo(async (r) => {
          await expect(r.getFile(file)).rejects.toMatchObject({ exitCode: 20 });
        });
        await expectCheckFinds(/^chunk-/, fileSnap);
        if (content === 'directory') return;
        // A later backup storing the same file verifies the chunk it finds and replaces it.
        await withRepo(async (r) => {
          const again = await r.putFile('domain-xml', 'a.xml', xml);
          expect(again.chunks).toEqual(file.chunks);
          expect((await r.getFile(again)).equals(xml)).toBe(true);
        });
        expect((await readFile(first)).equals(original)).toBe(true);
      });
    }
    await rm(path(format.Keys.snapshot(fileSnap)));
  });

  it('putSnapshot of a manifest whose blob is damaged replaces it (the same manifest written again)', async () => {
    const key = path(format.Keys.snapshot(snapB.id));
    const original = await readFile(key);
    for (const bad of [Buffer.alloc(0), flip(original, 40), await readFile(indexPath(indexA))]) {
      await writeFile(key, bad);
      await withRepo(async (r) => {
        const { id: _id, ...m } = snapB;
        void _id;
        expect((await r.putSnapshot(m)).id).toBe(snapB.id);
        expect((await r.getSnapshot(snapB.id)).disks).toEqual(snapB.disks);
      });
    }
    expect((await readFile(key)).equals(original)).toBe(true);
  });

  it('a repository with every damage put back is clean', async () => {
    const r = await runCli(['check', '--read-data', '-r', repo]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
  });

  it('DiskIndex refuses a disk larger than an index holds with an error saying what to do', () => {
    expect(() => DiskIndex.empty(format.MAX_INDEX_SLOTS * CHUNK + 1, CHUNK)).toThrow(
      expect.objectContaining({
        code: 'DISK_TOO_LARGE',
        hint: expect.stringMatching(/--chunk-size/) as unknown,
      }),
    );
  });

  it('the out-of-space hint tells the truth: no snapshot, stored objects stay unreferenced', () => {
    const hint = new BackendError('no-space', 'cannot write data/ab/x: no space left on the device').hint;
    expect(hint).not.toMatch(/unchanged/);
    expect(hint).toMatch(/no snapshot was written; objects already stored stay unreferenced/);
  });

  it('a file entry whose chunk list does not fit its size is damage (exit 20), never a wrong file', async () => {
    await withRepo(async (r) => {
      const f = await r.putFile('domain-xml', 'x.xml', Buffer.from('<domain/>'));
      expect((await r.getFile(f)).toString()).toBe('<domain/>');
      for (const bad of [
        { ...f, chunks: [...f.chunks, f.chunks[0]!] },
        { ...f, sizeBytes: 3 },
        { ...f, sizeBytes: 2 * CHUNK },
      ])
        await expect(r.getFile(bad)).rejects.toMatchObject({ code: 'REPO_DAMAGED', exitCode: 20 });
    });
  });
});
