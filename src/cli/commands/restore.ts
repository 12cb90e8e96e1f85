import { existsSync } from 'node:fs';
import { Command, Option } from 'commander';
import { ExitCode, formatBytes, UsageError, VmvaultError } from '../../util/index.js';
import { findDisk, restoreDisk, createRawWriter } from '../../restore/index.js';
import { shortId } from '../../repo/index.js';
import { loggerFor, printJson, repoOption, withRepo, globals } from '../context.js';
import { makeProgress } from '../progress-tty.js';
import { rootAbort } from '../signals.js';

export function restoreCommand(): Command {
  return new Command('restore')
    .description('restore a disk of a snapshot to a sparse raw image; every chunk is verified')
    .argument('<snapshot>', 'id, id prefix, VM@latest, VM@<date-time> or checkpoint name')
    .requiredOption('--disk <disk>', 'disk to restore (e.g. vda)')
    .requiredOption('-o, --output <file>', 'output file (must not exist)')
    .addOption(new Option('--format <format>', 'output format').choices(['raw']).default('raw'))
    .option('--ignore-errors', 'write zeros for damaged chunks, list every damaged range, exit 3')
    .option('--json', 'print a JSON summary')
    .addOption(repoOption())
    .action(
      async (
        ref: string,
        opts: {
          disk: string;
          output: string;
          format: string;
          ignoreErrors?: boolean;
          json?: boolean;
          repo?: string;
        },
        cmd: Command,
      ) => {
        const log = loggerFor(cmd);
        const quiet = (globals(cmd).quiet ?? false) || opts.json === true;
        const result = await withRepo(opts, async (repo) => {
          const snap = await repo.resolveSnapshot(ref);
          const disk = findDisk(snap, opts.disk);
          if (!disk) {
            throw new UsageError(
              `snapshot ${shortId(snap.id)} has no disk '${opts.disk}'`,
              `its disks are: ${snap.disks.map((d) => d.target).join(', ')}`,
            );
          }
          if (existsSync(opts.output)) {
            throw new VmvaultError('OUTPUT_EXISTS', `output ${opts.output} exists`, {
              hint: 'choose another path or remove it first',
            });
          }
          const sink = await createRawWriter(opts.output, disk.sizeBytes);
          const r = await restoreDisk(repo, snap, disk, sink, {
            ignoreErrors: opts.ignoreErrors ?? false,
            progress: makeProgress(disk.target, process.stderr, quiet),
            signal: rootAbort.signal,
          });
          return { snap, disk, ...r };
        });
        if (opts.json) {
          printJson({
            message_type: 'summary',
            snapshot: result.snap.id,
            disk: result.disk.target,
            output: opts.output,
            bytesWritten: result.bytesWritten,
            damaged: result.damaged,
          });
        } else if (!quiet) {
          log.info(
            `restored ${result.disk.target} of snapshot ${shortId(result.snap.id)} to ${opts.output} (${formatBytes(result.disk.sizeBytes)} virtual, ${formatBytes(result.bytesWritten)} data)`,
          );
        }
        if (result.damaged.length) {
          for (const d of result.damaged)
            process.stderr.write(
              `damaged: offset ${d.offset} length ${d.length} chunk ${d.chunkId} (${d.reason}); zeros written\n`,
            );
          throw new VmvaultError(
            'RESTORE_DAMAGED',
            `${result.damaged.length} damaged chunk${result.damaged.length === 1 ? '' : 's'} replaced by zeros in ${opts.output}`,
            {
              exitCode: ExitCode.PARTIAL,
              hint: "run 'vmvault check --read-data' for the full picture",
            },
          );
        }
      },
    );
}
