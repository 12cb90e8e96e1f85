import { spawn } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import { join } from 'node:path';
import { VmvaultError, errnoCode } from '../util/index.js';

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
}

export interface QemuNbdExport {
  socketPath: string;
  exportName: string;
  stop(): Promise<void>;
}

let seq = 0;

/** Exports an image through qemu-nbd on a unix socket (returns once the socket accepts). */
export async function startQemuNbd(opts: QemuNbdOptions): Promise<QemuNbdExport> {
  const id = `${process.pid}-${seq++}`;
  const socketPath = join(opts.runtimeDir, `qemu-nbd-${id}.sock`);
  const pidFile = join(opts.runtimeDir, `qemu-nbd-${id}.pid`);
  const exportName = opts.exportName ?? '';
  const args = [
    '--fork',
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
  const stderr = await new Promise<string>((resolve, reject) => {
    const p = spawn('qemu-nbd', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('error', (e) =>
      reject(
        new VmvaultError(
          'QEMU_NBD',
          `cannot run qemu-nbd: ${errnoCode(e) === 'ENOENT' ? 'it is not installed' : e.message}`,
          { hint: 'install qemu-utils' },
        ),
      ),
    );
    p.on('close', (code) =>
      code === 0
        ? resolve(err)
        : reject(
            new VmvaultError(
              'QEMU_NBD',
              `qemu-nbd could not export ${opts.path}: ${err.trim().split('\n').pop() ?? `exit ${code}`}`,
            ),
          ),
    );
  });
  void stderr;
  if (!existsSync(socketPath)) throw new VmvaultError('QEMU_NBD', `qemu-nbd did not create ${socketPath}`);
  return {
    socketPath,
    exportName,
    async stop() {
      const pid = Number((await fs.readFile(pidFile, 'utf8').catch(() => '')).trim());
      if (pid > 0) {
        try {
          process.kill(pid, 'SIGTERM');
        } catch {
          /* gone already */
        }
        // Wait until it has closed the image (its bitmaps must not stay 'in use').
        for (let i = 0; i < 200; i++) {
          try {
            process.kill(pid, 0);
          } catch {
            break;
          }
          await new Promise((r) => setTimeout(r, 10));
        }
      }
      await fs.rm(socketPath, { force: true });
      await fs.rm(pidFile, { force: true });
    },
  };
}
