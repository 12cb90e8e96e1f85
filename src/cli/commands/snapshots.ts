import { Command } from 'commander';
import { formatBytes, printable } from '../../util/index.js';
import { shortId, type Snapshot } from '../../repo/index.js';
import { commaList, printJson, repoOption, withRepo } from '../context.js';

export function snapshotsCommand(): Command {
  return new Command('snapshots')
    .description('list snapshots, oldest first')
    .option('--vm <name>', 'only snapshots of this VM')
    .option(
      '--tag <tag>',
      'only snapshots with this tag (repeatable or comma separated: any of them)',
      commaList,
    )
    .option('--json', 'print JSON')
    .addOption(repoOption())
    .action(async (opts: { vm?: string; tag?: string[]; json?: boolean; repo?: string }) => {
      const snaps = (await withRepo(opts, (r) => r.listSnapshots(), 'read')).filter(
        (s) =>
          (!opts.vm || s.vm.name === opts.vm) &&
          (!opts.tag?.length || s.tags.some((t) => opts.tag!.includes(t))),
      );
      if (opts.json) return printJson(snaps.map(listEntry));
      const rows = snaps.map((s) => [
        shortId(s.id),
        s.time.replace('T', ' ').replace(/\.\d+Z$/, 'Z'),
        printable(s.vm.name, 60),
        s.mode,
        s.disks.map((d) => d.target).join(','),
        formatBytes(s.disks.reduce((a, d) => a + d.sizeBytes, 0)),
        formatBytes(s.disks.reduce((a, d) => a + d.stats.bytesNew, 0)),
        printable(s.tags.join(','), 80) + (s.protected ? `${s.tags.length ? ' ' : ''}[protected]` : ''),
      ]);
      // Synced snapshots name where they came from: the origin's snapshot @ repository (short ids).
      const header = ['ID', 'TIME', 'VM', 'MODE', 'DISKS', 'SIZE', 'NEW', 'TAGS'];
      if (snaps.some((s) => s.origin !== undefined)) {
        header.splice(7, 0, 'ORIGIN');
        snaps.forEach((s, i) =>
          rows[i]!.splice(
            7,
            0,
            s.origin ? `${shortId(s.origin.snapshot)}@${shortId(s.origin.repository)}` : '-',
          ),
        );
      }
      process.stdout.write(table(header, rows));
      process.stdout.write(`${snaps.length} snapshot${snaps.length === 1 ? '' : 's'}\n`);
    });
}

function listEntry(s: Snapshot): Record<string, unknown> {
  return {
    id: s.id,
    short_id: shortId(s.id),
    time: s.time,
    vm: s.vm,
    host: s.host,
    mode: s.mode,
    parent: s.parent,
    checkpoint: s.checkpoint,
    tags: s.tags,
    protected: s.protected === true,
    ...(s.note === undefined ? {} : { note: s.note }),
    ...(s.edited === undefined ? {} : { edited: s.edited }),
    ...(s.origin === undefined ? {} : { origin: s.origin }),
    disks: s.disks.map((d) => ({
      target: d.target,
      sizeBytes: d.sizeBytes,
      allocatedBytes: d.allocatedBytes,
    })),
  };
}

export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const fmt = (r: string[]): string =>
    r
      .map((c, i) => c.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  return [fmt(header), ...rows.map(fmt)].join('\n') + '\n';
}
