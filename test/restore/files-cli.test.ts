import { execFile, execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { lstat, mkdir, readFile, readdir, readlink, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectOneLineError, runCli, startCli, type CliResult } from '../helpers/cli.js';
import { makeTmpDir } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

/**
 * File-level restore end to end (docs/restore.md "File-level restore"): a disk with a GPT, an
 * ext4, a vfat and an LVM partition (an ext4 logical volume) and a second disk holding one ext4
 * and no partition table, backed up with backup-image, then browsed with `files ls`, extracted
 * with `files get` and mounted with `mount`. A libguestfs appliance takes 10-30 s to start here
 * (TCG), so the test starts few: one to build the disk, the reading commands side by side, one
 * mount.
 */
const run =
  requireTools(['guestfish', 'guestunmount', 'fusermount3', 'mkfs.ext4']) && existsSync('/dev/fuse');

/**
 * libguestfs through qemu directly; TCG because KVM inside this CI's VM aborts on an MSR
 * assertion. Both can be overridden from the environment.
 */
const GUESTFS_ENV = {
  LIBGUESTFS_BACKEND: process.env.LIBGUESTFS_BACKEND ?? 'direct',
  LIBGUESTFS_BACKEND_SETTINGS: process.env.LIBGUESTFS_BACKEND_SETTINGS ?? 'force_tcg',
};

function guestfish(script: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = execFile('guestfish', [], { env: { ...process.env, ...GUESTFS_ENV } }, (err, _out, stderr) =>
      err ? reject(new Error(`guestfish: ${stderr}`)) : resolve(),
    );
    p.stdin!.end(script);
  });
}

/** Runs at most `n` of the jobs at once (each one starts an appliance). */
async function limited<T>(n: number, jobs: Array<() => Promise<T>>): Promise<T[]> {
  const out: T[] = new Array<T>(jobs.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < jobs.length) {
        const i = next++;
        out[i] = await jobs[i]!();
      }
    }),
  );
  return out;
}

const ESCAPE_NAME = '\x1b[31mred';

describe.runIf(run)('files and mount: file-level restore through libguestfs', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: string;
  const cli = (args: string[]): Promise<CliResult> =>
    runCli(args, { env: { ...GUESTFS_ENV, VMVAULT_REPO: repo } });

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir('vmvault-files-'));
    repo = join(dir, 'repo');
    const vda = join(dir, 'vda.raw');
    const vdb = join(dir, 'vdb.raw');
    await truncate(vda, 0).catch(() => undefined);
    await writeFile(vda, '');
    await truncate(vda, 128 * 1024 * 1024);
    // One appliance builds the partitioned disk; hostile names live on part1.
    await guestfish(
      [
        `add ${vda} format:raw`,
        'run',
        'part-init /dev/sda gpt',
        'part-add /dev/sda p 2048 43007',
        'part-add /dev/sda p 43008 83967',
        'part-add /dev/sda p 83968 262110',
        'mkfs ext4 /dev/sda1',
        'mkfs vfat /dev/sda2',
        'pvcreate /dev/sda3',
        'vgcreate vg0 /dev/sda3',
        'lvcreate lv0 vg0 32',
        'mkfs ext4 /dev/vg0/lv0',
        'mount /dev/sda1 /',
        'mkdir /etc',
        'write /etc/hostname "testhost\\n"',
        'chmod 0640 /etc/hostname',
        'ln-s /etc/passwd /evil',
        'ln-s ../../../../../../tmp/vmvault-files-escape /up',
        'ln-s /etc /etclink',
        'write "/new\\x0aline" "nl"',
        'write "/\\x1b[31mred" "esc"',
        'write /setuid "s"',
        'chmod 04755 /setuid',
        'umount /',
        'mount /dev/sda2 /',
        'mkdir-p /dir/sub',
        'write /dir/file.txt "hello from part2\\n"',
        'write /dir/sub/deep.txt "deep"',
        'umount /',
        'mount /dev/vg0/lv0 /',
        'mkdir-p /home/alice',
        'write /home/alice/note.txt "alice\'s note\\n"',
        '',
      ].join('\n'),
    );
    // The second disk: one filesystem, no partition table, made without an appliance.
    const src = join(dir, 'vdb-src');
    await mkdir(join(src, 'data'), { recursive: true });
    await writeFile(join(src, 'data', 'readme.txt'), 'whole-disk filesystem\n');
    await truncate(vdb, 0).catch(() => undefined);
    await writeFile(vdb, '');
    await truncate(vdb, 16 * 1024 * 1024);
    execFileSync('mkfs.ext4', ['-q', '-F', '-d', src, vdb]);
    expect((await runCli(['init', repo, '--encryption', 'none'])).code).toBe(0);
    const b = await cli(['backup-image', '--vm', 'web', `${vda}:vda`, `${vdb}:vdb`, '-q']);
    expect(b.code, b.stderr).toBe(0);
  }, 300_000);
  afterAll(async () => cleanup());

  it('with several disks and no --disk: a usage error before any appliance starts', async () => {
    const r = await cli(['files', 'web@latest', 'ls', '/']);
    expect(r.code).toBe(2);
    expect(expectOneLineError(r)).toMatch(/has 2 disks; choose one with --disk \(vda, vdb\)/);
  });

  it('without guestfish on the PATH: one line saying what to install', async () => {
    const r = await runCli(['files', 'web@latest', '--disk', 'vdb', 'ls', '/'], {
      env: { PATH: '/nonexistent', VMVAULT_REPO: repo },
    });
    expect(r.code).toBe(1);
    expect(expectOneLineError(r)).toBe(
      'vmvault: guestfish not found; install libguestfs-tools (apt install libguestfs-tools)',
    );
  });

  it('ls, get and their errors (the commands run side by side)', async () => {
    const out = (n: string): string => join(dir, n);
    const [text, json, tree, file, link, missing, leaving] = await limited(4, [
      () =>
        cli([
          'files',
          'web@latest',
          '--disk',
          'vda',
          'ls',
          '/',
          '/part1',
          '/lvm',
          '/part1/etc/hostname',
          '/part2/dir',
        ]),
      () => cli(['files', 'web@latest', '--disk', 'vdb', 'ls', '/', '/fs/data', '--json']),
      () => cli(['files', 'web@latest', '--disk', 'vda', 'get', '/part1', '-o', out('part1')]),
      () =>
        cli(['files', 'web@latest', '--disk', 'vda', 'get', '/part2/dir/file.txt', '-o', out('file.txt')]),
      () => cli(['files', 'web@latest', '--disk', 'vda', 'get', '/part1/evil', '-o', out('evil')]),
      () => cli(['files', 'web@latest', '--disk', 'vda', 'get', '/part1/etc/nope', '-o', out('nope')]),
      () =>
        cli(['files', 'web@latest', '--disk', 'vda', 'get', '/part1/etclink/hostname', '-o', out('leave')]),
    ]);

    // ls: the filesystems first, then long listings; hostile names printed escaped.
    expect(text!.code, text!.stderr).toBe(0);
    const lines = text!.stdout.split('\n');
    expect(lines[0]).toBe('/:');
    expect(text!.stdout).toMatch(/^lvm\/vg0\/lv0 +ext4 .*\/dev\/vg0\/lv0$/m);
    expect(text!.stdout).toMatch(/^part1 +ext4 .*\/dev\/sda1$/m);
    expect(text!.stdout).toMatch(/^part2 +vfat .*\/dev\/sda2$/m);
    expect(text!.stdout).toMatch(/^lrwxrwxrwx +11 \d{4}-\d\d-\d\d \d\d:\d\d {2}evil -> \/etc\/passwd$/m);
    expect(text!.stdout).toMatch(/ {2}new\\x0aline$/m);
    expect(text!.stdout).toMatch(/ {2}\\x1b\[31mred$/m);
    expect(text!.stdout).toMatch(/^-rwsr-xr-x +1 .* {2}setuid$/m);
    expect(text!.stdout).toMatch(/^drwxr-xr-x +\d+ .* {2}etc\/$/m);
    expect(text!.stdout).toMatch(/^\/lvm:\ndr-xr-xr-x +0 - +vg0\/$/m);
    expect(text!.stdout).toMatch(/^\/part1\/etc\/hostname:\n-rw-r----- +9 .* {2}hostname$/m);
    expect(text!.stdout).not.toContain('\x1b');

    expect(text!.stdout).toMatch(/^\/part2\/dir:\n-r\S+ +17 .* {2}file\.txt\nd\S+ +\d+ .* {2}sub\/$/m);

    // --json, on the disk without a partition table: one array of every path's entries.
    expect(json!.code, json!.stderr).toBe(0);
    const entries = JSON.parse(json!.stdout) as Array<Record<string, unknown>>;
    expect(entries.map((e) => e.path)).toEqual(['/fs', '/fs/data/readme.txt']);
    expect(entries[0]).toMatchObject({ name: 'fs', type: 'filesystem', fsType: 'ext4', device: '/dev/sda' });
    expect(entries[1]).toMatchObject({ name: 'readme.txt', type: 'file', size: 22, mode: 0o644 });
    expect(entries[1]!.mtime).toMatch(/^\d{4}-\d\d-\d\dT/);

    // get of a directory: the tree as it is in the guest, symlinks as symlinks, nothing outside.
    expect(tree!.code, tree!.stderr).toBe(0);
    expect(tree!.stdout).toMatch(/^extracted \/part1 to .*part1 \(\d+ files, \d+ directories, 3 symlinks, /);
    expect(await readFile(join(dir, 'part1', 'etc', 'hostname'), 'utf8')).toBe('testhost\n');
    expect((await lstat(join(dir, 'part1', 'etc', 'hostname'))).mode & 0o777).toBe(0o640);
    expect(await readlink(join(dir, 'part1', 'evil'))).toBe('/etc/passwd');
    expect(await readlink(join(dir, 'part1', 'up'))).toBe('../../../../../../tmp/vmvault-files-escape');
    expect(await readFile(join(dir, 'part1', 'new\nline'), 'utf8')).toBe('nl');
    expect(await readFile(join(dir, 'part1', ESCAPE_NAME), 'utf8')).toBe('esc');
    expect((await lstat(join(dir, 'part1', 'setuid'))).mode & 0o7777).toBe(0o755); // set-id dropped
    expect(existsSync(join(tmpdir(), 'vmvault-files-escape'))).toBe(false);
    expect(existsSync('/tmp/vmvault-files-escape')).toBe(false);

    // get of a file: the content, to the name given.
    expect(file!.code, file!.stderr).toBe(0);
    expect(await readFile(join(dir, 'file.txt'), 'utf8')).toBe('hello from part2\n');

    // get of a symlink: a symlink with the guest's target, never the host's /etc/passwd.
    expect(link!.code, link!.stderr).toBe(0);
    expect((await lstat(join(dir, 'evil'))).isSymbolicLink()).toBe(true);
    expect(await readlink(join(dir, 'evil'))).toBe('/etc/passwd');

    // A missing path and a path through a symlink that leaves its filesystem: one line, exit 1.
    expect(missing!.code).toBe(1);
    expect(expectOneLineError(missing!)).toBe(
      'vmvault: no such file or directory: /part1/etc/nope; list its directory: ls /part1/etc',
    );
    expect(existsSync(join(dir, 'nope'))).toBe(false);
    expect(leaving!.code).toBe(1);
    expect(expectOneLineError(leaving!)).toMatch(
      /\/part1\/etclink\/hostname goes through a symlink that leaves \/part1/,
    );
    expect(existsSync(join(dir, 'leave'))).toBe(false);

    // Every run removed its private directory (socket, FIFOs).
    const left = (await readdir(tmpdir())).filter((n) => /^vmvault-files-\d+-/.test(n) && !dir.endsWith(n));
    expect(left).toEqual([]);
  }, 600_000);

  it('mount: every filesystem of both disks under DIR, read-only, until SIGINT unmounts it', async () => {
    const mnt = join(dir, 'mnt');
    await mkdir(mnt);
    const child = startCli(['mount', 'web@latest', mnt], { ...GUESTFS_ENV, VMVAULT_REPO: repo });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const closed = new Promise<number>((resolve) => child.on('close', (code) => resolve(code ?? -1)));
    await new Promise<void>((resolve, reject) => {
      const t = setInterval(() => {
        if (stdout.includes('press Ctrl-C')) {
          clearInterval(t);
          resolve();
        }
      }, 200);
      void closed.then((code) => {
        clearInterval(t);
        reject(new Error(`mount exited ${code}: ${stderr}`));
      });
    });
    try {
      expect(stdout).toContain(`${mnt}/vda/part1`);
      expect(readFileSync(join(mnt, 'vda', 'part1', 'etc', 'hostname'), 'utf8')).toBe('testhost\n');
      expect(readFileSync(join(mnt, 'vda', 'part2', 'dir', 'file.txt'), 'utf8')).toBe('hello from part2\n');
      expect(readFileSync(join(mnt, 'lvm', 'vg0', 'lv0', 'home', 'alice', 'note.txt'), 'utf8')).toBe(
        "alice's note\n",
      );
      expect(readFileSync(join(mnt, 'vdb', 'fs', 'data', 'readme.txt'), 'utf8')).toBe(
        'whole-disk filesystem\n',
      );
      await expect(writeFile(join(mnt, 'vda', 'part1', 'x'), 'x')).rejects.toThrow(/EROFS|EACCES|EPERM/);
    } finally {
      child.kill('SIGINT');
    }
    expect(await closed, stderr).toBe(0);
    expect(readFileSync('/proc/mounts', 'utf8')).not.toContain(mnt);
    expect(await readdir(mnt)).toEqual([]);
  }, 300_000);
});
