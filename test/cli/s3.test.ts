import { createHash } from 'node:crypto';
import { readFile, writeFile, open } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { errorLine, expectOneLineError, runCli, startCli, startServe } from '../helpers/cli.js';
import { startS3rver, type S3TestServer } from '../helpers/s3-servers.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { execFileSync } from 'node:child_process';

const MiB = 1024 * 1024;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

interface S3Json {
  s3?: {
    requests: Record<'PUT' | 'GET' | 'HEAD' | 'LIST' | 'DELETE', number>;
    bytesUp: number;
    bytesDown: number;
  };
}

/** Every command on an S3 repository (s3rver on loopback), as a user runs them. */
describe('the CLI on an S3 repository', () => {
  let server: S3TestServer;
  let dir: string;
  let cleanup: () => Promise<void>;
  let env: NodeJS.ProcessEnv;
  let repo: string;
  let img: string;

  beforeAll(async () => {
    server = await startS3rver();
    ({ dir, cleanup } = await makeTmpDir());
    env = {
      AWS_ACCESS_KEY_ID: server.accessKeyId,
      AWS_SECRET_ACCESS_KEY: server.secretAccessKey,
      AWS_REGION: server.region,
    };
    repo = `s3:${server.endpoint}/vmvault-cli/site-a`;
    img = join(dir, 'disk.raw');
    const fh = await open(img, 'w');
    await fh.truncate(48 * MiB);
    await fh.write(seededBytes(20 * MiB, 1), 0, 20 * MiB, 0);
    await fh.write(seededBytes(3 * MiB, 2), 0, 3 * MiB, 30 * MiB);
    await fh.close();
  });
  afterAll(async () => {
    await server?.stop();
    await cleanup?.();
  });

  it('init creates the bucket; backup-image, restore byte-identical, check --read-data, with request counts', async () => {
    const init = await runCli(['init', repo, '--json'], { env });
    expect(init.code, init.stderr).toBe(0);
    expect(JSON.parse(init.stdout).location).toBe(repo);

    const b = await runCli(['backup-image', '-r', repo, '--vm', 'web', img, '--json'], { env });
    expect(b.code, b.stderr).toBe(0);
    const bj = JSON.parse(b.stdout) as S3Json;
    expect(bj.s3!.requests.PUT).toBeGreaterThan(0);
    expect(bj.s3!.bytesUp).toBeGreaterThan(23 * MiB);

    const out = join(dir, 'out.raw');
    const r = await runCli(['restore', '-r', repo, 'web@latest', '--disk', 'vda', '-o', out, '--json'], {
      env,
    });
    expect(r.code, r.stderr).toBe(0);
    expect(sha(await readFile(out))).toBe(sha(await readFile(img)));
    const rj = JSON.parse(r.stdout) as S3Json;
    // The restore writes only its session (a lease pinning the snapshot: docs/gc.md).
    expect(rj.s3!.requests.PUT).toBeLessThanOrEqual(2);
    expect(rj.s3!.requests.DELETE).toBe(1);
    expect(rj.s3!.bytesUp).toBeLessThan(4096);
    // Records of a pack come in coalesced ranged GETs: 8 here (config, index, pages and the data),
    // where one GET per chunk would be 23 for the data alone.
    expect(rj.s3!.requests.GET, JSON.stringify(rj.s3)).toBeLessThanOrEqual(12);

    const c = await runCli(['check', '-r', repo, '--read-data', '--json'], { env });
    expect(c.code, c.stdout + c.stderr).toBe(0);
    const s = await runCli(['snapshots', '-r', repo], { env });
    expect(s.stdout).toMatch(/web/);
    // A listing stays a JSON array; its request counts come as the summary line on stderr.
    const sj = await runCli(['snapshots', '-r', repo, '--json'], { env });
    expect(sj.code, sj.stderr).toBe(0);
    expect(Array.isArray(JSON.parse(sj.stdout))).toBe(true);
    const summary = JSON.parse(sj.stderr.trim().split('\n').at(-1)!) as { message_type: string } & S3Json;
    expect(summary.message_type).toBe('summary');
    expect(summary.s3!.requests.LIST).toBeGreaterThan(0);
    expect(summary.s3!.requests.GET).toBeGreaterThan(0);
  });

  it('an incremental image backup uploads only what changed, in few requests', async () => {
    const fh = await open(img, 'r+');
    await fh.write(seededBytes(MiB, 9), 0, MiB, 10 * MiB);
    await fh.close();
    const b = await runCli(['backup-image', '-r', repo, '--vm', 'web', img, '--json'], { env });
    expect(b.code, b.stderr).toBe(0);
    const j = JSON.parse(b.stdout) as S3Json;
    expect(j.s3!.bytesUp).toBeLessThan(3 * MiB);
    // New packs (data + meta) + index objects + the manifest + a constant: no request per chunk.
    expect(j.s3!.requests.PUT).toBeLessThan(20);
    expect(j.s3!.requests.HEAD).toBeLessThan(20);
  });

  it('serve exports a snapshot that nbdcopy reads back byte-identical', async () => {
    const served = await startServe(['-r', repo, 'web@latest', '--scratchdir', dir], env);
    try {
      const out = join(dir, 'served.raw');
      execFileSync('nbdcopy', [served.uris[0]!, out]);
      expect(sha(await readFile(out))).toBe(sha(await readFile(img)));
    } finally {
      await served.stop();
    }
  });

  it('a missing bucket, an unreachable endpoint and no credentials: one-line errors', async () => {
    const missing = await runCli(['snapshots', '-r', `s3:${server.endpoint}/no-such-bucket`], { env });
    expect(missing.code).toBe(10);
    expect(expectOneLineError(missing)).toMatch(/bucket 'no-such-bucket' does not exist/);

    const down = await runCli(['snapshots', '-r', 's3:http://127.0.0.1:9/bkt'], { env });
    expect(down.code).not.toBe(0);
    expect(expectOneLineError(down)).toMatch(/cannot reach http:\/\/127\.0\.0\.1:9/);

    const nocred = await runCli(['snapshots', '-r', repo], {
      env: {
        AWS_ACCESS_KEY_ID: '',
        AWS_SECRET_ACCESS_KEY: '',
        AWS_PROFILE: 'vmvault-test-none',
        AWS_CONFIG_FILE: '/dev/null',
        AWS_SHARED_CREDENTIALS_FILE: '/dev/null',
        AWS_EC2_METADATA_DISABLED: 'true',
      },
    });
    expect(nocred.code).not.toBe(0);
    expect(expectOneLineError(nocred)).toMatch(/credentials|AWS_ACCESS_KEY_ID/);

    const bad = await runCli(['snapshots', '-r', 's3:ftp://x/b'], { env });
    expect(bad.code).toBe(2);
    expectOneLineError(bad);
  });

  it('SIGKILL in the middle of an S3 backup leaves a consistent repository and the next backup works', async () => {
    const big = join(dir, 'big.raw');
    await writeFile(big, seededBytes(24 * MiB, 5));
    // 2 MiB/s: the upload takes ~12 s, so the kill lands while packs are being written.
    const child = startCli(['--limit-upload', '2048', 'backup-image', '-r', repo, '--vm', 'big', big], env);
    const closed = new Promise((r) => child.on('close', r));
    await new Promise((r) => setTimeout(r, 4000));
    expect(child.exitCode).toBe(null); // still uploading
    child.kill('SIGKILL');
    await closed;
    const listed = await runCli(['snapshots', '-r', repo], { env });
    expect(listed.stdout).not.toMatch(/ big /); // killed before its manifest
    const c1 = await runCli(['check', '-r', repo, '--read-data'], { env });
    expect(c1.code, c1.stdout + c1.stderr).toBe(0);
    const b = await runCli(['backup-image', '-r', repo, '--vm', 'big', big, '--json'], { env });
    expect(b.code, b.stderr).toBe(0);
    const out = join(dir, 'big-restored.raw');
    const r = await runCli(['restore', '-r', repo, 'big@latest', '--disk', 'vda', '-o', out], { env });
    expect(r.code, r.stderr).toBe(0);
    expect(sha(await readFile(out))).toBe(sha(await readFile(big)));
    const c2 = await runCli(['check', '-r', repo, '--read-data'], { env });
    expect(c2.code, c2.stdout + c2.stderr).toBe(0);
  }, 120_000);

  it('usage errors for the S3 options', async () => {
    const r = await runCli(['--s3-connections', '0', 'snapshots', '-r', repo], { env });
    expect(r.code).toBe(2);
    expect(errorLine(r)).toMatch(/--s3-connections/);
  });
});
