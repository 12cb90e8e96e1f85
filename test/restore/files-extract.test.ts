import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { lstat, mkdir, readFile, readdir, readlink, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  driveLetters,
  extractTar,
  filesystemName,
  gfQuote,
  parseFilesystems,
  resolveGuestPath,
} from '../../src/restore/files/index.js';
import { makeTmpDir } from '../helpers/tmp.js';

/** One tar header (ustar, GNU magic) for `name`, with `size` bytes of data to follow. */
function header(
  name: string,
  type: string,
  opts: { size?: number; mode?: number; link?: string } = {},
): Buffer {
  const h = Buffer.alloc(512);
  const put = (s: string, at: number, len: number): void => void Buffer.from(s).copy(h, at, 0, len);
  const oct = (n: number, at: number, len: number): void =>
    put(`${n.toString(8).padStart(len - 1, '0')}\0`, at, len);
  put(name, 0, 100);
  oct(opts.mode ?? 0o644, 100, 8);
  oct(0, 108, 8);
  oct(0, 116, 8);
  oct(opts.size ?? 0, 124, 12);
  oct(1700000000, 136, 12);
  h.write(type, 156);
  put(opts.link ?? '', 157, 100);
  h.write('ustar  \0', 257, 'latin1');
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  put(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8);
  return h;
}

function entry(name: string, type: string, data = '', opts: { mode?: number; link?: string } = {}): Buffer {
  const d = Buffer.from(data);
  const pad = Buffer.alloc((512 - (d.length % 512)) % 512);
  return Buffer.concat([header(name, type, { ...opts, size: d.length }), d, pad]);
}

/** A GNU long name (type L) before the entry it names. */
function longNamed(name: string, type: string, data: string): Buffer {
  const n = Buffer.from(`${name}\0`);
  return Buffer.concat([
    header('././@LongLink', 'L', { size: n.length }),
    n,
    Buffer.alloc((512 - (n.length % 512)) % 512),
    entry(name.slice(0, 99), type, data),
  ]);
}

async function* chunks(b: Buffer, size = 700): AsyncGenerator<Buffer> {
  for (let i = 0; i < b.length; i += size) yield b.subarray(i, i + size);
}

describe('extractTar: a hostile tar stream never writes outside its directory', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => ({ dir, cleanup } = await makeTmpDir()));
  afterAll(async () => cleanup());

  it('extracts files, directories and symlinks; refuses .., absolute names, writes through symlinks and devices', async () => {
    const outside = join(dir, 'outside');
    await mkdir(outside);
    const dest = join(dir, 'dest');
    await mkdir(dest, { mode: 0o700 });
    const long = `${'d'.repeat(120)}/${'f'.repeat(130)}`;
    const tar = Buffer.concat([
      entry('./', '5', '', { mode: 0o755 }),
      entry('./etc/', '5', '', { mode: 0o750 }),
      entry('./etc/hostname', '0', 'host\n', { mode: 0o4755 }),
      entry('../escape', '0', 'x'),
      entry('./a/../../escape2', '0', 'x'),
      entry('/abs', '0', 'abs'), // absolute: kept inside, as tar does
      entry('./link', '2', '', { link: outside }),
      entry('./link/through', '0', 'x'), // its parent is a symlink: skipped
      entry('./etc/hostname', '0', 'again'), // the name exists: skipped, data skipped
      entry('./hard', '1', '', { link: './etc/hostname' }),
      entry('./hardout', '1', '', { link: '../../etc/passwd' }),
      entry('./dev', '3'),
      entry('./new\nline', '0', 'nl'),
      longNamed(long, '0', 'long'),
      entry('./after', '0', 'still in sync'),
      Buffer.alloc(1024),
    ]);
    const res = await extractTar(chunks(tar), dest);
    expect(await readFile(join(dest, 'etc', 'hostname'), 'utf8')).toBe('host\n');
    expect((await lstat(join(dest, 'etc', 'hostname'))).mode & 0o7777).toBe(0o755);
    expect((await lstat(join(dest, 'etc'))).mode & 0o777).toBe(0o750);
    expect(await readFile(join(dest, 'abs'), 'utf8')).toBe('abs');
    expect(await readlink(join(dest, 'link'))).toBe(outside);
    expect(await readdir(outside)).toEqual([]);
    expect(existsSync(join(dir, 'escape'))).toBe(false);
    expect(existsSync(join(dir, 'escape2'))).toBe(false);
    expect((await lstat(join(dest, 'hard'))).nlink).toBe(2);
    expect(existsSync(join(dest, 'hardout'))).toBe(false);
    expect(existsSync(join(dest, 'dev'))).toBe(false);
    expect(await readFile(join(dest, 'new\nline'), 'utf8')).toBe('nl');
    expect(await readFile(join(dest, long), 'utf8')).toBe('long');
    expect(await readFile(join(dest, 'after'), 'utf8')).toBe('still in sync');
    expect(res).toMatchObject({ files: 5, dirs: 1, symlinks: 1, hardlinks: 1 });
    expect(res.skipped).toEqual([
      '../escape: not a plain relative name',
      './a/../../escape2: not a plain relative name',
      './link/through: its parent is not a directory',
      './etc/hostname: the name is there already',
      './hardout: a hard link to a file not extracted',
      './dev: a character device (not extracted)',
    ]);
  });

  it('reads what GNU tar writes, and fails on a damaged stream', async () => {
    const src = join(dir, 'src');
    await mkdir(join(src, 'sub'), { recursive: true });
    await writeFile(join(src, 'sub', 'x.txt'), 'gnu tar\n');
    await symlink('sub/x.txt', join(src, 'rel'));
    const tar = execFileSync('tar', ['-C', src, '-cf', '-', '.']);
    const dest = join(dir, 'fromgnu');
    await mkdir(dest);
    await extractTar(chunks(tar, 4096), dest);
    expect(await readFile(join(dest, 'sub', 'x.txt'), 'utf8')).toBe('gnu tar\n');
    expect(await readlink(join(dest, 'rel'))).toBe('sub/x.txt');
    const bad = Buffer.from(tar);
    bad[0] = bad[0]! ^ 1;
    await mkdir(join(dir, 'bad'));
    await expect(extractTar(chunks(bad), join(dir, 'bad'))).rejects.toThrow(/checksum/);
    await mkdir(join(dir, 'short'));
    await expect(extractTar(chunks(tar.subarray(0, 1024)), join(dir, 'short'))).rejects.toThrow(/ends/);
  });
});

describe('the virtual tree of a disk', () => {
  const list = [
    '/dev/sda1: ext4',
    '/dev/sda2: vfat',
    '/dev/sda10: xfs',
    '/dev/vg0/root: ext4',
    '/dev/md127: ext4',
    'btrfsvol:/dev/sda3/home: btrfs',
    '/dev/evil/..: ext4',
    '',
  ].join('\n');

  it('names devices as Proxmox does: partN, lvm/VG/LV, fs; with several disks the disk first', () => {
    expect(parseFilesystems(list, ['vda']).map((f) => f.name)).toEqual([
      'lvm/vg0/root',
      'md/md127',
      'part1',
      'part2',
      'part10',
    ]);
    expect(filesystemName('/dev/sda', ['vda'])).toBe('fs');
    expect(filesystemName('/dev/sdb', ['vda', 'vdb'])).toBe('vdb/fs');
    expect(filesystemName('/dev/sda2', ['vda', 'vdb'])).toBe('vda/part2');
    expect(filesystemName('/dev/sdc1', ['vda', 'vdb'])).toBeUndefined();
    expect([0, 25, 26, 27].map(driveLetters)).toEqual(['a', 'z', 'aa', 'ab']);
  });

  it('resolves paths: virtual directories, paths inside a filesystem, not found with the choices', () => {
    const fss = parseFilesystems(list, ['vda']);
    const root = resolveGuestPath('/', fss);
    expect(root.kind === 'virtual' && root.children.map((c) => c.name)).toEqual([
      'lvm/vg0/root',
      'md/md127',
      'part1',
      'part2',
      'part10',
    ]);
    const lvm = resolveGuestPath('/lvm', fss);
    expect(lvm.kind === 'virtual' && lvm.children).toEqual([{ name: 'vg0' }]);
    expect(resolveGuestPath('/lvm/vg0/root/etc/../home/', fss)).toMatchObject({
      kind: 'fs',
      fs: { device: '/dev/vg0/root' },
      inner: '/home',
      path: '/lvm/vg0/root/home',
    });
    expect(resolveGuestPath('part1/../../part2', fss)).toMatchObject({ kind: 'fs', inner: '/' });
    expect(() => resolveGuestPath('/part3/x', fss)).toThrow(
      /no such file or directory: \/part3\/x|no such file or directory: \/part3/,
    );
  });

  it('quotes any bytes for guestfish', () => {
    expect(gfQuote('/a b"c\n')).toBe('"/a\\x20b\\x22c\\x0a"');
    expect(gfQuote(Buffer.from([0x2f, 0xff]))).toBe('"/\\xff"');
  });
});
