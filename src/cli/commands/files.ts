import { stat } from 'node:fs/promises';
import { Command } from 'commander';
import { UsageError, formatBytes, printable } from '../../util/index.js';
import { GuestFiles, withSnapshotFiles, type GuestEntry } from '../../restore/index.js';
import { shortId, type Repository, type Snapshot, type SnapshotDisk } from '../../repo/index.js';
import { openRepo, printJson, repoOption, warnLine } from '../context.js';
import { interruptIsNormalEnd, rootAbort, untilInterrupted } from '../signals.js';

interface FilesFlags {
  disk?: string;
  output?: string;
  json?: boolean;
  repo?: string;
}

const TYPE_CHAR: Record<GuestEntry['type'], string> = {
  filesystem: 'd',
  dir: 'd',
  file: '-',
  symlink: 'l',
  char: 'c',
  block: 'b',
  fifo: 'p',
  socket: 's',
  unknown: '?',
};

/** `drwxr-xr-x` with set-id and sticky bits as ls shows them. */
function modeString(e: GuestEntry): string {
  const m = e.mode;
  const rwx = (shift: number, special: boolean, ch: string): string =>
    `${m & (4 << shift) ? 'r' : '-'}${m & (2 << shift) ? 'w' : '-'}${
      special ? (m & (1 << shift) ? ch : ch.toUpperCase()) : m & (1 << shift) ? 'x' : '-'
    }`;
  return `${TYPE_CHAR[e.type]}${rwx(6, (m & 0o4000) !== 0, 's')}${rwx(3, (m & 0o2000) !== 0, 's')}${rwx(0, (m & 0o1000) !== 0, 't')}`;
}

function lsLine(e: GuestEntry): string {
  if (e.type === 'filesystem')
    return `${printable(e.name, 200).padEnd(16)} ${printable(e.fsType ?? '', 20).padEnd(8)} ${formatBytes(e.size).padStart(10)}  ${e.device ?? ''}`;
  const when = e.mtime ? `${e.mtime.slice(0, 10)} ${e.mtime.slice(11, 16)}` : '-'.padEnd(16);
  const name = e.type === 'dir' ? `${printable(e.name, 400)}/` : printable(e.name, 400);
  const target = e.target !== undefined ? ` -> ${printable(e.target, 400)}` : '';
  return `${modeString(e)} ${String(e.size).padStart(12)} ${when}  ${name}${target}`;
}

/** The snapshot's disks the command works on: --disk, or the only one. */
export function pickDisks(snap: Snapshot, disk: string | undefined, allByDefault: boolean): SnapshotDisk[] {
  const names = snap.disks.map((d) => d.target).join(', ');
  if (disk !== undefined) {
    const d = snap.disks.find((x) => x.target === disk);
    if (!d)
      throw new UsageError(
        `snapshot ${shortId(snap.id)} has no disk '${printable(disk, 40)}'`,
        `its disks are: ${names}`,
      );
    return [d];
  }
  if (snap.disks.length === 1 || allByDefault) return snap.disks;
  throw new UsageError(
    `snapshot ${shortId(snap.id)} has ${snap.disks.length} disks`,
    `choose one with --disk (${names})`,
  );
}

async function withSnapshotDisks<T>(
  opts: FilesFlags,
  ref: string,
  allByDefault: boolean,
  fn: (repo: Repository, snap: Snapshot, disks: SnapshotDisk[]) => Promise<T>,
): Promise<T> {
  const repo = await openRepo(opts, 'read');
  try {
    const snap = await repo.resolveSnapshot(ref);
    await repo.session?.pin([snap.id]);
    return await fn(repo, snap, pickDisks(snap, opts.disk, allByDefault));
  } finally {
    await repo.close().catch(() => undefined);
  }
}

export function filesCommand(): Command {
  return new Command('files')
    .description(
      'browse and extract files of the filesystems in a snapshot disk (libguestfs): ls [PATH...], get PATH -o DEST',
    )
    .argument('<snapshot>', 'id, id prefix, VM@latest, VM@<date-time> or checkpoint name')
    .argument('<action>', "'ls' or 'get'")
    .argument(
      '[paths...]',
      'paths naming the filesystem first: /part1/etc, /lvm/VG/LV/home, /fs/...; ls / lists them',
    )
    .option('--disk <disk>', 'the disk to browse (needed when the snapshot has several)')
    .option('-o, --output <dest>', 'get: where the file or directory goes (must not exist)')
    .option('--json', 'print JSON')
    .addOption(repoOption())
    .addHelpText(
      'after',
      `
Examples:
  vmvault files web@latest ls /                       the disk's filesystems (part1, lvm/vg0/root, ...)
  vmvault files web@latest --disk vdb ls /part1/etc
  vmvault files web@latest get /part1/etc/hostname -o hostname
  vmvault files web@latest get /lvm/vg0/root/home/alice -o alice   a directory tree

Needs guestfish (Debian: apt install libguestfs-tools). See docs/restore.md "File-level restore".`,
    )
    .action(async (ref: string, action: string, paths: string[], opts: FilesFlags) => {
      if (action !== 'ls' && action !== 'get')
        throw new UsageError(
          `unknown files action '${printable(action, 40)}'`,
          "use 'ls [PATH...]' or 'get PATH -o DEST'",
        );
      if (action === 'get') {
        if (paths.length !== 1)
          throw new UsageError('get takes one PATH', "e.g. 'get /part1/etc/hostname -o hostname'");
        if (opts.output === undefined)
          throw new UsageError('get needs -o DEST', 'name a file or directory that does not exist');
      } else if (opts.output !== undefined) throw new UsageError('-o is for get, not ls');
      const lsPaths = paths.length ? paths : ['/'];
      await withSnapshotDisks(opts, ref, false, (repo, snap, disks) =>
        withSnapshotFiles(
          repo,
          snap,
          disks,
          async (files) => {
            if (action === 'get') {
              const res = await files.get(paths[0]!, opts.output!);
              for (const s of res.skipped) warnLine(`skipped ${s}`);
              if (opts.json) return printJson(res);
              const what =
                res.type === 'dir'
                  ? `${res.files} file${res.files === 1 ? '' : 's'}, ${res.dirs} director${res.dirs === 1 ? 'y' : 'ies'}, ${res.symlinks} symlink${res.symlinks === 1 ? '' : 's'}, ${formatBytes(res.bytes)}`
                  : res.type === 'file'
                    ? formatBytes(res.bytes)
                    : 'a symlink';
              process.stdout.write(`extracted ${printable(paths[0]!, 300)} to ${res.dest} (${what})\n`);
              return;
            }
            const listings: Array<{ path: string; entries: GuestEntry[] }> = [];
            for (const p of lsPaths) listings.push({ path: p, entries: await files.list(p) });
            if (opts.json) return printJson(listings.flatMap((l) => l.entries));
            const out: string[] = [];
            for (const l of listings) {
              if (listings.length > 1) out.push(`${out.length ? '\n' : ''}${printable(l.path, 300)}:`);
              out.push(...l.entries.map(lsLine));
            }
            process.stdout.write(out.length ? `${out.join('\n')}\n` : '');
          },
          { signal: rootAbort.signal },
        ),
      );
    });
}

export function mountCommand(): Command {
  return new Command('mount')
    .description(
      'mount the filesystems of a snapshot read-only under DIR (FUSE, libguestfs) until interrupted',
    )
    .argument('<snapshot>', 'id, id prefix, VM@latest, VM@<date-time> or checkpoint name')
    .argument('<dir>', 'an existing empty directory: filesystems appear as DIR/part1, DIR/lvm/VG/LV, ...')
    .option(
      '--disk <disk>',
      'mount only this disk (default: all; with several, DIR/vda/part1, DIR/vdb/fs, ...)',
    )
    .addOption(repoOption())
    .action(async (ref: string, dir: string, opts: FilesFlags) => {
      const st = await stat(dir).catch(() => undefined);
      if (!st?.isDirectory())
        throw new UsageError(`${dir} is not a directory`, 'create an empty directory to mount on');
      await withSnapshotDisks(opts, ref, true, (repo, snap, disks) =>
        withSnapshotFiles(
          repo,
          snap,
          disks,
          async (files) => {
            const { mounted, failed, served } = await files.mountAll(dir);
            for (const f of failed) warnLine(`/${f} could not be mounted (left out)`);
            interruptIsNormalEnd();
            process.stdout.write(
              [
                `mounted snapshot ${shortId(snap.id)} of ${printable(snap.vm.name, 200)} (${snap.time}) read-only at ${dir}:`,
                ...mounted.map((m) => `  ${dir.replace(/\/$/, '')}/${m}`),
                'press Ctrl-C to unmount',
                '',
              ].join('\n'),
            );
            let unmounted = false;
            const stop = untilInterrupted();
            try {
              // Until Ctrl-C / SIGTERM, or until someone else unmounts DIR.
              await Promise.race([stop, served.then(() => (unmounted = true))]);
            } finally {
              if (!unmounted) await GuestFiles.unmount(dir);
            }
            await served.catch(() => undefined);
            process.exitCode = 0;
          },
          // The appliance must outlive Ctrl-C until DIR is unmounted: no abort signal here.
          {},
        ),
      );
    });
}
