import { chmod, open, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packPart } from '../../src/repo/index.js';
import { runCli } from '../helpers/cli.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';

const MiB = 1024 * 1024;

interface Summary {
  ok: boolean;
  packs: number;
  packBytes: number;
  packsRead: number;
  packBytesRead: number;
  packsSelected: number;
  subset: string | null;
  maxTimeMs: number | null;
  stoppedEarly: boolean;
  rotating: boolean;
  startAfter: string | null;
  lastPack: string | null;
  nextPack: string | null;
}

async function packFiles(repo: string): Promise<Array<{ name: string; path: string }>> {
  const out: Array<{ name: string; path: string }> = [];
  for (const kind of ['data', 'meta'])
    for (const hh of await readdir(join(repo, kind)))
      for (const f of await readdir(join(repo, kind, hh)))
        out.push({ name: f, path: join(repo, kind, hh, f) });
  return out.sort((a, b) => (a.name < b.name ? -1 : 1));
}

describe('vmvault check --read-data-subset / --max-time', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: string;
  let env: NodeJS.ProcessEnv;
  let repoId: string;

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir('vmvault-cli-check-subset-'));
    repo = join(dir, 'repo');
    env = { XDG_STATE_HOME: join(dir, 'state') };
    const img = join(dir, 'disk.img');
    await writeFile(img, seededBytes(40 * MiB, 5));
    const init = await runCli(['init', repo, '--pack-size', '4M', '--compression', 'none']);
    expect(init.code, init.stderr).toBe(0);
    const b = await runCli(['backup-image', '-r', repo, '--vm', 'v', `${img}:vda`]);
    expect(b.code, b.stderr).toBe(0);
    repoId = (JSON.parse(await readFile(join(repo, 'config'), 'utf8')) as { id: string }).id;
  });
  afterAll(async () => {
    await cleanup();
  });

  const check = async (...args: string[]): Promise<{ code: number; s: Summary; stderr: string }> => {
    const r = await runCli(['check', '-r', repo, '--read-data', '--json', ...args], { env });
    return { code: r.code, s: JSON.parse(r.stdout) as Summary, stderr: r.stderr };
  };

  it('usage errors: exit 2, one line', async () => {
    for (const args of [
      ['--read-data-subset', '1/2'],
      ['--max-time', '1h'],
      ['--read-data', '--read-data-subset', '0/2'],
      ['--read-data', '--read-data-subset', '3/2'],
      ['--read-data', '--read-data-subset', '0%'],
      ['--read-data', '--read-data-subset', '150%'],
      ['--read-data', '--read-data-subset', 'half'],
      ['--read-data', '--max-time', '0s'],
      ['--read-data', '--max-time', '10'],
      ['--read-data', '--max-time', '2w'],
    ]) {
      const r = await runCli(['check', '-r', repo, ...args], { env });
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr.trim().split('\n'), args.join(' ')).toHaveLength(1);
      expect(r.stdout).toBe('');
    }
  });

  it('K/N: the parts read every pack once in all; the text summary says how many of how many', async () => {
    const files = await packFiles(repo);
    expect(files.length).toBeGreaterThanOrEqual(8);
    let read = 0;
    let bytes = 0;
    for (let k = 1; k <= 3; k++) {
      const { code, s } = await check('--read-data-subset', `${k}/3`);
      expect(code).toBe(0);
      expect(s.subset).toBe(`${k}/3`);
      expect(s.packsRead).toBe(files.filter((f) => packPart(f.name, 3) === k - 1).length);
      read += s.packsRead;
      bytes += s.packBytesRead;
    }
    const all = await check();
    expect(read).toBe(all.s.packs);
    expect(bytes).toBe(all.s.packBytes);
    const text = await runCli(['check', '-r', repo, '--read-data', '--read-data-subset', '2/3'], { env });
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^packs read {9}\d+ \(.*\) of part 2\/3's \d+ \(.*; \d+ packs in all\)$/m);
  });

  it('a percentage rotates through the state file: 4 runs of 25% read every pack', async () => {
    const files = (await packFiles(repo)).map((f) => f.name);
    const seen = new Set<string>();
    let after: string | null = null;
    for (let i = 0; i < 4; i++) {
      const { code, s } = await check('--read-data-subset', '25%');
      expect(code).toBe(0);
      expect(s.rotating).toBe(true);
      expect(s.startAfter).toBe(after);
      const from = after === null ? 0 : files.findIndex((x) => x > after!);
      for (const x of [...files, ...files].slice(from, from + s.packsRead)) seen.add(x);
      expect(s.lastPack).toBe([...files, ...files][from + s.packsRead - 1]);
      after = s.lastPack;
    }
    expect(seen.size).toBe(files.length);
    const state = JSON.parse(
      await readFile(join(dir, 'state', 'vmvault', `check-${repoId}.json`), 'utf8'),
    ) as { repository: string; cursors: Record<string, { lastPack: string }> };
    expect(state.repository).toBe(repoId);
    expect(state.cursors.all?.lastPack).toBe(after);
  });

  it('--max-time not reached reads everything, from after the cursor; the text says where the next run starts', async () => {
    const before = await check('--max-time', '1h');
    expect(before.code).toBe(0);
    expect(before.s.stoppedEarly).toBe(false);
    expect(before.s.maxTimeMs).toBe(3_600_000);
    expect(before.s.packsRead).toBe(before.s.packs);
    expect(before.s.nextPack).not.toBeNull();
    const text = await runCli(['check', '-r', repo, '--read-data', '--max-time', '1h'], { env });
    expect(text.stdout).toMatch(
      /^rotation {11}every selected pack read; started after pack [0-9a-f]{8}; the next run starts at pack [0-9a-f]{8}$/m,
    );
  });

  it('a damaged pack: only the part that holds it exits 20', async () => {
    const files = (await packFiles(repo)).filter((f) => f.path.includes('/data/'));
    const victim = files[0]!;
    const size = (await stat(victim.path)).size;
    await chmod(victim.path, 0o644);
    const fh = await open(victim.path, 'r+');
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, Math.floor(size / 3));
    b[0] = b[0]! ^ 0x5a;
    await fh.write(b, 0, 1, Math.floor(size / 3));
    await fh.close();
    const holder = packPart(victim.name, 4) + 1;
    for (let k = 1; k <= 4; k++) {
      const { code, s } = await check('--read-data-subset', `${k}/4`);
      expect(code, `part ${k}/4`).toBe(k === holder ? 20 : 0);
      expect(s.ok).toBe(k !== holder);
    }
  });
});
