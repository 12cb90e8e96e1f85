import { lstat, mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { Command } from 'commander';
import { UsageError, VmvaultError, errnoCode, errorMessage, pidAlive } from '../../util/index.js';
import { CowOverlay, NbdServer, formatNbdUri, type NbdExport } from '../../nbd/index.js';
import { SnapshotExport } from '../../restore/index.js';
import { shortId } from '../../repo/index.js';
import { openRepo, repoOption } from '../context.js';
import { interruptIsNormalEnd, untilInterrupted } from '../signals.js';

interface ServeFlags {
  socket?: string;
  listen?: string;
  disk?: string;
  writable?: boolean;
  keepOverlay?: string;
  scratchdir: string;
  repo?: string;
}

/** Per-run directory of serve (default socket, overlays): `vmvault-serve-<pid>-XXXXXX`. */
const RUN_PREFIX = 'vmvault-serve-';

/** `HOST:PORT` or `[IPV6]:PORT`. */
export function parseListen(spec: string): { host: string; port: number } {
  const hint = 'use HOST:PORT, e.g. 127.0.0.1:10809, or [IPV6]:PORT, e.g. [::1]:10809';
  const m = /^\[([^\]]*)\]:(\d+)$/.exec(spec) ?? /^([^:[\]]+):(\d+)$/.exec(spec);
  if (!m) {
    if (/^[^[]*:.*:/.test(spec))
      throw new UsageError(`invalid --listen '${spec}': an IPv6 address needs brackets`, 'e.g. [::1]:10809');
    throw new UsageError(`invalid --listen '${spec}'`, hint);
  }
  const host = m[1]!;
  if (spec.startsWith('[') && isIP(host) !== 6)
    throw new UsageError(`invalid --listen '${spec}': '${host}' is not an IPv6 address`, hint);
  const port = Number(m[2]);
  if (port > 65535)
    throw new UsageError(`port ${m[2]} in --listen '${spec}' is out of range`, 'give a port from 1 to 65535');
  return { host, port };
}

/**
 * Removes run directories of serve processes that are gone (SIGKILL, a second Ctrl-C): only
 * directories named with a pid that no longer runs and owned by this user. A live serve's
 * directory, a --keep-overlay directory and anything else are never touched.
 */
async function removeStaleRunDirs(scratch: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(scratch);
  } catch {
    return; // creating the new directory reports the problem
  }
  const uid = process.getuid?.();
  for (const n of names) {
    const m = /^vmvault-serve-(\d+)-[A-Za-z0-9]{6}$/.exec(n);
    if (!m || pidAlive(Number(m[1]))) continue;
    const path = join(scratch, n);
    const st = await lstat(path).catch(() => undefined);
    if (!st?.isDirectory() || (uid !== undefined && st.uid !== uid)) continue;
    await rm(path, { recursive: true, force: true }).catch(() => {});
  }
}

async function makeRunDir(scratch: string): Promise<string> {
  await removeStaleRunDirs(scratch);
  try {
    return await mkdtemp(join(scratch, `${RUN_PREFIX}${process.pid}-`));
  } catch (err) {
    throw new VmvaultError('SCRATCH_DIR', `cannot create a directory in ${scratch}: ${errorMessage(err)}`, {
      hint: 'give a writable directory with --scratchdir',
    });
  }
}

async function createOverlay(base: NbdExport, dir: string, keep: boolean): Promise<CowOverlay> {
  try {
    return await CowOverlay.create(base, dir, { keep });
  } catch (err) {
    await base.close?.().catch(() => {});
    const file = join(dir, `${base.name}.overlay`);
    if (errnoCode(err) === 'EEXIST')
      throw new UsageError(`${file} exists already`, 'choose another --keep-overlay directory');
    throw new VmvaultError('OVERLAY', `cannot create the overlay ${file}: ${errorMessage(err)}`, {
      hint: keep
        ? 'choose a writable --keep-overlay directory'
        : 'give a writable directory with --scratchdir',
    });
  }
}

export function serveCommand(): Command {
  return new Command('serve')
    .description('serve the disks of a snapshot over NBD (exports named vda, vdb, ...) until interrupted')
    .argument('<snapshot>', 'id, id prefix, VM@latest, VM@<date-time> or checkpoint name')
    .option('--socket <path>', 'unix socket to listen on (default: a new one under the scratch directory)')
    .option('--listen <host:port>', 'listen on TCP instead (e.g. 127.0.0.1:10809 or [::1]:10809)')
    .option('--disk <disk>', 'serve only this disk')
    .option(
      '--writable',
      'accept writes into a temporary copy-on-write overlay (the repository is never modified)',
    )
    .option('--keep-overlay <dir>', 'with --writable: keep the overlay files in DIR after exit')
    .option('--scratchdir <dir>', 'where the default socket and the temporary overlay go', '/var/tmp')
    .addOption(repoOption())
    .action(async (ref: string, opts: ServeFlags) => {
      if (opts.socket && opts.listen) throw new UsageError('give --socket or --listen, not both');
      if (opts.keepOverlay !== undefined && !opts.writable)
        throw new UsageError('--keep-overlay needs --writable');
      const listen = opts.listen !== undefined ? parseListen(opts.listen) : undefined;
      const repo = await openRepo(opts, 'read');
      let runDir: string | undefined;
      const exports: NbdExport[] = [];
      let server: NbdServer | undefined;
      try {
        const snap = await repo.resolveSnapshot(ref);
        await repo.session?.pin([snap.id]);
        const disks = opts.disk ? snap.disks.filter((d) => d.target === opts.disk) : snap.disks;
        if (disks.length === 0)
          throw new UsageError(
            `snapshot ${shortId(snap.id)} has no disk '${opts.disk}'`,
            `its disks are: ${snap.disks.map((d) => d.target).join(', ')}`,
          );
        if ((!opts.socket && !listen) || (opts.writable && opts.keepOverlay === undefined))
          runDir = await makeRunDir(opts.scratchdir);
        let overlayDir: string | undefined;
        if (opts.keepOverlay !== undefined) {
          overlayDir = opts.keepOverlay;
          await mkdir(overlayDir, { recursive: true }).catch(() => {}); // creating the overlay reports it
        } else if (opts.writable) overlayDir = runDir;
        for (const d of disks) {
          const base = await SnapshotExport.open(repo, snap, d);
          exports.push(
            overlayDir ? await createOverlay(base, overlayDir, opts.keepOverlay !== undefined) : base,
          );
        }
        server = new NbdServer(exports);
        interruptIsNormalEnd();
        const uris: string[] = [];
        if (listen) {
          const port = await server.listenTcp(listen.host, listen.port);
          for (const e of exports)
            uris.push(formatNbdUri({ tls: false, host: listen.host, port, exportName: e.name }));
        } else {
          const socket = opts.socket ?? join(runDir!, 'nbd.sock');
          await server.listenUnix(socket);
          for (const e of exports)
            uris.push(formatNbdUri({ tls: false, socketPath: socket, exportName: e.name }));
        }
        process.stdout.write(
          [
            `serving snapshot ${shortId(snap.id)} of ${snap.vm.name} (${snap.time})${opts.writable ? ', writes go to a temporary overlay' : ', read-only'}:`,
            ...uris.map((u) => `  ${u}`),
            `boot from it: qemu-img create -f qcow2 -b '${uris[0]}' -F raw overlay.qcow2, then use overlay.qcow2 as the VM's disk`,
            'press Ctrl-C to stop',
            '',
          ].join('\n'),
        );
        await untilInterrupted();
        process.exitCode = 0;
      } finally {
        // Every exit path (Ctrl-C, SIGTERM, an error) removes what this run created.
        if (server) await server.close().catch(() => {});
        else for (const e of exports) await e.close?.().catch(() => {});
        await repo.close().catch(() => {});
        if (runDir) await rm(runDir, { recursive: true, force: true }).catch(() => {});
      }
    });
}
