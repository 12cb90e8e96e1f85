import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectOneLineError, runCli } from '../helpers/cli.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';

interface Listed {
  id: string;
  time: string;
  vm: { name: string };
  tags: string[];
  protected: boolean;
  note?: string;
}
interface ForgetJson {
  dryRun: boolean;
  snapshots: Array<{ id: string; time: string; keep: boolean; reasons: string[] }>;
  removed: string[];
}

/** forget with retention policies, protect/unprotect, tag, note and backup-image --time, through the CLI. */
describe('forget, protect, tag, note', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: string;
  const list = async (...extra: string[]): Promise<Listed[]> => {
    const r = await runCli(['snapshots', '-r', repo, '--json', ...extra]);
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout) as Listed[];
  };

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir());
    repo = join(dir, 'repo');
    expect((await runCli(['init', repo])).code).toBe(0);
    const img = join(dir, 'a.raw');
    // 10 daily snapshots of "web" (2026-11-01 … 11-10, 22:00 UTC), 2 of "db"; each day a new block.
    for (let d = 1; d <= 10; d++) {
      await writeFile(img, Buffer.concat([seededBytes(64 * 1024, 1), seededBytes(64 * 1024, 100 + d)]));
      const time = `2026-11-${String(d).padStart(2, '0')}T22:00:00Z`;
      const r = await runCli(['backup-image', '-r', repo, '--vm', 'web', '--time', time, img]);
      expect(r.code, r.stderr).toBe(0);
    }
    for (const d of [3, 9]) {
      const r = await runCli([
        'backup-image',
        '-r',
        repo,
        '--vm',
        'db',
        '--time',
        `2026-11-0${d}T12:00:00+01:00`,
        img,
      ]);
      expect(r.code, r.stderr).toBe(0);
    }
  });
  afterAll(async () => cleanup?.());

  it('backup-image --time records the given time (in UTC); a bad time is a usage error', async () => {
    const s = await list('--vm', 'db');
    expect(s.map((x) => x.time)).toEqual(['2026-11-03T11:00:00.000Z', '2026-11-09T11:00:00.000Z']);
    const bad = await runCli([
      'backup-image',
      '-r',
      repo,
      '--vm',
      'x',
      '--time',
      'yesterday',
      join(dir, 'a.raw'),
    ]);
    expect(bad.code).toBe(2);
    expect(expectOneLineError(bad)).toMatch(/invalid --time/);
  });

  it('tag, note and protect change a snapshot (a new id of the same origin); snapshots --tag filters', async () => {
    const before = await list('--vm', 'web');
    const third = before[2]!;
    const t = await runCli(['tag', '-r', repo, third.id, '--add', 'before-upgrade,keepme', '--json']);
    expect(t.code, t.stderr).toBe(0);
    const tj = JSON.parse(t.stdout) as { previous: string; snapshot: string; tags: string[] };
    expect(tj.previous).toBe(third.id);
    expect(tj.tags).toEqual(['before-upgrade', 'keepme']);
    const n = await runCli(['note', '-r', repo, tj.snapshot, 'kernel 6.1 before the upgrade']);
    expect(n.code, n.stderr).toBe(0);
    const fifth = before[4]!;
    expect((await runCli(['protect', '-r', repo, fifth.id])).code).toBe(0);
    const after = await list('--vm', 'web');
    expect(after).toHaveLength(10); // edits replace, never add
    expect(after.map((s) => s.time)).toEqual(before.map((s) => s.time));
    const tagged = await list('--tag', 'keepme');
    expect(tagged).toHaveLength(1);
    expect(tagged[0]!.note).toBe('kernel 6.1 before the upgrade');
    expect(after[4]!.protected).toBe(true);
    const badTag = await runCli(['tag', '-r', repo, after[0]!.id, '--add', 'a\u0007b']);
    expect(badTag.code).toBe(2);
    const none = await runCli(['tag', '-r', repo, after[0]!.id]);
    expect(none.code).toBe(2);
  });

  it('forget --dry-run lists every snapshot with keep/remove and the rule; protected and tagged stay', async () => {
    const r = await runCli([
      'forget',
      '-r',
      repo,
      '--vm',
      'web',
      '--keep-daily',
      '3',
      '--keep-tag',
      'keepme',
      '--dry-run',
      '--json',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout) as ForgetJson;
    expect(j.dryRun).toBe(true);
    expect(j.removed).toEqual([]);
    expect(j.snapshots).toHaveLength(10);
    const kept = j.snapshots
      .filter((s) => s.keep)
      .map((s) => s.time.slice(8, 10))
      .sort();
    expect(kept).toEqual(['03', '05', '08', '09', '10']); // daily ×3, the tagged one, the protected one
    const third = j.snapshots.find((s) => s.time.startsWith('2026-11-03'))!;
    expect(third.reasons.join(' ')).toMatch(/keepme/);
    const fifth = j.snapshots.find((s) => s.time.startsWith('2026-11-05'))!;
    expect(fifth.reasons).toContain('protected');
    expect(await list('--vm', 'web')).toHaveLength(10); // a dry run removes nothing
  });

  it('forget removes what the policy does not keep, per VM; the rest still restores', async () => {
    const r = await runCli(['forget', '-r', repo, '--keep-daily', '3', '--keep-tag', 'keepme', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout) as ForgetJson;
    expect(j.removed).toHaveLength(5); // web: 10 - 5 kept; db: both kept (2 days ≤ 3)
    expect((await list('--vm', 'web')).map((s) => s.time.slice(8, 10))).toEqual([
      '03',
      '05',
      '08',
      '09',
      '10',
    ]);
    expect(await list('--vm', 'db')).toHaveLength(2);
    const out = join(dir, 'r.raw');
    const rs = await runCli(['restore', '-r', repo, 'web@latest', '--disk', 'vda', '-o', out]);
    expect(rs.code, rs.stderr).toBe(0);
    const c = await runCli(['check', '-r', repo]);
    expect(c.code, c.stdout + c.stderr).toBe(0);
  });

  it('forget by name; a protected snapshot is kept; unprotect then forget removes it', async () => {
    const web = await list('--vm', 'web');
    const prot = web.find((s) => s.protected)!;
    const r1 = await runCli(['forget', '-r', repo, prot.id, '--json']);
    expect(r1.code, r1.stderr).toBe(0);
    expect((JSON.parse(r1.stdout) as ForgetJson).removed).toEqual([]);
    const u = await runCli(['unprotect', '-r', repo, prot.id, '--json']);
    expect(u.code, u.stderr).toBe(0);
    const newId = (JSON.parse(u.stdout) as { snapshot: string }).snapshot;
    const r2 = await runCli(['forget', '-r', repo, newId]);
    expect(r2.code, r2.stderr).toBe(0);
    expect((await list('--vm', 'web')).map((s) => s.time.slice(8, 10))).toEqual(['03', '08', '09', '10']);
  });

  it('refuses: no policy and no snapshots, both at once, and a policy that would remove every snapshot of a VM', async () => {
    const none = await runCli(['forget', '-r', repo]);
    expect(none.code).toBe(2);
    expect(expectOneLineError(none)).toMatch(/no snapshots and no policy/);
    const both = await runCli(['forget', '-r', repo, 'web@latest', '--keep-last', '1']);
    expect(both.code).toBe(2);
    const all = await runCli(['forget', '-r', repo, '--vm', 'db', '--keep-tag', 'nothing-has-this']);
    expect(all.code).toBe(2);
    expect(expectOneLineError(all)).toMatch(/every snapshot of VM 'db'/);
    const badDur = await runCli(['forget', '-r', repo, '--keep-within', '3 days']);
    expect(badDur.code).toBe(2);
    expectOneLineError(badDur);
  });
});
