/**
 * Remote transports against the private libvirtd: qemu+ssh:// through an sshd on 127.0.0.1 that
 * this test starts (own host key, authorized_keys, random port), and qemu+tcp:// through a local
 * TCP-to-unix relay (libvirtd itself does not listen on TCP in the test environment).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LibvirtClient, LibvirtConnectionError, isNoDomain } from '../../src/libvirt/index.js';
import { exec } from '../../src/util/index.js';
import { createTestDomain } from '../helpers/domains.js';
import { libvirtSkipReason, libvirtUri, socketOf } from '../helpers/libvirtd.js';
import { makeTmpDir } from '../helpers/tmp.js';
import { hasTool } from '../helpers/tools.js';

const uri = libvirtUri();
const sshSkip =
  libvirtSkipReason() ||
  (['sshd', 'ssh', 'ssh-keygen', 'nc'].every(hasTool) ? '' : 'sshd, ssh, ssh-keygen or nc missing');
if (sshSkip) console.warn(`skipping qemu+ssh tests: ${sshSkip}`);

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

async function waitForPort(port: number, child: ChildProcess, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`sshd exited with status ${child.exitCode}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ host: '127.0.0.1', port }, () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`sshd did not listen on port ${port} within ${timeoutMs} ms`);
}

interface Sshd {
  port: number;
  dir: string;
  keyfile: string;
  knownHosts: string;
  stderr: () => string;
  stop(): Promise<void>;
}

async function startSshd(): Promise<Sshd> {
  const tmp = await makeTmpDir('vmvault-sshd-');
  const dir = tmp.dir;
  await exec('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'host_key')]);
  await exec('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'client_key')]);
  await exec('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'other_key')]);
  await writeFile(join(dir, 'authorized_keys'), await readFile(join(dir, 'client_key.pub')), { mode: 0o600 });
  await mkdir('/run/sshd', { recursive: true, mode: 0o755 }); // sshd's privilege-separation directory
  let lastErr: unknown;
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    await writeFile(
      join(dir, 'sshd_config'),
      [
        `Port ${port}`,
        'ListenAddress 127.0.0.1',
        `HostKey ${join(dir, 'host_key')}`,
        `PidFile ${join(dir, 'sshd.pid')}`,
        `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
        'PermitRootLogin prohibit-password',
        'PubkeyAuthentication yes',
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        'UsePAM no',
        'StrictModes no',
        'LogLevel ERROR',
        '',
      ].join('\n'),
    );
    const hostPub = (await readFile(join(dir, 'host_key.pub'), 'utf8'))
      .trim()
      .split(' ')
      .slice(0, 2)
      .join(' ');
    await writeFile(join(dir, 'known_hosts'), `[127.0.0.1]:${port} ${hostPub}\n`);
    const child = spawn('/usr/sbin/sshd', ['-D', '-e', '-f', join(dir, 'sshd_config')], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    try {
      await waitForPort(port, child);
      return {
        port,
        dir,
        keyfile: join(dir, 'client_key'),
        knownHosts: join(dir, 'known_hosts'),
        stderr: () => stderr,
        async stop() {
          if (child.exitCode === null) {
            const exited = new Promise((r) => child.once('exit', r));
            child.kill('SIGTERM');
            await exited;
          }
          await tmp.cleanup();
        },
      };
    } catch (err) {
      lastErr = new Error(`${(err as Error).message}: ${stderr.trim()}`);
      child.kill('SIGKILL');
    }
  }
  await tmp.cleanup();
  throw lastErr;
}

describe.skipIf(!!sshSkip)('qemu+ssh:// to a loopback sshd', () => {
  let sshd: Sshd;
  let base: string;

  beforeAll(async () => {
    sshd = await startSshd();
    base = `qemu+ssh://root@127.0.0.1:${sshd.port}/system`;
  });

  afterAll(async () => {
    await sshd?.stop();
  });

  const params = (extra: Record<string, string> = {}): string => {
    const all = { keyfile: sshd.keyfile, known_hosts: sshd.knownHosts, socket: socketOf(uri), ...extra };
    return Object.entries(all)
      .map(([k, v]) => `${k}=${encodeURIComponent(v)}`)
      .join('&');
  };

  it('reaches the private daemon through ssh and nc', async () => {
    const client = await LibvirtClient.connect(`${base}?${params()}`);
    try {
      expect((await client.getLibVersion()).major).toBeGreaterThan(0);
      const td = await createTestDomain(client, { start: false });
      try {
        const sub = await client.subscribe({ kinds: ['lifecycle'], domain: td.dom });
        await td.start();
        const ev = await sub.waitFor((e) => e.kind === 'lifecycle' && e.event === 'started', {
          timeoutMs: 30_000,
        });
        expect(ev.domain.name).toBe(td.name);
        expect(await client.isDomainActive(td.dom)).toBe(true);
        expect(isNoDomain(await client.lookupDomainByName('no-such-domain').catch((e: unknown) => e))).toBe(
          true,
        );
        await sub.close();
      } finally {
        await td.cleanup();
      }
    } finally {
      await client.close();
    }
  });

  it('puts ssh’s own error into the message when authentication fails', async () => {
    const err = await LibvirtClient.connect(
      `${base}?${params({ keyfile: join(sshd.dir, 'other_key') })}`,
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LibvirtConnectionError);
    const msg = (err as LibvirtConnectionError).message;
    expect(msg).toMatch(
      /^libvirt connection to ssh root@127\.0\.0\.1:\d+ lost \(.*\): ssh exited with status 255: .*Permission denied/,
    );
    expect(msg).not.toContain('\n');
  });

  it('reports the remote nc failure when the daemon socket does not exist', async () => {
    const err = await LibvirtClient.connect(
      `${base}?${params({ socket: '/tmp/vmvault-no-such-sock' })}`,
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LibvirtConnectionError);
    expect((err as LibvirtConnectionError).message).toMatch(
      /ssh exited with status 1: .*(No such file|connect)/i,
    );
  });

  it('refuses an unknown host key in batch mode', async () => {
    const other = join(sshd.dir, 'empty_known_hosts');
    await writeFile(other, '');
    const err = await LibvirtClient.connect(`${base}?${params({ known_hosts: other })}`).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(LibvirtConnectionError);
    expect((err as LibvirtConnectionError).message).toMatch(/Host key verification failed/);
  });
});

describe.skipIf(!uri)('qemu+tcp:// through a TCP relay to the private daemon', () => {
  let relay: Server;
  let port: number;
  const sockets = new Set<Socket>();

  beforeAll(async () => {
    relay = createServer((inbound) => {
      const outbound = connect({ path: socketOf(uri) });
      sockets.add(inbound);
      inbound.pipe(outbound).pipe(inbound);
      const close = (): void => {
        sockets.delete(inbound);
        inbound.destroy();
        outbound.destroy();
      };
      inbound.on('error', close).on('close', close);
      outbound.on('error', close).on('close', close);
    });
    await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
    port = (relay.address() as AddressInfo).port;
  });

  afterAll(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => relay.close(() => r()));
  });

  it('talks to the daemon over TCP', async () => {
    const client = await LibvirtClient.connect(`qemu+tcp://127.0.0.1:${port}/system`);
    expect((await client.getHypervisorVersion()).major).toBeGreaterThan(0);
    await client.close();
  });

  it('fails pending calls with a clear error when the connection drops', async () => {
    const client = await LibvirtClient.connect(`qemu+tcp://127.0.0.1:${port}/system`);
    const td = await createTestDomain(client, { start: false });
    try {
      for (const s of sockets) s.destroy();
      const err = await client.lookupDomainByName(td.name).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(LibvirtConnectionError);
      expect((err as Error).message).toMatch(
        /^libvirt connection to tcp 127\.0\.0\.1:\d+ (lost \(.*\)|is closed)$/,
      );
      expect(client.isOpen).toBe(false);
    } finally {
      // The dead client cannot undefine: cleanup() only removes the files; undefine on a new one.
      await td.cleanup();
      const again = await LibvirtClient.connect(uri);
      const dom = await again.lookupDomainByName(td.name).catch(() => undefined);
      if (dom) await again.undefineDomain(dom);
      await again.close();
    }
  });
});
