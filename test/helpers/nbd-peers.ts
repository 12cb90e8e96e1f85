import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { exec } from '../../src/util/index.js';

/** Waits until a path exists (a socket a peer creates), or the process exits, or the time runs out. */
export async function waitForPath(path: string, child?: ChildProcess, timeoutMs = 15_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!existsSync(path)) {
    if (child && child.exitCode !== null)
      throw new Error(`peer exited with ${child.exitCode} before creating ${path}`);
    if (Date.now() > end) throw new Error(`timed out waiting for ${path}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export interface Peer {
  socket: string;
  stop(): Promise<void>;
}

function stopper(child: ChildProcess): () => Promise<void> {
  return async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const closed = new Promise((r) => child.once('close', r));
    child.kill('SIGTERM');
    await closed;
  };
}

/** nbdkit in the foreground on a unix socket in `dir`: `startNbdkit(dir, ['memory', 'size=64M'])`. */
export async function startNbdkit(dir: string, args: string[], name = 'nbdkit'): Promise<Peer> {
  const socket = join(dir, `${name}.sock`);
  const child = spawn('nbdkit', ['-f', '-U', socket, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  await waitForPath(socket, child);
  return { socket, stop: stopper(child) };
}

/** qemu-storage-daemon exporting a qcow2 (writable) with one persistent bitmap as qemu:dirty-bitmap:<bitmap>. */
export async function startQsd(
  dir: string,
  image: string,
  exportName: string,
  bitmap: string,
): Promise<Peer> {
  const socket = join(dir, 'qsd.sock');
  const child = spawn(
    'qemu-storage-daemon',
    [
      '--blockdev',
      `driver=file,node-name=file0,filename=${image}`,
      '--blockdev',
      'driver=qcow2,node-name=fmt0,file=file0',
      '--nbd-server',
      `addr.type=unix,addr.path=${socket}`,
      '--export',
      `type=nbd,id=exp0,node-name=fmt0,name=${exportName},writable=on,bitmaps.0=${bitmap}`,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  await waitForPath(socket, child);
  return { socket, stop: stopper(child) };
}

/** A throw-away x509 CA and a server certificate for localhost / 127.0.0.1 (certtool), in qemu's layout. */
export async function makeTlsCerts(dir: string): Promise<{ dir: string; caFile: string }> {
  const t = (n: string): string => join(dir, n);
  await writeFile(t('ca.info'), 'cn = vmvault test CA\nca\ncert_signing_key\nexpiration_days = 2\n');
  await writeFile(
    t('server.info'),
    'organization = vmvault\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n',
  );
  await exec('certtool', ['--generate-privkey', '--outfile', t('ca-key.pem')]);
  await exec('certtool', [
    '--generate-self-signed',
    '--load-privkey',
    t('ca-key.pem'),
    '--template',
    t('ca.info'),
    '--outfile',
    t('ca-cert.pem'),
  ]);
  await exec('certtool', ['--generate-privkey', '--outfile', t('server-key.pem')]);
  await exec('certtool', [
    '--generate-certificate',
    '--load-privkey',
    t('server-key.pem'),
    '--load-ca-certificate',
    t('ca-cert.pem'),
    '--load-ca-privkey',
    t('ca-key.pem'),
    '--template',
    t('server.info'),
    '--outfile',
    t('server-cert.pem'),
  ]);
  return { dir, caFile: t('ca-cert.pem') };
}
