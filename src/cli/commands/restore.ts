import { Command, Option } from 'commander';
import { ExitCode, formatBytes, UsageError, VmvaultError } from '../../util/index.js';
import {
  createQcow2Writer,
  makeSinkFactory,
  restoreSnapshot,
  type ImageFormat,
  type RestoreResult,
} from '../../restore/index.js';
import { LibvirtClient } from '../../libvirt/index.js';
import { shortId } from '../../repo/index.js';
import { globals, keepSummary, loggerFor, printJson, repoOption, withRepo } from '../context.js';
import { makeProgress } from '../progress-tty.js';
import { rootAbort } from '../signals.js';

interface RestoreFlags {
  output: string;
  disk?: string;
  format?: ImageFormat;
  config?: boolean;
  name?: string;
  define?: boolean;
  keepHostConfig?: boolean;
  connect: string;
  inPlace?: boolean;
  ignoreErrors?: boolean;
  json?: boolean;
  repo?: string;
}

export function restoreCommand(): Command {
  return new Command('restore')
    .description('restore the disks of a snapshot as qcow2 or sparse raw images (every chunk verified)')
    .argument('<snapshot>', 'id, id prefix, VM@latest, VM@<date-time> or checkpoint name')
    .requiredOption(
      '-o, --output <path>',
      'output directory (disks as <disk>.<format>), or with --disk the image file',
    )
    .option('--disk <disk>', 'restore only this disk (e.g. vda)')
    .addOption(
      new Option(
        '--format <format>',
        'image format (default qcow2; with --disk, from the file extension: .qcow2, .raw or .img)',
      ).choices(['qcow2', 'raw']),
    )
    .option(
      '--config',
      'write an adjusted domain XML and the VM files (nvram, loader, kernel, initrd) next to the images',
    )
    .option('--name <name>', 'domain name in the adjusted XML (default restore_<name>)')
    .option('--define', 'define the restored domain in libvirt (implies --config)')
    .option(
      '--keep-host-config',
      "keep the stored domain XML's host references (passthrough devices, host files and sockets, emulator, security labels, qemu arguments): only for a repository you trust",
    )
    .option(
      '-c, --connect <uri>',
      'libvirt connection URI for --define',
      process.env.LIBVIRT_DEFAULT_URI ?? 'qemu:///system',
    )
    .option('--in-place', 'roll an existing image or block device back, writing only the chunks that differ')
    .option('--ignore-errors', 'write zeros for damaged chunks, list every damaged range, exit 3')
    .option('--json', 'print a JSON summary')
    .addOption(repoOption())
    .action(async (ref: string, opts: RestoreFlags, cmd: Command) => {
      const log = loggerFor(cmd);
      const quiet = (globals(cmd).quiet ?? false) || opts.json === true;
      if (opts.keepHostConfig && !opts.config && !opts.define)
        throw new UsageError(
          '--keep-host-config changes the domain XML that --config or --define writes',
          'add --config or --define, or drop --keep-host-config',
        );
      const result = await withRepo(
        opts,
        async (repo) => {
          const snap = await repo.resolveSnapshot(ref);
          await repo.session?.pin([snap.id]);
          return restoreSnapshot(repo, snap, {
            output: opts.output,
            ...(opts.disk ? { disk: opts.disk } : {}),
            ...(opts.format ? { format: opts.format } : {}),
            config: (opts.config ?? false) || (opts.define ?? false),
            keepHostConfig: opts.keepHostConfig ?? false,
            ...(opts.name ? { name: opts.name } : {}),
            inPlace: opts.inPlace ?? false,
            ignoreErrors: opts.ignoreErrors ?? false,
            sinks: makeSinkFactory((path, size) => createQcow2Writer(path, size)),
            // The same VM/disk label as backups use.
            progressFor: (t) => makeProgress(`${snap.vm.name}/${t}`, process.stderr, quiet),
            signal: rootAbort.signal,
          });
        },
        'read',
      );
      // Not silenced by --quiet or --json: the restored domain differs from the stored one.
      for (const n of result.configNotes) log.warn(`restored domain XML: ${n}`);
      let defined: string | undefined;
      if (opts.define && result.domainXml) {
        const client = await LibvirtClient.connect(opts.connect);
        try {
          defined = (await client.defineDomainXml(result.domainXml)).name;
        } finally {
          await client.close();
        }
      }
      if (!opts.json) keepSummary(jsonSummary(result, defined));
      if (opts.json) printJson(jsonSummary(result, defined));
      else if (!quiet) {
        for (const t of result.removedTemps) log.info(`removed ${t}, left by an interrupted restore`);
        for (const d of result.disks) {
          const kind = d.blockDevice ? 'raw block device' : d.format;
          const how = d.inPlace
            ? `in place: ${d.inPlace.chunksWritten} of ${d.inPlace.chunksChecked} chunks differed, ${formatBytes(d.bytesWritten)} written`
            : `${formatBytes(d.bytesWritten)} data`;
          log.info(
            `restored ${d.target} of snapshot ${shortId(result.snapshot.id)} to ${d.path} (${kind}, ${how})`,
          );
        }
        if (result.configPath)
          log.info(
            `domain configuration: ${result.configPath}${result.files.length ? ` (+ ${result.files.join(', ')})` : ''}`,
          );
        if (defined) log.info(`defined domain '${defined}'`);
      }
      const damaged = result.disks.flatMap((d) =>
        d.damaged.map((x) => ({ ...x, disk: d.target, path: d.path })),
      );
      if (damaged.length) {
        for (const d of damaged)
          process.stderr.write(
            `damaged: disk ${d.disk} offset ${d.offset} length ${d.length} chunk ${d.chunkId} (${d.reason}); zeros written\n`,
          );
        throw new VmvaultError(
          'RESTORE_DAMAGED',
          `${damaged.length} damaged chunk${damaged.length === 1 ? '' : 's'} replaced by zeros`,
          {
            exitCode: ExitCode.PARTIAL,
            hint: "run 'vmvault check --read-data' for the full picture",
          },
        );
      }
    });
}

function jsonSummary(r: RestoreResult, defined: string | undefined): Record<string, unknown> {
  return {
    message_type: 'summary',
    snapshot: r.snapshot.id,
    disks: r.disks.map((d) => ({
      target: d.target,
      path: d.path,
      format: d.format,
      blockDevice: d.blockDevice,
      bytesWritten: d.bytesWritten,
      damaged: d.damaged,
      inPlace: d.inPlace ?? null,
    })),
    config: r.configPath ?? null,
    configNotes: r.configNotes,
    files: r.files,
    removedTemps: r.removedTemps,
    defined: defined ?? null,
  };
}
