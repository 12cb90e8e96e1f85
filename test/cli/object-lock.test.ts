import { createHash } from 'node:crypto';
import { open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DeleteObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { errorLine, expectOneLineError, runCli } from '../helpers/cli.js';
import { startFaultProxy, type FaultProxy } from '../helpers/s3-fault-proxy.js';
import { ObjectLockEmulator } from '../helpers/s3-object-lock.js';
import { makeBucket, s3Client, startS3rver, type S3TestServer } from '../helpers/s3-servers.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';

const MiB = 1024 * 1024;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** The retention period the tests run with (VMVAULT_TEST_OBJECT_LOCK_SECONDS), s. */
const PERIOD_S = 12;

interface LockJson {
  extendedRound: boolean;
  extended: number;
  purgedVersions: number;
  purgedBytes: number;
  deleteMarkersRemoved: number;
  lockedVersions: number;
  lockedBytes: number;
}

/**
 * Object Lock (issue 13, docs/s3.md "Object Lock") on s3rver, with Object Lock and versioning
 * emulated by the test proxy (s3-object-lock.ts: neither s3rver nor Swift implements them). A
 * period of 12 s stands for the days a real repository keeps.
 */
describe('Object Lock: retention on every write, extended by prune, deletion only once expired', () => {
  let server: S3TestServer;
  let proxy: FaultProxy;
  let lock: ObjectLockEmulator;
  let dir: string;
  let cleanup: () => Promise<void>;
  let env: NodeJS.ProcessEnv;
  const images: Record<string, string> = {};

  beforeAll(async () => {
    server = await startS3rver();
    lock = new ObjectLockEmulator({ maxKeys: 7 });
    proxy = await startFaultProxy(server.endpoint, { paused: true, objectLock: lock });
    ({ dir, cleanup } = await makeTmpDir());
    env = {
      AWS_ACCESS_KEY_ID: server.accessKeyId,
      AWS_SECRET_ACCESS_KEY: server.secretAccessKey,
      VMVAULT_TEST_OBJECT_LOCK_SECONDS: String(PERIOD_S),
    };
    for (const [name, seed] of [
      ['a', 1],
      ['b', 2],
      ['c', 3],
    ] as const) {
      const img = join(dir, `${name}.raw`);
      const fh = await open(img, 'w');
      await fh.truncate(12 * MiB);
      await fh.write(seededBytes(4 * MiB, 50), 0, 4 * MiB, 0); // shared by all three
      await fh.write(seededBytes(4 * MiB, seed), 0, 4 * MiB, 6 * MiB); // each its own
      await fh.close();
      images[name] = img;
    }
  });
  afterAll(async () => {
    await proxy?.stop();
    await server?.stop();
    await cleanup?.();
  });

  it('init refuses a local directory and a bucket without Object Lock, in one line each', async () => {
    const local = await runCli(['init', join(dir, 'local'), '--object-lock-days', '30'], { env });
    expect(local.code).toBe(2);
    expect(expectOneLineError(local)).toMatch(/cannot lock objects: Object Lock is a feature of S3 buckets/);
    await makeBucket(server, 'plain'); // created past the proxy: no Object Lock
    const plain = await runCli(['init', `s3:${proxy.endpoint}/plain/r`, '--object-lock-days', '30'], { env });
    expect(plain.code).not.toBe(0);
    expect(expectOneLineError(plain)).toMatch(
      /the bucket does not have Object Lock enabled.*--object-lock-enabled-for-bucket/,
    );
    const bad = await runCli(['init', `s3:${proxy.endpoint}/plain/r2`, '--object-lock-days', 'x'], { env });
    expect(bad.code).toBe(2);
    const mode = await runCli(['init', `s3:${proxy.endpoint}/plain/r3`, '--object-lock-mode', 'compliance'], {
      env,
    });
    expect(errorLine(mode)).toMatch(/--object-lock-mode needs --object-lock-days/);
  });

  it('backups lock every object but sessions/locks/gc and need no delete permission; prune extends and purges', async () => {
    const repo = `s3:${proxy.endpoint}/locked/r`;
    const init = await runCli(
      ['init', repo, '--object-lock-days', '30', '--object-lock-mode', 'compliance', '--json'],
      {
        env,
      },
    );
    expect(init.code, init.stderr).toBe(0);
    expect((JSON.parse(init.stdout) as { objectLock: unknown }).objectLock).toEqual({
      mode: 'compliance',
      days: 30,
    });

    // A backup host's key: no DeleteObject outside its own session object.
    const denied: string[] = [];
    proxy.configure({
      deny: (req) => {
        const del = req.method === 'DELETE' || (req.method === 'POST' && /[?&]delete/.test(req.url));
        if (!del || /^\/locked\/r\/sessions\//.test(req.url)) return undefined;
        denied.push(`${req.method} ${req.url}`);
        return { status: 403, code: 'AccessDenied', message: 'Access Denied' };
      },
    });
    const ids: Record<string, string> = {};
    for (const name of ['a', 'b']) {
      const b = await runCli(['backup-image', '-r', repo, '--vm', name, images[name]!, '--json'], { env });
      expect(b.code, b.stderr).toBe(0);
      ids[name] = (JSON.parse(b.stdout) as { snapshot: string }).snapshot;
    }
    proxy.configure({ deny: undefined });
    // Only the conditional-write probe's cleanup (tmp/) may have met the refusal.
    expect(denied.filter((d) => !d.includes('/r/tmp/'))).toEqual([]);

    // Every object PUT carries the retention, but the exempt ones.
    expect(lock.stats.lockedPuts).toBeGreaterThan(4);
    expect(lock.stats.plainKeys.filter((k) => !/^r\/(sessions|locks|gc|tmp)\//.test(k))).toEqual([]);
    const all = lock.allKeys('locked');
    const dataKeys = [...all.keys()].filter((k) => k.startsWith('r/data/'));
    expect(dataKeys.length).toBeGreaterThan(0);
    for (const k of [...dataKeys, 'r/config', `r/snapshots/${ids.a}`]) {
      const v = all.get(k)![0]!;
      expect(v.lock?.mode, k).toBe('COMPLIANCE');
      expect(v.lock!.untilMs - v.modifiedMs, k).toBeGreaterThan((PERIOD_S - 2) * 1000);
      expect(v.lock!.untilMs - v.modifiedMs, k).toBeLessThan((PERIOD_S + 2) * 1000);
    }
    const writtenMs = Date.now();

    // Forget a; its data is deleted (delete markers) but stays retained: nothing is purged yet.
    const f = await runCli(['forget', '-r', repo, ids.a!, '--prune', '--grace', '0', '--json'], { env });
    expect(f.code, f.stderr).toBe(0);
    const p1 = (JSON.parse(f.stdout) as { prune: { freedBytes: number; objectLock: LockJson } }).prune;
    expect(p1.freedBytes).toBeGreaterThan(0);
    expect(p1.objectLock.lockedVersions).toBeGreaterThan(0);
    expect(lock.stats.refusedVersionDeletes).toBe(0); // known locked: not even tried
    const goneKeys = [...lock.allKeys('locked')].filter(([k, v]) => k.startsWith('r/data/') && v[0]!.marker);
    expect(goneKeys.length).toBeGreaterThan(0);

    // Past a's retention: its versions are purged, the markers go; b's objects are extended.
    await sleep(Math.max(0, writtenMs + (PERIOD_S + 2) * 1000 - Date.now()));
    const p2 = await runCli(['prune', '-r', repo, '--grace', '0', '--json'], { env });
    expect(p2.code, p2.stderr).toBe(0);
    const l2 = (JSON.parse(p2.stdout) as { objectLock: LockJson }).objectLock;
    expect(l2.purgedBytes, p2.stdout).toBeGreaterThan(0);
    expect(l2.deleteMarkersRemoved).toBeGreaterThan(0);
    // (What p1 itself deleted, like the index objects its compaction replaced, is younger: kept.)
    const stillLocked = [...lock.allKeys('locked')].filter(([, v]) => v.slice(1).some((x) => !x.marker));
    expect(stillLocked.map(([k]) => k).filter((k) => /^r\/(data|meta|snapshots)\//.test(k))).toEqual([]);
    expect(l2.extendedRound).toBe(true);
    expect(l2.extended).toBeGreaterThan(0);
    for (const [k] of goneKeys) expect(lock.versions('locked', k), k).toEqual([]);
    const extendedAt = Date.now();
    for (const k of [...lock.allKeys('locked').keys()].filter((k) =>
      /^r\/(data|index|snapshots)\//.test(k),
    )) {
      const v = lock.versions('locked', k)[0]!;
      if (v.marker) continue;
      expect(v.lock!.untilMs, k).toBeGreaterThan(extendedAt + (PERIOD_S - 3) * 1000);
    }
    // At once again: nothing to extend (the round is recorded); only the last run's own old
    // session, lock and gc versions (small, never retained) are purged.
    const p3 = await runCli(['prune', '-r', repo, '--grace', '0', '--json'], { env });
    expect(p3.code, p3.stderr).toBe(0);
    const l3 = (JSON.parse(p3.stdout) as { objectLock: LockJson }).objectLock;
    expect(l3.extendedRound).toBe(false);
    expect(l3.purgedBytes).toBeLessThan(64 * 1024);
    expect(lock.stats.refusedVersionDeletes).toBe(0);

    // c, then forget b: b's versions were extended, so they are known retained and not tried...
    const c = await runCli(['backup-image', '-r', repo, '--vm', 'c', images.c!, '--json'], { env });
    expect(c.code, c.stderr).toBe(0);
    const idC = (JSON.parse(c.stdout) as { snapshot: string }).snapshot;
    const fb = await runCli(['forget', '-r', repo, ids.b!, '--prune', '--grace', '0', '--json'], { env });
    expect(fb.code, fb.stderr).toBe(0);
    const lb = (JSON.parse(fb.stdout) as { prune: { objectLock: LockJson } }).prune.objectLock;
    expect(lb.lockedVersions).toBeGreaterThan(0);
    expect(lock.stats.refusedVersionDeletes).toBe(0);
    // ...and without the record of that round (lost), the storage refuses them: still nothing lost.
    await sleep(Math.max(0, writtenMs + (PERIOD_S + 1) * 1000 - Date.now()));
    const raw = s3Client(server);
    await raw.send(new DeleteObjectCommand({ Bucket: 'locked', Key: 'r/gc/retention' }));
    raw.destroy();
    const p4 = await runCli(['prune', '-r', repo, '--grace', '0', '--json'], { env });
    expect(p4.code, p4.stderr).toBe(0);
    const l4 = (JSON.parse(p4.stdout) as { objectLock: LockJson }).objectLock;
    expect(lock.stats.refusedVersionDeletes).toBeGreaterThan(0);
    expect(l4.lockedVersions).toBeGreaterThan(0);

    const out = join(dir, 'c-out.raw');
    const r = await runCli(['restore', '-r', repo, idC, '--disk', 'vda', '-o', out], { env });
    expect(r.code, r.stderr).toBe(0);
    expect(sha(await readFile(out))).toBe(sha(await readFile(images.c!)));
    const chk = await runCli(['check', '-r', repo, '--read-data'], { env });
    expect(chk.code, chk.stdout + chk.stderr).toBe(0);
    // The human summary names what waits.
    const h = await runCli(['prune', '-r', repo, '--grace', '0'], { env });
    expect(h.code, h.stderr).toBe(0);
    expect(h.stdout).toMatch(/Object Lock: \d+ deleted versions? \(.*\) still retained/);
  }, 180_000);
});
