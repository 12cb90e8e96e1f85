import { Command } from 'commander';
import { formatBytes, parseIsoTime, printable } from '../../util/index.js';
import { backupImages, parseImageSpecs } from '../../backup/index.js';
import { shortId, type Snapshot } from '../../repo/index.js';
import { commaList, keepSummary, loggerFor, printJson, repoOption, withRepo, globals } from '../context.js';
import { makeProgress } from '../progress-tty.js';
import { rootAbort } from '../signals.js';

export function backupImageCommand(): Command {
  return new Command('backup-image')
    .description('back up raw disk image files or block devices as one snapshot')
    .argument('<file...>', 'FILE[:DISK] (disk names default to vda, vdb, ...)')
    .requiredOption('--vm <name>', 'VM name to file the snapshot under')
    .option('--tag <tag>', 'tag for the snapshot (repeatable or comma separated)', commaList)
    .option('--time <iso-8601>', 'the snapshot time to record (default now), e.g. 2026-11-20T22:00:00Z')
    .option('--json', 'print a JSON summary')
    .addOption(repoOption())
    .action(
      async (
        files: string[],
        opts: { vm: string; tag?: string[]; time?: string; json?: boolean; repo?: string },
        cmd: Command,
      ) => {
        const images = parseImageSpecs(files);
        const time =
          opts.time === undefined ? undefined : new Date(parseIsoTime(opts.time, '--time')).toISOString();
        const log = loggerFor(cmd);
        const quiet = globals(cmd).quiet ?? false;
        const snap = await withRepo(opts, (repo) =>
          backupImages(repo, {
            vm: opts.vm,
            images,
            tags: opts.tag ?? [],
            ...(time === undefined ? {} : { time }),
            logger: log,
            progressFor: (t) =>
              makeProgress(`${opts.vm}/${t}`, process.stderr, quiet || opts.json === true, { reads: true }),
            signal: rootAbort.signal,
          }),
        );
        if (opts.json) printJson(summary(snap));
        else {
          keepSummary(summary(snap));
          printSummary(snap);
        }
      },
    );
}

export function summary(s: Snapshot): Record<string, unknown> {
  return {
    message_type: 'summary',
    snapshot: s.id,
    vm: s.vm.name,
    time: s.time,
    disks: s.disks.map((d) => ({
      target: d.target,
      sizeBytes: d.sizeBytes,
      allocatedBytes: d.allocatedBytes,
      ...d.stats,
    })),
  };
}

export function printSummary(s: Snapshot): void {
  const lines = [
    `snapshot ${shortId(s.id)} saved (${printable(s.vm.name)}, ${s.disks.length} disk${s.disks.length === 1 ? '' : 's'})`,
  ];
  for (const d of s.disks) {
    const st = d.stats;
    lines.push(
      `  ${printable(d.target, 40)}: ${formatBytes(d.sizeBytes)} virtual, ${formatBytes(d.allocatedBytes)} allocated, read ${formatBytes(st.bytesRead)}, new ${formatBytes(st.bytesNew)} (stored ${formatBytes(st.bytesStored)}), deduplicated ${formatBytes(st.bytesDedup)}, zero ${formatBytes(st.bytesZero)}${st.bytesReused ? `, unchanged ${formatBytes(st.bytesReused)}` : ''}`,
    );
  }
  process.stdout.write(`${lines.join('\n')}\n`);
}

/** `--time`: an ISO 8601 date-time with a zone (Z or ±hh:mm), as the manifest records it (UTC). */
