import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cp, open, readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, errorLine, expectOneLineError, runCli, startCli } from '../helpers/cli.js';
import { startS3rver, type S3TestServer } from '../helpers/s3-servers.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';

const MiB = 1024 * 1024;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

interface SyncJson {
  sameIds: boolean;
  verbatim: boolean;
  snapshots: { selected: number; copied: number; present: number; failed: number };
  copied: Array<{ source: string; destination: string; vm: string }>;
  failed: Array<{ source: string; error: string }>;
  chunks: { copied: number; present: number; verbatim: number };
  bytes: { copied: number; stored: number; present: number };
}

async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true }))
    if (e.isFile()) out.push(join(e.parentPath, e.name));
  return out;
}

/**
 * `vmvault sync` (issue 14, docs/sync.md): local → S3 (s3rver) → local round trips, nothing moved
 * twice, only new chunks after an incremental, other keys and plain → encrypted (chunks renamed),
 * same keys (init --from-repo), a damaged source chunk, a kill mid-sync, wrong chunk size and
 * password.
 */
describe('vmvault sync', () => {
  let server: S3TestServer;
  let dir: string;
  let cleanup: () => Promise<void>;
  let s3env: NodeJS.ProcessEnv;
  const A = (): string => join(dir, 'a');
  const img = (n: string): string => join(dir, `${n}.raw`);
  /** Snapshot id → sha256 of the image at its moment. */
  const expected = new Map<string, string>();
  let restores = 0;

  const writeImage = async (
    name: string,
    seed: number,
    extra?: { at: number; seed: number },
  ): Promise<void> => {
    const fh = await open(img(name), extra ? 'r+' : 'w');
    if (!extra) {
      await fh.truncate(16 * MiB);
      await fh.write(seededBytes(10 * MiB, seed), 0, 10 * MiB, 2 * MiB);
    } else await fh.write(seededBytes(MiB, extra.seed), 0, MiB, extra.at);
    await fh.close();
  };
  const backup = async (repo: string, vm: string, env: NodeJS.ProcessEnv = {}): Promise<string> => {
    const r = await runCli(['backup-image', '-r', repo, '--vm', vm, img(vm), '--json'], { env });
    expect(r.code, r.stderr).toBe(0);
    const id = (JSON.parse(r.stdout) as { snapshot: string }).snapshot;
    expected.set(id, sha(await readFile(img(vm))));
    return id;
  };
  const sync = async (from: string, to: string, env: NodeJS.ProcessEnv = {}, extra: string[] = []) => {
    const r = await runCli(['sync', '-r', from, '--to', to, '--json', ...extra], {
      env: { ...s3env, ...env },
    });
    return { r, j: r.code === 0 || r.code === 3 ? (JSON.parse(r.stdout) as SyncJson) : undefined };
  };
  /** Every snapshot of `repo` restores to the image of its moment (by origin). */
  const expectRestores = async (repo: string, env: NodeJS.ProcessEnv = {}): Promise<number> => {
    const l = await runCli(['snapshots', '-r', repo, '--json'], { env: { ...s3env, ...env } });
    expect(l.code, l.stderr).toBe(0);
    const snaps = JSON.parse(l.stdout) as Array<{ id: string; origin?: { snapshot: string } }>;
    for (const s of snaps) {
      const out = join(dir, `r-${++restores}.raw`);
      const r = await runCli(['restore', '-r', repo, s.id, '--disk', 'vda', '-o', out], {
        env: { ...s3env, ...env },
      });
      expect(r.code, r.stderr).toBe(0);
      const want = expected.get(s.origin?.snapshot ?? s.id);
      expect(want, `snapshot ${s.id} has a known origin`).toBeDefined();
      expect(sha(await readFile(out)), `restore of ${s.id}`).toBe(want);
    }
    const c = await runCli(['check', '-r', repo, '--read-data'], { env: { ...s3env, ...env } });
    expect(c.code, c.stdout + c.stderr).toBe(0);
    return snaps.length;
  };

  beforeAll(async () => {
    server = await startS3rver();
    ({ dir, cleanup } = await makeTmpDir());
    s3env = { AWS_ACCESS_KEY_ID: server.accessKeyId, AWS_SECRET_ACCESS_KEY: server.secretAccessKey };
    await writeImage('web', 1);
    await writeImage('db', 2);
    expect((await runCli(['init', A()])).code).toBe(0);
    await backup(A(), 'web');
    await backup(A(), 'db');
  });
  afterAll(async () => {
    await server?.stop();
    await cleanup?.();
  });

  it('local → S3 → local: byte-identical; a second sync moves nothing; an incremental moves only its chunks', async () => {
    const S = `s3:${server.endpoint}/sync/b`;
    const i = await runCli(['init', S, '--from-repo', A()], { env: s3env });
    expect(i.code, i.stderr).toBe(0);
    const first = await sync(A(), S);
    expect(first.r.code, first.r.stderr).toBe(0);
    expect(first.j!.sameIds).toBe(true);
    expect(first.j!.snapshots).toEqual({ selected: 2, copied: 2, present: 0, failed: 0 });
    expect(first.j!.chunks.copied).toBe(20);
    // Same ids, no keys, same level: every record travels as stored (opened, not sealed again).
    expect(first.j!.verbatim).toBe(true);
    expect(first.j!.chunks.verbatim).toBe(20);
    // On a TTY (script(1) gives it one), the progress line names the snapshot and its bytes.
    const D0 = join(dir, 'tty');
    expect((await runCli(['init', D0, '--from-repo', A()])).code).toBe(0);
    const tty = execFileSync('script', ['-qec', `${BIN} sync -r ${A()} --to ${D0}`, '/dev/null'], {
      encoding: 'utf8',
      env: { ...process.env, ...s3env },
    });
    expect(tty).toMatch(/sync snapshot 2\/2 \[#{24}\] 100% /);
    expect(tty).toMatch(/copied 2 snapshots to /);
    // The destination's listing says where each snapshot came from.
    const list = await runCli(['snapshots', '-r', S], { env: s3env });
    expect(list.stdout).toMatch(/\bORIGIN\b/);
    expect(list.stdout).toContain(`${first.j!.copied[0]!.source.slice(0, 8)}@`);
    const shown = await runCli(['show', '-r', S, first.j!.copied[0]!.destination], { env: s3env });
    expect(shown.stdout).toMatch(/^origin {4}snapshot [0-9a-f]{8} of repository [0-9a-f]{8} \(synced\)$/m);

    expect(first.j!.bytes).toMatchObject({ copied: 20 * MiB, present: 0 });

    const again = await sync(A(), S);
    expect(again.j!.snapshots).toMatchObject({ copied: 0, present: 2 });
    expect(again.j!.chunks.copied).toBe(0);

    await writeImage('web', 0, { at: 4 * MiB, seed: 9 });
    await backup(A(), 'web');
    const inc = await sync(A(), S);
    expect(inc.j!.snapshots).toMatchObject({ copied: 1, present: 2 });
    expect(inc.j!.chunks.copied).toBe(1);
    // The incremental's other chunks were there already: skipped, and counted as such.
    expect(inc.j!.bytes.copied).toBe(MiB);
    expect(inc.j!.bytes.present).toBe(inc.j!.chunks.present * MiB);
    expect(inc.j!.bytes.present).toBeGreaterThan(0);

    const C = join(dir, 'c');
    expect((await runCli(['init', C, '--from-repo', S], { env: s3env })).code).toBe(0);
    const back = await sync(S, C);
    expect(back.r.code, back.r.stderr).toBe(0);
    expect(back.j!.snapshots.copied).toBe(3);
    expect(await expectRestores(C)).toBe(3);
    expect(await expectRestores(S)).toBe(3);
    // The origin survives two hops: syncing A into C again finds everything there.
    const none = await sync(A(), C);
    expect(none.j!.snapshots).toMatchObject({ copied: 0, present: 3 });
    // Filters.
    const D = join(dir, 'd');
    expect((await runCli(['init', D, '--from-repo', A()])).code).toBe(0);
    const one = await sync(A(), D, {}, ['--vm', 'web', '--latest', '1']);
    expect(one.j!.snapshots).toMatchObject({ selected: 1, copied: 1 });
    expect(one.j!.copied[0]!.vm).toBe('web');
    const dry = await sync(A(), D, {}, ['--dry-run']);
    expect(dry.j!.snapshots).toMatchObject({ selected: 3, copied: 2, present: 1 });
    const after = await sync(A(), D, {}, ['--dry-run']);
    expect(after.j!.snapshots.copied).toBe(2); // the dry run copied nothing

    // Another compression level: same ids, but the records are compressed again for it.
    const Z = join(dir, 'z');
    expect((await runCli(['init', Z, '--compression', 'none'])).code).toBe(0);
    const re = await sync(A(), Z);
    expect(re.r.code, re.r.stderr).toBe(0);
    expect(re.j!).toMatchObject({ sameIds: true, verbatim: false });
    expect(re.j!.chunks).toMatchObject({ copied: 21, verbatim: 0 });
    expect(re.j!.bytes.stored).toBeGreaterThanOrEqual(re.j!.bytes.copied); // stored raw now
    expect(await expectRestores(Z)).toBe(3);
  }, 240_000);

  it('plain → encrypted, and encrypted → encrypted with the same keys (init --from-repo) or other keys', async () => {
    const E = join(dir, 'e');
    const pw = { VMVAULT_PASSWORD: 'e-secret', VMVAULT_TEST_KDF_N: '16384' };
    expect((await runCli(['init', E, '--encryption', 'aes-256-gcm'], { env: pw })).code).toBe(0);
    const plainToEnc = await sync(A(), E, { VMVAULT_TO_PASSWORD: 'e-secret', VMVAULT_TEST_KDF_N: '16384' });
    expect(plainToEnc.r.code, plainToEnc.r.stderr).toBe(0);
    expect(plainToEnc.j!.sameIds).toBe(false);
    expect(plainToEnc.j!.chunks.verbatim).toBe(0);
    expect(await expectRestores(E, pw)).toBe(3);

    const F = join(dir, 'f');
    const fi = await runCli(['init', F, '--from-repo', E], {
      env: { VMVAULT_PASSWORD: 'f-secret', VMVAULT_FROM_PASSWORD: 'e-secret', VMVAULT_TEST_KDF_N: '16384' },
    });
    expect(fi.code, fi.stderr).toBe(0);
    const same = await sync(E, F, { ...pw, VMVAULT_TO_PASSWORD: 'f-secret' });
    expect(same.r.code, same.r.stderr).toBe(0);
    expect(same.j!.sameIds).toBe(true);
    expect(same.j!.snapshots.copied).toBe(3);
    expect(same.j!.verbatim).toBe(true);
    expect(same.j!.chunks.verbatim).toBe(same.j!.chunks.copied);
    expect(same.j!.chunks.copied).toBeGreaterThan(0);
    expect(await expectRestores(F, { VMVAULT_PASSWORD: 'f-secret' })).toBe(3);

    const G = join(dir, 'g');
    expect(
      (await runCli(['init', G, '--encryption', 'aes-256-gcm'], { env: { ...pw, VMVAULT_PASSWORD: 'g' } }))
        .code,
    ).toBe(0);
    const other = await sync(E, G, { ...pw, VMVAULT_TO_PASSWORD: 'g' });
    expect(other.j!.sameIds).toBe(false);
    expect(other.j!.chunks.verbatim).toBe(0);
    expect(await expectRestores(G, { VMVAULT_PASSWORD: 'g' })).toBe(3);

    const wrong = await runCli(['sync', '-r', E, '--to', G], { env: { ...pw, VMVAULT_TO_PASSWORD: 'nope' } });
    expect(wrong.code).toBe(12);
    expectOneLineError(wrong);
    const missing = await runCli(['sync', '-r', E, '--to', G], { env: pw });
    expect(missing.code).toBe(12);
    expect(errorLine(missing)).toMatch(/destination repository.*VMVAULT_TO_PASSWORD/);
  }, 240_000);

  it('refuses another chunk size in one line saying how to make a compatible destination', async () => {
    const H = join(dir, 'h');
    expect((await runCli(['init', H, '--chunk-size', '256K'])).code).toBe(0);
    const r = await runCli(['sync', '-r', A(), '--to', H]);
    expect(r.code).not.toBe(0);
    expect(expectOneLineError(r)).toMatch(/chunks of 262144 bytes.*init DEST --from-repo/);
  });

  it('a damaged source chunk stops only its snapshot (exit 3, naming it); the others are copied', async () => {
    const A2 = join(dir, 'a2');
    expect((await runCli(['init', A2])).code).toBe(0);
    await backup(A2, 'web');
    const before = new Set((await listFiles(join(A2, 'data'))).map(String));
    const dbId = await backup(A2, 'db');
    const dbPacks = (await listFiles(join(A2, 'data'))).filter((f) => !before.has(f));
    expect(dbPacks.length).toBeGreaterThan(0);
    for (const p of dbPacks) {
      const fh = await open(p, 'r+');
      const at = Math.floor((await stat(p)).size / 2);
      const b = Buffer.alloc(1);
      await fh.read(b, 0, 1, at);
      b[0] = b[0]! ^ 0xff;
      await fh.write(b, 0, 1, at);
      await fh.close();
    }
    const T = join(dir, 't');
    expect((await runCli(['init', T, '--from-repo', A2])).code).toBe(0);
    const s = await sync(A2, T);
    expect(s.r.code, s.r.stderr).toBe(3);
    expect(s.j!.snapshots).toMatchObject({ copied: 1, failed: 1 });
    expect(s.j!.failed[0]!.source).toBe(dbId);
    expect(s.r.stderr).toMatch(
      /snapshot [0-9a-f]{8} of db was not copied: .*chunk [0-9a-f]{8}.*disk vda.*offset/,
    );
    expect(await expectRestores(T)).toBe(1);
  }, 120_000);

  it('killed mid-sync, then run again: the destination is consistent throughout and ends complete', async () => {
    const K = join(dir, 'k');
    expect((await runCli(['init', K, '--from-repo', A()])).code).toBe(0);
    const killed = await sync(A(), K, { VMVAULT_TEST_SYNC_KILL_AFTER_CHUNKS: '7' });
    expect(killed.r.code).toBe(-1);
    const c = await runCli(['check', '-r', K, '--read-data']);
    expect(c.code, c.stdout + c.stderr).toBe(0);
    const rest = await sync(A(), K);
    expect(rest.r.code, rest.r.stderr).toBe(0);
    expect(rest.j!.snapshots.copied).toBe(3);
    expect(await expectRestores(K)).toBe(3);
    // A copy of the destination taken now (same repository id, another place) syncs nothing more.
    await cp(K, join(dir, 'k2'), { recursive: true });
    const more = await sync(A(), join(dir, 'k2'));
    expect(more.j!.snapshots.copied).toBe(0);
  }, 120_000);

  it('killed at its commits (index durable, manifest not written), then run again: consistent, then complete', async () => {
    const K = join(dir, 'kc');
    expect((await runCli(['init', K, '--from-repo', A()])).code).toBe(0);
    // Held before each manifest; SIGKILLed at the second hold: one snapshot committed, the next
    // one's chunks stored and indexed but its manifest never written.
    const child = startCli(['sync', '-r', A(), '--to', K], { VMVAULT_TEST_PAUSE: 'before-commit:2000' });
    let stderr = '';
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    await new Promise<void>((resolve, reject) => {
      child.stderr!.on('data', (d: Buffer) => {
        stderr += d.toString();
        if (stderr.split('test pause at before-commit').length - 1 >= 2) resolve();
      });
      child.on('close', () => reject(new Error(`sync ended before its second commit: ${stderr}`)));
    });
    child.kill('SIGKILL');
    expect(await exited).toBe(null);
    // The first hold ended and its manifest was written; the second never was.
    const mid = await runCli(['snapshots', '-r', K, '--json']);
    expect((JSON.parse(mid.stdout) as unknown[]).length).toBe(1);
    const c = await runCli(['check', '-r', K, '--read-data']);
    expect(c.code, c.stdout + c.stderr).toBe(0);
    const n = (JSON.parse((await runCli(['snapshots', '-r', A(), '--json'])).stdout) as unknown[]).length;
    const rest = await sync(A(), K);
    expect(rest.r.code, rest.r.stderr).toBe(0);
    expect(rest.j!.snapshots).toMatchObject({ copied: n - 1, present: 1 });
    // The killed snapshot's chunks were indexed: the re-run finds them and copies none of them.
    expect(rest.j!.chunks.present).toBeGreaterThan(0);
    expect(await expectRestores(K)).toBe(n);
  }, 120_000);

  it('a backup into the source and a prune of the destination while a sync runs: nothing it stored is lost', async () => {
    const A3 = join(dir, 'a3');
    const D3 = join(dir, 'd3');
    expect((await runCli(['init', A3])).code).toBe(0);
    await backup(A3, 'web');
    expect((await runCli(['init', D3, '--from-repo', A3])).code).toBe(0);
    // The sync stops after its chunks are stored and indexed, before its manifest is written.
    const child = startCli(['sync', '-r', A3, '--to', D3, '--json'], {
      VMVAULT_TEST_PAUSE: 'before-commit:8000',
    });
    let stderr = '';
    let stdout = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    const exited = new Promise<number>((resolve) => child.on('close', (code) => resolve(code ?? -1)));
    await new Promise<void>((resolve, reject) => {
      child.stderr!.on('data', (d: Buffer) => {
        stderr += d.toString();
        if (stderr.includes('test pause at before-commit')) resolve();
      });
      child.on('close', () => reject(new Error(`sync ended before its pause: ${stderr}`)));
    });
    const [b, p] = await Promise.all([
      backup(A3, 'db'),
      runCli(['prune', '-r', D3, '--grace', '0', '--json']),
    ]);
    expect(b).toMatch(/^[0-9a-f]{64}$/);
    expect(p.code, p.stderr).toBe(0);
    const pj = JSON.parse(p.stdout) as {
      condemned: { packs: number } | null;
      waiting: { sessions: string[] } | null;
    };
    // The sync's packs look unused to the prune: condemned, but not deleted while the sync lives.
    expect(pj.condemned?.packs ?? 0).toBeGreaterThan(0);
    expect(pj.waiting?.sessions.length ?? 0).toBeGreaterThan(0);
    expect(await exited, stderr).toBe(0);
    expect((JSON.parse(stdout) as SyncJson).snapshots.copied).toBe(1);
    // The next prune finishes the generation and keeps what the new snapshot needs.
    const p2 = await runCli(['prune', '-r', D3, '--grace', '0', '--json']);
    expect(p2.code, p2.stderr).toBe(0);
    expect(await expectRestores(D3)).toBe(1);
    const more = await sync(A3, D3);
    expect(more.j!.snapshots).toMatchObject({ copied: 1, present: 1 });
    expect(await expectRestores(D3)).toBe(2);
  }, 120_000);
});
