import { cp, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobCodec, codecSpec } from '../../src/repo/index.js';

/** The codec of an unencrypted repository made by `init` (zstd:1). */
const codec = BlobCodec.fromSpec(codecSpec(1));
const sealManifest = (id: string, json: Buffer): Buffer =>
  codec.sealObject('manifest', json, Buffer.from(id.slice(0, 32), 'hex'), { name: `snapshots/${id}` });
import { expectOneLineError, runCli, type CliResult } from '../helpers/cli.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

/**
 * The malformed-repository suite, manifest part: manifests truncated, bit-flipped, emptied,
 * replaced by another valid object of the wrong kind, and valid JSON under a matching id with
 * hostile field values. Whatever a manifest holds: a one-line error or a check finding, exit 20,
 * nothing written outside the restore directory, and every other snapshot still lists, shows and
 * restores.
 */
const MiB = 1024 * 1024;
const run = requireTools(['qemu-img']);
// Raw control characters (other than the line ends) on a terminal: a crafted name driving it.
// eslint-disable-next-line no-control-regex
const RAW_CONTROL = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/;

type Json = Record<string, unknown>;

describe.runIf(run)('malformed snapshot manifests', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: string;
  let webId: string;
  let dbId: string;
  let web: Json;
  let chunkId: string;
  let packFile: string;
  let indexFile: string;
  let n = 0;

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir('vmvault-malformed-'));
    repo = join(dir, 'repo');
    const img = join(dir, 'a.raw');
    const fh = await open(img, 'w');
    await fh.write(seededBytes(2 * MiB, 5), 0, 2 * MiB, 0);
    await fh.truncate(3 * MiB);
    await fh.close();
    expect((await runCli(['init', repo])).code).toBe(0);
    const a = await runCli(['backup-image', '-q', '-r', repo, '--vm', 'web', `${img}:vda`, '--json']);
    expect(a.code, a.stderr).toBe(0);
    webId = (JSON.parse(a.stdout) as { snapshot: string }).snapshot;
    const b = await runCli(['backup-image', '-q', '-r', repo, '--vm', 'db', `${img}:vda`, '--json']);
    expect(b.code, b.stderr).toBe(0);
    dbId = (JSON.parse(b.stdout) as { snapshot: string }).snapshot;
    web = JSON.parse(
      codec
        .openObject('manifest', await readFile(join(repo, 'snapshots', webId)), {
          name: `snapshots/${webId}`,
          maxPlaintextBytes: 16 * MiB,
        })
        .toString(),
    ) as Json;

    // A pack file and an index object: objects of other kinds to put where a manifest belongs.
    const packs = await readdir(join(repo, 'data'), { recursive: true });
    packFile = join(
      'data',
      packs.find((c) => /^[0-9a-f]{2}\/[0-9a-f]{32}$/.test(c))!,
    );
    indexFile = join('index', (await readdir(join(repo, 'index')))[0]!);
    chunkId = 'cd'.repeat(32);
  });
  afterAll(async () => cleanup());

  /** A private copy of the sound two-snapshot repository. */
  async function copyRepo(): Promise<string> {
    const to = join(dir, `copy-${n++}`);
    await cp(repo, to, { recursive: true });
    return to;
  }

  /** Writes `json` as a manifest blob under its own id (valid envelope, matching id). */
  async function craft(r: string, json: string | Buffer): Promise<string> {
    const bytes = Buffer.isBuffer(json) ? json : Buffer.from(json);
    const id = codec.objectId(bytes);
    await writeFile(join(r, 'snapshots', id), sealManifest(id, bytes));
    return id;
  }

  /** Every path under `root`, except the repositories (which check --repair may change). */
  async function tree(root: string): Promise<string[]> {
    const all = await readdir(root, { recursive: true });
    return all.filter((p) => !/^(repo|copy-\d+)(\/|$)/.test(p)).sort();
  }

  const cli = (...args: string[]): Promise<CliResult> => runCli(args);

  /**
   * The assertions every malformed manifest must pass. `bad` is the damaged snapshot's id;
   * `field` the field its error must name (schema failures).
   */
  async function expectContained(r: string, bad: string, field?: string | RegExp): Promise<void> {
    const short = bad.slice(0, 8);
    const others = [webId, dbId].filter((id) => id !== bad);

    // Listing: the others, and one warning line naming the damaged one and how to remove it.
    const list = await cli('snapshots', '-r', r);
    expect(list.code, list.stderr).toBe(0);
    for (const id of others) expect(list.stdout).toContain(id.slice(0, 8));
    const warnings = list.stderr.split('\n').filter((l) => l !== '');
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(
      new RegExp(
        `^warning: snapshot ${short} is damaged: .*\\(skipped\\); delete snapshots/${short}… .*check --read-data --repair`,
      ),
    );
    if (field !== undefined) expect(warnings[0]).toMatch(field);
    expect(list.stdout + list.stderr).not.toMatch(RAW_CONTROL);
    expect((await cli('snapshots', '-r', r, '--json')).code).toBe(0);

    // check: a finding, exit 20, never "no problems found".
    const check = await cli('check', '-r', r);
    expect(check.code).toBe(20);
    expect(check.stdout).toMatch(new RegExp(`^snapshot ${short}( \\((evil|web)\\))? is damaged: `, 'm'));
    expect(check.stdout).not.toMatch(/no problems found/);
    expect(check.stdout + check.stderr).not.toMatch(RAW_CONTROL);
    expect(expectOneLineError(check)).toMatch(/^vmvault: check found 1 snapshot manifest damaged; /);
    const json = JSON.parse((await cli('check', '-r', r, '--json')).stdout) as {
      ok: boolean;
      problems: Array<{ kind: string; snapshot: string; field?: string }>;
    };
    expect(json.ok).toBe(false);
    expect(json.problems).toEqual([expect.objectContaining({ kind: 'snapshot-damaged', snapshot: bad })]);

    // The damaged snapshot itself: a one-line error naming it, exit 20; restore writes nothing.
    const show = await cli('show', '-r', r, short);
    expect(show.code).toBe(20);
    const line = expectOneLineError(show);
    expect(line).toMatch(new RegExp(`^vmvault: snapshot ${short} is damaged: `));
    expect(line).not.toContain(bad); // short ids in messages
    expect(line).not.toMatch(RAW_CONTROL);
    if (field !== undefined) expect(line).toMatch(field);
    const before = await tree(dir);
    const out = join(dir, `out-${n++}`, 'x');
    const restore = await cli('restore', '-r', r, bad, '-o', out);
    expect(restore.code).toBe(20);
    expect(expectOneLineError(restore)).toMatch(new RegExp(`^vmvault: snapshot ${short} is damaged`));
    expect(await tree(dir)).toEqual(before);

    // The rest goes on: show, stats and a restore of another snapshot, with a warning only.
    const other = others[0]!;
    const showOther = await cli('show', '-r', r, other.slice(0, 8));
    expect(showOther.code, showOther.stderr).toBe(0);
    expect(showOther.stderr).toMatch(new RegExp(`^warning: snapshot ${short} is damaged`));
    const stats = await cli('stats', '-r', r);
    expect(stats.code, stats.stderr).toBe(0);
    expect(stats.stdout).toMatch(/^snapshots\s+\d+ \(\d+ VMs?\), 1 damaged left out/m);
    const good = join(dir, `good-${n++}`);
    const restored = await cli('restore', '-r', r, other, '-o', good, '--format', 'raw');
    expect(restored.code, restored.stderr).toBe(0);
    expect((await stat(join(good, 'vda.raw'))).size).toBe(3 * MiB);
    // Only inside the target directory.
    expect(
      (await tree(dir)).filter((p) => !before.includes(p)).every((p) => p.startsWith(relative(dir, good))),
    ).toBe(true);
  }

  describe('damaged bytes in place of a sound manifest', () => {
    const cases: Array<[string, (file: string, r: string, sound: Buffer) => Promise<void>]> = [
      ['truncated', async (f, _r, sound) => writeFile(f, sound.subarray(0, 60))],
      [
        'bit-flipped',
        async (f, _r, b) => {
          b[b.length - 30] = b[b.length - 30]! ^ 0x10;
          await writeFile(f, b);
        },
      ],
      ['emptied', async (f) => writeFile(f, Buffer.alloc(0))],
      ['replaced by a chunk index object', async (f, r) => cp(join(r, indexFile), f)],
      ['replaced by a data pack', async (f, r) => cp(join(r, packFile), f)],
      [
        'replaced by the manifest of another snapshot (moved)',
        async (f, r) => cp(join(r, 'snapshots', dbId), f),
      ],
    ];
    for (const [name, damage] of cases)
      it(name, async () => {
        const r = await copyRepo();
        const file = join(r, 'snapshots', webId);
        const sound = await readFile(file);
        await rm(file);
        await damage(file, r, sound);
        await expectContained(r, webId);
      });

    it('a valid object of another kind (an index object, a pack) is not a manifest', async () => {
      const r = await copyRepo();
      const id1 = 'a1'.repeat(32);
      await cp(join(r, indexFile), join(r, 'snapshots', id1));
      await expectContained(r, id1);
      await rm(join(r, 'snapshots', id1));
      const id2 = 'a2'.repeat(32);
      await cp(join(r, packFile), join(r, 'snapshots', id2));
      await expectContained(r, id2);
    });

    it('a header claiming 4 GiB of manifest', async () => {
      const r = await copyRepo();
      const id = 'ab'.repeat(32);
      const blob = sealManifest(id, Buffer.from('{}'));
      blob.writeUInt32BE(0xffffffff, 8); // plaintext length
      blob.writeUInt8(1, 5); // zstd, so the lengths need not agree with the payload's
      await writeFile(join(r, 'snapshots', id), blob);
      await expectContained(r, id);
    });
  });

  describe('valid JSON under a matching id, hostile field values', () => {
    const disk0 = (): Json => ({ ...(web.disks as Json[])[0]! });
    const withDisk = (patch: Json): Json => ({
      ...web,
      vm: { name: 'evil' },
      disks: [{ ...disk0(), ...patch }],
    });
    const cases: Array<[string, () => Json | string, RegExp]> = [
      ['{"version":2}', () => ({ version: 2 }), /vm is missing/],
      [
        'a format 1 manifest',
        () => ({ ...web, version: 1 }),
        /version is 1, a manifest of repository format 1, which this vmvault no longer reads \(it reads version 2\)/,
      ],
      ['not an object', () => '[1,2]', /\(manifest\) is a list, not an object/],
      ['not JSON at all', () => '{"version":1,', /not valid JSON/],
      [
        'disk target ../../x',
        () => withDisk({ target: '../../x' }),
        /disks\[0\]\.target '\.\.\/\.\.\/x' is refused/,
      ],
      [
        'disk target /tmp/abs',
        () => withDisk({ target: '/tmp/abs' }),
        /disks\[0\]\.target '\/tmp\/abs' is refused/,
      ],
      ['disk target .', () => withDisk({ target: '.' }), /disks\[0\]\.target '\.' is refused/],
      ['disk target ..', () => withDisk({ target: '..' }), /disks\[0\]\.target '\.\.' is refused/],
      [
        'file name ../../x',
        () => ({ ...web, files: [{ kind: 'nvram', name: '../../x', sizeBytes: 0, chunks: [] }] }),
        /files\[0\]\.name '\.\.\/\.\.\/x' is refused/,
      ],
      [
        'file name with a .. component',
        () => ({
          ...web,
          files: [{ kind: 'nvram', name: '/var/lib/../../etc/x', sizeBytes: 0, chunks: [] }],
        }),
        /files\[0\]\.name .* is refused/,
      ],
      [
        'domain XML named by a path',
        () => ({ ...web, files: [{ kind: 'domain-xml', name: '/tmp/evil.xml', sizeBytes: 0, chunks: [] }] }),
        /files\[0\]\.name .* is refused/,
      ],
      [
        'VM name with a newline',
        () => ({ ...web, vm: { name: 'evil\nvmvault: all good' } }),
        /vm\.name 'evil\\x0avmvault/,
      ],
      [
        'VM name with a terminal escape',
        () => ({ ...web, vm: { name: '\u001b[2J\u001b[31mred' } }),
        /vm\.name '\\x1b\[2J/,
      ],
      [
        'huge disk size',
        () => withDisk({ sizeBytes: 2 ** 60 }),
        /disks\[0\]\.sizeBytes is \d+, not an integer from 0 to/,
      ],
      ['negative size', () => withDisk({ allocatedBytes: -1 }), /disks\[0\]\.allocatedBytes is -1/],
      ['fractional size', () => withDisk({ sizeBytes: 1.5 }), /disks\[0\]\.sizeBytes is 1\.5/],
      [
        'allocated beyond the disk',
        () => withDisk({ allocatedBytes: 2 ** 40 }),
        /disks\[0\]\.allocatedBytes/,
      ],
      [
        'a million disks',
        () => ({ ...web, disks: new Array<number>(1_000_000).fill(0) }),
        /disks has 1000000 entries, at most/,
      ],
      [
        'wrong chunk size',
        () => withDisk({ chunkSizeBytes: 65536 }),
        /chunkSizeBytes is 65536, the repository's chunk size is 1048576/,
      ],
      ['chunk size not a power of two', () => withDisk({ chunkSizeBytes: 1000000 }), /not a power of two/],
      [
        'index id not hex',
        () => withDisk({ root: 'Z'.repeat(64) }),
        /disks\[0\]\.root .* not a disk index page id/,
      ],
      [
        'parent not an id',
        () => ({ ...web, parent: '../x' }),
        /parent is '\.\.\/x', not a snapshot id or null/,
      ],
      [
        'file chunk ids not hex',
        () => ({ ...web, files: [{ kind: 'nvram', name: 'x.fd', sizeBytes: 5, chunks: ['g'.repeat(64)] }] }),
        /files\[0\]\.chunks\[0\]/,
      ],
      [
        'file chunk count not matching its size',
        () => ({ ...web, files: [{ kind: 'nvram', name: 'x.fd', sizeBytes: 5 * MiB, chunks: [chunkId] }] }),
        /files\[0\]\.chunks lists 1 chunks for 5242880 bytes/,
      ],
      ['time not a date', () => ({ ...web, time: 'yesterday' }), /time 'yesterday' is not an ISO 8601/],
      [
        'disk targets twice',
        () => ({ ...web, disks: [disk0(), disk0()] }),
        /disks\[1\]\.target 'vda' appears twice/,
      ],
      ['unknown mode', () => ({ ...web, mode: 'rm -rf' }), /mode is 'rm -rf', not one of/],
      ['disks not a list', () => ({ ...web, disks: 'vda' }), /disks is a string, not a list/],
      ['stats missing', () => withDisk({ stats: undefined }), /disks\[0\]\.stats is missing/],
    ];
    for (const [name, value, field] of cases)
      it(name, async () => {
        const r = await copyRepo();
        const v = value();
        const id = await craft(r, typeof v === 'string' ? v : JSON.stringify(v));
        await expectContained(r, id, field);
      });

    it('a manifest of a newer version is reported, named, and never moved by --repair', async () => {
      const r = await copyRepo();
      const id = await craft(r, JSON.stringify({ ...web, version: 3 }));
      const show = await cli('show', '-r', r, id.slice(0, 8));
      expect(show.code).toBe(20);
      expect(expectOneLineError(show)).toMatch(
        /manifest version is 3, this vmvault reads version 2; .*upgrade vmvault/,
      );
      const repair = await cli('check', '-r', r, '--read-data', '--repair');
      expect(repair.code).toBe(20);
      expect(await readdir(join(r, 'snapshots'))).toContain(id);
    });

    it('every hostile manifest at once: check counts them per kind, --repair moves them all', async () => {
      const r = await copyRepo();
      const ids: string[] = [];
      for (const [, value] of cases.slice(0, 8)) {
        const v = value();
        ids.push(await craft(r, typeof v === 'string' ? v : JSON.stringify(v)));
      }
      const check = await cli('check', '-r', r);
      expect(check.code).toBe(20);
      expect(expectOneLineError(check)).toMatch(/^vmvault: check found 8 snapshot manifests damaged; /);
      // A backup plans from the listing: it goes on, with one warning per damaged manifest.
      const backup = await cli('backup-image', '-r', r, '--vm', 'web', `${join(dir, 'a.raw')}:vda`);
      expect(backup.code, backup.stderr).toBe(0);
      expect(backup.stderr.split('\n').filter((l) => l.startsWith('warning: snapshot '))).toHaveLength(8);
      const repair = await cli('check', '-r', r, '--read-data', '--repair');
      expect(repair.code).toBe(20);
      expect(repair.stdout).toMatch(/^repaired\s+8 damaged snapshot manifests moved to quarantine\//m);
      const after = await cli('check', '-r', r);
      expect(after.code, after.stdout).toBe(0);
      const list = await cli('snapshots', '-r', r);
      expect(list.stderr).toBe('');
      expect(list.stdout).toMatch(/^3 snapshots$/m);
      const moved = await readdir(join(r, 'quarantine'));
      expect(moved).toHaveLength(ids.length);
      for (const id of ids) expect(moved.filter((m) => m.startsWith(`snapshot-${id}-`))).toHaveLength(1);
    });
  });

  it('a sound repository: no warning anywhere', async () => {
    for (const args of [['snapshots'], ['stats'], ['show', 'web@latest'], ['check']]) {
      const res = await cli(...args, '-r', repo);
      expect(res.code, res.stderr).toBe(0);
      expect(res.stderr).toBe('');
    }
  });
});
