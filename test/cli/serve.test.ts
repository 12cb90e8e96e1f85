/**
 * `vmvault serve` through the CLI: what it does to the path it is given, listen errors, what it
 * leaves in the scratch directory on every exit (and what a killed run left), memory with clients
 * that never read, and new clients during a flood of idle connections.
 */
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NBD_CMD, NBD_OPT, NbdClient } from '../../src/nbd/index.js';
import { encodeInfoRequest, encodeOption, encodeRequest, encodeU32 } from '../../src/nbd/wire.js';
import { exec } from '../../src/util/index.js';
import { expectOneLineError, runCli, startServe } from '../helpers/cli.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';
import { Wire } from '../nbd/scripted-peer.js';

const MiB = 1024 * 1024;
const run = requireTools(['nbdinfo', 'python3']);
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

function rssMiB(pid: number): Promise<number> {
  return readFile(`/proc/${pid}/status`, 'utf8').then((s) => Number(/VmRSS:\s+(\d+)/.exec(s)![1]) / 1024);
}

describe.runIf(run)('vmvault serve', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: string;
  let scratch: string;
  let original: Buffer;

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir('vmvault-srvcli-'));
    repo = join(dir, 'repo');
    scratch = join(dir, 'scratch');
    await mkdir(scratch);
    original = Buffer.alloc(64 * MiB);
    seededBytes(40 * MiB, 3).copy(original, 0);
    await writeFile(join(dir, 'disk.raw'), original);
    expect((await runCli(['init', repo])).code).toBe(0);
    const b = await runCli(['backup-image', '-r', repo, '--vm', 'srv', `${join(dir, 'disk.raw')}:vda`]);
    expect(b.code, b.stderr).toBe(0);
  }, 60_000);
  afterAll(async () => cleanup?.());

  const base = (): string[] => ['srv@latest', '-r', repo, '--scratchdir', scratch];

  it('--socket on a regular file refuses and leaves the file alone', async () => {
    const file = join(dir, 'precious.img');
    await writeFile(file, 'VM disk bytes');
    const r = await runCli(['serve', ...base(), '--socket', file]);
    expect(r.code).toBe(2);
    expect(expectOneLineError(r)).toMatch(/exists and is not a socket.*; choose another --socket/);
    expect(await readFile(file, 'utf8')).toBe('VM disk bytes');
    expect(await readdir(scratch)).toEqual([]);
  });

  it('--socket of a live server is refused; a stale socket is replaced', async () => {
    const live = join(dir, 'live.sock');
    const other: Server = createServer((s) => s.on('error', () => {}).end('hello'));
    await new Promise<void>((r) => other.listen(live, () => r()));
    try {
      const r = await runCli(['serve', ...base(), '--socket', live]);
      expect(r.code).toBe(1);
      expect(expectOneLineError(r)).toMatch(/another server is listening on .*live\.sock; stop it/);
      const hello = await new Promise<string>((resolve) => {
        const s = connect(live);
        let got = '';
        s.on('data', (d: Buffer) => (got += d.toString()));
        s.on('close', () => resolve(got));
      });
      expect(hello).toBe('hello');
    } finally {
      await new Promise<void>((r) => other.close(() => r()));
    }
    // A socket file nobody listens on (a killed server's): bound, never listened.
    const stale = join(dir, 'stale.sock');
    execFileSync('python3', [
      '-c',
      `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(stale)})`,
    ]);
    const s = await startServe([...base(), '--socket', stale]);
    expect(s.uris).toEqual([`nbd+unix:///vda?socket=${stale}`]);
    expect((await exec('nbdinfo', ['--size', s.uris[0]!])).stdout.trim()).toBe(String(64 * MiB));
    expect(await s.stop()).toBe(0);
  });

  it('listen and socket problems are one-line errors with a fix, never internal errors', async () => {
    const blocker: Server = createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
    const busy = (blocker.address() as { port: number }).port;
    const cases: Array<[string[], RegExp]> = [
      [['--listen', '127.0.0.1:70000'], /port 70000 .* out of range; give a port from 1 to 65535/],
      [['--listen', `127.0.0.1:${busy}`], new RegExp(`port ${busy} on 127.0.0.1 is already in use; `)],
      [['--listen', 'no-such-host.invalid:10809'], /unknown host 'no-such-host.invalid'; give an IP/],
      [['--listen', '::1:10809'], /IPv6 address needs brackets; e.g. \[::1\]:10809/],
      [['--listen', 'localhost'], /invalid --listen 'localhost'; use HOST:PORT/],
      [['--socket', dir], /is a directory; give the path of a new socket file/],
      [['--socket', join(dir, 'missing', 'x.sock')], /directory .*missing does not exist; create it/],
    ];
    try {
      for (const [args, re] of cases) {
        const r = await runCli(['serve', ...base(), ...args]);
        const line = expectOneLineError(r);
        expect(r.code, line).toBeGreaterThan(0);
        expect(line).not.toMatch(/internal error/);
        expect(line).toMatch(re);
      }
    } finally {
      blocker.close();
    }
    expect(await readdir(scratch)).toEqual([]);
  }, 60_000);

  it('--listen [::1]:PORT works and prints a bracketed URI', async () => {
    const probe = createServer();
    const v6 = await new Promise<boolean>((r) => {
      probe.once('error', () => r(false));
      probe.listen(0, '::1', () => probe.close(() => r(true)));
    });
    if (!v6) return; // no IPv6 loopback here
    const s = await startServe([...base(), '--listen', '[::1]:0']);
    expect(s.uris[0]).toMatch(/^nbd:\/\/\[::1\]:\d+\/vda$/);
    expect((await exec('nbdinfo', ['--size', s.uris[0]!])).stdout.trim()).toBe(String(64 * MiB));
    expect(await s.stop()).toBe(0);
  });

  it('leaves nothing in the scratch directory on SIGINT, SIGTERM or an error', async () => {
    for (const sig of ['SIGINT', 'SIGTERM'] as const) {
      const s = await startServe([...base(), '--writable']);
      expect(s.uris[0]).toMatch(new RegExp(`socket=${scratch}/vmvault-serve-\\d+-\\w+/nbd\\.sock$`));
      expect((await readdir(scratch)).length).toBe(1);
      expect(await s.stop(sig)).toBe(0);
      expect(await readdir(scratch)).toEqual([]);
    }
    // An error after the run directory (and the overlay in it) was made.
    await writeFile(join(dir, 'plain'), 'x');
    const r = await runCli(['serve', ...base(), '--writable', '--socket', join(dir, 'plain')]);
    expect(r.code).toBe(2);
    expect(await readdir(scratch)).toEqual([]);
  }, 60_000);

  it("a killed --writable serve's overlay is removed by the next run; live runs and --keep-overlay are kept", async () => {
    const killed = await startServe([...base(), '--writable']);
    await exec('nbdinfo', ['--size', killed.uris[0]!]);
    killed.child.kill('SIGKILL');
    await new Promise((r) => killed.child.once('close', r));
    const left = await readdir(scratch);
    expect(left).toHaveLength(1);
    expect(await readdir(join(scratch, left[0]!))).toContain('vda.overlay');

    const keep = join(dir, 'kept');
    const live = await startServe([
      ...base(),
      '--writable',
      '--keep-overlay',
      keep,
      '--socket',
      join(dir, 'k.sock'),
    ]);
    const next = await startServe([...base(), '--writable']);
    const now = await readdir(scratch);
    expect(now).not.toContain(left[0]); // the dead run's directory is gone
    expect(now).toHaveLength(1); // this run's
    expect(await readdir(keep)).toContain('vda.overlay');
    // A third run while `next` lives keeps its directory.
    const third = await startServe([...base(), '--socket', join(dir, 't.sock')]);
    expect(await readdir(scratch)).toEqual(now);
    for (const s of [third, next, live]) expect(await s.stop()).toBe(0);
    expect(await readdir(scratch)).toEqual([]);
    expect((await readdir(keep)).sort()).toEqual(['vda.overlay', 'vda.overlay.map']);
  }, 60_000);

  it('clients sending 32 MiB READs and never reading keep memory bounded; a reader is still served', async () => {
    const s = await startServe([...base(), '--socket', join(dir, 'mem.sock')]);
    const sock = join(dir, 'mem.sock');
    const pid = s.child.pid!;
    const before = await rssMiB(pid);
    const hostile: Socket[] = [];
    try {
      for (let k = 0; k < 3; k++) {
        const sk = connect(sock);
        await new Promise((r) => sk.once('connect', r));
        sk.on('error', () => {});
        hostile.push(sk);
        const w = new Wire(sk);
        await w.read(18);
        w.write(encodeU32(3), encodeOption(NBD_OPT.NBD_OPT_GO, encodeInfoRequest('vda', [])));
        for (let i = 0; i < 3; i++) await w.read((await w.read(20)).readUInt32BE(16));
        sk.removeAllListeners('data');
        sk.pause();
        for (let i = 0; i < 40; i++)
          sk.write(encodeRequest(0, NBD_CMD.NBD_CMD_READ, BigInt(i), (i % 2) * 32 * MiB, 32 * MiB));
      }
      await new Promise((r) => setTimeout(r, 3000));
      // 3 × 40 × 32 MiB = 3.75 GiB asked for; each connection holds at most its 64 MiB bound.
      const grown = (await rssMiB(pid)) - before;
      expect(grown).toBeLessThan(500);
      const c = await NbdClient.connect({ uri: s.uris[0]! });
      try {
        expect(sha(await c.read(0, 64 * MiB))).toBe(sha(original));
      } finally {
        await c.close();
      }
    } finally {
      for (const h of hostile) h.destroy();
    }
    expect(await s.stop()).toBe(0);
  }, 60_000);

  it('300 idle connections do not lock out a new client; an established one keeps working', async () => {
    const sock = join(dir, 'flood.sock');
    const s = await startServe([...base(), '--socket', sock]);
    const established = await NbdClient.connect({ uri: s.uris[0]! });
    const idle: Socket[] = [];
    try {
      for (let i = 0; i < 300; i++) {
        const sk = connect(sock);
        sk.on('error', () => {});
        idle.push(sk);
        await new Promise((r) => sk.once('connect', r).once('close', r));
      }
      const t0 = Date.now();
      expect((await exec('nbdinfo', ['--size', s.uris[0]!])).stdout.trim()).toBe(String(64 * MiB));
      expect(Date.now() - t0).toBeLessThan(3000);
      expect((await established.read(0, MiB)).equals(original.subarray(0, MiB))).toBe(true);
    } finally {
      for (const sk of idle) sk.destroy();
      await established.close();
    }
    expect(await s.stop()).toBe(0);
  }, 60_000);
});
