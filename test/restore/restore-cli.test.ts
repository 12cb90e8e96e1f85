import { spawn } from 'node:child_process';
import { open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exec } from '../../src/util/index.js';
import { BIN, errorLine, expectOneLineError, runCli, startCli } from '../helpers/cli.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { isRoot, requireTools } from '../helpers/tools.js';
import { corruptRecord, deletePackOf, recordFile } from '../helpers/repo-files.js';

const MiB = 1024 * 1024;
const TiB = 1024 ** 4;
const run = requireTools(['qemu-img', 'qemu-io', '/usr/bin/time']);

describe.runIf(run)('restore through the CLI: damage and very large sparse disks', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: string;

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir('vmvault-restore-cli-'));
    repo = join(dir, 'repo');
    expect((await runCli(['init', repo])).code).toBe(0);
  });
  afterAll(async () => cleanup());

  it('a deleted blob stops the restore naming snapshot, disk, offset and chunk; --ignore-errors goes on', async () => {
    const img = join(dir, 'd.raw');
    const fh = await open(img, 'w');
    await fh.truncate(16 * MiB);
    // One chunk of data, so that its pack holds nothing else (deleting it deletes that chunk only).
    await fh.write(seededBytes(MiB, 77), 0, MiB, 9 * MiB);
    await fh.close();
    const b = await runCli(['backup-image', '-r', repo, '--vm', 'del', `${img}:vda`, '--json']);
    const snap = (JSON.parse(b.stdout) as { snapshot: string }).snapshot;
    // Delete the chunk of slot 9 (offset 9 MiB).
    const { blake3 } = await import('@napi-rs/blake-hash');
    const rh = await open(img, 'r');
    const buf = Buffer.alloc(MiB);
    await rh.read(buf, 0, MiB, 9 * MiB);
    await rh.close();
    const id = blake3(buf).toString('hex');
    await deletePackOf(repo, id);
    const out = join(dir, 'out');
    const r = await runCli(['restore', snap, '-r', repo, '-o', out]);
    expect(r.code).toBe(20);
    expect(expectOneLineError(r)).toMatch(
      new RegExp(
        `chunk ${id.slice(0, 12)}… is missing \\(snapshot ${snap.slice(0, 8)}, disk vda, offset ${9 * MiB}\\)`,
      ),
    );
    // The message names the chunk by a short id; --json's exit_error line has the full one.
    const j = await runCli(['restore', snap, '-r', repo, '-o', join(dir, 'out-json'), '--json']);
    expect(j.code).toBe(20);
    const exitError = JSON.parse(j.stderr.trim().split('\n').at(-1)!) as {
      code: string;
      details: Record<string, unknown>;
    };
    expect(exitError.code).toBe('CHUNK_MISSING');
    expect(exitError.details).toMatchObject({ chunkId: id, snapshot: snap, disk: 'vda', offset: 9 * MiB });
    expect(await readdir(out).catch(() => [])).toEqual([]); // the partial image was removed
    const ign = await runCli(['restore', snap, '-r', repo, '-o', join(dir, 'out2'), '--ignore-errors']);
    expect(ign.code).toBe(3);
    expect(ign.stderr).toMatch(
      new RegExp(`damaged: disk vda offset ${9 * MiB} length ${MiB} chunk ${id} \\(missing\\)`),
    );
    expect(
      (await exec('qemu-img', ['check', join(dir, 'out2', 'vda.qcow2')], { allowFailure: true })).code,
    ).toBe(0);
  });

  it('a 1 TiB sparse disk with a few MiB of data: backup and qcow2 restore are quick, small and sparse', async () => {
    const img = join(dir, 'huge.raw');
    const fh = await open(img, 'w');
    await fh.truncate(TiB);
    for (const [i, off] of [0, 700 * 1024 * MiB, TiB - MiB].entries())
      await fh.write(Buffer.alloc(MiB, 0x30 + i), 0, MiB, off);
    await fh.close();
    expect((await runCli(['backup-image', '-r', repo, '--vm', 'huge', `${img}:vda`])).code).toBe(0);
    const out = join(dir, 'huge-out');
    // Peak RSS of the restore process, from /usr/bin/time -f %M (KiB).
    const rss = await new Promise<number>((resolve, reject) => {
      const p = spawn(
        '/usr/bin/time',
        ['-f', '%M', process.execPath, BIN, 'restore', 'huge@latest', '-r', repo, '-o', out],
        { stdio: ['ignore', 'ignore', 'pipe'] },
      );
      let err = '';
      p.stderr.on('data', (d: Buffer) => (err += d.toString()));
      p.on('close', (code) =>
        code === 0 ? resolve(Number(err.trim().split('\n').pop())) : reject(new Error(err)),
      );
    });
    expect(rss * 1024).toBeLessThan(256 * MiB);
    const q = join(out, 'vda.qcow2');
    expect((await stat(q)).blocks * 512).toBeLessThan(32 * MiB);
    expect((await exec('qemu-img', ['check', q], { allowFailure: true })).code).toBe(0);
    const io = await exec('qemu-io', [
      '-f',
      'qcow2',
      '-r',
      '-c',
      `read -P 0x31 ${700 * 1024 * MiB} ${MiB}`,
      '-c',
      `read -P 0 ${TiB / 2} ${MiB}`,
      q,
    ]);
    expect(io.stdout).not.toMatch(/Pattern verification failed/);
  });
});

describe.runIf(run)('restore through the CLI: all or nothing at the output, formats and sizes', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: string;
  let snap: string;
  let imgA: string;
  let imgB: string;
  /** Snapshot disk → index id, and chunk ids of vdb. */
  let indexOf: Record<string, string>;

  /** The pack file holding chunk (or page) `id`. */
  const packPath = async (id: string): Promise<string> => (await recordFile(repo, id)).path;
  const chunkIdAt = async (img: string, offset: number): Promise<string> => {
    const { blake3 } = await import('@napi-rs/blake-hash');
    const fh = await open(img, 'r');
    const buf = Buffer.alloc(MiB);
    await fh.read(buf, 0, MiB, offset);
    await fh.close();
    return blake3(buf).toString('hex');
  };
  const names = async (d: string): Promise<string[]> => (await readdir(d).catch(() => [])).sort();
  const identical = async (img: string, out: string, fmt: string): Promise<void> => {
    const c = await exec('qemu-img', ['compare', '-f', 'raw', '-F', fmt, img, out], { allowFailure: true });
    expect(c.code, c.stdout + c.stderr).toBe(0);
  };

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir('vmvault-restore-atomic-'));
    repo = join(dir, 'repo');
    // 4 MiB packs and 16 MiB of random data per disk: with up to 4 worker threads, each data pack
    // holds chunks of one disk only (a worker's pack closes after 4 chunks).
    expect((await runCli(['init', repo, '--pack-size', '4M'])).code).toBe(0);
    imgA = join(dir, 'a.raw');
    imgB = join(dir, 'b.raw');
    await writeFile(imgA, seededBytes(16 * MiB, 11));
    await writeFile(imgB, seededBytes(16 * MiB, 12));
    const b = await runCli([
      'backup-image',
      '-r',
      repo,
      '--vm',
      'two',
      `${imgA}:vda`,
      `${imgB}:vdb`,
      '--json',
    ]);
    expect(b.code, b.stderr).toBe(0);
    snap = (JSON.parse(b.stdout) as { snapshot: string }).snapshot;
    const show = await runCli(['show', snap, '-r', repo, '--json']);
    const disks = (JSON.parse(show.stdout) as { disks: Array<{ target: string; root: string }> }).disks;
    indexOf = Object.fromEntries(disks.map((d) => [d.target, d.root]));
  });
  afterAll(async () => cleanup());

  it('a restore that fails midway (damaged chunk, damaged index) leaves nothing at the output; the retry succeeds', async () => {
    // A corrupt chunk of the second disk: the first disk is done by then, and is not kept either.
    const id = await chunkIdAt(imgB, 5 * MiB);
    const chunkPack = await packPath(id);
    const good = await readFile(chunkPack);
    await corruptRecord(repo, id); // in the payload
    const out = join(dir, 'all');
    const r = await runCli(['restore', snap, '-r', repo, '-o', out]);
    expect(r.code).toBe(20);
    expect(errorLine(r)).toMatch(new RegExp(`chunk ${id.slice(0, 12)}….*disk vdb, offset ${5 * MiB}`));
    expect(await names(out)).toEqual([]);
    // A damaged index, restoring one disk into a file: no file at -o.
    // (the root page of vda's tree, in the meta pack)
    const idx = await packPath(indexOf.vda!);
    const goodIndex = await readFile(idx);
    await corruptRecord(repo, indexOf.vda!);
    const file = join(dir, 'one.qcow2');
    const r1 = await runCli(['restore', snap, '-r', repo, '--disk', 'vda', '-o', file]);
    expect(r1.code).not.toBe(0);
    errorLine(r1);
    expect((await names(dir)).filter((n) => n.includes('one.qcow2'))).toEqual([]);
    // The causes gone, the same commands succeed.
    await writeFile(chunkPack, good);
    await writeFile(idx, goodIndex);
    const again = await runCli(['restore', snap, '-r', repo, '-o', out]);
    expect(again.code, again.stderr).toBe(0);
    expect(await names(out)).toEqual(['vda.qcow2', 'vdb.qcow2']);
    await identical(imgA, join(out, 'vda.qcow2'), 'qcow2');
    await identical(imgB, join(out, 'vdb.qcow2'), 'qcow2');
    const one = await runCli(['restore', snap, '-r', repo, '--disk', 'vda', '-o', file]);
    expect(one.code, one.stderr).toBe(0);
    await identical(imgA, file, 'qcow2');
  });

  it('SIGKILL during a restore leaves only a named temporary file; the retry removes it and succeeds', async () => {
    // A FIFO in place of a pack of vdb: the restore blocks reading it, after vda is written.
    const id = await chunkIdAt(imgB, 3 * MiB);
    const chunkPack = await packPath(id);
    const good = await readFile(chunkPack);
    await rm(chunkPack);
    await exec('mkfifo', [chunkPack]);
    const out = join(dir, 'killed');
    const p = startCli(['restore', snap, '-r', repo, '-o', out, '--format', 'raw']);
    const exited = new Promise<void>((resolve) => p.on('close', () => resolve()));
    try {
      const deadline = Date.now() + 30_000;
      while (!(await names(out)).some((n) => n.startsWith('.vdb.raw.vmvault-tmp-'))) {
        if (Date.now() > deadline) throw new Error(`no temporary file for vdb in ${out}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    } finally {
      p.kill('SIGKILL');
      await exited;
      await rm(chunkPack, { force: true });
      await writeFile(chunkPack, good);
    }
    const left = await names(out);
    expect(left.filter((n) => !n.includes('.vmvault-tmp-'))).toEqual([]); // nothing at vda.raw or vdb.raw
    expect(left.length).toBeGreaterThan(0);
    const again = await runCli(['restore', snap, '-r', repo, '-o', out, '--format', 'raw']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toMatch(
      /removed .*\.vdb\.raw\.vmvault-tmp-\d+-[0-9a-f]+, left by an interrupted restore/,
    );
    expect(await names(out)).toEqual(['vda.raw', 'vdb.raw']);
    await identical(imgB, join(out, 'vdb.raw'), 'raw');
  });

  it('-o naming an existing file without --disk is a one-line error with the fix', async () => {
    const r = await runCli(['restore', snap, '-r', repo, '-o', imgA]);
    expect(r.code).toBe(2);
    expect(expectOneLineError(r)).toMatch(
      /a\.raw is a file, but without --disk .*add --disk DISK .*vda, vdb/,
    );
    await identical(imgB, imgB, 'raw');
    expect((await readFile(imgA)).equals(seededBytes(16 * MiB, 11))).toBe(true);
  });

  it('an output name with an unknown extension is refused unless --format says what to write', async () => {
    for (const name of ['x.vmdk', 'x.vdi', 'noext']) {
      const out = join(dir, name);
      const r = await runCli(['restore', snap, '-r', repo, '--disk', 'vda', '-o', out]);
      expect(r.code).toBe(2);
      expect(expectOneLineError(r)).toMatch(
        /cannot tell the image format of .* from its name: vmvault writes qcow2 \(\.qcow2\) and raw \(\.raw, \.img\); .*--format/,
      );
      expect(await names(dir)).not.toContain(name);
    }
    const out = join(dir, 'y.vmdk');
    const r = await runCli(['restore', snap, '-r', repo, '--disk', 'vda', '-o', out, '--format', 'raw']);
    expect(r.code, r.stderr).toBe(0);
    await identical(imgA, out, 'raw');
  });

  it('a disk whose size is not a multiple of 512: qcow2 is refused naming raw, raw keeps the exact size', async () => {
    const odd = join(dir, 'odd.raw');
    const size = 3 * 64 * 1024 + 1000;
    await writeFile(odd, seededBytes(size, 13));
    const b = await runCli(['backup-image', '-r', repo, '--vm', 'odd', `${odd}:vda`]);
    expect(b.code, b.stderr).toBe(0);
    for (const args of [
      ['-o', join(dir, 'odd-dir')],
      ['--disk', 'vda', '-o', join(dir, 'odd.qcow2')],
    ]) {
      const r = await runCli(['restore', 'odd@latest', '-r', repo, ...args]);
      expect(r.code).toBe(2);
      expect(expectOneLineError(r)).toMatch(
        new RegExp(
          `disk vda is ${size} bytes, not a multiple of 512: a qcow2 image cannot have that exact size; .*--format raw`,
        ),
      );
    }
    expect(await names(join(dir, 'odd-dir'))).toEqual([]);
    expect(await names(dir)).not.toContain('odd.qcow2');
    const r = await runCli([
      'restore',
      'odd@latest',
      '-r',
      repo,
      '-o',
      join(dir, 'odd-dir'),
      '--format',
      'raw',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const back = await readFile(join(dir, 'odd-dir', 'vda.raw'));
    expect(back.length).toBe(size);
    expect(back.equals(seededBytes(size, 13))).toBe(true);
  });

  const strace = requireTools(['strace']);
  it.runIf(strace)('the image is synced before it gets its name, and the directory after', async () => {
    const out = join(dir, 'synced');
    const trace = join(dir, 'synced.trace');
    const t = await exec('strace', [
      '-f',
      '-qq',
      '-e',
      'trace=openat,fsync,link,linkat,rename,renameat,renameat2',
      '-o',
      trace,
      process.execPath,
      BIN,
      'restore',
      snap,
      '-r',
      repo,
      '--disk',
      'vda',
      '-o',
      `${out}/`,
    ]);
    expect(t.code).toBe(0);
    const lines = (await readFile(trace, 'utf8')).split('\n').map((l) => l.replace(/^\d+\s+/, ''));
    const at = (re: RegExp, from = 0): number => lines.findIndex((l, i) => i >= from && re.test(l));
    const esc = (p: string): string => p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    const tmpOpen = at(
      new RegExp(`openat\\(.*"${esc(out)}/\\.vda\\.qcow2\\.vmvault-tmp-[^"]+", .*O_CREAT.*=\\s*(\\d+)$`),
    );
    expect(tmpOpen).toBeGreaterThanOrEqual(0);
    const tmpFd = /= (\d+)$/.exec(lines[tmpOpen]!)![1]!;
    const named = at(new RegExp(`link\\(.*"${esc(out)}/vda\\.qcow2"\\)\\s*=\\s*0$`));
    expect(named).toBeGreaterThan(tmpOpen);
    const tmpSync = at(new RegExp(`^fsync\\(${tmpFd}\\)\\s*=\\s*0$`), tmpOpen);
    expect(tmpSync).toBeGreaterThan(tmpOpen);
    expect(tmpSync).toBeLessThan(named);
    const dirOpen = at(new RegExp(`openat\\(.*"${esc(out)}", .*O_DIRECTORY.*=\\s*(\\d+)$`), named);
    expect(dirOpen).toBeGreaterThan(named);
    const dirFd = /= (\d+)$/.exec(lines[dirOpen]!)![1]!;
    expect(at(new RegExp(`^fsync\\(${dirFd}\\)\\s*=\\s*0$`), dirOpen)).toBeGreaterThan(dirOpen);
    await identical(imgA, join(out, 'vda.qcow2'), 'qcow2');
  });

  // Loop devices need root (CI runs as root: there a missing losetup fails the run).
  const loop = isRoot && requireTools(['losetup']);
  it.runIf(loop)('an in-place restore to a block device is labelled raw block device', async () => {
    const copy = join(dir, 'loop.raw');
    await writeFile(copy, Buffer.alloc(16 * MiB, 0x5a));
    const dev = (await exec('losetup', ['-f', '--show', copy])).stdout.trim();
    try {
      const r = await runCli(['restore', snap, '-r', repo, '--disk', 'vda', '-o', dev, '--in-place']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toMatch(
        new RegExp(`restored vda of snapshot ${snap.slice(0, 8)} to ${dev} \\(raw block device, in place`),
      );
      const j = await runCli([
        'restore',
        snap,
        '-r',
        repo,
        '--disk',
        'vda',
        '-o',
        dev,
        '--in-place',
        '--json',
      ]);
      const s = JSON.parse(j.stdout) as { disks: Array<{ format: string; blockDevice: boolean }> };
      expect(s.disks[0]).toMatchObject({ format: 'raw', blockDevice: true });
      const q = await runCli([
        'restore',
        snap,
        '-r',
        repo,
        '--disk',
        'vda',
        '-o',
        dev,
        '--in-place',
        '--format',
        'qcow2',
      ]);
      expect(q.code).toBe(2);
      expect(expectOneLineError(q)).toMatch(/is a block device, not qcow2; drop --format/);
    } finally {
      await exec('losetup', ['-d', dev], { allowFailure: true });
    }
    await identical(imgA, copy, 'raw');
  });
});
