import { open, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { CHECK_RECORD_KEY, Repository, readCheckRecord, type CheckRecordRead } from '../../src/repo/index.js';

const PASSWORD = 'check record password';
const encEnv: NodeJS.ProcessEnv = {
  VMVAULT_TEST_KDF_N: '16384',
  VMVAULT_PASSWORD: PASSWORD,
  VMVAULT_PASSWORD_FILE: '',
  VMVAULT_PASSWORD_COMMAND: '',
};

async function recordOf(repo: string, password?: string): Promise<CheckRecordRead> {
  const r = await Repository.open(repo, {
    workers: 0,
    ...(password === undefined ? {} : { password: async () => password }),
  });
  try {
    return await readCheckRecord(r.backend, r.codec);
  } finally {
    await r.close();
  }
}

/** Every file below `dir`, largest first. */
async function filesBySize(dir: string): Promise<string[]> {
  const out: Array<{ p: string; n: number }> = [];
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true }))
    if (e.isFile()) {
      const p = join(e.parentPath, e.name);
      out.push({ p, n: (await stat(p)).size });
    }
  return out.sort((a, b) => b.n - a.n).map((x) => x.p);
}

describe('check records its result in the repository (status/check)', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let img: string;
  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir());
    img = join(dir, 'disk.raw');
    await writeFile(img, Buffer.concat([seededBytes(3 * 1024 * 1024, 5), Buffer.alloc(1024 * 1024)]));
  });
  afterAll(async () => cleanup());

  for (const encrypted of [false, true]) {
    it(`${encrypted ? 'encrypted' : 'plain'}: a clean check, then a check that finds damage, read back`, async () => {
      const repo = join(dir, encrypted ? 'enc' : 'plain');
      const env = encrypted ? encEnv : {};
      const pw = encrypted ? PASSWORD : undefined;
      expect(
        (await runCli(['init', repo, ...(encrypted ? [] : ['--encryption', 'none'])], { env })).code,
      ).toBe(0);
      const b = await runCli(['backup-image', '-r', repo, '--vm', 'vm1', '-q', img], { env });
      expect(b.code, b.stderr).toBe(0);
      expect(await recordOf(repo, pw)).toBeUndefined();

      const before = Date.now();
      const c = await runCli(['check', '-r', repo, '--read-data'], { env });
      expect(c.code, c.stderr).toBe(0);
      expect(c.stderr).not.toMatch(/cannot record/);
      const read = await recordOf(repo, pw);
      expect(read && 'record' in read, JSON.stringify(read)).toBe(true);
      const rec = (read as { record: import('../../src/repo/index.js').CheckRecord }).record;
      expect(rec).toMatchObject({ version: 1, ok: true, readData: true, repair: false, snapshots: 1 });
      expect(rec.problems).toBe(0);
      expect(rec.lines).toEqual([]);
      expect(rec.chunksRead).toBeGreaterThan(0);
      expect(Date.parse(rec.finishedAt)).toBeGreaterThanOrEqual(before - 1000);
      expect(Date.parse(rec.startedAt)).toBeLessThanOrEqual(Date.parse(rec.finishedAt));

      const raw = await readFile(join(repo, ...CHECK_RECORD_KEY.split('/')));
      // Sealed like any object: encrypted, no JSON field name shows.
      if (encrypted) expect(raw.includes('finishedAt')).toBe(false);

      // Damage the largest data pack: the next check fails and says so in its record.
      const pack = (await filesBySize(join(repo, 'data')))[0]!;
      const fh = await open(pack, 'r+');
      const at = Math.floor((await fh.stat()).size / 2);
      const one = Buffer.alloc(1);
      await fh.read(one, 0, 1, at);
      one[0] = one[0]! ^ 0x5a;
      await fh.write(one, 0, 1, at);
      await fh.close();
      const bad = await runCli(['check', '-r', repo, '--read-data'], { env });
      expect(bad.code).not.toBe(0);
      const after = await recordOf(repo, pw);
      const badRec = (after as { record: import('../../src/repo/index.js').CheckRecord }).record;
      expect(badRec.ok).toBe(false);
      expect(badRec.problems).toBeGreaterThan(0);
      expect(badRec.chunksCorrupt + badRec.chunksMissing).toBeGreaterThan(0);
      expect(badRec.lines.length).toBeGreaterThan(0);

      // A damaged record is reported as damaged, never trusted.
      const key = join(repo, ...CHECK_RECORD_KEY.split('/'));
      const sealed = await readFile(key);
      sealed[sealed.length - 3] = sealed[sealed.length - 3]! ^ 1;
      await writeFile(key, sealed);
      expect(await recordOf(repo, pw)).toHaveProperty('damaged');
      await writeFile(key, Buffer.alloc(1024 * 1024));
      expect(await recordOf(repo, pw)).toHaveProperty('damaged');
    });
  }
});
