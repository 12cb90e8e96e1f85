import { createHash } from 'node:crypto';
import { copyFile, open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exec } from '../../src/util/index.js';
import { runCli } from '../helpers/cli.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const run = requireTools(['qemu-img', 'qemu-io', 'qemu-nbd']);
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe.runIf(run)('restore --in-place writes only the chunks that differ', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: string;
  let original: Buffer;
  let snap: string;

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir('vmvault-inplace-'));
    repo = join(dir, 'repo');
    original = Buffer.alloc(32 * MiB);
    seededBytes(12 * MiB, 5).copy(original, 0);
    seededBytes(2 * MiB, 6).copy(original, 20 * MiB);
    await writeFile(join(dir, 'a.raw'), original);
    expect((await runCli(['init', repo])).code).toBe(0);
    const r = await runCli(['backup-image', '-r', repo, '--vm', 'a', `${join(dir, 'a.raw')}:vda`, '--json']);
    expect(r.code, r.stderr).toBe(0);
    snap = (JSON.parse(r.stdout) as { snapshot: string }).snapshot;
  });
  afterAll(async () => cleanup());

  it('into a raw image', async () => {
    const b = join(dir, 'b.raw');
    await copyFile(join(dir, 'a.raw'), b);
    const fh = await open(b, 'r+');
    await fh.write(Buffer.alloc(4096, 0xee), 0, 4096, 3 * MiB + 100); // chunk 3
    await fh.write(Buffer.alloc(10, 0xee), 0, 10, 25 * MiB); // chunk 25 (was zero)
    await fh.write(Buffer.alloc(MiB, 0), 0, MiB, 7 * MiB); // chunk 7 zeroed
    await fh.close();
    const r = await runCli(['restore', snap, '-r', repo, '--disk', 'vda', '-o', b, '--in-place', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const s = JSON.parse(r.stdout) as {
      disks: Array<{ inPlace: { chunksWritten: number; chunksChecked: number } }>;
    };
    expect(s.disks[0]!.inPlace).toMatchObject({ chunksWritten: 3, chunksChecked: 32 });
    expect(sha(await readFile(b))).toBe(sha(original));
  });

  it('into a qcow2 image (through a writable qemu-nbd export)', async () => {
    const q = join(dir, 'c.qcow2');
    await exec('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', join(dir, 'a.raw'), q]);
    await exec('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x99 1M 64k', '-c', 'write -P 0x98 30M 1M', q]);
    const r = await runCli(['restore', snap, '-r', repo, '--disk', 'vda', '-o', q, '--in-place', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const s = JSON.parse(r.stdout) as { disks: Array<{ inPlace: { chunksWritten: number } }> };
    expect(s.disks[0]!.inPlace.chunksWritten).toBe(2);
    const back = join(dir, 'c.raw');
    await exec('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', q, back]);
    expect(sha(await readFile(back))).toBe(sha(original));
    expect((await exec('qemu-img', ['check', q], { allowFailure: true })).code).toBe(0);
  });

  it('a size mismatch is refused with the fix', async () => {
    const small = join(dir, 'small.raw');
    await writeFile(small, Buffer.alloc(MiB));
    const r = await runCli(['restore', snap, '-r', repo, '--disk', 'vda', '-o', small, '--in-place']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/resize the target first/);
  });
});
