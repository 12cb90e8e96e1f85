import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Command } from 'commander';
import { UsageError } from '../../util/index.js';
import { CowOverlay, NbdServer, type NbdExport } from '../../nbd/index.js';
import { SnapshotExport } from '../../restore/index.js';
import { shortId } from '../../repo/index.js';
import { openRepo, repoOption } from '../context.js';
import { interruptIsNormalEnd, rootAbort } from '../signals.js';

interface ServeFlags {
  socket?: string;
  listen?: string;
  disk?: string;
  writable?: boolean;
  keepOverlay?: string;
  repo?: string;
}

export function serveCommand(): Command {
  return new Command('serve')
    .description('serve the disks of a snapshot over NBD (exports named vda, vdb, ...) until interrupted')
    .argument('<snapshot>', 'id, id prefix, VM@latest, VM@<date-time> or checkpoint name')
    .option('--socket <path>', 'unix socket to listen on (default: a new one under /var/tmp)')
    .option('--listen <host:port>', 'listen on TCP instead (e.g. 127.0.0.1:10809)')
    .option('--disk <disk>', 'serve only this disk')
    .option(
      '--writable',
      'accept writes into a temporary copy-on-write overlay (the repository is never modified)',
    )
    .option('--keep-overlay <dir>', 'with --writable: keep the overlay files in DIR after exit')
    .addOption(repoOption())
    .action(async (ref: string, opts: ServeFlags) => {
      if (opts.socket && opts.listen) throw new UsageError('give --socket or --listen, not both');
      const repo = await openRepo(opts);
      const snap = await repo.resolveSnapshot(ref).catch(async (err: unknown) => {
        await repo.close();
        throw err;
      });
      const disks = opts.disk ? snap.disks.filter((d) => d.target === opts.disk) : snap.disks;
      if (disks.length === 0)
        throw new UsageError(
          `snapshot ${shortId(snap.id)} has no disk '${opts.disk}'`,
          `its disks are: ${snap.disks.map((d) => d.target).join(', ')}`,
        );
      const overlayDir = opts.writable
        ? (opts.keepOverlay ?? (await mkdtemp('/var/tmp/vmvault-overlay-')))
        : undefined;
      const exports: NbdExport[] = [];
      for (const d of disks) {
        const base = await SnapshotExport.open(repo, snap, d);
        exports.push(
          overlayDir
            ? await CowOverlay.create(base, overlayDir, { keep: opts.keepOverlay !== undefined })
            : base,
        );
      }
      const server = new NbdServer(exports);
      interruptIsNormalEnd();
      const uris: string[] = [];
      if (opts.listen) {
        const m = /^(.*):(\d+)$/.exec(opts.listen);
        if (!m)
          throw new UsageError(`invalid --listen '${opts.listen}'`, 'use HOST:PORT, e.g. 127.0.0.1:10809');
        const port = await server.listenTcp(m[1]!, Number(m[2]));
        for (const e of exports) uris.push(`nbd://${m[1]}:${port}/${e.name}`);
      } else {
        const socket = opts.socket ?? join(await mkdtemp('/var/tmp/vmvault-serve-'), 'nbd.sock');
        await server.listenUnix(socket);
        for (const e of exports) uris.push(`nbd+unix:///${e.name}?socket=${socket}`);
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
      await new Promise<void>((resolve) => {
        if (rootAbort.signal.aborted) resolve();
        rootAbort.signal.addEventListener('abort', () => resolve(), { once: true });
      });
      await server.close();
      await repo.close();
      if (overlayDir && !opts.keepOverlay) await rm(overlayDir, { recursive: true, force: true });
      process.exitCode = 0;
    });
}
