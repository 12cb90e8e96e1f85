/**
 * Creating and opening repositories through the CLI: true messages for every kind of location
 * (issue 17 item 11), owner-only modes that an existing repository's modes override (item 15),
 * and a config that is validated field by field (item 13).
 */
import { execFileSync } from 'node:child_process';
import { chmod, mkdir, readFile, readdir, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectOneLineError, runCli } from '../helpers/cli.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { isRoot } from '../helpers/tools.js';

const MiB = 1024 * 1024;

/** Every directory and file below `dir` with its permission bits (octal), the root first. */
async function modes(dir: string): Promise<Array<{ path: string; dir: boolean; mode: string }>> {
  const out: Array<{ path: string; dir: boolean; mode: string }> = [];
  const walk = async (p: string): Promise<void> => {
    const st = await stat(p);
    out.push({ path: p, dir: st.isDirectory(), mode: (st.mode & 0o7777).toString(8) });
    if (st.isDirectory()) for (const e of await readdir(p)) await walk(join(p, e));
  };
  await walk(dir);
  return out;
}

/** Runs the CLI under `umask` (the child inherits this process's umask). */
async function withUmask<T>(umask: number, fn: () => Promise<T>): Promise<T> {
  const old = process.umask(umask);
  try {
    return await fn();
  } finally {
    process.umask(old);
  }
}

describe('init and open through the CLI', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let image: string;

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir());
    image = join(dir, 'disk.raw');
    await writeFile(image, Buffer.concat([seededBytes(2 * MiB, 5), Buffer.alloc(MiB)]));
  });
  afterAll(async () => cleanup());

  describe('access modes', () => {
    for (const umask of [0o000, 0o022, 0o077]) {
      it(`a new repository is owner-only (0700 / 0600) under umask ${umask.toString(8).padStart(3, '0')}, after init and after a backup`, async () => {
        const repo = join(dir, `owner-${umask}`, 'repo');
        await withUmask(umask, async () => {
          const r = await runCli(['init', repo]);
          expect(r.code, r.stderr).toBe(0);
          expect(r.stdout).toMatch(/access: its owner only \(directories 0700, files 0600\)/);
          for (const m of await modes(repo)) expect(m.mode).toBe(m.dir ? '700' : '600');
          const b = await runCli(['backup-image', '-r', repo, '--vm', 'm', '-q', `${image}:vda`]);
          expect(b.code, b.stderr).toBe(0);
        });
        const all = await modes(repo);
        expect(all.length).toBeGreaterThan(8); // data/<hh>/…, index/<hh>/…, snapshots/…, tmp
        for (const m of all) expect(`${m.path} ${m.mode}`).toBe(`${m.path} ${m.dir ? '700' : '600'}`);
      });
    }

    it('an existing repository opened to a group (0750 / 0640) keeps those modes for new objects', async () => {
      const repo = join(dir, 'group');
      expect((await runCli(['init', repo])).code).toBe(0);
      await chmod(repo, 0o750);
      await chmod(join(repo, 'config'), 0o640);
      const before = new Set((await modes(repo)).map((m) => m.path));
      await withUmask(0o077, async () => {
        const b = await runCli(['backup-image', '-r', repo, '--vm', 'g', '-q', `${image}:vda`]);
        expect(b.code, b.stderr).toBe(0);
      });
      const all = (await modes(repo)).filter((m) => !before.has(m.path) || m.path === repo);
      expect(all.some((m) => m.path.includes(`${join(repo, 'data')}/`) && !m.dir)).toBe(true);
      for (const m of all) expect(`${m.path} ${m.mode}`).toBe(`${m.path} ${m.dir ? '750' : '640'}`);
    });
  });

  describe('every kind of location gets a true message and the fix', () => {
    it('a deleted config: open and init both call it a damaged repository (exit 20)', async () => {
      const repo = join(dir, 'noconfig');
      expect((await runCli(['init', repo])).code).toBe(0);
      expect((await runCli(['backup-image', '-r', repo, '--vm', 'x', '-q', `${image}:vda`])).code).toBe(0);
      await rm(join(repo, 'config'));
      const open = await runCli(['snapshots', '-r', repo]);
      expect(open.code).toBe(20);
      const msg = expectOneLineError(open);
      expect(msg).toMatch(
        /is a damaged repository: its config is missing \(it has [a-z]+\/\); put its 'config' back/,
      );
      const init = await runCli(['init', repo]);
      expect(init.code).toBe(20);
      expect(expectOneLineError(init)).toBe(msg);
    });

    it('a directory that is not a repository: open says none is there, init says it is not empty', async () => {
      const other = join(dir, 'notes');
      await mkdir(other);
      await writeFile(join(other, 'notes.txt'), 'hello');
      const open = await runCli(['snapshots', '-r', other]);
      expect(open.code).toBe(10);
      expect(expectOneLineError(open)).toMatch(
        /no vmvault repository at .*notes; create one with 'vmvault init/,
      );
      const init = await runCli(['init', other]);
      expect(init.code).toBe(1);
      expect(expectOneLineError(init)).toMatch(
        /notes is not empty \(it holds notes\.txt\) and is not a vmvault repository; choose an empty or new directory/,
      );
      // Only hidden files (a home directory) or empty directories: not empty either.
      const home = join(dir, 'home');
      await mkdir(join(home, 'empty-dir'), { recursive: true });
      expect(expectOneLineError(await runCli(['init', home]))).toMatch(
        /home is not empty \(it holds empty-dir\)/,
      );
      await rm(join(home, 'empty-dir'), { recursive: true });
      await writeFile(join(home, '.bashrc'), '# mine');
      expect(expectOneLineError(await runCli(['init', home]))).toMatch(
        /home is not empty \(it holds \.bashrc\)/,
      );
      expect((await stat(home)).mode & 0o777).toBe(0o755);
      // A file named config that is not ours is not "a repository".
      await writeFile(join(other, 'config'), 'key=value\n');
      expect(expectOneLineError(await runCli(['init', other]))).toMatch(/is not empty \(it holds config\)/);
      expect(await readFile(join(other, 'notes.txt'), 'utf8')).toBe('hello');
    });

    it('an existing repository: init says so', async () => {
      const repo = join(dir, 'twice');
      expect((await runCli(['init', repo])).code).toBe(0);
      const again = await runCli(['init', repo]);
      expect(again.code).toBe(1);
      expect(expectOneLineError(again)).toMatch(/a repository already exists at .*twice; use it as it is/);
    });

    it('a regular file, or a path through one, is named as a file', async () => {
      const file = join(dir, 'plain');
      await writeFile(file, 'x');
      const r = await runCli(['init', file]);
      expect(r.code).toBe(1);
      expect(expectOneLineError(r)).toMatch(
        /plain is a file, not a directory; choose a new or empty directory/,
      );
      const below = await runCli(['init', join(file, 'repo')]);
      expect(below.code).toBe(1);
      expect(expectOneLineError(below)).toMatch(
        /cannot create a repository at .*plain\/repo: part of the path is a file/,
      );
      expect(await readFile(file, 'utf8')).toBe('x');
    });

    it('an empty directory that exists becomes the repository', async () => {
      const empty = join(dir, 'empty');
      await mkdir(empty, { mode: 0o755 });
      const r = await runCli(['init', empty]);
      expect(r.code, r.stderr).toBe(0);
      for (const m of await modes(empty)) expect(m.mode).toBe(m.dir ? '700' : '600');
    });
  });

  // A read-only file system: a tmpfs mounted read-only and a read-only bind mount of a repository.
  describe.runIf(isRoot)('a read-only file system is named as one', () => {
    let ro: string;
    let roRepo: string;
    let mounted: string[] = [];
    let canMount = true;

    beforeAll(async () => {
      ro = join(dir, 'ro');
      roRepo = join(dir, 'ro-repo');
      await mkdir(ro);
      await mkdir(roRepo);
      try {
        execFileSync('mount', ['-t', 'tmpfs', '-o', 'ro,size=1m', 'tmpfs', ro], { stdio: 'ignore' });
        mounted.push(ro);
        const rw = join(dir, 'rw-repo');
        expect((await runCli(['init', rw])).code).toBe(0);
        expect((await runCli(['backup-image', '-r', rw, '--vm', 'ro', '-q', `${image}:vda`])).code).toBe(0);
        execFileSync('mount', ['--bind', rw, roRepo], { stdio: 'ignore' });
        mounted.push(roRepo);
        execFileSync('mount', ['-o', 'remount,bind,ro', roRepo], { stdio: 'ignore' });
      } catch {
        canMount = false; // no CAP_SYS_ADMIN: the errno mapping is covered by the unit test
      }
    });
    afterAll(() => {
      for (const m of mounted.reverse()) execFileSync('umount', [m], { stdio: 'ignore' });
      mounted = [];
    });

    it('init in and below a read-only mount, and a backup into a read-only repository', async (ctx) => {
      if (!canMount) ctx.skip();
      for (const target of [ro, join(ro, 'repo')]) {
        const r = await runCli(['init', target]);
        expect(r.code).toBe(1);
        expect(expectOneLineError(r)).toMatch(
          /cannot create a repository at .*: read-only file system; mount it read-write, or use a repository on writable storage/,
        );
      }
      const b = await runCli(['backup-image', '-r', roRepo, '--vm', 'x', '-q', `${image}:vda`]);
      expect(b.code).toBe(1);
      expect(b.stderr).toMatch(/vmvault: cannot .*: read-only file system; mount it read-write/);
      expect(b.stderr).not.toMatch(/permission denied/);
    });

    it('the commands that only read work on a read-only repository', async (ctx) => {
      if (!canMount) ctx.skip();
      for (const args of [['snapshots'], ['show', 'ro@latest'], ['stats'], ['check', '--read-data']]) {
        const r = await runCli([...args, '-r', roRepo]);
        expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
        // check cannot record its result (status/check) on read-only storage: it says nothing of it.
        expect(r.stderr, args.join(' ')).toBe('');
      }
      const out = join(dir, 'from-ro');
      const r = await runCli(['restore', 'ro@latest', '-r', roRepo, '--disk', 'vda', '-o', `${out}.raw`]);
      expect(r.code, r.stderr).toBe(0);
    });
  });

  describe('a malformed config is refused with a one-line error naming the field', () => {
    let repo: string;
    let good: Record<string, unknown>;
    beforeAll(async () => {
      repo = join(dir, 'config-cases');
      expect((await runCli(['init', repo])).code).toBe(0);
      good = JSON.parse(await readFile(join(repo, 'config'), 'utf8')) as Record<string, unknown>;
    });

    const edit = (patch: Record<string, unknown>): Record<string, unknown> => ({ ...good, ...patch });
    const cases: Array<[string, () => string | Buffer, RegExp]> = [
      ['truncated', () => JSON.stringify(good).slice(0, 40), /damaged: it is not valid JSON/],
      ['emptied', () => '', /damaged: it is empty/],
      ['not JSON', () => Buffer.from([0xff, 0x00, 0x1b, 0x5b]), /damaged: it is not valid JSON/],
      ['an array', () => '[1,2]', /damaged: it is not a JSON object/],
      [
        'level 99',
        () => JSON.stringify(edit({ compression: { codec: 'zstd', level: 99 } })),
        /compression\.level is 99/,
      ],
      [
        'level 1.5',
        () => JSON.stringify(edit({ compression: { codec: 'zstd', level: 1.5 } })),
        /compression\.level is 1\.5/,
      ],
      [
        'codec none with a level',
        () => JSON.stringify(edit({ compression: { codec: 'none', level: 3 } })),
        /compression\.level is 3/,
      ],
      [
        'an unknown codec',
        () => JSON.stringify(edit({ compression: { codec: 'lz4', level: 1 } })),
        /compression\.codec is "lz4"/,
      ],
      [
        'an extra compression field',
        () => JSON.stringify(edit({ compression: { codec: 'zstd', level: 1, dict: 'x' } })),
        /unknown field compression\."dict"/,
      ],
      [
        'compression missing',
        () => JSON.stringify(edit({ compression: undefined })),
        /compression is missing/,
      ],
      ['id "x"', () => JSON.stringify(edit({ id: 'x' })), /id is "x", not 64 lowercase hex digits/],
      [
        'id with a terminal escape',
        () => JSON.stringify(edit({ id: '\u001b[31mred' })),
        /id is .*, not 64 lowercase hex/,
      ],
      [
        'chunk size 0',
        () => JSON.stringify(edit({ chunkSizeBytes: 0 })),
        /chunkSizeBytes is 0, not a power of two/,
      ],
      [
        'chunk size 2^40',
        () => JSON.stringify(edit({ chunkSizeBytes: 2 ** 40 })),
        /chunkSizeBytes is 1099511627776/,
      ],
      [
        'chunk size 3 MiB',
        () => JSON.stringify(edit({ chunkSizeBytes: 3 * MiB })),
        /chunkSizeBytes is 3145728/,
      ],
      [
        'chunk size as text',
        () => JSON.stringify(edit({ chunkSizeBytes: '1048576' })),
        /chunkSizeBytes is "1048576"/,
      ],
      ['chunkId md5', () => JSON.stringify(edit({ chunkId: 'md5' })), /chunkId is "md5"/],
      ['pack size 3 MiB', () => JSON.stringify(edit({ packSizeBytes: 3 * MiB })), /packSizeBytes is 3145728/],
      [
        'pack size 2^40',
        () => JSON.stringify(edit({ packSizeBytes: 2 ** 40 })),
        /packSizeBytes is 1099511627776/,
      ],
      [
        'pack size missing',
        () => JSON.stringify(edit({ packSizeBytes: undefined })),
        /packSizeBytes is missing/,
      ],
      ['page slots 0', () => JSON.stringify(edit({ pageSlots: 0 })), /pageSlots is 0/],
      ['page slots as text', () => JSON.stringify(edit({ pageSlots: '1024' })), /pageSlots is "1024"/],
      [
        'createdAt not a time',
        () => JSON.stringify(edit({ createdAt: 'yesterday' })),
        /createdAt is "yesterday"/,
      ],
      [
        'version as text',
        () => JSON.stringify(edit({ version: '1' })),
        /version is "1", not a format version/,
      ],
      ['an unknown field', () => JSON.stringify(edit({ owner: 'mallory' })), /unknown field "owner"/],
      ['encryption not a string', () => JSON.stringify(edit({ encryption: 5 })), /encryption is 5/],
      [
        'objectLock days 0',
        () => JSON.stringify(edit({ objectLock: { mode: 'compliance', days: 0 } })),
        /objectLock.days is 0/,
      ],
      [
        'objectLock mode unknown',
        () => JSON.stringify(edit({ objectLock: { mode: 'none', days: 30 } })),
        /objectLock.mode is "none"/,
      ],
      [
        'objectLock with an extra field',
        () => JSON.stringify(edit({ objectLock: { mode: 'governance', days: 30, legalHold: true } })),
        /unknown field objectLock."legalHold"/,
      ],
      ['1 MiB of spaces', () => ' '.repeat(MiB), /damaged: 1048576 bytes, more than any config/],
    ];
    for (const [name, content, expected] of cases) {
      it(name, async () => {
        await writeFile(join(repo, 'config'), content());
        for (const args of [
          ['snapshots', '-r', repo],
          ['backup-image', '-r', repo, '--vm', 'c', `${image}:vda`],
        ]) {
          const r = await runCli(args);
          expect(r.code).toBe(1);
          const line = expectOneLineError(r);
          expect(line).toMatch(expected);
          expect(line).not.toMatch(/internal error/);
          expect(line.includes('\u001b')).toBe(false);
        }
        expect((await readdir(repo)).filter((n) => n !== 'tmp')).toEqual(['config']); // nothing written
      });
    }

    it('a newer format version or encryption asks for an upgrade', async () => {
      await writeFile(join(repo, 'config'), JSON.stringify(edit({ version: 3 })));
      expect(expectOneLineError(await runCli(['snapshots', '-r', repo]))).toMatch(
        /format version 3 is not supported .*; upgrade vmvault/,
      );
      // Format 1 has no users: refused in one line that says what to do.
      await writeFile(join(repo, 'config'), JSON.stringify(edit({ version: 1 })));
      expect(expectOneLineError(await runCli(['snapshots', '-r', repo]))).toMatch(
        /is a format 1 repository, which this vmvault does not read; create a new one with 'vmvault init' and back up again/,
      );
      await writeFile(join(repo, 'config'), JSON.stringify(edit({ encryption: 'chacha20-poly1305' })));
      expect(expectOneLineError(await runCli(['snapshots', '-r', repo]))).toMatch(
        /encryption "chacha20-poly1305" is not supported; upgrade vmvault/,
      );
      // aes-256-gcm is known: without its keyed id function, keyId and mac the config is damaged.
      await writeFile(join(repo, 'config'), JSON.stringify(edit({ encryption: 'aes-256-gcm' })));
      expect(expectOneLineError(await runCli(['snapshots', '-r', repo]))).toMatch(
        /config of .* is damaged: chunkId is "blake3-256", not "blake3-256-keyed"/,
      );
      await writeFile(join(repo, 'config'), `${JSON.stringify(good, null, 2)}\n`);
      expect((await runCli(['snapshots', '-r', repo])).code).toBe(0);
      await truncate(join(repo, 'config'), 0);
    });
  });
});
