import { spawn } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import { delimiter, join } from 'node:path';
import { VmvaultError, errnoCode, pidAlive, sleep } from '../util/index.js';
import { socketIsLive } from './transport.js';

export interface QemuNbdOptions {
  path: string;
  /** Image format (qcow2, raw, ...); probing is never used. */
  format: string;
  /** Directory for the socket and pid file. */
  runtimeDir: string;
  readOnly?: boolean;
  /** Persistent dirty bitmap to export as qemu:dirty-bitmap:<name>. */
  bitmap?: string | null;
  /** Export name ('' = default). */
  exportName?: string;
  /** How long qemu-nbd may take to open the image and listen (default 30 s). */
  startTimeoutMs?: number;
}

export interface QemuNbdExport {
  socketPath: string;
  exportName: string;
  /** The qemu-nbd process id. */
  pid: number;
  stop(): Promise<void>;
}

let seq = 0;
let setprivPath: string | null | undefined;

/** `setpriv` (util-linux) on the PATH, or null. */
function findSetpriv(): string | null {
  if (setprivPath !== undefined) return setprivPath;
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/bin', '/bin'];
  setprivPath =
    dirs
      .filter((d) => d.startsWith('/'))
      .map((d) => join(d, 'setpriv'))
      .find((p) => existsSync(p)) ?? null;
  return setprivPath;
}

const PID_FILE = /^qemu-nbd-(\d+)-\d+\.pid$/;

/**
 * Exports an image through qemu-nbd on a unix socket (returns once the socket accepts).
 *
 * qemu-nbd stays our child (never `--fork`) and runs under `setpriv --pdeathsig SIGKILL` (SIGTERM
 * for a writable export), so the kernel stops it when vmvault dies, SIGKILL included. The socket and pid file are named after our
 * pid, so `reapStaleQemuNbd` can find and stop a leftover of a run that died before setpriv armed
 * the death signal (or on a system without setpriv).
 */
export async function startQemuNbd(opts: QemuNbdOptions): Promise<QemuNbdExport> {
  const id = `${process.pid}-${seq++}`;
  const socketPath = join(opts.runtimeDir, `qemu-nbd-${id}.sock`);
  const pidFile = join(opts.runtimeDir, `qemu-nbd-${id}.pid`);
  const exportName = opts.exportName ?? '';
  const args = [
    '--persistent',
    '--shared=8',
    '-f',
    opts.format,
    '-k',
    socketPath,
    '--pid-file',
    pidFile,
    '-x',
    exportName,
  ];
  if (opts.readOnly ?? true) args.push('--read-only');
  if (opts.bitmap) args.push('-B', opts.bitmap);
  args.push(opts.path);
  const setpriv = findSetpriv();
  // The death signal is tied to the thread that spawned the child: Node spawns from the main
  // thread, which lives as long as the process. A read-only export has nothing to flush (QEMU
  // marks persistent bitmaps in use only when it opens an image read-write), so SIGKILL is safe
  // and cannot be ignored; a writable one gets SIGTERM to close the image cleanly.
  const deathSignal = (opts.readOnly ?? true) ? 'SIGKILL' : 'SIGTERM';
  const child = setpriv
    ? spawn(setpriv, ['--pdeathsig', deathSignal, '--', 'qemu-nbd', ...args], {
        stdio: ['ignore', 'ignore', 'pipe'],
      })
    : spawn('qemu-nbd', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4096);
  });
  let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  let spawnError: Error | undefined;
  const exit = new Promise<void>((resolve) => {
    child.on('error', (e) => {
      spawnError = e;
      resolve();
    });
    child.on('exit', (code, signal) => {
      exited = { code, signal };
      resolve();
    });
  });
  const cleanupFiles = async (): Promise<void> => {
    await fs.rm(socketPath, { force: true });
    await fs.rm(pidFile, { force: true });
  };
  const stop = async (): Promise<void> => {
    if (!exited && !spawnError) {
      child.kill('SIGTERM');
      // Wait until it has closed the image (its bitmaps must not stay 'in use'). A writable export
      // may still be writing back its cache: give it a minute before it is killed.
      const graceMs = (opts.readOnly ?? true) ? 5000 : 60_000;
      let timer: NodeJS.Timeout | undefined;
      const gone = await Promise.race([
        exit.then(() => true),
        new Promise<boolean>((resolve) => {
          timer = setTimeout(() => resolve(false), graceMs);
        }),
      ]);
      clearTimeout(timer); // a pending timer would keep the process alive for the whole grace
      if (!gone) {
        child.kill('SIGKILL');
        await exit;
      }
    }
    await cleanupFiles();
  };
  try {
    await waitListening(socketPath, opts.startTimeoutMs ?? 30_000, () => exited ?? spawnError);
  } catch (err) {
    await stop();
    if (spawnError) {
      throw new VmvaultError(
        'QEMU_NBD',
        `cannot run qemu-nbd: ${errnoCode(spawnError) === 'ENOENT' ? 'it is not installed' : spawnError.message}`,
        { hint: 'install qemu-utils' },
      );
    }
    if (exited) {
      const last = stderr.trim().split('\n').pop();
      if (setpriv && /failed to execute qemu-nbd/.test(stderr))
        throw new VmvaultError('QEMU_NBD', 'cannot run qemu-nbd: it is not installed', {
          hint: 'install qemu-utils',
        });
      throw new VmvaultError(
        'QEMU_NBD',
        `qemu-nbd could not export ${opts.path}: ${last || `exit ${exited.code ?? exited.signal}`}`,
      );
    }
    throw err;
  }
  return { socketPath, exportName, pid: child.pid!, stop };
}

/** Resolves once `socketPath` accepts a connection; rejects when the process exits first. */
async function waitListening(socketPath: string, timeoutMs: number, failed: () => unknown): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (failed()) throw new Error('qemu-nbd exited');
    if (existsSync(socketPath) && (await socketIsLive(socketPath))) return;
    if (Date.now() > deadline)
      throw new VmvaultError('QEMU_NBD', `qemu-nbd did not listen on ${socketPath} within ${timeoutMs} ms`);
    await sleep(10);
  }
}

/**
 * Stops qemu-nbd processes a dead vmvault left in `dir` (pid files `qemu-nbd-<our pid>-<n>.pid`
 * whose owner is gone) and removes their sockets and pid files. A pid is only killed while its
 * command line still names that socket, so a reused pid is never hit. Returns how many it stopped.
 */
export async function reapStaleQemuNbd(dir: string): Promise<number> {
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch {
    return 0;
  }
  let stopped = 0;
  for (const n of names) {
    const m = PID_FILE.exec(n);
    if (!m || pidAlive(Number(m[1]))) continue;
    const pidFile = join(dir, n);
    const socketPath = pidFile.replace(/\.pid$/, '.sock');
    const pid = Number((await fs.readFile(pidFile, 'utf8').catch(() => '')).trim());
    if (Number.isSafeInteger(pid) && pid > 1) {
      const cmdline = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
      if (cmdline.split('\0').includes(socketPath)) {
        try {
          process.kill(pid, 'SIGKILL');
          stopped++;
        } catch {
          /* gone meanwhile */
        }
        for (let i = 0; i < 200 && pidAlive(pid); i++) await sleep(10);
      }
    }
    await fs.rm(socketPath, { force: true });
    await fs.rm(pidFile, { force: true });
  }
  return stopped;
}
