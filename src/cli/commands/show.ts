import { Command } from 'commander';
import { formatBytes, printable } from '../../util/index.js';
import { shortId } from '../../repo/index.js';
import { printJson, repoOption, withRepo } from '../context.js';
import { table } from './snapshots.js';

export function showCommand(): Command {
  return new Command('show')
    .description('show one snapshot: time, VM, parent, disks and sizes')
    .argument('<snapshot>', 'id, id prefix, VM@latest, VM@<date-time> or checkpoint name')
    .option('--json', 'print JSON')
    .addOption(repoOption())
    .action(async (ref: string, opts: { json?: boolean; repo?: string }) => {
      const s = await withRepo(opts, (r) => r.resolveSnapshot(ref), 'read');
      if (opts.json) return printJson(s);
      const virt = s.disks.reduce((a, d) => a + d.sizeBytes, 0);
      const alloc = s.disks.reduce((a, d) => a + d.allocatedBytes, 0);
      const stored = s.disks.reduce((a, d) => a + d.stats.bytesStored, 0);
      const out = [
        `snapshot  ${s.id}`,
        `vm        ${printable(s.vm.name)}${s.vm.uuid ? ` (${printable(s.vm.uuid)})` : ''}`,
        `time      ${printable(s.time)}`,
        `host      ${printable(s.host)}`,
        `mode      ${s.mode}${s.checkpoint ? ` (checkpoint ${printable(s.checkpoint)})` : ''}`,
        `parent    ${s.parent ? shortId(s.parent) : '-'}`,
        ...(s.origin
          ? [`origin    snapshot ${shortId(s.origin.snapshot)} of repository ${shortId(s.origin.repository)} (synced)`]
          : []),
        `tags      ${printable(s.tags.join(', '), 400) || '-'}`,
        `size      ${formatBytes(virt)} virtual, ${formatBytes(alloc)} allocated, ${formatBytes(stored)} newly stored`,
        '',
      ].join('\n');
      process.stdout.write(out);
      process.stdout.write(
        table(
          ['DISK', 'VIRTUAL', 'ALLOCATED', 'READ', 'NEW', 'STORED', 'DEDUP', 'ZERO', 'SOURCE'],
          s.disks.map((d) => [
            d.target,
            formatBytes(d.sizeBytes),
            formatBytes(d.allocatedBytes),
            formatBytes(d.stats.bytesRead),
            formatBytes(d.stats.bytesNew),
            formatBytes(d.stats.bytesStored),
            formatBytes(d.stats.bytesDedup),
            formatBytes(d.stats.bytesZero),
            printable(d.source ?? '', 120),
          ]),
        ),
      );
      if (s.files.length)
        process.stdout.write(`files: ${s.files.map((f) => printable(`${f.kind}:${f.name}`)).join(', ')}\n`);
    });
}
