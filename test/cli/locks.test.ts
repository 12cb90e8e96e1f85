import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupImages } from '../../src/backup/index.js';
import { Repository, SessionExpiredError } from '../../src/repo/index.js';
import { expectOneLineError, runCli, startCli } from '../helpers/cli.js';
import { startS3rver, type S3TestServer } from '../helpers/s3-servers.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';

const MiB = 1024 * 1024;
interface LocksJson {
  sessions: Array<{
    id: string;
    host: string;
    pid: number;
    command: string;
    stale: boolean;
    staleReason?: string;
    ageMs: number;
  }>;
}

/** Sessions (leases of writing processes, docs/gc.md): locks, unlock --stale, self-fencing. */
describe('sessions', () => {
  let server: S3TestServer;
  let dir: string;
  let cleanup: () => Promise<void>;
  let env: NodeJS.ProcessEnv;
  let repo: string;
  let img: string;
  const locks = async (): Promise<LocksJson> => {
    const r = await runCli(['locks', '-r', repo, '--json'], { env });
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout) as LocksJson;
  };

  beforeAll(async () => {
    server = await startS3rver();
    ({ dir, cleanup } = await makeTmpDir());
    env = { AWS_ACCESS_KEY_ID: server.accessKeyId, AWS_SECRET_ACCESS_KEY: server.secretAccessKey };
    repo = `s3:${server.endpoint}/sessions/r`;
    expect((await runCli(['init', repo], { env })).code).toBe(0);
    img = join(dir, 'big.raw');
    await writeFile(img, seededBytes(16 * MiB, 21));
  });
  afterAll(async () => {
    await server?.stop();
    await cleanup?.();
  });

  it('a running backup holds a session (host, pid, command); it is gone when the backup ends', async () => {
    expect((await locks()).sessions).toEqual([]);
    // 1 MiB/s: the upload takes many seconds.
    const child = startCli(['--limit-upload', '1024', 'backup-image', '-r', repo, '--vm', 'slow', img], env);
    const done = new Promise<number>((r) => child.on('close', (c) => r(c ?? -1)));
    let seen: LocksJson['sessions'] = [];
    for (let i = 0; i < 50 && seen.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 200));
      seen = (await locks()).sessions;
    }
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatchObject({ pid: child.pid, command: 'backup-image', stale: false });
    child.kill('SIGKILL');
    await done;
    // Killed: the session stays, and is stale at once because its process is gone from this host.
    const after = (await locks()).sessions;
    expect(after).toHaveLength(1);
    expect(after[0]!.stale).toBe(true);
    expect(after[0]!.staleReason).toMatch(/is gone from this host/);
    const u = await runCli(['unlock', '-r', repo], { env });
    expect(u.code).toBe(2);
    expectOneLineError(u);
    const us = await runCli(['unlock', '-r', repo, '--stale', '--json'], { env });
    expect(us.code, us.stderr).toBe(0);
    expect((JSON.parse(us.stdout) as { removed: unknown[] }).removed).toHaveLength(1);
    expect((await locks()).sessions).toEqual([]);
    // A backup that completes leaves no session behind.
    const b = await runCli(['backup-image', '-r', repo, '--vm', 'fast', join(dir, 'big.raw')], { env });
    expect(b.code, b.stderr).toBe(0);
    expect((await locks()).sessions).toEqual([]);
  }, 120_000);

  it('a restore holds a session that pins the snapshot it reads', async () => {
    const listed = await runCli(['snapshots', '-r', repo, '--json', '--vm', 'fast'], { env });
    const id = (JSON.parse(listed.stdout) as Array<{ id: string }>)[0]!.id;
    const out = join(dir, 'pinned.raw');
    const child = startCli(
      ['--limit-download', '1024', 'restore', '-r', repo, id, '--disk', 'vda', '-o', out],
      env,
    );
    const done = new Promise<number>((r) => child.on('close', (c) => r(c ?? -1)));
    let seen: Array<{ command: string; pins?: string[] }> = [];
    for (let i = 0; i < 50 && !seen.some((s) => s.pins?.includes(id)); i++) {
      await new Promise((r) => setTimeout(r, 200));
      seen = (await locks()).sessions as Array<{ command: string; pins?: string[] }>;
    }
    child.kill('SIGKILL');
    await done;
    expect(seen).toEqual([expect.objectContaining({ command: 'restore', pins: [id] })]);
    expect((await runCli(['unlock', '-r', repo, '--stale'], { env })).code).toBe(0);
  }, 60_000);

  it('a backup stopped (SIGSTOP) past its lease aborts when resumed, committing nothing', async () => {
    // Heartbeat every 250 ms, fence at 4 s (test-only timing; wide enough for a loaded machine);
    // the upload takes about 8 s at 1 MiB/s (so the stop lands in it), the stop lasts 6.
    const tenv = { ...env, VMVAULT_TEST_SESSION_MS: '250,4000' };
    const fresh = join(dir, 'fresh.raw'); // data the repository does not hold yet: it must be uploaded
    await writeFile(fresh, seededBytes(8 * MiB, 77));
    const child = startCli(
      ['--limit-upload', '1024', 'backup-image', '-r', repo, '--vm', 'stopped', fresh],
      tenv,
    );
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    const done = new Promise<number>((r) => child.on('close', (c) => r(c ?? -1)));
    for (let i = 0; i < 50 && (await locks()).sessions.length === 0; i++)
      await new Promise((r) => setTimeout(r, 100));
    expect(child.exitCode).toBe(null); // still uploading
    child.kill('SIGSTOP');
    await new Promise((r) => setTimeout(r, 6000));
    child.kill('SIGCONT');
    expect(await done).not.toBe(0);
    expect(stderr).toMatch(/session expired .*nothing was committed/);
    const listed = await runCli(['snapshots', '-r', repo, '--vm', 'stopped', '--json'], { env });
    expect(JSON.parse(listed.stdout)).toEqual([]);
    expect((await locks()).sessions).toEqual([]); // it ended its session on the way out
  }, 60_000);

  it('a writer whose lease may have lapsed commits nothing (self-fencing), nor after its session was removed', async () => {
    const t = await makeTmpDir();
    try {
      const small = join(t.dir, 's.raw');
      await writeFile(small, seededBytes(256 * 1024, 3));
      const r = await Repository.init(join(t.dir, 'repo'));
      try {
        await r.startSession('test', { heartbeatMs: 60_000, fenceMs: 50 });
        await new Promise((res) => setTimeout(res, 120));
        const err = await backupImages(r, { vm: 'v', images: [{ path: small, target: 'vda' }] }).catch(
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(SessionExpiredError);
        expect(await r.listSnapshots()).toEqual([]);
      } finally {
        await r.close();
      }
      // Stopped past the fence time, then resumed: the next heartbeat succeeds, but the lease
      // lapsed meanwhile, so the writer still commits nothing.
      const r1 = await Repository.open(join(t.dir, 'repo'));
      try {
        const s1 = await r1.startSession('test', { heartbeatMs: 60_000, fenceMs: 50 });
        await new Promise((res) => setTimeout(res, 120));
        await s1.pin([]); // a heartbeat after the gap
        const err = await backupImages(r1, { vm: 'v', images: [{ path: small, target: 'vda' }] }).catch(
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(SessionExpiredError);
        expect((err as Error).message).toMatch(/heartbeats stopped/);
      } finally {
        await r1.close();
      }
      const r2 = await Repository.open(join(t.dir, 'repo'));
      try {
        const s = await r2.startSession('test');
        expect((await r2.listSessions()).map((x) => x.id)).toEqual([s.id.toString('hex')]);
        await r2.deleteSession(s.id.toString('hex'));
        const err = await backupImages(r2, { vm: 'v', images: [{ path: small, target: 'vda' }] }).catch(
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(SessionExpiredError);
      } finally {
        await r2.close();
      }
    } finally {
      await t.cleanup();
    }
  });
});
