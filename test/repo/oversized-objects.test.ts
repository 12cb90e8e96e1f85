import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { writeFile } from 'node:fs/promises';

/**
 * An index or manifest object far larger than any blob of its kind (5 GiB, sparse: more than a
 * Buffer can hold) is refused unread by every reader: listing, restore and check. Reading it
 * would fail with an internal error or take the memory of the process.
 */
describe('oversized index and manifest objects', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: string;
  let snap: string;
  let indexId: string;
  const HUGE = 5 * 1024 ** 3;

  async function sparse(path: string): Promise<void> {
    const fh = await open(path, 'w');
    await fh.truncate(HUGE);
    await fh.close();
  }

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir('vmvault-oversized-'));
    repo = join(dir, 'repo');
    const img = join(dir, 'a.raw');
    await writeFile(img, seededBytes(2 * 1024 * 1024, 5));
    expect((await runCli(['init', repo])).code).toBe(0);
    const b = await runCli(['backup-image', '-r', repo, '--vm', 'big', `${img}:vda`, '--json']);
    expect(b.code, b.stderr).toBe(0);
    snap = (JSON.parse(b.stdout) as { snapshot: string }).snapshot;
    const show = await runCli(['show', snap, '-r', repo, '--json']);
    indexId = (JSON.parse(show.stdout) as { disks: Array<{ root: string }> }).disks[0]!.root;
  });
  afterAll(async () => cleanup?.());

  it('a huge manifest is a warning in listings, the rest goes on', async () => {
    const id = 'ab'.repeat(32);
    await sparse(join(repo, 'snapshots', id));
    const r = await runCli(['snapshots', '-r', repo]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(snap.slice(0, 8));
    expect(r.stderr).toMatch(
      /warning: snapshot abababab is damaged: \d+ bytes, more than any manifest can be/,
    );
    const c = await runCli(['check', '-r', repo]);
    expect(c.code).toBe(20);
    expect(c.stderr).not.toMatch(/internal error/);
  });

  it('a huge pack and a huge index object: refused unread, check reports both, no internal error', async () => {
    const { readdir } = await import('node:fs/promises');
    const hh = (await readdir(join(repo, 'data')))[0]!;
    const pack = (await readdir(join(repo, 'data', hh)))[0]!;
    await sparse(join(repo, 'data', hh, pack));
    await sparse(join(repo, 'index', 'ab'.repeat(16)));
    const c = await runCli(['check', '-r', repo, '--json']);
    expect(c.code).toBe(20);
    expect(c.stderr).not.toMatch(/internal error/);
    expect(c.stdout).toMatch(/more than any pack/);
    expect(c.stdout).toMatch(/index\/abab/);
    void indexId;
  });
});
