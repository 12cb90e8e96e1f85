import { lstat, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NbdServer } from '../../nbd/index.js';
import type { Repository, Snapshot, SnapshotDisk } from '../../repo/index.js';
import { pidAlive } from '../../util/index.js';
import { SnapshotExport } from '../snapshot-export.js';
import { GuestFiles } from './guest-files.js';

export interface SnapshotFilesOptions {
  /** Ends the appliance (and fn's pending work) when aborted. */
  signal?: AbortSignal;
  /** Where the private run directory goes (default: the system's temp directory). */
  tmpDir?: string;
}

const RUN_DIR = /^vmvault-files-(\d+)-[A-Za-z0-9]{6}$/;

/** Removes run directories of `files`/`mount` processes that are gone (SIGKILL): only this user's. */
async function removeStaleRunDirs(parent: string): Promise<void> {
  const names = await readdir(parent).catch(() => [] as string[]);
  const uid = process.getuid?.();
  for (const n of names) {
    const m = RUN_DIR.exec(n);
    if (!m || pidAlive(Number(m[1]))) continue;
    const path = join(parent, n);
    const st = await lstat(path).catch(() => undefined);
    if (!st?.isDirectory() || (uid !== undefined && st.uid !== uid)) continue;
    await rm(path, { recursive: true, force: true }).catch(() => undefined);
  }
}

/**
 * Serves the disks of a snapshot read-only over NBD on a unix socket in a new private (0700)
 * directory, launches one libguestfs appliance over them and runs `fn` with it. Every exit path
 * (success, error, abort) ends guestfish and the appliance, closes the server and removes the
 * directory with its socket and FIFOs (those of killed runs go at the next run).
 */
export async function withSnapshotFiles<T>(
  repo: Repository,
  snap: Snapshot,
  disks: readonly SnapshotDisk[],
  fn: (files: GuestFiles) => Promise<T>,
  opts: SnapshotFilesOptions = {},
): Promise<T> {
  const parent = opts.tmpDir ?? tmpdir();
  await removeStaleRunDirs(parent);
  const runDir = await mkdtemp(join(parent, `vmvault-files-${process.pid}-`));
  const exports: SnapshotExport[] = [];
  let server: NbdServer | undefined;
  let files: GuestFiles | undefined;
  try {
    for (const d of disks) exports.push(await SnapshotExport.open(repo, snap, d));
    server = new NbdServer(exports);
    const socket = join(runDir, 'nbd.sock');
    await server.listenUnix(socket);
    files = await GuestFiles.launch(
      exports.map((e) => ({ socket, exportName: e.name })),
      disks.map((d) => d.target),
      runDir,
      opts.signal,
    );
    const onAbort = (): void => files?.kill();
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      return await fn(files);
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
    }
  } finally {
    await files?.close().catch(() => undefined);
    if (server) await server.close().catch(() => undefined);
    else for (const e of exports) await e.close().catch(() => undefined);
    await rm(runDir, { recursive: true, force: true }).catch(() => undefined);
  }
}
