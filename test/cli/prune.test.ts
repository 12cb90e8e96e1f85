import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalBackend, Repository, releaseLock, takeLock } from '../../src/repo/index.js';
import { expectOneLineError, runCli } from '../helpers/cli.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';

const MiB = 1024 * 1024;
const PHASES = ['mark', 'repack', 'condemn', 'wait', 'remark', 'reindex', 'delete', 'done'] as const;

interface PruneJson {
  condemned: { generation: number; packs: number; repackedPacks: number } | null;
  deleted: Array<{ generation: number; packs: number; bytes: number }>;
  freedBytes: number;
  waiting: { reasons: string[] } | null;
  mark?: { snapshots: number; packBytes: number; liveBytes: number };
}

/** `vmvault prune` through the CLI: results, exit 11, and a prune killed at the start of each phase. */
describe('vmvault prune', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: string;
  const chunks = (seeds: number[]): Buffer => Buffer.concat(seeds.map((s) => seededBytes(MiB, s)));
  const backup = async (vm: string, data: Buffer): Promise<string> => {
    const img = join(dir, `${vm}.raw`);
    await writeFile(img, data);
    const r = await runCli(['backup-image', '-r', repo, '--vm', vm, img, '--json']);
    expect(r.code, r.stderr).toBe(0);
    return (JSON.parse(r.stdout) as { snapshot: string }).snapshot;
  };
  const forget = async (id: string): Promise<void> => {
    const r = await runCli(['forget', '-r', repo, id]);
    expect(r.code, r.stderr).toBe(0);
  };
  const pruneJson = async (...extra: string[]): Promise<PruneJson> => {
    const r = await runCli(['prune', '-r', repo, '--grace', '0', '--json', ...extra]);
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout) as PruneJson;
  };
  const restores = async (id: string, want: Buffer): Promise<void> => {
    const out = join(dir, `restored-${id.slice(0, 8)}.raw`);
    const r = await runCli(['restore', id, '-r', repo, '--disk', 'vda', '-o', out]);
    expect(r.code, r.stderr).toBe(0);
    expect((await readFile(out)).equals(want)).toBe(true);
  };
  /** Round r: a "mix" snapshot of six new chunks, a "keep" snapshot sharing its first; mix is forgotten. */
  const round = async (r: number): Promise<{ id: string; data: Buffer }> => {
    const base = 1000 * r;
    await forget(await backup('mix', chunks([base + 1, base + 2, base + 3, base + 4, base + 5, base + 6])));
    const data = chunks([base + 1, base + 7]);
    return { id: await backup('keep', data), data };
  };

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir());
    repo = join(dir, 'repo');
    const r = await runCli(['init', repo, '--pack-size', '4M']);
    expect(r.code, r.stderr).toBe(0);
  });
  afterAll(async () => cleanup?.());

  it('--dry-run changes nothing; prune frees the forgotten data and repacks; check stays clean', async () => {
    const kept = await round(1);
    const dry = await pruneJson('--dry-run');
    expect(dry.condemned?.packs).toBeGreaterThan(0);
    expect(dry.deleted).toEqual([]);
    expect((await pruneJson('--dry-run')).condemned?.packs).toBe(dry.condemned?.packs);
    const r = await pruneJson();
    expect(r.condemned?.repackedPacks).toBeGreaterThan(0);
    expect(r.deleted.length).toBe(1);
    expect(r.freedBytes).toBeGreaterThan(4 * MiB);
    const again = await pruneJson();
    expect(again.condemned).toBeNull();
    const c = await runCli(['check', '-r', repo, '--read-data']);
    expect(c.code, c.stdout + c.stderr).toBe(0);
    await restores(kept.id, kept.data);
    const text = await runCli(['prune', '-r', repo, '--grace', '0']);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/nothing to prune/);
  });

  it('bad options are usage errors', async () => {
    for (const args of [
      ['--max-unused', '150'],
      ['--grace', 'soon'],
    ]) {
      const r = await runCli(['prune', '-r', repo, ...args]);
      expect(r.code).toBe(2);
      expectOneLineError(r);
    }
    const f = await runCli(['forget', '-r', repo, 'keep@latest', '--grace', '0']);
    expect(f.code).toBe(2);
    expect(expectOneLineError(f)).toMatch(/--prune/);
  });

  it('a second prune while one holds the maintenance lock: exit 11, naming the holder', async () => {
    const holder = await Repository.open(repo, { workers: 0 }, new LocalBackend(repo));
    await holder.startSession('prune');
    const sid = holder.session!.id.toString('hex');
    await takeLock(holder.backend, holder.codec, sid, 'prune', () => holder.listSessions());
    try {
      const r = await runCli(['prune', '-r', repo, '--grace', '0']);
      expect(r.code).toBe(11);
      expect(expectOneLineError(r)).toMatch(new RegExp(`maintenance lock .*pid ${process.pid}`));
      const locks = await runCli(['locks', '-r', repo]);
      expect(locks.stdout).toMatch(/maintenance lock held by session/);
    } finally {
      await releaseLock(holder.backend, holder.codec, sid);
      await holder.close();
    }
    // The lock of a killed prune (its session gone) is taken over.
    expect((await runCli(['prune', '-r', repo, '--grace', '0'])).code).toBe(0);
  });

  it('forget --prune removes and frees in one command (--json nests the prune)', async () => {
    await round(2);
    const r = await runCli([
      'forget',
      '-r',
      repo,
      '--vm',
      'keep',
      '--keep-last',
      '1',
      '--prune',
      '--grace',
      '0',
      '--json',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout) as { removed: string[]; prune: PruneJson };
    expect(j.removed.length).toBe(1);
    expect(j.prune.freedBytes).toBeGreaterThan(0);
  });

  it('killed at the start of each phase, then run again: nothing kept is lost, the garbage goes', async () => {
    const kept: Array<{ id: string; data: Buffer }> = [];
    const seen = new Set<string>();
    for (const [i, phase] of PHASES.entries()) {
      kept.push(await round(10 + i));
      const r = await runCli(['prune', '-r', repo, '--grace', '0'], {
        env: { VMVAULT_TEST_PRUNE_STOP_AT: phase },
      });
      if (r.code === -1) seen.add(phase); // killed by the signal where the phase began
      const c = await runCli(['check', '-r', repo]);
      expect(c.code, `after a kill at ${phase}: ${c.stdout}${c.stderr}`).toBe(0);
    }
    // Every phase is reached by some run (a phase a run skips is reached by the next one's resume).
    expect([...seen].sort()).toEqual([...PHASES].sort());
    await pruneJson();
    await pruneJson();
    const c = await runCli(['check', '-r', repo, '--read-data', '--json']);
    expect(c.code, c.stdout + c.stderr).toBe(0);
    for (const k of kept) await restores(k.id, k.data);
    // What is left: the kept snapshots' chunks (2 MiB each, the first of each round shared with
    // nothing else) and pages, within the repack threshold.
    const after = await pruneJson('--dry-run');
    expect(after.condemned).toBeNull();
    expect(after.mark!.packBytes).toBeLessThan(after.mark!.liveBytes * 1.12 + 64 * 1024);
  });
});
