/**
 * A live VM backed up into an S3 repository (s3rver on loopback): full, guest writes, incremental,
 * each snapshot restored byte for byte from S3, then check --read-data.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LibvirtClient } from '../../src/libvirt/index.js';
import { runCli, startCli, startServe } from '../helpers/cli.js';
import { createTestDomain, guestWrite, type TestDomain } from '../helpers/domains.js';
import { libvirtSkipReason, libvirtUri } from '../helpers/libvirtd.js';
import { startS3rver, type S3TestServer } from '../helpers/s3-servers.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { writeFile } from 'node:fs/promises';

const uri = libvirtUri();
const skip = libvirtSkipReason();
if (skip && process.env.VMVAULT_TEST_STRICT === '1') throw new Error(`live backup tests cannot run: ${skip}`);

const MiB = 1024 * 1024;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe.skipIf(skip !== '')('live VM backup into an S3 repository', () => {
  let client: LibvirtClient;
  let server: S3TestServer;
  let dir: string;
  let cleanup: () => Promise<void>;
  let env: NodeJS.ProcessEnv;
  let repo: string;
  let td: TestDomain;
  const disk = Buffer.alloc(32 * MiB);

  beforeAll(async () => {
    client = await LibvirtClient.connect(uri);
    server = await startS3rver();
    ({ dir, cleanup } = await makeTmpDir('vmvault-s3-live-'));
    env = { AWS_ACCESS_KEY_ID: server.accessKeyId, AWS_SECRET_ACCESS_KEY: server.secretAccessKey };
    repo = `s3:${server.endpoint}/live/vms`;
    const init = await runCli(['init', repo], { env });
    expect(init.code, init.stderr).toBe(0);
    td = await createTestDomain(client, { disks: [{ sizeBytes: 32 * MiB }] });
  });
  afterAll(async () => {
    await td?.cleanup().catch(() => {});
    await client?.close();
    await server?.stop();
    await cleanup?.();
  });

  const write = async (offset: number, length: number, pattern: number): Promise<void> => {
    await guestWrite(client, td, { disk: 'vda', offset, length, pattern });
    disk.fill(pattern, offset, offset + length);
  };
  const backup = async (level: string): Promise<{ snapshot: string; mode: string }> => {
    const r = await runCli(
      ['backup', '-r', repo, '--connect', uri, '--scratchdir', dir, '--json', '-d', td.name, '-l', level],
      { env },
    );
    expect(r.code, r.stderr).toBe(0);
    return (JSON.parse(r.stdout) as Array<{ snapshot: string; mode: string }>)[0]!;
  };
  const restored = async (snapshot: string): Promise<string> => {
    const out = join(dir, `${snapshot.slice(0, 8)}.raw`);
    const r = await runCli(['restore', '-r', repo, snapshot, '--disk', 'vda', '-o', out], { env });
    expect(r.code, r.stderr).toBe(0);
    return sha(await readFile(out));
  };

  it('full → guest writes → inc, both restored byte for byte from S3; check --read-data clean', async () => {
    await write(0, 3 * MiB, 0x31);
    const full = await backup('full');
    expect(full.mode).toBe('full');
    const atFull = sha(disk);
    await write(1 * MiB, 256 * 1024, 0x42);
    await write(20 * MiB, 1 * MiB, 0x53);
    const inc = await backup('inc');
    expect(inc.mode).toBe('inc');
    expect(await restored(full.snapshot)).toBe(atFull);
    expect(await restored(inc.snapshot)).toBe(sha(disk));
    const c = await runCli(['check', '-r', repo, '--read-data'], { env });
    expect(c.code, c.stdout + c.stderr).toBe(0);

    // Forgetting the VM's latest snapshot never makes its next backup wrong: the next inc
    // continues from the remaining full (its checkpoint's bitmap covers every write since).
    const f = await runCli(['forget', '-r', repo, inc.snapshot], { env });
    expect(f.code, f.stdout + f.stderr).toBe(0);
    await write(5 * MiB, 512 * 1024, 0x64);
    const inc2 = await backup('inc');
    expect(inc2.mode).toBe('inc');
    expect(await restored(inc2.snapshot)).toBe(sha(disk));
  });

  it('prune while incrementals run: a parent forgotten mid-inc is kept for it; after a condemnation a new parent is not built on', async () => {
    interface PruneJson {
      condemned: { packs: number } | null;
      deleted: Array<{ uncondemned: number }>;
      waiting: { reasons: string[] } | null;
    }
    const prune = async (): Promise<PruneJson> => {
      const r = await runCli(['prune', '-r', repo, '--grace', '0', '--json'], { env });
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout) as PruneJson;
    };
    const listed = JSON.parse((await runCli(['snapshots', '-r', repo, '--json'], { env })).stdout) as Array<{
      id: string;
    }>;
    const parent = listed[listed.length - 1]!.id; // inc2 of the test above
    // The inc holds after pinning its parent (test-only pause), while the parent is forgotten and
    // a prune condemns the parent's own data.
    await write(8 * MiB, 2 * MiB, 0x5a);
    const child = startCli(
      ['backup', '-r', repo, '--connect', uri, '--scratchdir', dir, '--json', '-d', td.name, '-l', 'inc'],
      { ...env, VMVAULT_TEST_PAUSE: 'after-pin:15000' },
    );
    let out = '';
    let err = '';
    child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    const done = new Promise<number>((res) => child.on('close', (c) => res(c ?? -1)));
    // Wait for its session to pin the parent.
    for (let i = 0; i < 100; i++) {
      const l = JSON.parse((await runCli(['locks', '-r', repo, '--json'], { env })).stdout) as {
        sessions: Array<{ pins?: string[] }>;
      };
      if (l.sessions.some((x) => x.pins?.includes(parent))) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(child.exitCode).toBe(null);
    expect((await runCli(['forget', '-r', repo, parent], { env })).code).toBe(0);
    const p1 = await prune();
    expect(p1.condemned?.packs).toBeGreaterThan(0);
    expect(p1.waiting?.reasons.join(' ')).toMatch(/backup/);
    expect(await done, err).toBe(0);
    const inc3At = Date.now();
    const inc3 = (JSON.parse(out) as Array<{ snapshot: string; mode: string }>)[0]!;
    expect(inc3.mode).toBe('inc');
    const p2 = await prune();
    expect(p2.deleted[0]!.uncondemned).toBeGreaterThan(0);
    expect(await restored(inc3.snapshot)).toBe(sha(disk));

    // A generation kept pending (a serve session is alive at its condemnation) ...
    const junk = join(dir, 'junk.raw');
    await writeFile(junk, seededBytes(2 * MiB, 777));
    const j = await runCli(['backup-image', '-r', repo, '--vm', 'junk', junk, '--json'], { env });
    expect(j.code, j.stderr).toBe(0);
    expect((await runCli(['forget', '-r', repo, 'junk@latest'], { env })).code).toBe(0);
    const served = await startServe(['-r', repo, inc3.snapshot, '--scratchdir', dir], env);
    try {
      // A parent counts as committed before a mark only when it is more than 5 s older than it
      // (clock granularity, repository.ts parentUsable): on a fast machine the steps above take less.
      await new Promise((r) => setTimeout(r, Math.max(0, 6000 - (Date.now() - inc3At))));
      const p3 = await prune();
      expect(p3.condemned?.packs).toBeGreaterThan(0);
      expect(p3.waiting).not.toBeNull();
      // ... an inc on a parent committed before the mark is an inc; the next one, whose parent
      // was committed after the mark, backs up in full (with a note).
      await write(12 * MiB, 64 * 1024, 0x71);
      const inc4 = await backup('inc');
      expect(inc4.mode).toBe('inc');
      await write(13 * MiB, 64 * 1024, 0x72);
      const r = await runCli(
        ['backup', '-r', repo, '--connect', uri, '--scratchdir', dir, '--json', '-d', td.name, '-l', 'inc'],
        { env },
      );
      expect(r.code, r.stderr).toBe(0);
      const full = (JSON.parse(r.stdout) as Array<{ snapshot: string; mode: string; notes: string[] }>)[0]!;
      expect(full.mode).toBe('full');
      expect(full.notes.join(' ')).toMatch(/a prune is pending/);
      expect(await restored(full.snapshot)).toBe(sha(disk));
    } finally {
      await served.stop();
    }
    expect((await prune()).deleted.length).toBeGreaterThan(0);
    const c = await runCli(['check', '-r', repo, '--read-data'], { env });
    expect(c.code, c.stdout + c.stderr).toBe(0);
  });
});
