import { spawn } from 'node:child_process';
import { open, readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exec } from '../../src/util/index.js';
import { BIN, expectOneLineError, runCli } from '../helpers/cli.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

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
    await fh.write(seededBytes(4 * MiB, 77), 0, 4 * MiB, 8 * MiB);
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
    await rm(join(repo, 'data', id.slice(0, 2), id));
    const out = join(dir, 'out');
    const r = await runCli(['restore', snap, '-r', repo, '-o', out]);
    expect(r.code).toBe(20);
    expect(expectOneLineError(r)).toMatch(
      new RegExp(`chunk ${id} is missing \\(snapshot ${snap.slice(0, 8)}, disk vda, offset ${9 * MiB}\\)`),
    );
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
