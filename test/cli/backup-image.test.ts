import { createHash } from 'node:crypto';
import { chmod, open, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectOneLineError, runCli, startCli } from '../helpers/cli.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { isRoot, requireTools } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const run = requireTools(['qemu-img']);

/** Writes pieces at offsets into a sparse file of `size` bytes. */
async function makeImage(path: string, size: number, pieces: Array<[number, Buffer]>): Promise<void> {
  const fh = await open(path, 'w');
  await fh.truncate(size);
  for (const [off, buf] of pieces) await fh.write(buf, 0, buf.length, off);
  await fh.close();
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe.runIf(run)('backup-image and restore through the CLI', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: string;
  let imgA: string;
  let imgB: string;

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir());
    repo = join(dir, 'repo');
    imgA = join(dir, 'a.raw');
    imgB = join(dir, 'b.raw');
    const block = seededBytes(MiB, 7);
    // 64 MiB + a partial last chunk: random data, a hole, explicit zeros, a block repeated 4 times.
    await makeImage(imgA, 64 * MiB + 12345, [
      [0, seededBytes(8 * MiB, 1)],
      [20 * MiB, Buffer.alloc(4 * MiB)], // written zeros
      [30 * MiB, block],
      [31 * MiB, block],
      [40 * MiB, block],
      [41 * MiB, block],
      [50 * MiB + 4096, Buffer.from('misaligned text '.repeat(5000))],
      [64 * MiB, seededBytes(12345, 3)],
    ]);
    // b = a with one chunk changed: must add almost nothing.
    await writeFile(imgB, await readFile(imgA));
    const fh = await open(imgB, 'r+');
    await fh.write(seededBytes(MiB, 99), 0, MiB, 2 * MiB);
    await fh.close();
  });
  afterAll(async () => cleanup());

  it('init creates a repository and refuses a second init', async () => {
    const r = await runCli(['init', repo]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/created repository [0-9a-f]{8}/);
    const again = await runCli(['init', repo]);
    expect(again.code).toBe(1);
    expect(expectOneLineError(again)).toMatch(/already exists/);
  });

  it('backs up, deduplicates a near-identical image, and restores byte for byte (sparse)', async () => {
    const a = await runCli(['backup-image', '-r', repo, '--vm', 'web', `${imgA}:vda`, '--json']);
    expect(a.code, a.stderr).toBe(0);
    const sa = JSON.parse(a.stdout) as {
      snapshot: string;
      disks: Array<{ bytesNew: number; bytesZero: number; bytesDedup: number }>;
    };
    expect(sa.disks[0]!.bytesZero).toBeGreaterThanOrEqual(40 * MiB);
    expect(sa.disks[0]!.bytesDedup).toBe(3 * MiB); // the repeated block
    const storedBefore = await dirSize(join(repo, 'data'));

    const b = await runCli(['backup-image', '--vm', 'web2', imgB, '--json'], { env: { VMVAULT_REPO: repo } });
    expect(b.code, b.stderr).toBe(0);
    const sb = JSON.parse(b.stdout) as { snapshot: string; disks: Array<{ bytesNew: number }> };
    expect(sb.disks[0]!.bytesNew).toBe(MiB);
    const added = (await dirSize(join(repo, 'data'))) - storedBefore;
    expect(added).toBeLessThanOrEqual(MiB + 4096);

    for (const [ref, img] of [
      [sa.snapshot, imgA],
      ['web2@latest', imgB],
    ] as const) {
      const out = join(dir, `restored-${ref.slice(0, 8)}.raw`);
      const r = await runCli(['restore', ref, '-r', repo, '--disk', 'vda', '-o', out]);
      expect(r.code, r.stderr).toBe(0);
      expect(sha(await readFile(out))).toBe(sha(await readFile(img)));
      const st = await stat(out);
      expect(st.size).toBe(64 * MiB + 12345);
      expect(st.blocks * 512).toBeLessThan(20 * MiB); // holes and zero chunks stay sparse
    }
  });

  it('lists, shows and reports statistics', async () => {
    const list = await runCli(['snapshots', '-r', repo, '--json']);
    expect(list.code).toBe(0);
    const snaps = JSON.parse(list.stdout) as Array<{ id: string; vm: { name: string } }>;
    expect(snaps.map((s) => s.vm.name)).toEqual(['web', 'web2']);
    const only = JSON.parse(
      (await runCli(['snapshots', '-r', repo, '--vm', 'web2', '--json'])).stdout,
    ) as unknown[];
    expect(only).toHaveLength(1);
    const table = await runCli(['snapshots', '-r', repo]);
    expect(table.stdout).toMatch(/ID\s+TIME\s+VM/);
    const show = await runCli(['show', snaps[0]!.id.slice(0, 10), '-r', repo]);
    expect(show.code).toBe(0);
    expect(show.stdout).toMatch(/vda\s+64\.0 MiB/);
    const showJson = JSON.parse((await runCli(['show', 'web@latest', '-r', repo, '--json'])).stdout) as {
      id: string;
    };
    expect(showJson.id).toBe(snaps[0]!.id);
    const stats = JSON.parse((await runCli(['stats', '-r', repo, '--json'])).stdout) as {
      dedupRatio: number;
      snapshots: number;
      logicalBytes: number;
      uniqueBytes: number;
    };
    expect(stats.snapshots).toBe(2);
    expect(stats.dedupRatio).toBeGreaterThan(1.8);
    expect(stats.logicalBytes).toBeGreaterThan(stats.uniqueBytes);
  });

  it('a flipped byte in a stored chunk stops the restore with an error naming snapshot, disk, offset and chunk', async () => {
    const r0 = await runCli(['backup-image', '-r', repo, '--vm', 'flip', `${imgA}:vda`, '--json']);
    const id = (JSON.parse(r0.stdout) as { snapshot: string }).snapshot;
    // Damage the first chunk of the disk (slot 0: seeded random data, unique to offset 0).
    const first = await firstChunkFile(repo, imgA);
    const buf = await readFile(first);
    buf[100] = buf[100]! ^ 0xff;
    await chmod(first, 0o644);
    await writeFile(first, buf);
    const out = join(dir, 'flip.raw');
    const r = await runCli(['restore', id, '-r', repo, '--disk', 'vda', '-o', out]);
    expect(r.code).toBe(20);
    const line = expectOneLineError(r);
    expect(line).toMatch(
      new RegExp(`chunk [0-9a-f]{64} is corrupt \\(snapshot ${id.slice(0, 8)}, disk vda, offset 0\\)`),
    );
    const ign = await runCli([
      'restore',
      id,
      '-r',
      repo,
      '--disk',
      'vda',
      '-o',
      join(dir, 'flip2.raw'),
      '--ignore-errors',
    ]);
    expect(ign.code).toBe(3);
    expect(ign.stderr).toMatch(/damaged: disk vda offset 0 length 1048576 chunk [0-9a-f]{64} \(corrupt\)/);
    // Repair: restore the original blob content by backing up the same data again is not possible
    // (the chunk exists); put the good bytes back for the following tests.
    buf[100] = buf[100]! ^ 0xff;
    await writeFile(first, buf);
  });

  it('two backups into the same repository at the same time lose nothing', async () => {
    const [x, y] = await Promise.all([
      runCli(['backup-image', '-r', repo, '--vm', 'par1', imgA, '--json']),
      runCli(['backup-image', '-r', repo, '--vm', 'par2', imgB, '--json']),
    ]);
    expect(x.code, x.stderr).toBe(0);
    expect(y.code, y.stderr).toBe(0);
    for (const [vm, img] of [
      ['par1', imgA],
      ['par2', imgB],
    ] as const) {
      const out = join(dir, `${vm}.raw`);
      expect((await runCli(['restore', `${vm}@latest`, '-r', repo, '--disk', 'vda', '-o', out])).code).toBe(
        0,
      );
      expect(sha(await readFile(out))).toBe(sha(await readFile(img)));
    }
  });

  it('a backup killed with SIGKILL leaves a repository where the next backup and earlier restores work', async () => {
    const big = join(dir, 'big.raw');
    await makeImage(big, 192 * MiB, [[0, seededBytes(192 * MiB, 1234)]]);
    const before = (await readdir(join(repo, 'snapshots'))).length;
    const child = startCli(['backup-image', '-r', repo, '--vm', 'killed', big]);
    // Wait until the backup has stored chunks of its own, then kill it hard.
    const dataDir = join(repo, 'data');
    const startCount = await countFiles(dataDir);
    for (let i = 0; i < 600 && (await countFiles(dataDir)) < startCount + 5; i++)
      await new Promise((r) => setTimeout(r, 20));
    child.kill('SIGKILL');
    await new Promise((r) => child.on('close', r));
    expect((await readdir(join(repo, 'snapshots'))).length).toBe(before);
    const again = await runCli(['backup-image', '-r', repo, '--vm', 'killed', big, '--json']);
    expect(again.code, again.stderr).toBe(0);
    const out = join(dir, 'killed.raw');
    expect((await runCli(['restore', 'killed@latest', '-r', repo, '--disk', 'vda', '-o', out])).code).toBe(0);
    expect(sha(await readFile(out))).toBe(sha(await readFile(big)));
    const older = join(dir, 'older.raw');
    expect((await runCli(['restore', 'web@latest', '-r', repo, '--disk', 'vda', '-o', older])).code).toBe(0);
    expect(sha(await readFile(older))).toBe(sha(await readFile(imgA)));
  });

  describe('bad input gives a one-line error and the right exit code', () => {
    it('missing repository', async () => {
      const r = await runCli(['snapshots', '-r', join(dir, 'nope')]);
      expect(r.code).toBe(10);
      expect(expectOneLineError(r)).toMatch(/no vmvault repository at .*nope; create one with 'vmvault init/);
    });
    it('no repository given', async () => {
      const r = await runCli(['snapshots']);
      expect(r.code).toBe(2);
      expect(expectOneLineError(r)).toMatch(/pass -r REPO or set VMVAULT_REPO/);
    });
    it('wrong snapshot id', async () => {
      const r = await runCli(['restore', 'deadbeef', '-r', repo, '--disk', 'vda', '-o', join(dir, 'x.raw')]);
      expect(r.code).toBe(1);
      expect(expectOneLineError(r)).toMatch(/no snapshot matches 'deadbeef'/);
    });
    it('unknown disk', async () => {
      const r = await runCli([
        'restore',
        'web@latest',
        '-r',
        repo,
        '--disk',
        'vdz',
        '-o',
        join(dir, 'x.raw'),
      ]);
      expect(r.code).toBe(2);
      expect(expectOneLineError(r)).toMatch(/has no disk 'vdz'; its disks are: vda/);
    });
    it('unreadable and missing files', async () => {
      const missing = await runCli(['backup-image', '-r', repo, '--vm', 'x', join(dir, 'missing.raw')]);
      expect(missing.code).toBe(1);
      expect(expectOneLineError(missing)).toMatch(/cannot read image .*missing\.raw: no such file/);
      if (!isRoot) {
        const locked = join(dir, 'locked.raw');
        await writeFile(locked, 'x');
        await chmod(locked, 0o000);
        const r = await runCli(['backup-image', '-r', repo, '--vm', 'x', locked]);
        expect(expectOneLineError(r)).toMatch(/permission denied/);
      }
    });
    it('invalid chunk size and compression', async () => {
      const r = await runCli(['init', join(dir, 'r2'), '--chunk-size', '100K']);
      expect(r.code).toBe(2);
      expect(expectOneLineError(r)).toMatch(
        /invalid chunk size 100 KiB; use a power of two from 64.0 KiB to 16.0 MiB/,
      );
      const c = await runCli(['init', join(dir, 'r3'), '--compression', 'lz4']);
      expect(c.code).toBe(2);
      expect(expectOneLineError(c)).toMatch(/invalid compression 'lz4'/);
    });
    it('an existing output file is not overwritten', async () => {
      const r = await runCli(['restore', 'web@latest', '-r', repo, '--disk', 'vda', '-o', imgA]);
      expect(r.code).toBe(1);
      expect(expectOneLineError(r)).toMatch(/exists/);
      expect((await stat(imgA)).size).toBe(64 * MiB + 12345);
    });
    it('a qcow2 image is read through qemu-nbd: same content as its raw form, holes skipped', async () => {
      const q = join(dir, 'q.qcow2');
      const { execFileSync } = await import('node:child_process');
      execFileSync('qemu-img', ['convert', '-O', 'qcow2', imgA, q]);
      const r = await runCli(['backup-image', '-r', repo, '--vm', 'q', `${q}:vda`, '--json']);
      expect(r.code, r.stderr).toBe(0);
      const s = JSON.parse(r.stdout) as { disks: Array<{ bytesRead: number; bytesNew: number }> };
      // Same data as imgA, all deduplicated but the last chunk: qcow2 rounds the size up to 512 bytes.
      expect(s.disks[0]!.bytesNew).toBe(12800);
      expect(s.disks[0]!.bytesRead).toBeLessThan(20 * MiB);
      const out = join(dir, 'q-restored.raw');
      expect((await runCli(['restore', 'q@latest', '-r', repo, '--disk', 'vda', '-o', out])).code).toBe(0);
      const restored = await readFile(out);
      const original = await readFile(imgA);
      expect(restored.length).toBe(64 * MiB + 12800);
      expect(sha(restored.subarray(0, original.length))).toBe(sha(original));
      expect(restored.subarray(original.length).every((b) => b === 0)).toBe(true);
      const bad = join(dir, 'bad.qcow2');
      // A qcow2 whose L1 table offset is not cluster aligned: qemu-nbd refuses to open it.
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', bad, '16M']);
      const fh = await open(bad, 'r+');
      const off = Buffer.alloc(8);
      off.writeBigUInt64BE(0x30123n);
      await fh.write(off, 0, 8, 40);
      await fh.close();
      const rb = await runCli(['backup-image', '-r', repo, '--vm', 'q', bad]);
      expect(rb.code).toBe(1);
      expectOneLineError(rb);
    });

    it('backups of domains on another host are refused with the fix', async () => {
      const r = await runCli([
        'backup',
        '-r',
        repo,
        '-d',
        'web',
        '-c',
        'qemu+ssh://root@kvm2.example/system',
      ]);
      expect(r.code).toBe(2);
      expect(expectOneLineError(r)).toMatch(
        /another host \(kvm2.example\) are not supported yet; run vmvault on the hypervisor host/,
      );
    });

    it('unknown command and option are usage errors (exit 2)', async () => {
      expect((await runCli(['frobnicate'])).code).toBe(2);
      expect((await runCli(['snapshots', '--bogus'])).code).toBe(2);
      const help = await runCli(['--help']);
      expect(help.code).toBe(0);
      expect(help.stdout).toMatch(/backup-image/);
    });

    it('a reader that closes the pipe early (vmvault snapshots | head) ends it quietly, exit 0', async () => {
      const child = startCli(['snapshots', '-r', repo]);
      child.stdout!.destroy(); // the reader is gone before vmvault writes a byte
      let stderr = '';
      child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
      const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
      expect(stderr).toBe('');
      expect(code).toBe(0);
    });
  });
});

async function dirSize(d: string): Promise<number> {
  let total = 0;
  for (const e of await readdir(d, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) total += (await stat(join(e.parentPath, e.name))).size;
  }
  return total;
}

async function countFiles(d: string): Promise<number> {
  try {
    return (await readdir(d, { recursive: true })).length;
  } catch {
    return 0;
  }
}

async function firstChunkFile(repo: string, img: string): Promise<string> {
  const { blake3 } = await import('@napi-rs/blake-hash');
  const fh = await open(img, 'r');
  const buf = Buffer.alloc(MiB);
  await fh.read(buf, 0, MiB, 0);
  await fh.close();
  const id = blake3(buf).toString('hex');
  return join(repo, 'data', id.slice(0, 2), id);
}
