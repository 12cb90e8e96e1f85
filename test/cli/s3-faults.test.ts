import { createHash } from 'node:crypto';
import { open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { errorLine, expectOneLineError, runCli } from '../helpers/cli.js';
import { startFaultProxy, type FaultProxy } from '../helpers/s3-fault-proxy.js';
import { startS3rver, startSwift, swiftAvailable, type S3TestServer } from '../helpers/s3-servers.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';

const MiB = 1024 * 1024;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/**
 * The CLI on S3 through a fault-injecting proxy (fixed seed): throttling, 500s, resets, responses
 * lost after the server committed, bodies cut off or with a byte flipped, slow answers. Every
 * command completes correctly, and nothing damaged is ever accepted.
 */
describe('the CLI on S3 through a fault-injecting proxy', () => {
  let server: S3TestServer;
  let proxy: FaultProxy;
  let dir: string;
  let cleanup: () => Promise<void>;
  let env: NodeJS.ProcessEnv;
  let img: string;

  beforeAll(async () => {
    server = await startS3rver();
    proxy = await startFaultProxy(server.endpoint, { seed: 7, paused: true });
    ({ dir, cleanup } = await makeTmpDir());
    env = { AWS_ACCESS_KEY_ID: server.accessKeyId, AWS_SECRET_ACCESS_KEY: server.secretAccessKey };
    img = join(dir, 'disk.raw');
    const fh = await open(img, 'w');
    await fh.truncate(40 * MiB);
    await fh.write(seededBytes(24 * MiB, 11), 0, 24 * MiB, 4 * MiB);
    await fh.close();
  });
  afterAll(async () => {
    await proxy?.stop();
    await server?.stop();
    await cleanup?.();
  });

  it('backup-image, restore and check --read-data complete correctly; every kind of fault was met', async () => {
    const repo = `s3:${proxy.endpoint}/faults/r`;
    expect((await runCli(['init', repo], { env })).code).toBe(0);
    proxy.configure({
      paused: false,
      slowDown: 0.05,
      internalError: 0.05,
      resetBefore: 0.04,
      lostResponse: 0.04,
      truncateBody: 0.04,
      slow: 0.05,
      slowMs: 100,
    });
    const b = await runCli(['backup-image', '-r', repo, '--vm', 'f', img], { env });
    expect(b.code, b.stderr).toBe(0);
    const out = join(dir, 'out.raw');
    const r = await runCli(['restore', '-r', repo, 'f@latest', '--disk', 'vda', '-o', out], { env });
    expect(r.code, r.stderr).toBe(0);
    expect(sha(await readFile(out))).toBe(sha(await readFile(img)));
    const c = await runCli(['check', '-r', repo, '--read-data'], { env });
    expect(c.code, c.stdout + c.stderr).toBe(0);
    const s = proxy.stats;
    for (const k of ['slowDown', 'internalError', 'resetBefore', 'lostResponse', 'truncateBody'] as const)
      expect(s[k], k).toBeGreaterThan(0);
    // And with the faults off, a clean check agrees.
    proxy.configure({ paused: true });
    const c2 = await runCli(['check', '-r', repo, '--read-data'], { env });
    expect(c2.code, c2.stdout + c2.stderr).toBe(0);
  }, 180_000);

  it('bodies with a flipped byte are never accepted: the restore fails as an integrity error (exit 20)', async () => {
    const repo = `s3:${proxy.endpoint}/faults/r`;
    // Only chunk reads (ranged GETs of packs) are damaged: config, keys and indexes arrive intact.
    proxy.configure({
      paused: false,
      corruptBody: 1,
      slowDown: 0,
      internalError: 0,
      resetBefore: 0,
      lostResponse: 0,
      truncateBody: 0,
      slow: 0,
      only: (req) => req.method === 'GET' && req.url.includes('/data/'),
    });
    const before = proxy.stats.corruptBody;
    const out = join(dir, 'out-corrupt.raw');
    const r = await runCli(['restore', '-r', repo, 'f@latest', '--disk', 'vda', '-o', out], { env });
    proxy.configure({ paused: true, corruptBody: 0, only: () => true });
    expect(
      proxy.stats.corruptBody,
      `${r.code} ${r.stderr} ${proxy.stats.log.slice(-5).join(',')}`,
    ).toBeGreaterThan(before);
    expect(r.code, r.stderr).toBe(20);
    expect(errorLine(r)).toMatch(/corrupt|damaged/);
  }, 120_000);

  it('a key without PutObject: backup-image fails in one line naming the request and the permission; reading works', async () => {
    const repo = `s3:${proxy.endpoint}/faults/r`;
    proxy.configure({
      paused: true,
      deny: (req) =>
        req.method === 'PUT' ? { status: 403, code: 'AccessDenied', message: 'Access Denied' } : undefined,
    });
    const b = await runCli(['backup-image', '-r', repo, '--vm', 'denied', img], { env });
    const s = await runCli(['snapshots', '-r', repo], { env });
    proxy.configure({ deny: undefined });
    expect(b.code).not.toBe(0);
    expect(errorLine(b)).toMatch(
      /S3 PUT of .* was denied: 403 AccessDenied for access key id S3RVER; grant that key s3:PutObject/,
    );
    expect(s.code, s.stderr).toBe(0);
    expect(s.stdout).not.toMatch(/denied/);
    const c = await runCli(['check', '-r', repo], { env });
    expect(c.code, c.stdout + c.stderr).toBe(0);
  });

  it("a server that finds this host's clock skewed: one line saying so", async () => {
    const repo = `s3:${proxy.endpoint}/faults/r`;
    proxy.configure({
      deny: () => ({
        status: 403,
        code: 'RequestTimeTooSkewed',
        message: 'The difference between the request time and the current time is too large.',
      }),
    });
    const r = await runCli(['snapshots', '-r', repo], { env });
    proxy.configure({ deny: undefined });
    expect(r.code).not.toBe(0);
    // A HEAD's 403 has no body: vmvault asks once more with a GET, whose body names the skew.
    expect(expectOneLineError(r)).toMatch(
      /this host's clock differs too much from http:\/\/127\.0\.0\.1:\d+'s; set the clock right/,
    );
  });

  it('a server that keeps failing: a one-line error naming the endpoint, the request and the status', async () => {
    const repo = `s3:${proxy.endpoint}/faults/r`;
    proxy.configure({
      paused: false,
      slowDown: 1,
      internalError: 0,
      resetBefore: 0,
      lostResponse: 0,
      truncateBody: 0,
      corruptBody: 0,
      slow: 0,
    });
    const r = await runCli(['snapshots', '-r', repo], { env });
    proxy.configure({ paused: true, slowDown: 0 });
    expect(r.code).not.toBe(0);
    expect(expectOneLineError(r)).toMatch(
      new RegExp(
        `S3 (HEAD|GET|LIST) .*${proxy.endpoint.replace(/[.:/]/g, '\\$&')}.*503 (SlowDown|Service Unavailable)`,
      ),
    );
  }, 120_000);

  it('forget --prune through faults (lost responses, resets, 503s): completes, the kept snapshot restores, the space comes back', async () => {
    const repo = `s3:${proxy.endpoint}/faults/prune`;
    proxy.configure({ paused: true });
    expect((await runCli(['init', repo, '--pack-size', '4M'], { env })).code).toBe(0);
    const a = join(dir, 'pa.raw');
    const b = join(dir, 'pb.raw');
    const { writeFile } = await import('node:fs/promises');
    await writeFile(a, Buffer.concat([seededBytes(MiB, 61), seededBytes(6 * MiB, 62)]));
    await writeFile(b, Buffer.concat([seededBytes(MiB, 61), seededBytes(MiB, 63)]));
    expect((await runCli(['backup-image', '-r', repo, '--vm', 'gone', a], { env })).code).toBe(0);
    expect((await runCli(['backup-image', '-r', repo, '--vm', 'kept', b], { env })).code).toBe(0);
    proxy.configure({
      paused: false,
      slowDown: 0.05,
      internalError: 0.04,
      resetBefore: 0.04,
      lostResponse: 0.06,
      truncateBody: 0.03,
      corruptBody: 0,
      slow: 0,
    });
    const forgotten = await runCli(
      ['forget', '-r', repo, 'gone@latest', '--prune', '--grace', '0', '--json'],
      { env },
    );
    expect(forgotten.code, forgotten.stderr).toBe(0);
    const j = JSON.parse(forgotten.stdout) as {
      prune: { freedBytes: number; deleted: unknown[] };
      s3: { requests: Record<string, number> };
    };
    expect(j.prune.deleted.length, forgotten.stdout).toBe(1);
    expect(j.prune.freedBytes).toBeGreaterThan(5 * MiB);
    expect(proxy.stats.lostResponse).toBeGreaterThan(0);
    expect(j.s3.requests.DELETE).toBeGreaterThan(0);
    proxy.configure({ paused: true });
    const out = join(dir, 'pb-restored.raw');
    const r = await runCli(['restore', '-r', repo, 'kept@latest', '--disk', 'vda', '-o', out], { env });
    expect(r.code, r.stderr).toBe(0);
    expect(sha(await readFile(out))).toBe(sha(await readFile(b)));
    const c = await runCli(['check', '-r', repo, '--read-data'], { env });
    expect(c.code, c.stdout + c.stderr).toBe(0);
  }, 180_000);
});

describe.runIf(swiftAvailable())('the CLI on Swift s3api', () => {
  let server: S3TestServer;
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    server = await startSwift();
    ({ dir, cleanup } = await makeTmpDir());
  }, 120_000);
  afterAll(async () => {
    await server?.stop();
    await cleanup?.();
  });

  it('init, backup-image, restore byte-identical, check; a wrong secret is a one-line error naming the key id', async () => {
    const env = { AWS_ACCESS_KEY_ID: server.accessKeyId, AWS_SECRET_ACCESS_KEY: server.secretAccessKey };
    const repo = `s3:${server.endpoint}/swift-cli/r`;
    const img = join(dir, 'disk.raw');
    const fh = await open(img, 'w');
    await fh.truncate(24 * MiB);
    await fh.write(seededBytes(6 * MiB, 5), 0, 6 * MiB, MiB);
    await fh.close();
    expect((await runCli(['init', repo], { env })).code).toBe(0);
    const b = await runCli(['backup-image', '-r', repo, '--vm', 's', img], { env });
    expect(b.code, b.stderr).toBe(0);
    const out = join(dir, 'out.raw');
    const r = await runCli(['restore', '-r', repo, 's@latest', '--disk', 'vda', '-o', out], { env });
    expect(r.code, r.stderr).toBe(0);
    expect(sha(await readFile(out))).toBe(sha(await readFile(img)));
    expect((await runCli(['check', '-r', repo, '--read-data'], { env })).code).toBe(0);

    const bad = await runCli(['snapshots', '-r', repo], { env: { ...env, AWS_SECRET_ACCESS_KEY: 'wrong' } });
    expect(bad.code).not.toBe(0);
    expect(expectOneLineError(bad)).toContain(server.accessKeyId);
    const missing = await runCli(['snapshots', '-r', `s3:${server.endpoint}/no-such-bucket`], { env });
    expect(missing.code).toBe(10);
    expect(expectOneLineError(missing)).toMatch(/bucket 'no-such-bucket' does not exist/);
  }, 180_000);

  it('sync local → Swift → local (issue 14): byte-identical, a second sync copies nothing', async () => {
    const env = { AWS_ACCESS_KEY_ID: server.accessKeyId, AWS_SECRET_ACCESS_KEY: server.secretAccessKey };
    const local = join(dir, 'src');
    const remote = `s3:${server.endpoint}/swift-sync/r`;
    const back = join(dir, 'back');
    const img = join(dir, 'sync.raw');
    const fh = await open(img, 'w');
    await fh.truncate(12 * MiB);
    await fh.write(seededBytes(5 * MiB, 8), 0, 5 * MiB, 3 * MiB);
    await fh.close();
    expect((await runCli(['init', local])).code).toBe(0);
    expect((await runCli(['backup-image', '-r', local, '--vm', 'w', img])).code).toBe(0);
    expect((await runCli(['init', remote, '--from-repo', local], { env })).code).toBe(0);
    const s1 = await runCli(['sync', '-r', local, '--to', remote, '--json'], { env });
    expect(s1.code, s1.stderr).toBe(0);
    expect((JSON.parse(s1.stdout) as { snapshots: { copied: number } }).snapshots.copied).toBe(1);
    const s2 = await runCli(['sync', '-r', local, '--to', remote, '--json'], { env });
    expect((JSON.parse(s2.stdout) as { chunks: { copied: number } }).chunks.copied).toBe(0);
    expect((await runCli(['init', back, '--from-repo', remote], { env })).code).toBe(0);
    const s3 = await runCli(['sync', '-r', remote, '--to', back], { env });
    expect(s3.code, s3.stderr).toBe(0);
    const out = join(dir, 'sync-out.raw');
    const r = await runCli(['restore', '-r', back, 'w@latest', '--disk', 'vda', '-o', out]);
    expect(r.code, r.stderr).toBe(0);
    expect(sha(await readFile(out))).toBe(sha(await readFile(img)));
    expect((await runCli(['check', '-r', remote, '--read-data'], { env })).code).toBe(0);
  }, 180_000);
});
