import { createHash } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { expectOneLineError, runCli } from '../helpers/cli.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';

const tmp = await makeTmpDir('vmvault-encryption-');
afterAll(() => tmp.cleanup());

const MiB = 1024 * 1024;
const PASSWORD = 'correct horse';
const env = (password = PASSWORD): NodeJS.ProcessEnv => ({
  VMVAULT_TEST_KDF_N: '16384',
  VMVAULT_PASSWORD: password,
  VMVAULT_PASSWORD_FILE: '',
  VMVAULT_PASSWORD_COMMAND: '',
});
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Every file of the repository, by path relative to it. */
async function allFiles(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true, withFileTypes: true }))
    .filter((d) => d.isFile())
    .map((d) => join(d.parentPath, d.name));
}

describe('an encrypted repository', () => {
  const repo = join(tmp.dir, 'repo');
  const img = join(tmp.dir, 'disk.raw');
  const VM = 'payroll-db-secret-vm';
  const MARKER = 'VMVAULT-PLAINTEXT-MARKER-7f3a9c';
  let snap = '';
  let image: Buffer;

  it('backs up and restores; no plaintext marker in any file, no VM name in any object key', async () => {
    expect((await runCli(['init', repo, '--encryption', 'aes-256-gcm'], { env: env() })).code).toBe(0);
    // Compressible data around a marker (zstd would keep it readable if it were not encrypted),
    // random data, and the marker repeated in a chunk of its own.
    const random = seededBytes(2 * MiB, 5);
    random.write(MARKER, MiB + 1000); // in an incompressible chunk: stored raw when not encrypted
    image = Buffer.concat([
      Buffer.from(`${MARKER} `.repeat(40_000)).subarray(0, 2 * MiB),
      random,
      Buffer.alloc(2 * MiB),
    ]);
    await writeFile(img, image);
    const b = await runCli(['backup-image', '-r', repo, '--vm', VM, `${img}:vda`, '--json'], { env: env() });
    expect(b.code, b.stderr).toBe(0);
    snap = (JSON.parse(b.stdout) as { snapshot: string }).snapshot;

    for (const f of await allFiles(repo)) {
      const rel = f.slice(repo.length + 1);
      expect(rel).not.toContain(VM);
      expect(rel).not.toContain('vda');
      const bytes = await readFile(f);
      expect(bytes.includes(MARKER), `${rel} holds the marker in clear`).toBe(false);
      expect(bytes.includes(VM), `${rel} holds the VM name in clear`).toBe(false);
    }

    const out = join(tmp.dir, 'out.raw');
    const r = await runCli(['restore', snap, '-r', repo, '--disk', 'vda', '-o', out], { env: env() });
    expect(r.code, r.stderr).toBe(0);
    expect(sha(await readFile(out))).toBe(sha(image));
  });

  it('(control) the same backup into an unencrypted repository has the marker in clear', async () => {
    const plain = join(tmp.dir, 'plain');
    expect((await runCli(['init', plain], { env: env() })).code).toBe(0);
    const b = await runCli(['backup-image', '-r', plain, '--vm', VM, `${img}:vda`], { env: env() });
    expect(b.code, b.stderr).toBe(0);
    let found = false;
    for (const f of await allFiles(plain)) if ((await readFile(f)).includes(MARKER)) found = true;
    expect(found).toBe(true);
  });

  it('a wrong password is exit 12 naming the repository; nothing is read', async () => {
    const r = await runCli(['snapshots', '-r', repo], { env: env('wrong') });
    expect(r.code).toBe(12);
    expect(expectOneLineError(r)).toMatch(/wrong password for repository .* \(key slots: 1\)/);
  });

  it('a tampered record fails the restore with the integrity error naming snapshot, disk and offset', async () => {
    const out = join(tmp.dir, 'tampered.raw');
    // One bit of the first record of a data pack (records start at byte 48): ids are keyed, so
    // the pack is taken from the listing.
    const packs = (await allFiles(join(repo, 'data'))).sort();
    expect(packs.length).toBeGreaterThan(0);
    const pack = packs[0]!;
    const saved = await readFile(pack);
    const bad = Buffer.from(saved);
    bad[100] = bad[100]! ^ 0x01; // inside the first record (records start at byte 48)
    await writeFile(pack, bad);
    try {
      const r = await runCli(['restore', snap, '-r', repo, '--disk', 'vda', '-o', out], { env: env() });
      expect(r.code).toBe(20);
      expect(expectOneLineError(r)).toMatch(
        new RegExp(
          `chunk [0-9a-f]{12}… is corrupt \\(snapshot ${snap.slice(0, 8)}, disk vda, offset \\d+\\)`,
        ),
      );
    } finally {
      await writeFile(pack, saved);
    }
  });
});
